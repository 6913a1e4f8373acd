"""`steer learn prompt NAME --from A... --to B...`: a Pix2Pix-Zero edit direction (docs/methods.md, section 3).

The mean text embedding of the --to sentences minus that of the --from sentences
(sampler/directions/prompt.py); nothing is trained, so it takes seconds.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from energies import directions as D
from energies.errors import warn

from ..directions import prompt as PD
from .common import UsageError, check_name, command


def read_sentences(path: Path) -> list[str]:
    """One sentence per line; blank lines and lines starting with '#' are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UsageError(f"cannot read sentences from {str(path)!r}: {e.strerror or e}") from None
    return [x.strip() for x in lines if x.strip() and not x.lstrip().startswith("#")]


def swap_word(sentence: str, old: str, new: str) -> str:
    """The sentence with every whole word `old` replaced by `new`."""
    return re.sub(rf"\b{re.escape(old)}\b", new, sentence)


def sentence_sets(args) -> tuple[list[str], list[str]]:
    sources = list(args.src or []) + (read_sentences(args.src_file) if args.src_file else [])
    targets = list(args.dst or []) + (read_sentences(args.dst_file) if args.dst_file else [])
    if not sources:
        raise UsageError("no source sentences: give --from SENTENCE... or --from-file FILE")
    if args.swap:
        if targets:
            raise UsageError("--swap makes the target sentences from the source ones: drop --to / --to-file")
        old, new = args.swap
        missing = [x for x in sources if swap_word(x, old, new) == x]
        if missing:
            raise UsageError(f"--swap {old} {new}: {missing[0]!r} has no word {old!r}")
        targets = [swap_word(x, old, new) for x in sources]
    if not targets:
        raise UsageError("no target sentences: give --to SENTENCE..., --to-file FILE or --swap OLD NEW")
    return sources, targets


def learn_prompt(args, argv) -> int:
    from ..backbones import load_backbone

    check_name(args.name)
    sources, targets = sentence_sets(args)
    t0 = time.time()
    b = load_backbone(args.model, device=args.device, dtype=args.dtype)
    long = [x for x in sources + targets if len(b.tokenizer(x).input_ids) > b.tokenizer.model_max_length]
    if long:
        warn(f"{len(long)} sentence(s) are longer than the text encoder's {b.tokenizer.model_max_length} tokens "
             f"and are cut, e.g. {long[0]!r}")
    tensors = PD.edit_direction(b, sources, targets)
    out = Path(args.out) / f"{args.name}.safetensors"
    D.save_direction(out, tensors, "prompt", D.backbone_id(b), {
        "resolution": list(b.image_size()),
        "recipe": command(argv),
        "method": "pix2pix-zero",
        "from": sources, "to": targets,
    })
    print(f"wrote prompt direction {args.name!r} to {out} ({len(sources)} source and {len(targets)} target sentences, "
          f"|delta| = {tensors['delta'].norm():.2f}, {time.time() - t0:.0f} s); "
          f"use it with `keep attention` so the layout stays")
    return 0

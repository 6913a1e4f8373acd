"""The store of learned directions: safetensors files with JSON metadata, found by name.

A direction NAME is the file NAME.safetensors in, first to last:
  1. a `directions/` folder next to the script,
  2. the user's folder ($STEER_DIRECTIONS, else ~/.steer/directions),
  3. the `directions/` folder shipped with the model.
Only safetensors are read; nothing is unpickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .errors import SteerCompileError, did_you_mean
from .files import atomic_write


def search_path(script_dir: Path | None = None, model_dir: Path | None = None) -> list[Path]:
    paths = []
    if script_dir is not None:
        paths.append(Path(script_dir) / "directions")
    paths.append(Path(os.environ.get("STEER_DIRECTIONS", Path.home() / ".steer" / "directions")))
    if model_dir is not None:
        paths.append(Path(model_dir) / "directions")
    return paths


def known(paths) -> dict[str, Path]:
    """Every direction on the search path, by name; earlier folders win."""
    found: dict[str, Path] = {}
    for folder in paths:
        if folder.is_dir():
            for f in sorted(folder.glob("*.safetensors")):
                found.setdefault(f.stem, f)
    return found


def find(term, paths) -> Path:
    """The file of a Direction term, or a SteerCompileError listing the known directions."""
    table = known(paths)
    if term.name in table:
        return table[term.name]
    where = ", ".join(str(p) for p in paths)
    listing = ", ".join(table) if table else f"none (searched {where})"
    hint = did_you_mean(term.name, table)
    raise SteerCompileError(
        f"unknown direction {term.name!r}", term.span, hint=(hint + "; " if hint else "") + f"known directions: {listing}"
    )


def describe(d: "Direction") -> str:
    """One line on what a direction is, from its metadata: kind, method and what it was made from."""
    m = d.meta

    def sentences(key):
        v = m.get(key)
        if isinstance(v, list):
            return f'"{v[0]}"' + (f" (+{len(v) - 1} more)" if len(v) > 1 else "") if v else "?"
        return f'"{v}"' if v else "?"

    if d.kind == "hspace":
        what = f"h-space (Asyrp): {sentences('from')} -> {sentences('to')}"
    elif d.kind == "prompt":
        what = f"prompt (Pix2Pix-Zero): {sentences('from')} -> {sentences('to')}; use with keep attention"
    elif d.kind == "finetune":
        what = f"finetune (DiffusionCLIP, {m.get('adapter', 'lora')}): {sentences('from')} -> {sentences('to')}, return {m.get('return', '?')}"
        if m.get("beside"):
            what += f"; learned beside {m['beside']}, use with it"
    else:
        what = "noise (NoiseCLR)" + (f": direction {m['index']} of {m.get('k', '?')} found in {m.get('images', '?')}" if "index" in m else "")
    return f"{what}; learned on {m.get('backbone', '?')}"


def listing(paths) -> list[str]:
    """`name  description` for every direction on the search path, grouped by folder; a name that an
    earlier folder already has is marked as hidden by it."""
    lines, seen = [], set()
    for folder in paths:
        files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
        lines.append(f"{folder}:" + ("" if files else " (none)"))
        for f in files:
            try:
                text = describe(read_direction(f))
            except SteerCompileError as e:
                text = f"unreadable: {e.message}"
            hidden = "  [hidden by an earlier folder]" if f.stem in seen else ""
            seen.add(f.stem)
            lines.append(f"  {f.stem:<24} {text}{hidden}")
    return lines


# ----------------------------------------------------------------------------------------------
# Direction files: what `steer learn` writes and an editor reads.
#
# One safetensors file per direction. Its tensors depend on the kind:
#   hspace  "delta_h"    (C, h, w) float32: Asyrp's global delta-h, added to the UNet mid-block output
#           or (N, C, h, w) with "timesteps" (N,) int64: one delta-h per training timestep
#   noise   "embedding"  (W,) float32: NoiseCLR's token embedding in the text encoder's input table
#           (SDXL: [row of text_encoder; row of text_encoder_2], W = 768 + 1280)
#   prompt  "delta"      (T, D) float32: Pix2Pix-Zero's edit direction, added to the prompt's
#           encoder hidden states; SDXL files also carry "pooled" (P,), added to the pooled embedding
#   finetune "scale"     () float32: DiffusionCLIP's fine-tuned UNet, as a LoRA (peft's names,
#           "<module>.lora_A.weight" and "<module>.lora_B.weight", W' = W + scale B A) or, from
#           `steer learn clip --full`, the changed weights under their parameter names (scale 1)
# Its safetensors metadata has one key, "steer", a JSON object with at least
#   format (1), kind, backbone ("<kind>:<name>", e.g. "shapes:shapes"), resolution ([H, W] of the
#   images), recipe (the command that made it), date (UTC, ISO 8601)
# and whatever else the learner recorded (train_steps, losses, ...).

FORMAT = 1
KINDS = ("hspace", "noise", "prompt", "finetune")
TENSOR = {"hspace": "delta_h", "noise": "embedding", "prompt": "delta", "finetune": "scale"}  # the tensor every file of a kind must have
LEARN = {"hspace": "hspace", "noise": "noiseclr", "prompt": "prompt", "finetune": "clip"}  # the `steer learn` command of each kind


@dataclass
class Direction:
    name: str  # the file's stem: what a script calls it
    kind: str  # "hspace" | "noise" | "prompt" | "finetune"
    tensors: dict  # name -> torch.Tensor (CPU, as saved)
    meta: dict  # the "steer" metadata object
    path: Path | None = None  # the file it was read from, for errors


def backbone_id(backbone) -> str:
    """"<kind>:<name>", the backbone field of a direction file."""
    return f"{backbone.kind}:{backbone.name}"


def save_direction(path, tensors: dict, kind: str, backbone: str, meta: dict | None = None) -> Path:
    """Write a direction file atomically (energies/files.py), so a crash never leaves half a
    direction where a script will look for one; with ordinary permissions, to be shared."""
    from safetensors.torch import save_file

    if kind not in KINDS:
        raise ValueError(f"direction kind must be one of {KINDS}, not {kind!r}")
    if TENSOR[kind] not in tensors:
        raise ValueError(f"a {kind} direction needs a {TENSOR[kind]!r} tensor (got {sorted(tensors)})")
    meta = dict(meta or {})
    record = {
        "format": FORMAT,
        "kind": kind,
        "backbone": str(backbone),
        "resolution": meta.pop("resolution", None),
        "recipe": meta.pop("recipe", None),
        "date": meta.pop("date", datetime.now(timezone.utc).isoformat(timespec="seconds")),
        **meta,
    }
    tensors = {k: v.detach().float().cpu().contiguous() if v.is_floating_point() else v.detach().cpu().contiguous()
               for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"steer": json.dumps(record)}))


def read_direction(path, span=None) -> Direction:
    """A direction file as it is, without checking it against a model."""
    import json

    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise SteerCompileError(f"direction file {str(path)!r} does not exist", span)
    try:
        with safe_open(str(path), "pt") as f:
            raw = (f.metadata() or {}).get("steer")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise SteerCompileError(f"cannot read direction file {str(path)!r}: {e}", span,
                                hint="direction files are safetensors written by `steer learn`") from None
    try:
        meta = json.loads(raw) if raw is not None else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("kind") not in KINDS:
        raise SteerCompileError(f"{str(path)!r} is not a steer direction file (no 'steer' metadata with a kind)", span,
                                hint="direction files are written by `steer learn hspace`, `steer learn noiseclr`, `steer learn prompt` or `steer learn clip`")
    kind = meta["kind"]
    if TENSOR[kind] not in tensors:
        raise SteerCompileError(f"direction file {str(path)!r} has no {TENSOR[kind]!r} tensor", span)
    problem = meta_problem(meta)
    if problem:
        raise SteerCompileError(f"direction file {str(path)!r} has malformed metadata: {problem}", span,
                                hint="learn it again with `steer learn`, or fix its 'steer' metadata")
    return Direction(name=path.stem, kind=kind, tensors=tensors, meta=meta, path=path)


# The metadata fields that steer reads, and the type each must have: a file that a person or
# another tool edited is refused when it is read, not when a field is used deep in a run.
META_TYPES = {"backbone": str, "train_steps": int, "index": int, "k": int, "images": str}


def meta_problem(meta: dict) -> str | None:
    """What is wrong with a direction's metadata, or None."""
    for key, want in META_TYPES.items():
        v = meta.get(key)
        if v is not None and (not isinstance(v, want) or isinstance(v, bool)):
            return f"{key!r} should be {'a whole number' if want is int else 'a string'}, not {v!r}"[:200]
    if isinstance(meta.get("train_steps"), int) and meta["train_steps"] < 1:
        return f"'train_steps' should be at least 1, not {meta['train_steps']}"
    for key in ("from", "to"):
        v = meta.get(key)
        if v is not None and not (isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))):
            return f"{key!r} should be a sentence or a list of sentences"
    return None

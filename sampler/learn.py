"""Learn directions: `steer learn hspace NAME --from A --to B`, `steer learn noiseclr --images DIR --k K`
and `steer learn prompt NAME --from A... --to B...`.

hspace    Asyrp (reference/methods.md, section 4), the `--train_delta_h` variant with one global
          delta-h (C, h, w), which is what an edit applies. Source images are samples of the --from
          prompt; at every step of the edit window the UNet runs with the current delta-h, and
          L = clip_w * (-log((1 + cos(dI, dT)) / 2)) + l1_w * cos(T_src, T_trg) * |P_t^edit - P_t^orig|_1
          takes one SGD step. The edited trajectory moves on by Asyrp's asymmetric step.
noiseclr  NoiseCLR (section 5): K token embeddings, learned contrastively on a folder of images so
          that each one's noise difference eps(x_t, d_k) - eps(x_t, "") agrees with itself across
          images and differs from the other directions' on the same image.
prompt    Pix2Pix-Zero (section 3): the mean text embedding of the --to sentences minus that of the
          --from sentences; nothing is trained, so it takes seconds (sampler/prompt_directions.py).

Like sampler/shapes/train.py: a tqdm bar; checkpoints (safetensors with the JSON state in their
metadata, never pickle) every --ckpt-every steps in --work; --resume; and everything a function
of --seed, so a resumed run ends exactly where an uninterrupted one would. The directions are
written with energies.directions.save_direction.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dsl.errors import SteerError
from energies import directions as D
from energies.x0 import CLIP_MODEL_ID, ClipScorer, directional_clip_energy

from . import hspace as H
from . import noise_directions as N
from . import prompt_directions as PD
from .guided import clip_x0, ddim_step, pred_x0

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")  # the grammar's NAME: what `direction NAME` can refer to


class UsageError(Exception):
    """A mistake on the command line: printed as `steer learn: error: ...`, exit status 2."""


# ----------------------------------------------------------------------------------------------
# Checkpoints: every tensor in safetensors, the rest (step, recipe, optimizer step) as JSON in its
# metadata. Written beside and renamed, so an interrupted write never leaves a broken one.


def save_checkpoint(path: Path, tensors: dict, state: dict):
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata={"state": json.dumps(state)})
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["state"])


def _start(ckpt: Path, resume: bool, recipe: dict) -> tuple[dict, dict] | None:
    """The checkpoint to continue from, or None for a fresh run. A checkpoint made with other
    settings is refused: continuing it would learn a mixture of two recipes."""
    if not resume:
        if ckpt.exists():
            print(f"starting fresh; {ckpt} is overwritten (--resume continues it)")
        return None
    if not ckpt.exists():
        print(f"no checkpoint at {ckpt}: starting fresh")
        return None
    tensors, state = load_checkpoint(ckpt)
    differ = {k: (state["recipe"].get(k), v) for k, v in recipe.items() if state["recipe"].get(k) != v}
    if differ:
        listing = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in differ.items())
        raise UsageError(f"{ckpt} was made with other settings ({listing}); drop --resume to start again")
    print(f"resumed from {ckpt} at step {state['step']}")
    return tensors, state


def _command(argv) -> str:
    return "steer learn " + shlex.join(argv)


# ----------------------------------------------------------------------------------------------
# hspace: Asyrp


# Asyrp's script uses SGD with lr 0.5 and a N(0, 0.2^2) start on ADM-256. On the shapes model that
# lr leaves delta-h where it started (directional CLIP loss 0.74 -> 0.73 in 40 steps): its h and
# gradients are on another scale. lr 200 from a zero start turns 6 to 9 of 16 "a red circle"
# samples into a red square at weight 1, 25 steps (--to "a red square", the other settings at
# their defaults; judged by the world's detector). Colour edits ("a blue circle") do not take: the
# decoder's cross-attention puts the prompt's colour back whatever h says.
# A zero start keeps the file free of the random part of Asyrp's init, which is never trained away.
HSPACE_LR = {"shapes": 200.0}  # other backbones: Asyrp's 0.5
HSPACE_LR_DEFAULT = 0.5


class ClipFeatures:
    """CLIP features for the directional loss: energies.x0.ClipScorer, fed a predicted x0.

    Shapes model: its own CLIP (backbone.clip), fed as sampler/shapes/train.py feeds it (the 32 px
    image in [-1, 1], which is the shapes latent itself; no mean/std; captions padded to the
    tokenizer's max length). x0 is clamped to [-1.5, 1.5], the range the CLIP saw through
    `augment`'s noise: the noisiest steps predict values far outside it. Other backbones: a
    transformers CLIP by id or path (--clip; texts averaged over ImageNet templates), on the
    VAE-decoded x0."""

    def __init__(self, backbone, clip_id: str | None):
        self.b = backbone
        if backbone.kind == "shapes":
            if getattr(backbone, "clip", None) is None:
                raise UsageError(f"the shapes model {backbone.name} has no clip/ folder: the directional CLIP loss needs it")
            self.scorer = ClipScorer.for_shapes(backbone)
        else:
            try:
                self.scorer = ClipScorer.from_pretrained(clip_id, device=backbone.device)
            except OSError as e:
                raise UsageError(str(e)) from None

    def image(self, x0: torch.Tensor) -> torch.Tensor:
        if self.b.kind == "shapes":
            return self.scorer.image(x0.clamp(-1.5, 1.5))
        return self.scorer.image(self.b.decode(x0) * 2 - 1)  # decode keeps the graph; [0, 1] -> [-1, 1]

    def text(self, captions: list[str]) -> torch.Tensor:
        return self.scorer.text(list(captions))


@dataclass
class SourceRun:
    z_T: torch.Tensor  # the start noise, shared by the source and the edited trajectory
    p_orig: list  # raw predicted x0 of the source at every step of the edit window (P_t^orig)
    feat: torch.Tensor  # CLIP features of the finished source image (Asyrp's x0)


def _cfg(eps: torch.Tensor, cfg: float) -> torch.Tensor:
    eps_u, eps_c = eps.chunk(2)
    return eps_u + cfg * (eps_c - eps_u)


@torch.no_grad()
def source_run(b, context, added, z_T, timesteps, alphas, final, cfg, edit_steps, clip: ClipFeatures) -> SourceRun:
    """Plain classifier-free-guided DDIM from z_T, the unedited trajectory of Asyrp's x_origin."""
    z, p_orig = z_T, []
    for i, t in enumerate(timesteps):
        a_t = alphas[t]
        a_prev = alphas[timesteps[i + 1]] if i + 1 < len(timesteps) else final
        eps = _cfg(b.eps(torch.cat([z, z]), t, context, added), cfg)
        x0 = pred_x0(z, eps, a_t)
        if i in edit_steps:
            p_orig.append(x0)
        if b.clip_x0 is not None:
            x0, eps = clip_x0(z, x0, a_t, b.clip_x0)
        z = ddim_step(x0, eps, a_prev)
    return SourceRun(z_T, p_orig, clip.image(z))


def learn_hspace(args, argv) -> int:
    from .backbones import load_backbone

    if not NAME.fullmatch(args.name):
        raise UsageError(f"{args.name!r} cannot be a direction name: use letters, digits, '_' and '-', starting with a letter")
    torch.manual_seed(args.seed)
    b = load_backbone(args.model, device=args.device, dtype=args.dtype)
    if args.lr is None:
        args.lr = HSPACE_LR.get(b.kind, HSPACE_LR_DEFAULT)
    clip = ClipFeatures(b, args.clip)
    cfg = args.cfg if args.cfg is not None else float(b.sampling_defaults.get("cfg", 7.5))
    timesteps = b.timesteps(args.steps)
    alphas, final = b.schedule()
    edit = [i for i in range(args.steps) if H.in_edit_window(i / args.steps, (0.0, args.edit_until))]
    if not edit:
        raise UsageError(f"--edit-until {args.edit_until} leaves no step of {args.steps} to train on")
    cond = b.encode_prompt(args.src)
    context = torch.cat([cond.uncond, cond.cond])  # [uncond; cond], as Backbone.eps_both batches them
    added = {k: torch.cat([cond.added_uncond[k], cond.added[k]]) for k in cond.added} or None  # SDXL's pooled text and ids
    txt_src, txt_trg = clip.text([args.src]), clip.text([args.dst])
    cos_text = float(F.cosine_similarity(txt_src, txt_trg).item())  # Asyrp scales the L1 term by it

    recipe = {k: getattr(args, k) for k in ("name", "src", "dst", "model", "steps", "n_images", "cfg", "lr", "lr_step", "lr_gamma",
                                            "clip_loss_w", "l1_loss_w", "init_std", "edit_until", "seed")}
    work = args.work or Path("runs/learn") / f"hspace-{args.name}"
    ckpt = work / "hspace.ckpt.safetensors"
    shape = D.hspace_shape(b.unet)
    init = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed)) * args.init_std
    delta = torch.nn.Parameter(init.to(b.device))
    opt = torch.optim.SGD([delta], lr=args.lr)  # Asyrp: SGD, lr_training, StepLR per outer iteration
    start, elapsed = 0, 0.0
    resumed = _start(ckpt, args.resume, recipe)
    if resumed is not None:
        tensors, state = resumed
        with torch.no_grad():
            delta.copy_(tensors["delta_h"])
        start, elapsed = state["step"], state["elapsed"]

    t0 = time.time()
    sources = []
    for k in tqdm(range(args.n_images), desc="source images", leave=False, dynamic_ncols=True):
        z_T = torch.randn((1, *b.latent_shape()), generator=torch.Generator().manual_seed(args.seed * 10_000 + k)).to(b.device)
        sources.append(source_run(b, context, added, z_T, timesteps, alphas, final, cfg, set(edit), clip))

    total = args.iters * args.n_images  # one step = one image through the whole edit window
    bar = tqdm(range(start, total), initial=start, total=total, desc=f"hspace {args.name}", dynamic_ncols=True)
    losses = []
    for s in bar:
        it, k = divmod(s, args.n_images)
        for g in opt.param_groups:
            g["lr"] = args.lr * args.lr_gamma ** (it // args.lr_step)
        src = sources[k]
        z = src.z_T
        for j, i in enumerate(edit):  # Asyrp: one optimizer step per timestep of the edit window
            t = timesteps[i]
            a_t = alphas[t]
            a_prev = alphas[timesteps[i + 1]] if i + 1 < len(timesteps) else final
            with torch.no_grad():
                eps = _cfg(b.eps(torch.cat([z, z]), t, context, added), cfg)
            with H.shifting(b.unet, delta):  # both CFG halves see h + delta-h
                eps_s = _cfg(b.eps(torch.cat([z, z]), t, context, added), cfg)
            p_edit = pred_x0(z, eps_s, a_t)
            loss_clip = directional_clip_energy(clip.image(p_edit), src.feat, txt_trg, txt_src)
            loss_l1 = (p_edit - src.p_orig[j]).abs().mean()
            loss = args.clip_loss_w * loss_clip + args.l1_loss_w * cos_text * loss_l1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            z = H.asyrp_step(z, eps, eps_s.detach(), a_t, a_prev, clip=b.clip_x0)  # the edited trajectory moves on
            losses.append((loss_clip.item(), loss_l1.item()))
        bar.set_postfix(clip=f"{np.mean([c for c, _ in losses[-len(edit):]]):.3f}", l1=f"{np.mean([l for _, l in losses[-len(edit):]]):.3f}",
                        lr=f"{opt.param_groups[0]['lr']:.2g}")
        if (s + 1) % args.ckpt_every == 0 or s + 1 == total:
            save_checkpoint(ckpt, {"delta_h": delta}, {"step": s + 1, "elapsed": elapsed + time.time() - t0, "recipe": recipe})
    bar.close()

    out = Path(args.out) / f"{args.name}.safetensors"
    last = losses[-len(edit) * args.n_images:]
    D.save_direction(out, {"delta_h": delta.detach()}, "hspace", D.backbone_id(b), {
        "resolution": list(b.image_size()),
        "recipe": _command(argv),
        "method": "asyrp",
        "from": args.src, "to": args.dst,
        "train_steps": args.steps,  # an edit at n steps scales delta-h by train_steps / n (Asyrp)
        "edit_window": [0.0, args.edit_until],
        "cfg": cfg, "iters": args.iters, "n_images": args.n_images, "seed": args.seed,
        "final_clip_loss": float(np.mean([c for c, _ in last])) if last else None,
        "final_l1_loss": float(np.mean([l for _, l in last])) if last else None,
    })
    print(f"wrote h-space direction {args.name!r} to {out} ({elapsed + time.time() - t0:.0f} s)")
    return 0


# ----------------------------------------------------------------------------------------------
# noiseclr: NoiseCLR


def noiseclr_loss(pos: torch.Tensor, neg: torch.Tensor, tau: float) -> torch.Tensor:
    """NoiseCLR's contrastive loss (core/loss.py) on L2-normalised noise differences.

    pos (B, F): the chosen direction on B images; neg (L, B, F): L other directions on the same
    images. Positives are pairs of images under the same direction (i < j), negatives the chosen
    direction against each other one on the same image; L = -log(mean exp(cos/tau) over the
    positives / mean exp(cos/tau) over the negatives)."""
    B = pos.shape[0]
    i, j = torch.triu_indices(B, B, offset=1, device=pos.device)
    positive = torch.exp((pos[i] * pos[j]).sum(-1) / tau).mean()
    negative = torch.exp((pos[None] * neg).sum(-1) / tau).mean()
    return -torch.log(positive / negative)


def load_images(folder: Path, size: tuple[int, int]) -> tuple[list[Path], torch.Tensor]:
    """Every PNG/JPEG/WebP in `folder` (sorted by name) at the model's size: (N, 3, H, W) in [0, 1]."""
    from .images import load_image

    if not folder.is_dir():
        raise UsageError(f"--images {folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise UsageError(f"--images {folder}: found {len(files)} image(s); the contrastive loss needs at least 2 (PNG, JPEG or WebP)")
    return files, torch.stack([torch.from_numpy(load_image(p, size)).permute(2, 0, 1) for p in files])


def learn_noiseclr(args, argv) -> int:
    from .backbones import load_backbone

    if args.k < 2:
        raise UsageError("--k must be at least 2: a direction is learned against the others")
    torch.manual_seed(args.seed)
    b = load_backbone(args.model, device=args.device, dtype=args.dtype)
    files, images = load_images(Path(args.images), b.image_size())
    with torch.no_grad():
        latents = torch.cat([b.encode(images[i : i + 8]) for i in range(0, len(images), 8)]).float()
    n, K = len(files), args.k
    batch = min(args.batch, n)
    if batch < 2:
        raise UsageError("--batch must be at least 2: positives are pairs of images")
    n_neg = min(args.negatives, K - 1)
    alphas, _ = b.schedule()
    n_train = int(b.scheduler.config.num_train_timesteps)

    # NoiseCLR starts from random rows; drawn here with the table's own per-dimension mean and
    # spread, so a new token starts among the words, not far outside them.
    # On SDXL a direction is a row of each encoder's table, concatenated, each drawn from its own.
    tables = [enc.get_input_embeddings().weight.detach().float().cpu() for _, enc in N.encoders(b)]
    mean, std = torch.cat([t.mean(0) for t in tables]), torch.cat([t.std(0) for t in tables])
    g = torch.Generator().manual_seed(args.seed)
    init = mean + std * torch.randn((K, mean.shape[0]), generator=g)
    emb = torch.nn.Parameter(init.to(b.device))
    opt = torch.optim.AdamW([emb], lr=args.lr, weight_decay=args.weight_decay)
    ctx_empty = N.empty_context(b)

    recipe = {"images": [p.name for p in files], "model": args.model, "k": K, "batch": batch, "negatives": n_neg, "lr": args.lr,
              "weight_decay": args.weight_decay, "tau": args.tau, "seed": args.seed}
    work = args.work or Path("runs/learn") / f"noiseclr-{Path(args.images).resolve().name}"
    ckpt = work / "noiseclr.ckpt.safetensors"
    start, elapsed = 0, 0.0
    resumed = _start(ckpt, args.resume, recipe)
    if resumed is not None:
        tensors, state = resumed
        with torch.no_grad():
            emb.copy_(tensors["embeddings"])
        if "opt.exp_avg" in tensors:
            opt.state[emb] = {"step": torch.tensor(float(state["opt_step"])), "exp_avg": tensors["opt.exp_avg"].to(b.device),
                              "exp_avg_sq": tensors["opt.exp_avg_sq"].to(b.device)}
        start, elapsed = state["step"], state["elapsed"]

    t0 = time.time()
    bar = tqdm(range(start, args.iters), initial=start, total=args.iters, desc="noiseclr", dynamic_ncols=True)
    losses = []
    for it in bar:
        # everything random in step `it` is drawn from (seed, it): a resumed run repeats it exactly
        rng = np.random.default_rng((args.seed, it))
        pick = torch.from_numpy(np.sort(rng.choice(n, batch, replace=False)))
        k = int(rng.integers(K))
        negs = [int(x) for x in rng.choice([l for l in range(K) if l != k], n_neg, replace=False)]
        gt = torch.Generator().manual_seed(args.seed * 1_000_003 + it)
        t = int(torch.randint(0, n_train, (1,), generator=gt))  # one t for the batch
        x0 = latents[pick]
        noise = torch.randn(x0.shape, generator=gt).to(x0)  # one noise draw, shared by every direction
        a = alphas[t]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise

        with torch.no_grad():
            empty = ctx_empty.batch(batch)
            eps_empty = b.eps(xt, t, empty.hidden, empty.added)
        ctx = N.direction_context(b, emb[[k, *negs]]).rows(batch)  # (1 + L) * batch rows, the chosen direction first
        eps = b.eps(xt.repeat(1 + n_neg, 1, 1, 1), t, ctx.hidden, ctx.added)  # direction-major rows
        delta = F.normalize((eps.view(1 + n_neg, batch, -1) - eps_empty.view(1, batch, -1)), dim=-1)
        loss = noiseclr_loss(delta[0], delta[1:], args.tau)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if (it + 1) % args.ckpt_every == 0 or it + 1 == args.iters:
            s = opt.state[emb]
            save_checkpoint(ckpt, {"embeddings": emb, "opt.exp_avg": s["exp_avg"], "opt.exp_avg_sq": s["exp_avg_sq"]},
                            {"step": it + 1, "elapsed": elapsed + time.time() - t0, "opt_step": float(s["step"]), "recipe": recipe})
    bar.close()

    out = Path(args.out)
    width = max(2, len(str(K - 1)))
    for k in range(K):
        D.save_direction(out / f"noiseclr_{k:0{width}d}.safetensors", {"embedding": emb[k].detach()}, "noise", D.backbone_id(b), {
            "resolution": list(b.image_size()),
            "recipe": _command(argv),
            "method": "noiseclr",
            "index": k, "k": K, "images": str(args.images), "n_images": n, "iters": args.iters, "tau": args.tau, "seed": args.seed,
            "final_loss": float(np.mean(losses[-50:])) if losses else None,
        })
    print(f"wrote {K} NoiseCLR directions noiseclr_{0:0{width}d} ... noiseclr_{K - 1:0{width}d} to {out}/ "
          f"({elapsed + time.time() - t0:.0f} s); rename them after what they do")
    return 0


# ----------------------------------------------------------------------------------------------
# prompt: Pix2Pix-Zero


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
    from .backbones import load_backbone

    if not NAME.fullmatch(args.name):
        raise UsageError(f"{args.name!r} cannot be a direction name: use letters, digits, '_' and '-', starting with a letter")
    sources, targets = sentence_sets(args)
    t0 = time.time()
    b = load_backbone(args.model, device=args.device, dtype=args.dtype)
    long = [x for x in sources + targets if len(b.tokenizer(x).input_ids) > b.tokenizer.model_max_length]
    if long:
        print(f"warning: {len(long)} sentence(s) are longer than the text encoder's {b.tokenizer.model_max_length} tokens "
              f"and are cut, e.g. {long[0]!r}", file=sys.stderr)
    tensors = PD.edit_direction(b, sources, targets)
    out = Path(args.out) / f"{args.name}.safetensors"
    D.save_direction(out, tensors, "prompt", D.backbone_id(b), {
        "resolution": list(b.image_size()),
        "recipe": _command(argv),
        "method": "pix2pix-zero",
        "from": sources, "to": targets,
    })
    print(f"wrote prompt direction {args.name!r} to {out} ({len(sources)} source and {len(targets)} target sentences, "
          f"|delta| = {tensors['delta'].norm():.2f}, {time.time() - t0:.0f} s); "
          f"use it with `keep attention` so the layout stays")
    return 0


# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="steer learn", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="method", required=True, metavar="{hspace,noiseclr,prompt}")

    def model_and_out(q):
        q.add_argument("--model", default="shapes", help="shapes (default), a shapes folder, or a Stable Diffusion id / folder")
        q.add_argument("--out", type=Path, default=Path("directions"), help="where the direction files are written (default ./directions)")
        q.add_argument("--device", default="cpu")
        q.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="Stable Diffusion weights (shapes: always fp32)")

    def common(q, work_default):  # the trained kinds: checkpoints and a seed too
        model_and_out(q)
        q.add_argument("--work", type=Path, default=None, help=f"checkpoints (default {work_default})")
        q.add_argument("--ckpt-every", type=int, default=10, help="checkpoint every N steps")
        q.add_argument("--resume", action="store_true", help="continue from the checkpoint in --work")
        q.add_argument("--seed", type=int, default=0)

    h = sub.add_parser("hspace", help="Asyrp: a global delta-h from a text direction (--from -> --to)",
                       description="Learn an Asyrp h-space direction (a global delta-h) that moves --from images towards --to.")
    h.add_argument("name", help="the direction's name (the file NAME.safetensors)")
    h.add_argument("--from", dest="src", required=True, help='source text, e.g. "a red circle"')
    h.add_argument("--to", dest="dst", required=True, help='target text, e.g. "a blue circle"')
    h.add_argument("--steps", type=int, default=20, help="DDIM steps of the source and training trajectories")
    h.add_argument("--iters", type=int, default=5, help="passes over the images (Asyrp n_iter 5)")
    h.add_argument("--n-images", type=int, default=8, help="source images, samples of --from")
    h.add_argument("--cfg", type=float, default=None, help="guidance scale of the source samples (default: the model's)")
    h.add_argument("--lr", type=float, default=None, help="SGD learning rate (default: 200 on shapes models, Asyrp's 0.5 otherwise)")
    h.add_argument("--lr-step", type=int, default=3, help="StepLR: multiply the lr by --lr-gamma every N passes")
    h.add_argument("--lr-gamma", type=float, default=0.1)
    h.add_argument("--clip-loss-w", type=float, default=1.0)
    h.add_argument("--l1-loss-w", type=float, default=3.0)
    h.add_argument("--init-std", type=float, default=0.0, help="delta-h starts as N(0, init_std^2) (Asyrp: 0.2; 0 here, see HSPACE_LR)")
    h.add_argument("--edit-until", type=float, default=H.EDIT_WINDOW[1], help="train on progress [0, x) (Asyrp t_edit 500/1000)")
    h.add_argument("--clip", default=CLIP_MODEL_ID, help="CLIP id or folder for non-shapes models (Asyrp: ViT-B/16)")
    h.set_defaults(func=learn_hspace)
    common(h, "runs/learn/hspace-NAME")

    c = sub.add_parser("noiseclr", help="NoiseCLR: K unsupervised directions from a folder of images",
                       description="Learn K NoiseCLR directions (token embeddings) contrastively from a folder of images.")
    c.add_argument("--images", required=True, help="folder of PNG / JPEG / WebP images (at least 2)")
    c.add_argument("--k", type=int, required=True, help="number of directions to learn")
    c.add_argument("--iters", type=int, default=200, help="optimizer steps (NoiseCLR: 1000)")
    c.add_argument("--batch", type=int, default=4, help="images per step (NoiseCLR: 6)")
    c.add_argument("--negatives", type=int, default=20, help="other directions compared per step (NoiseCLR tokens_per_iter 20; at most K-1)")
    c.add_argument("--lr", type=float, default=4e-3, help="AdamW lr (NoiseCLR: 1e-3 x 4 gradient-accumulation steps)")
    c.add_argument("--weight-decay", type=float, default=1e-2)
    c.add_argument("--tau", type=float, default=0.5, help="temperature")
    c.set_defaults(func=learn_noiseclr)
    common(c, "runs/learn/noiseclr-FOLDER")

    q = sub.add_parser("prompt", help="Pix2Pix-Zero: an edit direction in the prompt's embedding (--from -> --to sentences)",
                       description="Make a Pix2Pix-Zero edit direction: the mean embedding of the target sentences minus that "
                                   "of the source sentences. Use many sentences that differ in the edited word; on a small "
                                   "causal text encoder (the shapes model's) put the word where your prompts have it, since "
                                   "the direction is positional.")
    q.add_argument("name", help="the direction's name (the file NAME.safetensors)")
    q.add_argument("--from", dest="src", nargs="+", metavar="SENTENCE", help='source sentences, e.g. "a red circle" "a red square"')
    q.add_argument("--to", dest="dst", nargs="+", metavar="SENTENCE", help="target sentences (as many as you like)")
    q.add_argument("--from-file", dest="src_file", type=Path, help="more source sentences, one per line")
    q.add_argument("--to-file", dest="dst_file", type=Path, help="more target sentences, one per line")
    q.add_argument("--swap", nargs=2, metavar=("OLD", "NEW"), help="make the targets from the sources by replacing the word OLD with NEW")
    model_and_out(q)
    q.set_defaults(func=learn_prompt)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, argv)
    except UsageError as e:
        print(f"steer learn: error: {e}", file=sys.stderr)
        return 2
    except SteerError as e:
        print(e.render(), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

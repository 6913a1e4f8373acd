"""`steer learn hspace NAME --from A --to B`: an Asyrp h-space direction (docs/methods.md, section 4).

Asyrp's `--train_delta_h` variant with one global delta-h (C, h, w), which is what an edit applies.
Source images are samples of the --from prompt; at every step of the edit window the UNet runs with
the current delta-h, and
    L = clip_w * (-log((1 + cos(dI, dT)) / 2)) + l1_w * cos(T_src, T_trg) * |P_t^edit - P_t^orig|_1
takes one SGD step. The edited trajectory moves on by Asyrp's asymmetric step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from energies import directions as D
from energies.x0 import directional_clip_energy

from ..directions import hspace as H  # the h-space hook and Asyrp's step, shared with the editor
from .. import training as T
from ..feature_models import ClipScorer
from ..guided import classifier_free, clip_x0, ddim_step, pred_x0, step_alphas
from .common import UsageError, check_name, command, start

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
        if self.b.kind == "shapes" and self.b.vae is None:  # a pixel-space shapes model: x0 is the image
            return self.scorer.image(x0.clamp(-1.5, 1.5))
        return self.scorer.image(self.b.decode(x0) * 2 - 1)  # decode keeps the graph; [0, 1] -> [-1, 1]

    def text(self, captions: list[str]) -> torch.Tensor:
        return self.scorer.text(list(captions))


@dataclass
class SourceRun:
    z_T: torch.Tensor  # the start noise, shared by the source and the edited trajectory
    p_orig: list  # raw predicted x0 of the source at every step of the edit window (P_t^orig)
    feat: torch.Tensor  # CLIP features of the finished source image (Asyrp's x0)


def _cfg_eps(b, z, t, context, added, cfg) -> torch.Tensor:
    """Classifier-free-guided epsilon; context and added are [uncond; cond]."""
    return classifier_free(*b.eps(torch.cat([z, z]), t, context, added).chunk(2), cfg)


@torch.no_grad()
def source_run(b, context, added, z_T, timesteps, alphas, final, cfg, edit_steps, clip: ClipFeatures) -> SourceRun:
    """Plain classifier-free-guided DDIM from z_T, the unedited trajectory of Asyrp's x_origin."""
    z, p_orig = z_T, []
    a = step_alphas(alphas, timesteps, final)
    for i, t in enumerate(timesteps):
        eps = _cfg_eps(b, z, t, context, added, cfg)
        x0 = pred_x0(z, eps, a[i])
        if i in edit_steps:
            p_orig.append(x0)
        if b.clip_x0 is not None:
            x0, eps = clip_x0(z, x0, a[i], b.clip_x0)
        z = ddim_step(x0, eps, a[i + 1])
    return SourceRun(z_T, p_orig, clip.image(z))


def learn_hspace(args, argv) -> int:
    from ..backbones import load_backbone

    check_name(args.name)
    torch.manual_seed(args.seed)
    b = load_backbone(args.model, device=args.device, dtype=args.dtype)
    if args.lr is None:
        args.lr = HSPACE_LR.get(b.kind, HSPACE_LR_DEFAULT)
    clip = ClipFeatures(b, args.clip)
    cfg = args.cfg if args.cfg is not None else float(b.sampling_defaults.get("cfg", 7.5))
    timesteps = b.timesteps(args.steps)
    alphas, final = b.schedule()
    a = step_alphas(alphas, timesteps, final)
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
    shape = H.mid_block_shape(b.unet)
    init = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed)) * args.init_std
    delta = torch.nn.Parameter(init.to(b.device))
    opt = torch.optim.SGD([delta], lr=args.lr)  # Asyrp: SGD, lr_training, StepLR per outer iteration
    start_step, elapsed = 0, 0.0
    resumed = start(ckpt, args.resume, recipe)
    if resumed is not None:
        tensors, state = resumed
        with torch.no_grad():
            delta.copy_(tensors["delta_h"])
        start_step, elapsed = state["step"], state["elapsed"]

    t0 = time.time()
    sources = []
    for k in tqdm(range(args.n_images), desc="source images", leave=False, dynamic_ncols=True):
        z_T = torch.randn((1, *b.latent_shape()), generator=torch.Generator().manual_seed(args.seed * 10_000 + k)).to(b.device)
        sources.append(source_run(b, context, added, z_T, timesteps, alphas, final, cfg, set(edit), clip))

    total = args.iters * args.n_images  # one step = one image through the whole edit window
    bar = T.progress(start_step, total, f"hspace {args.name}")
    losses = []
    for s in bar:
        it, k = divmod(s, args.n_images)
        for g in opt.param_groups:
            g["lr"] = args.lr * args.lr_gamma ** (it // args.lr_step)
        src = sources[k]
        z = src.z_T
        for j, i in enumerate(edit):  # Asyrp: one optimizer step per timestep of the edit window
            t = timesteps[i]
            with torch.no_grad():
                eps = _cfg_eps(b, z, t, context, added, cfg)
            with H.shifting(b.unet, delta):  # both CFG halves see h + delta-h
                eps_s = _cfg_eps(b, z, t, context, added, cfg)
            p_edit = pred_x0(z, eps_s, a[i])
            loss_clip = directional_clip_energy(clip.image(p_edit), src.feat, txt_trg, txt_src)
            loss_l1 = (p_edit - src.p_orig[j]).abs().mean()
            loss = args.clip_loss_w * loss_clip + args.l1_loss_w * cos_text * loss_l1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            z = H.asyrp_step(z, eps, eps_s.detach(), a[i], a[i + 1], clip=b.clip_x0)  # the edited trajectory moves on
            losses.append((loss_clip.item(), loss_l1.item()))
        bar.set_postfix(clip=f"{np.mean([c for c, _ in losses[-len(edit):]]):.3f}", l1=f"{np.mean([l for _, l in losses[-len(edit):]]):.3f}",
                        lr=f"{opt.param_groups[0]['lr']:.2g}")
        if (s + 1) % args.ckpt_every == 0 or s + 1 == total:
            T.save_checkpoint(ckpt, {"delta_h": delta}, {"step": s + 1, "elapsed": elapsed + time.time() - t0, "recipe": recipe})
    bar.close()

    out = Path(args.out) / f"{args.name}.safetensors"
    last = losses[-len(edit) * args.n_images:]
    D.save_direction(out, {"delta_h": delta.detach()}, "hspace", D.backbone_id(b), {
        "resolution": list(b.image_size()),
        "recipe": command(argv),
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

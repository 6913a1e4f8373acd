"""`steer learn noiseclr --images DIR --k K`: NoiseCLR directions (docs/methods.md, section 5).

K token embeddings, learned contrastively on a folder of images so that each one's noise difference
eps(x_t, d_k) - eps(x_t, "") agrees with itself across images and differs from the other
directions' on the same image.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from energies import directions as D

from ..directions import noise as N
from .. import training as T
from .common import UsageError, command, start

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def noiseclr_loss(pos: torch.Tensor, neg: torch.Tensor, tau: float) -> torch.Tensor:
    """NoiseCLR's contrastive loss (its code's core/loss.py) on L2-normalised noise differences.

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
    from ..images import load_image

    if not folder.is_dir():
        raise UsageError(f"--images {folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise UsageError(f"--images {folder}: found {len(files)} image(s); the contrastive loss needs at least 2 (PNG, JPEG or WebP)")
    return files, torch.stack([torch.from_numpy(load_image(p, size)).permute(2, 0, 1) for p in files])


def named_moments(tensors: dict, state: dict) -> tuple[dict, dict]:
    """A checkpoint from before sampler/training.py kept AdamW's one state unnamed (opt.exp_avg,
    opt_step a number); give it the harness's names (opt.embeddings.exp_avg, {"embeddings": step})
    so such a run resumes with its moments."""
    if "opt.exp_avg" not in tensors:
        return tensors, state
    tensors = {("opt.embeddings." + k[len("opt."):] if k.startswith("opt.") else k): v for k, v in tensors.items()}
    return tensors, {**state, "opt_step": {"embeddings": state["opt_step"]}}


def learn_noiseclr(args, argv) -> int:
    from ..backbones import load_backbone

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
    names = {emb: "embeddings"}  # the checkpoint's name for the optimizer state
    ctx_empty = N.empty_context(b)

    recipe = {"images": [p.name for p in files], "model": args.model, "k": K, "batch": batch, "negatives": n_neg, "lr": args.lr,
              "weight_decay": args.weight_decay, "tau": args.tau, "seed": args.seed}
    work = args.work or Path("runs/learn") / f"noiseclr-{Path(args.images).resolve().name}"
    ckpt = work / "noiseclr.ckpt.safetensors"
    start_step, elapsed = 0, 0.0
    resumed = start(ckpt, args.resume, recipe)
    if resumed is not None:
        tensors, state = named_moments(*resumed)
        with torch.no_grad():
            emb.copy_(tensors["embeddings"])
        T.restore_optimizer(opt, names, tensors, state["opt_step"])
        start_step, elapsed = state["step"], state["elapsed"]

    t0 = time.time()
    bar = T.progress(start_step, args.iters, "noiseclr")
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
            moments, steps = T.optimizer_tensors(opt, names)
            T.save_checkpoint(ckpt, {"embeddings": emb, **moments},
                              {"step": it + 1, "elapsed": elapsed + time.time() - t0, "opt_step": steps, "recipe": recipe})
    bar.close()

    out = Path(args.out)
    width = max(2, len(str(K - 1)))
    for k in range(K):
        D.save_direction(out / f"noiseclr_{k:0{width}d}.safetensors", {"embedding": emb[k].detach()}, "noise", D.backbone_id(b), {
            "resolution": list(b.image_size()),
            "recipe": command(argv),
            "method": "noiseclr",
            "index": k, "k": K, "images": str(args.images), "n_images": n, "iters": args.iters, "tau": args.tau, "seed": args.seed,
            "final_loss": float(np.mean(losses[-50:])) if losses else None,
        })
    print(f"wrote {K} NoiseCLR directions noiseclr_{0:0{width}d} ... noiseclr_{K - 1:0{width}d} to {out}/ "
          f"({elapsed + time.time() - t0:.0f} s); rename them after what they do")
    return 0

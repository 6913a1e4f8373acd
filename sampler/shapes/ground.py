"""Grounding fine-tune: teach the UNet's cross-attention where each word's object is.

`python -m sampler.shapes.ground --init-from runs/shapes2/model --work runs/shapes2-ground`

A UNet trained on captions alone may draw every caption right and still not *attend* to every
word: the second-generation model read the first object's colour and shape from later tokens of
its causal text encoder (top-k IoU of the first object's words with their own object: 0.00), so
every energy that reads a word's map found background there. The world gives each object's mask
for free, so the fine-tune adds TokenCompose's token loss (Wang et al. 2024) to the denoising
loss: for each colour and shape word of a caption, the share of its attention map that falls
inside its own object's mask, pushed towards 1,

    L_token = mean over words and layers of (1 - sum_p A_w(p) M_w(p) / sum_p A_w(p))^2,

on every cross-attention layer of the down and up blocks (the 4x4 mid block is too coarse to say
where), at timesteps below --ground-below only: near pure noise the layout is not yet decided,
and asking the maps to find an object that is not there yet cost caption fidelity (measured: a
run grounding every timestep at weight 0.25 fell to 59% two-object captions right after 300
steps, from 85%). The text encoder is frozen (its token states already say which word is which: a causal
encoder's "red" at position 2 can only mean the first object), so every existing prompt embedding
stays what it was. Batches are fresh world scenes (their masks come with them), encoded by the
model's autoencoder; everything is a function of the seed, and the run checkpoints and resumes
as train.py's stages do.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import multiprocessing
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import training as T
from ..probes import ProbeStore, cross_attention_layers, probing
from energies.files import atomic_write
from . import model as M
from . import world
from .train import encode, export_ema, images_to_tensor, lr_at

GROUNDED = ("down_blocks", "up_blocks")  # cross-attention layers the loss acts on


def word_masks(scenes, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, H, W) the mask of each token's object (zeros for tokens that name none) at image
    size, and (B, T) which tokens are grounded. A caption "a red circle and a blue square" is
    "<bos> a red circle and a blue square <eos>": object j's colour word at 2 + 4j, its shape word
    at 3 + 4j. Empty (dropped) captions ground nothing."""
    size = scenes[0].image.shape[0]
    masks = torch.zeros(len(scenes), M.MAX_LENGTH, size, size)
    grounded = torch.zeros(len(scenes), M.MAX_LENGTH, dtype=torch.bool)
    for b, (s, caption) in enumerate(zip(scenes, captions)):
        if not caption:
            continue
        for j, o in enumerate(s.objects):
            for pos in (2 + 4 * j, 3 + 4 * j):
                masks[b, pos] = torch.from_numpy(o.mask.astype(np.float32))
                grounded[b, pos] = True
    return masks, grounded


def token_loss(attn: dict[str, torch.Tensor], masks: torch.Tensor, grounded: torch.Tensor) -> torch.Tensor:
    """TokenCompose's token loss over the probed layers: for each grounded word, (1 - the share of
    its map inside its mask)^2, averaged over words, then over layers. Masks are area-averaged to
    each layer's grid, so a cell half inside counts half."""
    if not grounded.any():
        return torch.zeros(())
    losses = []
    for a in attn.values():  # (B, T, h, w), head-averaged
        m = F.adaptive_avg_pool2d(masks, a.shape[-2:]).to(a.dtype)
        inside = (a * m).sum((2, 3)) / a.sum((2, 3)).clamp(min=1e-8)
        losses.append((1 - inside.float())[grounded].pow(2).mean())
    return torch.stack(losses).mean()


def object_shares(a: torch.Tensor) -> torch.Tensor:
    """(B, objects, h, w): at each pixel, the share of its attention on object j's two words (the
    colour at 2 + 4j, the shape at 3 + 4j; `a` is (B, T, h, w), summing to 1 over T)."""
    return a[:, 2::4] + a[:, 3::4]


def shares_and_masks(attn: dict[str, torch.Tensor], masks: torch.Tensor):
    """Per probed layer: (object_shares, each object's mask area-averaged to the layer's grid),
    both (B, objects, h, w) in fp32."""
    for a in attn.values():
        yield object_shares(a).float(), F.adaptive_avg_pool2d(masks[:, 2::4], a.shape[-2:]).float()


def pixel_loss(attn: dict[str, torch.Tensor], masks: torch.Tensor, grounded: torch.Tensor) -> torch.Tensor:
    """TokenCompose's pixel loss, per object: binary cross-entropy between the share of each
    pixel's attention on the object's words and the object's mask, averaged over grounded objects,
    then layers. The token loss asks where a word looks; this one asks what a pixel reads. On the
    grounded model the words of the object a pixel is in get 3-5% of its attention and the
    end-of-text and padding tokens 93-95% (decoder layers, 26 objects on the tune split), for
    duplicated copies as for the objects asked for: what an object looks like comes from tokens
    that hold the whole caption, and nothing ties a copy to one place."""
    objects = grounded[:, 2::4]
    if not objects.any():
        return torch.zeros(())
    losses = []
    for share, m in shares_and_masks(attn, masks):
        bce = F.binary_cross_entropy(share.clamp(1e-6, 1 - 1e-6), m, reduction="none").mean((2, 3))  # (B, objects)
        losses.append(bce[objects].mean())
    return torch.stack(losses).mean()


@torch.no_grad()
def word_share(attn: dict[str, torch.Tensor], masks: torch.Tensor, grounded: torch.Tensor) -> float:
    """The mean share of an object's pixels' attention on its own two words (layers averaged):
    what pixel_loss raises; logged either way."""
    objects = grounded[:, 2::4]
    if not objects.any():
        return float("nan")
    out = []
    for share, m in shares_and_masks(attn, masks):
        inside = (share * m).sum((2, 3)) / m.sum((2, 3)).clamp(min=1e-8)
        out.append(inside[objects].mean())
    return torch.stack(out).mean().item()


def training_batch(seed: int, batch: int, p_one: float, p_same: float, p_uncond: float, step: int):
    """Step `step`'s batch, a function of the seed alone: world scenes as (B, 3, H, W) images in
    [-1, 1], their captions (some dropped to "" for classifier-free guidance), each token's object
    mask (as uint8: a quarter of the float's memory in a prefetch queue) and which tokens are grounded."""
    scenes = world.scene_batch(seed + 13, step, batch, size=M.IMAGE_SIZE, p_one=p_one, p_same=p_same)
    drop = np.random.default_rng((seed, step, 1 << 21)).random(batch) < p_uncond
    captions = ["" if d else s.caption for s, d in zip(scenes, drop)]
    masks, grounded = word_masks(scenes, captions)
    return images_to_tensor(scenes), captions, masks.to(torch.uint8), grounded


def prefetched(make, steps, workers: int):
    """make(step) for each step, in order. With workers > 0, computed ahead in that many processes
    (at most two batches each in flight, so the queue's memory is bounded): drawing the scenes
    costs more than a GPU's training step, and on a many-core GPU machine it would bound the run."""
    if workers <= 0:
        yield from map(make, steps)
        return
    # spawned, not forked: a forked child of a process that has run torch's thread pool (or CUDA) can hang
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        todo = iter(steps)
        window = deque(pool.apply_async(make, (s,)) for s in itertools.islice(todo, 2 * workers))
        while window:
            done = window.popleft().get()
            nxt = next(todo, None)
            if nxt is not None:
                window.append(pool.apply_async(make, (nxt,)))
            yield done


def finetune(args) -> dict:
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    bf16 = T.bf16_autocast(args.bf16, dev)
    init = M.load(args.init_from, with_clip=False)  # frozen, in eval mode: the text encoder and autoencoder stay so
    tokenizer, text_encoder, vae, scheduler = init.tokenizer, init.text_encoder, init.vae, M.build_scheduler()
    unet = init.unet.train().requires_grad_(True)
    modules = {"unet": unet, "text_encoder": text_encoder}
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.01)
    ema = T.ema_of(modules)
    ckpt = args.work / "ground.ckpt.safetensors"
    start, elapsed = 0, 0.0
    recipe = {k: getattr(args, k) for k in ("seed", "batch", "lr", "weight", "ground_below", "init_from")}
    if args.p_same:  # a recipe without it is the run before the flag, which drew none
        recipe["p_same"] = args.p_same
    if args.pixel_weight:  # likewise: runs before the pixel loss had none
        recipe["pixel_weight"] = args.pixel_weight
    resumed = None if args.restart else T.resume(ckpt, recipe)
    if resumed is not None:
        tensors, state = resumed
        T.restore_models(tensors, state, modules, ema, opt)
        start, elapsed = state["step"], state["elapsed"]
    make = functools.partial(training_batch, args.seed, args.batch, args.p_one, args.p_same, args.p_uncond)
    batches = prefetched(make, range(start, args.steps), args.workers)
    T.to_device(dev, (unet, text_encoder, vae), ema, opt)

    layers = cross_attention_layers(unet, GROUNDED)
    alphas = scheduler.alphas_cumprod.to(dev)
    snr = alphas / (1 - alphas)
    weight_of_t = snr.clamp(max=args.min_snr) / snr  # Min-SNR-gamma, as the UNet stage
    t0 = time.time() - elapsed
    bar = T.progress(start, args.steps, "ground")
    history: list[tuple[float, float]] = []
    for step, (images, captions, masks, grounded) in zip(bar, batches):
        g = torch.Generator().manual_seed(args.seed * 1_000_033 + step)  # noise is drawn on the CPU: a run is the same on any device
        with torch.no_grad():
            x0 = M.vae_encode(vae, images.to(dev), g)
            cond = encode(tokenizer, text_encoder, captions)
        noise = torch.randn(x0.shape, generator=g).to(dev)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,), generator=g).to(dev)
        masks, grounded = masks.to(dev, torch.float32), grounded.to(dev)
        grounded &= (t < args.ground_below)[:, None]
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup, "wsd", args.cooldown)
        store = ProbeStore(tuple(x0.shape[-2:]))
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16), probing(unet, store, layers):
            pred = unet(xt, t, cond).sample
        denoise = (weight_of_t[t] * (pred.float() - noise).pow(2).mean((1, 2, 3))).mean()
        ground = token_loss(store.attn, masks, grounded)
        loss = denoise + args.weight * ground
        if args.pixel_weight:
            loss = loss + args.pixel_weight * pixel_loss(store.attn, masks, grounded)
        T.optimise(loss, opt, unet.parameters(), ema, modules, step, args.ema)
        history.append((denoise.item(), ground.item(), word_share(store.attn, masks, grounded)))
        if step % 10 == 0:
            d, gr, share = np.nanmean(history[-100:], axis=0)
            bar.set_postfix(denoise=f"{d:.4f}", token=f"{gr:.3f}", words=f"{share:.3f}")
        if T.checkpoint_or_stop(step, args.steps, args.ckpt_every, args.max_minutes, t0,
                                lambda state: T.save_models(ckpt, modules, ema, opt, {**state, "recipe": recipe}),
                                lambda: export_ema(args.work / "ema", tokenizer, text_encoder, unet, scheduler, ema, vae)):
            break
    bar.close()
    d, gr, share = np.nanmean(history[-100:], axis=0) if history else (float("nan"),) * 3
    return {"ground_steps": step + 1 if history else start, "ground_minutes": round((time.time() - t0) / 60, 1),
            "ground_batch": args.batch, "ground_machine": T.machine("GPU" if dev.type == "cuda" else "CPU"),
            "ground_final_denoise_loss": float(d), "ground_final_token_loss": float(gr),
            "ground_final_word_share": float(share)}


STAGE_KEYS = ("command", "steps", "minutes", "machine", "batch", "final_denoise_loss", "final_token_loss", "final_word_share")


def stage_of(record: dict) -> dict:
    """One grounding stage's figures (its `ground_*` keys, without the prefix)."""
    return {k: record[f"ground_{k}"] for k in STAGE_KEYS if f"ground_{k}" in record}


def ground_stages(training: dict) -> list[dict]:
    """The grounding stages an init model's record holds, oldest first. A record from before stages
    were listed holds its last stage's `ground_*` keys only; that stage is its one entry."""
    if "ground_stages" in training:
        return list(training["ground_stages"])
    return [stage_of(training)] if "ground_steps" in training else []


def assemble(work: Path, init_from: str, out: Path, figures: dict, dtype=torch.float32):
    """Write the fine-tuned model folder: the EMA's UNet, the init's text encoder, autoencoder,
    scheduler and CLIP, and a card whose training record is the init's with the grounding stage
    added. dtype float16 keeps the UNet, text encoder and CLIP small (the autoencoder stays fp32;
    every folder loads in fp32)."""
    ema = M.load(work / "ema", with_clip=False)
    init = M.load(init_from)
    before = init.card.get("training", {})
    training = {**before, **figures}
    training["commands"] = before.get("commands", []) + [figures["ground_command"]]
    training["ground_stages"] = ground_stages(before) + [stage_of(figures)]

    def fill(tmp):
        M.save(tmp, ema.tokenizer, ema.text_encoder, ema.unet, M.build_scheduler(), init.clip, card={"training": training}, dtype=dtype)
        init.vae.float().save_pretrained(tmp / "vae", safe_serialization=True)

    M.write_folder(out, fill)
    print(f"wrote {out}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m sampler.shapes.ground", description=__doc__.split("\n")[0])
    p.add_argument("--init-from", required=True, help="the finished shapes model folder to fine-tune (or 'shapes')")
    p.add_argument("--work", type=Path, default=Path("runs/shapes-ground"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--cooldown", type=int, default=300, help="steps of linear decay at the end")
    p.add_argument("--weight", type=float, default=0.1, help="weight of the token loss beside the denoising loss")
    p.add_argument("--pixel-weight", type=float, default=0.0,
                   help="weight of TokenCompose's pixel loss (each object's pixels read its own words); 0: off")
    p.add_argument("--ground-below", type=int, default=800, help="ground the maps at timesteps t < this only")
    p.add_argument("--min-snr", type=float, default=5.0)
    p.add_argument("--p-same", type=float, default=0.0,
                   help="share of two-object scenes whose objects share a colour (the world's default draws none; "
                        "an appearance transfer makes them)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the UNet trains (default: cuda when there is one); the same seed gives the same batches")
    p.add_argument("--workers", type=int, default=0,
                   help="processes that draw the world's scenes ahead of the training step (0: in the training process)")
    p.add_argument("--out", type=Path, help="where the finished model goes (default: WORK/model)")
    p.add_argument("--half", action="store_true", help="store the UNet, text encoder and CLIP in fp16 (a shipped folder)")
    T.add_run_arguments(p)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    figures = finetune(args)
    record_path = args.work / "record.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    record.update(figures, ground_command="python -m sampler.shapes.ground " + " ".join(argv if argv is not None else __import__("sys").argv[1:]))
    atomic_write(record_path, lambda tmp: tmp.write_text(json.dumps(record, indent=2)))
    print(json.dumps(figures))
    if figures["ground_steps"] >= args.steps:
        assemble(args.work, args.init_from, args.out or args.work / "model", record, torch.float16 if args.half else torch.float32)


if __name__ == "__main__":
    main()

"""Train the shapes model: `python -m sampler.shapes.train [vae|unet|clip|all] [--out DIR]`.

Stage `vae` trains the autoencoder (L1 + L2 reconstruction and a small KL term) on world images,
some of them recoloured, noised or blurred so that it also encodes photos that are not quite of
the world, and measures the latents' scale. Stage `unet` trains the UNet and the text encoder
jointly on freshly generated world scenes encoded by that autoencoder (epsilon prediction with
Min-SNR weighting, 10% empty captions for classifier-free guidance, an EMA of the weights). Stage
`clip` trains the shapes CLIP contrastively on the same world. Everything is a function of
the seed: batch s is world.scene_batch(seed, s, batch) and its noise comes from a generator seeded
with (seed, s), so a resumed run continues exactly where it stopped. Checkpoints are safetensors
(weights, EMA and optimizer moments) plus a JSON file with the step: nothing is pickled.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import training as T
from energies.files import atomic_write
from . import latent_pool
from . import model as M
from . import world


def images_to_tensor(scenes) -> torch.Tensor:
    """World scenes -> (B, 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2)
    return x * 2 - 1  # the model works on images in [-1, 1]


def encode(tokenizer, text_encoder, captions) -> torch.Tensor:
    ids = tokenizer(list(captions), padding="max_length", max_length=M.MAX_LENGTH, truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device)).last_hidden_state


def lr_at(step: int, total: int, peak: float, warmup: int, schedule: str = "cosine", cooldown: int = 0) -> float:
    """Warm-up, then cosine decay to 10% over the run; or "wsd" (warm-up, stable, decay): the peak
    until the last `cooldown` steps, then linear to 10%. A wsd run can be extended by raising
    --steps on resume, since nothing before the cool-down depends on the total."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "wsd":
        into = step - (total - cooldown)
        return peak if into < 0 else peak * (1 - 0.9 * into / max(1, cooldown))
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))  # cosine down to 10%


# ----------------------------------------------------------------------------------------------
# Stage 1: the autoencoder


def vae_augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Some images (in [-1, 1]) recoloured off the palette, noised or blurred, so the autoencoder
    also carries in-between colours (a recolour half done) and imperfect photos of the world."""
    x = x.clone()
    u = torch.rand(x.shape[0], generator=g)
    recolour = u < 0.2
    if recolour.any():  # a random non-negative colour mixing matrix on [0, 1] images
        m = torch.rand(int(recolour.sum()), 3, 3, generator=g) ** 2
        m = m / m.sum(1, keepdim=True).clamp(min=0.5)
        y = torch.einsum("bij,bjhw->bihw", m, (x[recolour] + 1) / 2)
        x[recolour] = y.clamp(0, 1) * 2 - 1
    noisy = (u >= 0.2) & (u < 0.3)
    if noisy.any():
        sigma = torch.rand(int(noisy.sum()), 1, 1, 1, generator=g) * 0.3
        x[noisy] = (x[noisy] + sigma * torch.randn(x[noisy].shape, generator=g)).clamp(-1, 1)
    blur = (u >= 0.3) & (u < 0.35)
    if blur.any():
        x[blur] = F.avg_pool2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return x


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of images in [-1, 1], measured on [0, 1]."""
    mse = ((a.clamp(-1, 1) - b) / 2).pow(2).mean().item()
    return 10 * math.log10(1 / max(mse, 1e-10))


def train_vae(args) -> dict:
    torch.manual_seed(args.seed + 2)
    vae = M.build_vae()
    dev = torch.device(args.device)
    bf16 = T.bf16_autocast(args.bf16, dev)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    ckpt = args.work / "vae.ckpt.safetensors"
    start, elapsed = 0, 0.0
    resumed = None if args.restart else T.resume(ckpt)
    if resumed is not None:
        tensors, state = resumed
        T.restore_models(tensors, state, {"vae": vae}, {}, opt)
        start, elapsed = state["step"], state["elapsed"]
    vae.to(dev)
    for s in opt.state.values():
        for k, v in s.items():
            if torch.is_tensor(v) and k != "step":
                s[k] = v.to(dev)
    t0 = time.time() - elapsed
    bar = T.progress(start, args.vae_steps, "vae")
    scores = []
    for step in bar:
        scenes = world.scene_batch(args.seed + 11, step, args.vae_batch, size=M.IMAGE_SIZE, p_one=args.p_one)
        g = torch.Generator().manual_seed(args.seed * 7_000_003 + step)
        x = vae_augment(images_to_tensor(scenes), g).to(dev)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.vae_steps, args.vae_lr, 100)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            d = vae.encode(x).latent_dist
            z = d.mean + d.std * torch.randn(d.mean.shape, generator=g).to(dev)
            rec = vae.decode(z).sample.float()
        kl = d.kl().mean()  # summed over the latent's elements, as Stable Diffusion's autoencoder does
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + args.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        scores.append(psnr_db(rec.detach(), x))
        if step % 20 == 0:
            bar.set_postfix(psnr=f"{np.mean(scores[-100:]):.1f}dB", kl=f"{kl.item():.0f}")
        if T.checkpoint_or_stop(step, args.vae_steps, args.ckpt_every, args.max_minutes, t0,
                                lambda state: T.save_models(ckpt, {"vae": vae}, {}, opt, state)):
            raise SystemExit(0)  # the process ends here, so `all` does not go on to a UNet stage without an autoencoder
    bar.close()
    vae.eval().to("cpu")
    scale, shift, held_out = measure_latents(vae)
    vae.register_to_config(scaling_factor=scale, shift_factor=shift)
    atomic_write(args.work / "vae", lambda tmp: vae.save_pretrained(tmp, safe_serialization=True))
    return {"vae_steps": args.vae_steps, "vae_minutes": round((time.time() - t0) / 60, 1),
            "vae_scaling_factor": scale, "vae_shift_factor": shift, "vae_psnr_world": held_out}


@torch.no_grad()
def measure_latents(vae, n: int = 256) -> tuple[float, float, float]:
    """(scaling factor, shift factor, mean reconstruction PSNR) on held-out world images: the
    shift centres the latents and the scale gives them unit variance, as the diffusion model
    expects of its data."""
    scenes = [world.make_scene(10**7 + 800_000 + i, M.IMAGE_SIZE) for i in range(n)]
    x = images_to_tensor(scenes)
    z = torch.cat([vae.encode(x[k : k + 64]).latent_dist.mean for k in range(0, n, 64)])
    rec = torch.cat([vae.decode(z[k : k + 64]).sample for k in range(0, n, 64)])
    shift, std = z.mean().item(), z.std().item()
    return 1.0 / std, shift, float(np.mean([psnr_db(r[None], xx[None]) for r, xx in zip(rec, x)]))


def load_vae(work: Path, init_from=None):
    """The finished autoencoder of the work folder; taken from --init-from's model folder when the
    work folder has none (a later session continuing from a committed snapshot)."""
    from diffusers import AutoencoderKL

    if not (work / "vae").is_dir() and init_from and (M.resolve(init_from) / "vae").is_dir():
        shutil.copytree(M.resolve(init_from) / "vae", work / "vae")
        print(f"autoencoder taken from {M.resolve(init_from) / 'vae'}")
    if not (work / "vae").is_dir():
        raise SystemExit(f"no autoencoder in {work / 'vae'}: run the vae stage first (python -m sampler.shapes.train vae)")
    return AutoencoderKL.from_pretrained(work / "vae", use_safetensors=True).eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------
# Stage 2: UNet + text encoder


def train_unet(args) -> dict:
    from transformers import CLIPTextModel

    torch.manual_seed(args.seed)
    tokenizer = M.build_tokenizer()
    text_encoder = CLIPTextModel(M.text_config(tokenizer))
    unet = M.build_unet()
    scheduler = M.build_scheduler()
    vae = load_vae(args.work, args.init_from)
    dev = torch.device(args.device)
    bf16 = T.bf16_autocast(args.bf16, dev)
    modules = {"unet": unet, "text_encoder": text_encoder}
    if args.freeze_text:  # keep the text encoder (and so the attention maps' keys) as they are: train the UNet alone
        text_encoder.requires_grad_(False)
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    ema = T.ema_of(modules)

    ckpt = args.work / "unet.ckpt.safetensors"
    start, elapsed = 0, 0.0
    if args.init_from and not ckpt.exists():
        # Continue from a finished model (e.g. the shipped one) with a fresh optimizer: how a later
        # session trains longer when the original run's checkpoint is gone.
        init = M.load(args.init_from, with_clip=False)
        unet.load_state_dict(init.unet.state_dict())
        text_encoder.load_state_dict(init.text_encoder.state_dict())
        ema = T.ema_of(modules)
        print(f"initialised from {args.init_from}")
    resumed = None if args.restart else T.resume(ckpt)
    if resumed is not None:
        tensors, state = resumed
        T.restore_models(tensors, state, modules, ema, opt)
        start, elapsed = state["step"], state["elapsed"]
    T.to_device(dev, (unet, text_encoder, vae), ema, opt)  # after restoring, so the moments follow their parameters

    alphas = scheduler.alphas_cumprod.to(dev)
    # Min-SNR-gamma (Hang et al. 2023): an epsilon loss weighted by min(SNR, gamma) / SNR, so the
    # nearly clean timesteps (huge SNR, little to learn) stop dominating the gradient.
    snr = alphas / (1 - alphas)
    weight_of_t = (snr.clamp(max=args.min_snr) / snr) if args.min_snr else torch.ones_like(snr)
    t0 = time.time() - elapsed
    bar = T.progress(start, args.steps, "unet")
    losses = []
    pool = None
    if args.latent_pool:  # scenes encoded once, drawn many times (latent_pool.py)
        pool = latent_pool.build(args.work / f"latent-pool-{args.seed}-{args.latent_pool}.safetensors", vae,
                                 args.seed, args.latent_pool, M.IMAGE_SIZE, args.p_one, workers=min(16, os.cpu_count() or 1))
    for step in bar:
        drop = np.random.default_rng((args.seed, step, 1 << 20)).random(args.batch) < args.p_uncond
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        if pool is not None:
            x0, named = pool.draw(vae, args.seed, step, args.batch, g)
            x0 = x0.to(dev)
        else:
            scenes = world.scene_batch(args.seed, step, args.batch, size=M.IMAGE_SIZE, p_one=args.p_one)
            named = [s.caption for s in scenes]
            with torch.no_grad():  # noise is drawn on the CPU, so a run is the same on any device
                x0 = M.vae_encode(vae, images_to_tensor(scenes).to(dev), g)
        captions = ["" if d else c for c, d in zip(named, drop)]
        noise = torch.randn(x0.shape, generator=g).to(dev)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,), generator=g).to(dev)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise

        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup, args.schedule, args.cooldown)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            cond = encode(tokenizer, text_encoder, captions)
            pred = unet(xt, t, cond).sample
        loss = (weight_of_t[t] * (pred.float() - noise).pow(2).mean((1, 2, 3))).mean()
        T.optimise(loss, opt, params, ema, modules, step, args.ema)
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-200:]):.4f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
        if T.checkpoint_or_stop(step, args.steps, args.ckpt_every, args.max_minutes, t0,
                                lambda state: T.save_models(ckpt, modules, ema, opt, state),
                                lambda: export_ema(args.work / "ema", tokenizer, text_encoder, unet, scheduler, ema, vae)):
            break
    bar.close()
    steps_done = step + 1
    export_ema(args.work / "ema", tokenizer, text_encoder, unet, scheduler, ema, vae)
    return {"unet_steps": steps_done, "unet_minutes": round((time.time() - t0) / 60, 1), "final_loss": float(np.mean(losses[-200:]))}


def export_ema(path: Path, tokenizer, text_encoder, unet, scheduler, ema: dict, vae=None):
    """Write the EMA weights as a loadable shapes model folder (no CLIP yet)."""
    from transformers import CLIPTextModel

    te = CLIPTextModel(text_encoder.config)
    te.load_state_dict({k[len("text_encoder.") :]: v for k, v in ema.items() if k.startswith("text_encoder.")})
    un = M.build_unet()
    un.load_state_dict({k[len("unet.") :]: v for k, v in ema.items() if k.startswith("unet.")})
    atomic_write(path, lambda tmp: M.save(tmp, tokenizer, te, un, scheduler, vae=vae))


# ----------------------------------------------------------------------------------------------
# Stage 3: the shapes CLIP


def clip_loss(model, pixels, ids, captions) -> torch.Tensor:
    """Symmetric contrastive loss where every pair with the same caption counts as a positive."""
    out = model(input_ids=ids, pixel_values=pixels)
    logits = out.logits_per_image  # (B, B), already scaled
    same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32)
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean() + torch.sum(-target * logits.T.log_softmax(1), 1).mean())


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Noise and blur of the kind a predicted x0 has at middle timesteps, so the CLIP reads them."""
    sigma = torch.rand(x.shape[0], 1, 1, 1, generator=g) * 0.3
    x = x + sigma * torch.randn(x.shape, generator=g)
    blur = torch.rand(x.shape[0], generator=g) < 0.3
    if blur.any():
        x[blur] = F.avg_pool2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return x.clamp(-1.5, 1.5)


def train_clip(args) -> dict:
    from transformers import CLIPModel

    torch.manual_seed(args.seed + 1)
    tokenizer = M.build_tokenizer()
    clip = CLIPModel(M.clip_config(tokenizer))
    opt = torch.optim.AdamW(clip.parameters(), lr=args.clip_lr, weight_decay=0.05)
    t0 = time.time()
    bar = T.progress(0, args.clip_steps, "clip")
    for step in bar:
        scenes = world.scene_batch(args.seed + 7, step, args.clip_batch, size=M.IMAGE_SIZE, p_one=args.p_one)
        captions = [s.caption for s in scenes]
        g = torch.Generator().manual_seed(args.seed * 7919 + step)
        pixels = augment(images_to_tensor(scenes), g)
        ids = tokenizer(captions, padding="max_length", max_length=M.MAX_LENGTH, return_tensors="pt").input_ids
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.clip_steps, args.clip_lr, 100)
        loss = clip_loss(clip, pixels, ids, captions)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    clip.eval()
    atomic_write(args.work / "clip", lambda tmp: clip.save_pretrained(tmp, safe_serialization=True))
    return {"clip_steps": args.clip_steps, "clip_minutes": round((time.time() - t0) / 60, 1)}


# ----------------------------------------------------------------------------------------------


def assemble(args, record: dict):
    """Copy the EMA model and the CLIP into --out, with the training record."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPModel, CLIPTextModel, PreTrainedTokenizerFast

    src = args.work / "ema"
    clip = CLIPModel.from_pretrained(args.work / "clip", use_safetensors=True) if (args.work / "clip").is_dir() else None
    out = Path(args.out)
    models = (
        PreTrainedTokenizerFast.from_pretrained(src / "tokenizer"),
        CLIPTextModel.from_pretrained(src / "text_encoder", use_safetensors=True),
        UNet2DConditionModel.from_pretrained(src / "unet", use_safetensors=True),
        M.build_scheduler(),  # the current sampling config, not the one the run started with
        clip,
    )

    vae = AutoencoderKL.from_pretrained(src / "vae", use_safetensors=True)
    M.write_folder(out, lambda tmp: M.save(tmp, *models, card={"training": record}, vae=vae))
    print(f"wrote {out}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m sampler.shapes.train", description=__doc__.split("\n")[0])
    p.add_argument("stage", nargs="?", default="all", choices=["vae", "unet", "clip", "all", "assemble"],
                   help="assemble: only write --out from the finished stages in --work")
    p.add_argument("--work", type=Path, default=Path("runs/shapes"), help="checkpoints and intermediate models")
    p.add_argument("--out", type=Path, default=None,
                   help="where the finished model is written (default: WORK/model; the shipped model is sampler/shapes/weights, "
                        "written only when named, and its directions/ are kept)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--schedule", choices=["cosine", "wsd"], default="wsd", help="learning rate after the warm-up")
    p.add_argument("--cooldown", type=int, default=3000, help="wsd: steps of linear decay at the end of the run")
    p.add_argument("--min-snr", type=float, default=5.0, help="Min-SNR-gamma loss weighting; 0 = plain epsilon MSE")
    p.add_argument("--latent-pool", type=int, default=0,
                   help="draw UNet batches from N scenes encoded once (saves the per-step VAE encoding); 0 = fresh scenes every step")
    p.add_argument("--init-from", help="start the UNet and text encoder from a finished shapes model folder (or 'shapes')")
    p.add_argument("--freeze-text", action="store_true", help="train the UNet only; the text encoder stays as initialised")
    p.add_argument("--vae-steps", type=int, default=3000)
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--vae-kl", type=float, default=1e-7, help="weight of the KL term (summed over the latent)")
    p.add_argument("--clip-steps", type=int, default=1500)
    p.add_argument("--clip-batch", type=int, default=128)
    p.add_argument("--clip-lr", type=float, default=1e-3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the autoencoder and the UNet train (default: cuda when there is one); the same seed gives the same batches")
    p.add_argument("--evaluate", action=argparse.BooleanOptionalAction, default=True,
                   help="`all`: measure the finished model and write its card into WORK (python -m sampler.shapes.evaluate)")
    T.add_run_arguments(p)
    args = p.parse_args(argv)
    args.out = args.out or args.work / "model"
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    record_path = args.work / "record.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    command = "python -m sampler.shapes.train " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    commands = record.get("commands", [record["command"]] if "command" in record else []) + [command]
    record.update(
        command=command,
        commands=commands,  # every invocation, so a resumed run says how it was resumed
        seed=args.seed,
        torch=torch.__version__,
    )
    for per_stage in ("batch", "machine"):  # recorded per stage now: an assemble must not overwrite a stage's
        record.pop(per_stage, None)
    device = "GPU" if torch.device(args.device).type == "cuda" else "CPU"
    machine = T.machine(device)

    def stage_done(stage: str, figures: dict, batch: int):
        record.update(figures, **{f"{stage}_batch": batch, f"{stage}_machine": machine})
        write_record(record_path, record)

    if args.stage in ("vae", "all"):
        if not (args.work / "vae").is_dir():
            stage_done("vae", train_vae(args), args.vae_batch)
        if args.stage == "vae":
            return
    if args.stage in ("unet", "all"):
        stage_done("unet", train_unet(args), args.batch)
        if record["unet_steps"] < args.steps:  # stopped by --max-minutes: the same command resumes
            print(f"the UNet is at step {record['unet_steps']} of {args.steps}; {args.work / 'ema'} holds its EMA so far")
            return
    if args.stage == "clip" or (args.stage == "all" and (args.restart or not (args.work / "clip").is_dir())):
        stage_done("clip", train_clip(args), args.clip_batch)
    record["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    write_record(record_path, record)
    assemble(args, record)
    if args.stage == "all" and args.evaluate:
        from . import evaluate

        evaluate.main(["--model", str(args.out), "--out", str(args.work / "card.json")])


def write_record(path: Path, record: dict):
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(record, indent=2)))


if __name__ == "__main__":
    main()

"""Train the shapes model: `python -m sampler.shapes.train [unet|clip|all] [--out DIR]`.

Stage `unet` trains the UNet and the text encoder jointly on freshly generated world scenes
(epsilon prediction, 10% empty captions for classifier-free guidance, an EMA of the weights).
Stage `clip` trains the shapes CLIP contrastively on the same world. Everything is a function of
the seed: batch s is world.scene_batch(seed, s, batch) and its noise comes from a generator seeded
with (seed, s), so a resumed run continues exactly where it stopped. Checkpoints are safetensors
(weights, EMA and optimizer moments) plus a JSON file with the step: nothing is pickled.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from . import model as M
from . import world


def images_to_tensor(scenes) -> torch.Tensor:
    x = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2)
    return x * 2 - 1  # the model works on images in [-1, 1]


def encode(tokenizer, text_encoder, captions) -> torch.Tensor:
    ids = tokenizer(list(captions), padding="max_length", max_length=M.MAX_LENGTH, truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device)).last_hidden_state


# ----------------------------------------------------------------------------------------------
# Checkpoints: safetensors for every tensor (weights, EMA, Adam moments), JSON for the rest.


def save_checkpoint(path: Path, modules: dict, ema: dict, opt: torch.optim.Optimizer, state: dict):
    tensors = {}
    for prefix, m in modules.items():
        tensors.update({f"model.{prefix}.{k}": v.detach().contiguous() for k, v in m.state_dict().items()})
    tensors.update({f"ema.{k}": v.contiguous() for k, v in ema.items()})
    names = _param_names(modules)
    for p, s in opt.state.items():
        for key in ("exp_avg", "exp_avg_sq"):
            tensors[f"opt.{names[p]}.{key}"] = s[key].contiguous()
    state = {**state, "opt_step": {names[p]: float(s["step"]) for p, s in opt.state.items()}}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"state": json.dumps(state)})
    tmp.replace(path)  # atomic: a crash mid-write never leaves a broken checkpoint


def load_checkpoint(path: Path, modules: dict, ema: dict, opt: torch.optim.Optimizer) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        state = json.loads(f.metadata()["state"])
    tensors = load_file(str(path))
    for prefix, m in modules.items():
        m.load_state_dict({k[len(f"model.{prefix}.") :]: v for k, v in tensors.items() if k.startswith(f"model.{prefix}.")})
    for k in ema:
        ema[k].copy_(tensors[f"ema.{k}"])
    names = _param_names(modules)
    for group in opt.param_groups:
        for p in group["params"]:
            n = names[p]
            if f"opt.{n}.exp_avg" in tensors:
                opt.state[p] = {
                    "step": torch.tensor(state["opt_step"][n]),
                    "exp_avg": tensors[f"opt.{n}.exp_avg"],
                    "exp_avg_sq": tensors[f"opt.{n}.exp_avg_sq"],
                }
    return state


def _param_names(modules: dict) -> dict:
    return {p: f"{prefix}.{n}" for prefix, m in modules.items() for n, p in m.named_parameters()}


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))  # cosine down to 10%


# ----------------------------------------------------------------------------------------------
# Stage 1: UNet + text encoder


def train_unet(args) -> dict:
    from transformers import CLIPTextModel

    torch.manual_seed(args.seed)
    tokenizer = M.build_tokenizer()
    text_encoder = CLIPTextModel(M.text_config(tokenizer))
    unet = M.build_unet()
    scheduler = M.build_scheduler()
    modules = {"unet": unet, "text_encoder": text_encoder}
    if args.freeze_text:  # keep the text encoder (and so the attention maps' keys) as they are: train the UNet alone
        text_encoder.requires_grad_(False)
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    ema = {f"{k}.{n}": v.detach().clone() for k, m in modules.items() for n, v in m.state_dict().items()}

    ckpt = args.work / "unet.ckpt.safetensors"
    start, elapsed = 0, 0.0
    if args.init_from and not ckpt.exists():
        # Continue from a finished model (e.g. the shipped one) with a fresh optimizer: how a later
        # session trains longer when the original run's checkpoint is gone.
        init = M.load(args.init_from, with_clip=False)
        unet.load_state_dict(init.unet.state_dict())
        text_encoder.load_state_dict(init.text_encoder.state_dict())
        ema = {f"{k}.{n}": v.detach().clone() for k, m in modules.items() for n, v in m.state_dict().items()}
        print(f"initialised from {args.init_from}")
    if ckpt.exists() and not args.restart:
        state = load_checkpoint(ckpt, modules, ema, opt)
        start, elapsed = state["step"], state["elapsed"]
        print(f"resumed from {ckpt} at step {start}")

    alphas = scheduler.alphas_cumprod
    t0 = time.time() - elapsed
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="unet", dynamic_ncols=True)
    losses = []
    for step in bar:
        scenes = world.scene_batch(args.seed, step, args.batch, p_one=args.p_one)
        x0 = images_to_tensor(scenes)
        drop = np.random.default_rng((args.seed, step, 1 << 20)).random(args.batch) < args.p_uncond
        captions = ["" if d else s.caption for s, d in zip(scenes, drop)]
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,), generator=g)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise

        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            cond = encode(tokenizer, text_encoder, captions)
            pred = unet(xt, t, cond).sample
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, m in modules.items():
                for n, v in m.state_dict().items():
                    e = ema[f"{k}.{n}"]
                    if v.dtype.is_floating_point:
                        e.lerp_(v, 1 - decay)
                    else:
                        e.copy_(v)
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-200:]):.4f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps:
            save_checkpoint(ckpt, modules, ema, opt, {"step": step + 1, "elapsed": time.time() - t0})
            export_ema(args.work / "ema", tokenizer, text_encoder, unet, scheduler, ema)
        if args.max_minutes and time.time() - t0 > args.max_minutes * 60:
            save_checkpoint(ckpt, modules, ema, opt, {"step": step + 1, "elapsed": time.time() - t0})
            print(f"stopping at step {step + 1}: --max-minutes {args.max_minutes} reached (resume to continue)")
            break
    bar.close()
    steps_done = step + 1
    export_ema(args.work / "ema", tokenizer, text_encoder, unet, scheduler, ema)
    return {"unet_steps": steps_done, "unet_minutes": round((time.time() - t0) / 60, 1), "final_loss": float(np.mean(losses[-200:]))}


def export_ema(path: Path, tokenizer, text_encoder, unet, scheduler, ema: dict):
    """Write the EMA weights as a loadable shapes model folder (no CLIP yet)."""
    from transformers import CLIPTextModel

    te = CLIPTextModel(text_encoder.config)
    te.load_state_dict({k[len("text_encoder.") :]: v for k, v in ema.items() if k.startswith("text_encoder.")})
    un = M.build_unet()
    un.load_state_dict({k[len("unet.") :]: v for k, v in ema.items() if k.startswith("unet.")})
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    M.save(tmp, tokenizer, te, un, scheduler)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


# ----------------------------------------------------------------------------------------------
# Stage 2: the shapes CLIP


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
    bar = tqdm(range(args.clip_steps), desc="clip", dynamic_ncols=True)
    for step in bar:
        scenes = world.scene_batch(args.seed + 7, step, args.clip_batch, p_one=args.p_one)
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
    tmp = args.work / "clip.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    clip.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(args.work / "clip", ignore_errors=True)
    tmp.rename(args.work / "clip")
    return {"clip_steps": args.clip_steps, "clip_minutes": round((time.time() - t0) / 60, 1)}


# ----------------------------------------------------------------------------------------------


def assemble(args, record: dict):
    """Copy the EMA model and the CLIP into --out, with the training record."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPModel, CLIPTextModel, PreTrainedTokenizerFast

    src = args.work / "ema"
    clip = CLIPModel.from_pretrained(args.work / "clip", use_safetensors=True) if (args.work / "clip").is_dir() else None
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    M.save(
        tmp,
        PreTrainedTokenizerFast.from_pretrained(src / "tokenizer"),
        CLIPTextModel.from_pretrained(src / "text_encoder", use_safetensors=True),
        UNet2DConditionModel.from_pretrained(src / "unet", use_safetensors=True),
        M.build_scheduler(),  # the current sampling config, not the one the run started with
        clip,
        card={"training": record},
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"wrote {out}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m sampler.shapes.train", description=__doc__.split("\n")[0])
    p.add_argument("stage", nargs="?", default="all", choices=["unet", "clip", "all", "assemble"],
                   help="assemble: only write --out from the finished stages in --work")
    p.add_argument("--work", type=Path, default=Path("runs/shapes"), help="checkpoints and intermediate models")
    p.add_argument("--out", type=Path, default=M.SHIPPED, help="where the finished model is written")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=9000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--p-one", type=float, default=0.5, help="share of one-object scenes")
    p.add_argument("--p-uncond", type=float, default=0.1, help="share of empty captions (for CFG)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast (fp32 weights)")
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--max-minutes", type=float, default=0, help="stop (resumably) after this long; 0 = no limit")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--init-from", help="start the UNet and text encoder from a finished shapes model folder (or 'shapes')")
    p.add_argument("--freeze-text", action="store_true", help="train the UNet only; the text encoder stays as initialised")
    p.add_argument("--clip-steps", type=int, default=1500)
    p.add_argument("--clip-batch", type=int, default=128)
    p.add_argument("--clip-lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    args = p.parse_args(argv)
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
        batch=args.batch,
        machine=f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {'GPU' if torch.cuda.is_available() else 'CPU'}",
        torch=torch.__version__,
    )
    if args.stage in ("unet", "all"):
        record.update(train_unet(args))
        record_path.write_text(json.dumps(record, indent=2))
    if args.stage in ("clip", "all"):
        record.update(train_clip(args))
        record_path.write_text(json.dumps(record, indent=2))
    record["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    record_path.write_text(json.dumps(record, indent=2))
    assemble(args, record)


if __name__ == "__main__":
    main()

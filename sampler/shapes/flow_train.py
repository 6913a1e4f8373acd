"""Train the shapes flow model: an SD3-style MMDiT on the shapes world by flow matching.

    python -m sampler.shapes.flow_train --work runs/shapes-flow --init-from sampler/shapes/next \\
        --steps 8000 --latent-pool 100000 --threads 2 --max-minutes 170 --out sampler/shapes/flow

(the same command again continues a run stopped by --max-minutes). Measured on this project's CPU
machine while another training run held it: 1.8 s a step at batch 64 on one thread with the
latent pool, 3.3 s without (the VAE encodes every batch); so 8,000 steps are about four hours on
two free threads at most, and much less on a GPU (--device cuda; not measured).

What it reuses: the world (world.py), the finished autoencoder and the text encoder of a shapes
model folder (--init-from: its vae/, text_encoder/ and tokenizer/; the text encoder stays frozen,
so both shipped models read one text encoder), the latent pool of the UNet stage (latent_pool.py),
and the checkpoint, EMA and progress helpers every trainer uses (sampler/training.py). What is new
is the model (flow_model.py: SD3Transformer2DModel, patch 1) and the objective, rectified flow as
SD3 trains it (Esser et al. 2024, arXiv 2403.03206):

    s ~ sigmoid(N(m, std^2))    (logit-normal: the middle of the path, where the velocity is hardest)
    x_s = (1 - s) x0 + s eps,   loss = || v_theta(x_s, s, c) - (eps - x0) ||^2

with 10 % empty captions for classifier-free guidance. A run stops resumably after --max-minutes
(the same command goes on from the checkpoint in --work) and keeps the EMA's model folder in
WORK/ema at every checkpoint, loadable as a backbone (`--model WORK/ema`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from energies.files import atomic_write

from .. import training as T
from . import flow_model as FM
from . import latent_pool
from . import model as M
from . import world
from .train import images_to_tensor, load_vae, lr_at, write_record


def text_states(tokenizer, text_encoder, captions) -> tuple[torch.Tensor, torch.Tensor]:
    """(last hidden state, pooled output) of the captions: the text sequence and the pooled
    embedding, as backbones.flow.ShapesFlowBackbone encodes a prompt."""
    ids = tokenizer(list(captions), padding="max_length", max_length=M.MAX_LENGTH, truncation=True, return_tensors="pt").input_ids
    out = text_encoder(ids.to(text_encoder.device))
    return out.last_hidden_state, out.pooler_output


def flow_matching_loss(transformer, x0, states, pooled, g: torch.Generator, logit_mean=0.0, logit_std=1.0) -> torch.Tensor:
    """Rectified flow's velocity loss at logit-normal s (module docstring); noise from `g` on the CPU."""
    b = x0.shape[0]
    s = torch.sigmoid(logit_mean + logit_std * torch.randn(b, generator=g)).to(x0.device)
    noise = torch.randn(x0.shape, generator=g).to(x0.device)
    x_s = (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * noise
    v = transformer(hidden_states=x_s, encoder_hidden_states=states, pooled_projections=pooled, timestep=s * 1000).sample
    return (v.float() - (noise - x0)).pow(2).mean()


def text_encoder_from(folder: Path):
    from transformers import CLIPTextModel, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder / "tokenizer")
    te = CLIPTextModel.from_pretrained(folder / "text_encoder", use_safetensors=True).float().eval().requires_grad_(False)
    return tokenizer, te


def train(args) -> dict:
    torch.manual_seed(args.seed)
    ckpt = args.work / "flow.ckpt.safetensors"
    recipe = {"layers": args.layers, "heads": args.heads, "head_dim": args.head_dim, "seed": args.seed, "batch": args.batch}
    resumed = None if args.restart else T.resume(ckpt, recipe)
    own = args.work / "ema"  # a resumed run keeps the text encoder it started with, whatever --init-from holds now
    source = own if resumed is not None and (own / "text_encoder").is_dir() else M.resolve(args.init_from)
    tokenizer, text_encoder = text_encoder_from(source)
    vae = load_vae(args.work, args.init_from)
    transformer = FM.build_transformer(num_layers=args.layers, num_attention_heads=args.heads, attention_head_dim=args.head_dim)
    scheduler = FM.build_scheduler()
    dev = torch.device(args.device)
    bf16 = T.bf16_autocast(args.bf16, dev)
    modules = {"transformer": transformer}
    params = list(transformer.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    ema = T.ema_of(modules)
    start, elapsed = 0, 0.0
    if resumed is not None:
        tensors, state = resumed
        T.restore_models(tensors, state, modules, ema, opt)
        start, elapsed = state["step"], state["elapsed"]
    T.to_device(dev, (transformer, text_encoder, vae), ema, opt)  # the moments and the average follow their parameters
    pool = None
    if args.latent_pool:
        pool = latent_pool.build(args.work / f"latent-pool-{args.seed}-{args.latent_pool}.safetensors", vae.to("cpu"),
                                 args.seed, args.latent_pool, M.IMAGE_SIZE, args.p_one, progress=args.progress)
        vae.to(dev)
    clip = source / "clip" if (source / "clip").is_dir() else (M.SHIPPED / "clip" if (M.SHIPPED / "clip").is_dir() else None)

    def export(path: Path):
        """The EMA's weights as a loadable shapes flow model folder."""
        out = FM.build_transformer(num_layers=args.layers, num_attention_heads=args.heads, attention_head_dim=args.head_dim)
        out.load_state_dict({k[len("transformer."):]: v for k, v in ema.items() if k.startswith("transformer.")})

        def write(tmp):
            FM.save(tmp, tokenizer, text_encoder.to("cpu"), out, vae.to("cpu"), scheduler,
                    card={"trained": {"steps": step + 1, "init_from": str(args.init_from), "objective": "rectified flow, logit-normal s"}})
            if clip is not None:
                shutil.copytree(clip, tmp / "clip")
            text_encoder.to(dev)
            vae.to(dev)

        atomic_write(path, write)

    t0 = time.time() - elapsed
    bar = T.progress(start, args.steps, "flow")
    bar.disable = bar.disable or not args.progress
    losses: list[float] = []
    step = start - 1
    for step in bar:
        drop = np.random.default_rng((args.seed, step, 1 << 21)).random(args.batch) < args.p_uncond
        g = torch.Generator().manual_seed(args.seed * 1_000_033 + step)
        if pool is not None:
            x0, named = pool.draw(vae, args.seed, step, args.batch, g)
        else:
            scenes = world.scene_batch(args.seed, step, args.batch, size=M.IMAGE_SIZE, p_one=args.p_one)
            named = [s.caption for s in scenes]
            with torch.no_grad():
                x0 = M.vae_encode(vae, images_to_tensor(scenes).to(dev), g)
        captions = ["" if d else c for c, d in zip(named, drop)]
        with torch.no_grad():
            states, pooled = text_states(tokenizer, text_encoder, captions)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup, "wsd", args.cooldown)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = flow_matching_loss(transformer, x0.to(dev), states, pooled, g, args.logit_mean, args.logit_std)
        T.optimise(loss, opt, params, ema, modules, step, args.ema)
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-200:]):.4f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
        if T.checkpoint_or_stop(step, args.steps, args.ckpt_every, args.max_minutes, t0,
                                lambda state: T.save_models(ckpt, modules, ema, opt, {**state, "recipe": recipe}),
                                lambda: export(args.work / "ema")):
            break
    bar.close()
    return {"flow_steps": step + 1, "flow_minutes": round((time.time() - t0) / 60, 1),
            "final_loss": float(np.mean(losses[-200:])) if losses else None}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m sampler.shapes.flow_train", description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=Path("runs/shapes-flow"), help="checkpoint, latent pool, the EMA's model folder")
    p.add_argument("--out", type=Path, default=None, help="where the finished model is copied (the shipped one: sampler/shapes/flow)")
    p.add_argument("--init-from", default="sampler/shapes/next",
                   help="the shapes model folder whose autoencoder, tokenizer and text encoder (frozen) the flow model uses")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=8000, help="a few CPU hours (module docstring); more where a GPU is")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--cooldown", type=int, default=1500, help="steps of linear decay at the end of the run")
    p.add_argument("--layers", type=int, default=FM.TRANSFORMER["num_layers"])
    p.add_argument("--heads", type=int, default=FM.TRANSFORMER["num_attention_heads"])
    p.add_argument("--head-dim", type=int, default=FM.TRANSFORMER["attention_head_dim"])
    p.add_argument("--logit-mean", type=float, default=0.0, help="s ~ sigmoid(N(mean, std^2)), SD3's logit-normal")
    p.add_argument("--logit-std", type=float, default=1.0)
    p.add_argument("--latent-pool", type=int, default=0, help="draw batches from N scenes encoded once (latent_pool.py)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--half", action="store_true", help="with --out: store the transformer, text encoder and CLIP in fp16 (the shipped folder)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    T.add_run_arguments(p)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    record_path = args.work / "record.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    command = "python -m sampler.shapes.flow_train " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    record.update(commands=record.get("commands", []) + [command], seed=args.seed, batch=args.batch, torch=torch.__version__,
                  machine=T.machine("GPU" if torch.cuda.is_available() else "CPU"))
    record.update({k: v for k, v in train(args).items() if v is not None})  # a run with no steps left keeps the last loss
    record["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    write_record(record_path, record)
    if record["flow_steps"] < args.steps:
        print(f"the flow model is at step {record['flow_steps']} of {args.steps}; {args.work / 'ema'} holds its EMA so far")
        return
    if args.out is not None:
        atomic_write(args.out, lambda tmp: ship(args.work / "ema", tmp, record, torch.float16 if args.half else torch.float32))
        print(f"wrote {args.out}")


def ship(ema: Path, out: Path, record: dict, dtype):
    """The EMA's folder written again as a model to hand out: the sampling defaults of this code
    (FM.DEFAULTS, chosen on the tune split), the training record in its card, weights in `dtype`."""
    m = FM.load(ema)
    card = {**m.card, "defaults": FM.DEFAULTS, "training": {k: v for k, v in record.items() if k != "commands"},
            "commands": record.get("commands", [])}
    FM.save(out, m.tokenizer, m.text_encoder, m.transformer, m.vae, m.scheduler, m.clip, card, dtype)


if __name__ == "__main__":
    main()

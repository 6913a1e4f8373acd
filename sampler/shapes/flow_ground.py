"""Grounding fine-tune of the shapes flow model: teach its joint attention where each word's object is.

    python -m sampler.shapes.flow_ground --init-from shapes-flow --work runs/shapes-flow-ground \\
        --steps 800 --batch 32 --threads 1 --out sampler/shapes/flow --half

The flow transformer drew captions without *attending* to their words where their objects are:
on world scenes noised to s = 0.3 / 0.5 / 0.7, the IoU of a shape word's map with its own
object was at most 0.21 for every block (`python -m sampler.shapes.flow_blocks`; as top-k IoU,
0.16-0.27, for every mix of blocks tried too), so relocation's masks covered most of the image and every
attention edit read background. The UNet model had the same defect and the same cure
(shapes/ground.py): TokenCompose's token loss (Wang et al. 2024) beside the training objective,

    L = || v_theta(x_s, s, c) - (eps - x0) ||^2 + w * mean over words and blocks of (1 - share of A_w inside M_w)^2,

here on the text-to-image maps of every joint block (probes.JointAttentionProbe computes them
from the blocks' own queries and keys, so the gradient reaches them), at flow times s below
--ground-below only (near pure noise the layout is not decided yet). The text encoder and
autoencoder stay frozen; batches are fresh world scenes, whose masks come with them; the run is a
function of its seed and checkpoints and resumes as every trainer here does (sampler/training.py).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from energies.files import atomic_write

from .. import training as T
from ..probes import ProbeStore, probing
from . import flow_model as FM
from . import model as M
from . import world
from .flow_blocks import joint_blocks
from .flow_train import ship, text_states
from .ground import token_loss, word_masks
from .train import images_to_tensor, lr_at


def finetune(args) -> dict:
    torch.manual_seed(args.seed)
    bf16 = T.bf16_autocast(args.bf16, "cpu")
    init = FM.load(args.init_from)
    tokenizer, text_encoder, vae, scheduler = init.tokenizer, init.text_encoder, init.vae, init.scheduler
    transformer = init.transformer.train().requires_grad_(True)
    transformer.steer_map_tokens = slice(0, M.MAX_LENGTH)  # the maps' text tokens: the caption's own
    modules = {"transformer": transformer}
    opt = torch.optim.AdamW(transformer.parameters(), lr=args.lr, weight_decay=0.01)
    ema = T.ema_of(modules)
    ckpt = args.work / "ground.ckpt.safetensors"
    start, elapsed = 0, 0.0
    recipe = {k: getattr(args, k) for k in ("seed", "batch", "lr", "weight", "ground_below", "init_from")}
    resumed = None if args.restart else T.resume(ckpt, recipe)
    if resumed is not None:
        tensors, state = resumed
        T.restore_models(tensors, state, modules, ema, opt)
        start, elapsed = state["step"], state["elapsed"]
    layers = joint_blocks(transformer)

    def export(path: Path):
        out = FM.build_transformer(**{k: transformer.config[k] for k in ("num_layers", "num_attention_heads", "attention_head_dim")})
        out.load_state_dict({k[len("transformer."):]: v for k, v in ema.items() if k.startswith("transformer.")})
        atomic_write(path, lambda tmp: FM.save(tmp, tokenizer, text_encoder, out, vae, scheduler, init.clip,
                                               card={**init.card, "grounded": {"steps": step + 1, "init_from": str(args.init_from)}}))

    t0 = time.time() - elapsed
    bar = T.progress(start, args.steps, "flow ground")
    history: list[tuple[float, float]] = []
    step = start - 1
    for step in bar:
        scenes = world.scene_batch(args.seed + 17, step, args.batch, size=M.IMAGE_SIZE, p_one=args.p_one)
        drop = np.random.default_rng((args.seed, step, 1 << 21)).random(args.batch) < args.p_uncond
        captions = ["" if d else s.caption for s, d in zip(scenes, drop)]
        g = torch.Generator().manual_seed(args.seed * 1_000_033 + step)
        with torch.no_grad():
            x0 = M.vae_encode(vae, images_to_tensor(scenes), g)
            states, pooled = text_states(tokenizer, text_encoder, captions)
        s = torch.sigmoid(args.logit_mean + args.logit_std * torch.randn(args.batch, generator=g))
        noise = torch.randn(x0.shape, generator=g)
        x_s = (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * noise
        masks, grounded = word_masks(scenes, captions)
        grounded &= (s < args.ground_below)[:, None]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup, "wsd", args.cooldown)
        store = ProbeStore(tuple(x0.shape[-2:]))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), probing(transformer, store, layers):
            v = transformer(hidden_states=x_s, encoder_hidden_states=states, pooled_projections=pooled, timestep=s * 1000).sample
        flow = (v.float() - (noise - x0)).pow(2).mean()
        ground = token_loss(store.attn, masks, grounded)
        loss = flow + args.weight * ground
        T.optimise(loss, opt, transformer.parameters(), ema, modules, step, args.ema)
        history.append((flow.item(), ground.item()))
        if step % 10 == 0:
            f, gr = np.mean(history[-100:], axis=0)
            bar.set_postfix(flow=f"{f:.4f}", token=f"{gr:.3f}")
        if T.checkpoint_or_stop(step, args.steps, args.ckpt_every, args.max_minutes, t0,
                                lambda state: T.save_models(ckpt, modules, ema, opt, {**state, "recipe": recipe}),
                                lambda: export(args.work / "ema")):
            break
    bar.close()
    figures = {"ground_steps": step + 1, "ground_minutes": round((time.time() - t0) / 60, 1)}
    if history:  # a run with no steps left (shipping a finished run again) keeps the record's losses
        f, gr = np.mean(history[-100:], axis=0)
        figures.update(ground_final_flow_loss=float(f), ground_final_token_loss=float(gr))
    return figures


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m sampler.shapes.flow_ground", description=__doc__.split("\n")[0])
    p.add_argument("--init-from", default="shapes-flow", help="the finished shapes flow model folder (or 'shapes-flow')")
    p.add_argument("--work", type=Path, default=Path("runs/shapes-flow-ground"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--cooldown", type=int, default=200, help="steps of linear decay at the end")
    p.add_argument("--weight", type=float, default=0.1, help="weight of the token loss beside the flow loss")
    p.add_argument("--ground-below", type=float, default=0.8, help="ground the maps at flow times s < this only (1 = noise)")
    p.add_argument("--logit-mean", type=float, default=0.0)
    p.add_argument("--logit-std", type=float, default=1.0)
    p.add_argument("--out", type=Path, help="where the finished model goes (the shipped one: sampler/shapes/flow)")
    p.add_argument("--half", action="store_true", help="with --out: the transformer, text encoder and CLIP in fp16")
    T.add_run_arguments(p)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    init_card = FM.load(args.init_from).card
    figures = finetune(args)
    record_path = args.work / "record.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    command = "python -m sampler.shapes.flow_ground " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    record.update(figures)
    record["ground_commands"] = record.get("ground_commands", []) + [command]
    atomic_write(record_path, lambda tmp: tmp.write_text(json.dumps(record, indent=2)))
    print(json.dumps(figures))
    if figures["ground_steps"] >= args.steps and args.out is not None:
        grounded = {k: v for k, v in record.items() if k != "ground_commands"}
        full = {**init_card.get("training", {}), **grounded, "commands": init_card.get("commands", []) + record["ground_commands"]}
        atomic_write(args.out, lambda tmp: ship(args.work / "ema", tmp, full, torch.float16 if args.half else torch.float32))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

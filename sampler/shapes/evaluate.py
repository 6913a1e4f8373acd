"""Measure the shapes model and write its model card: `python -m sampler.shapes.evaluate`.

Every figure is measured by the world's own detector or ground truth, on samples drawn here:
  - caption fidelity of samples at the default settings (one- and two-object captions);
  - cross-attention localisation: IoU of the top-k cells of a shape word's map with its object;
  - DDIM inversion and regeneration PSNR, of generated and of world images;
  - the shapes CLIP's zero-shot caption retrieval on held-out scenes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..backbones import ShapesBackbone
from ..guided import sample_ddim
from ..inversion import invert_ddim, psnr
from ..probes import ProbeStore, cross_attention_layers, probing
from . import model as M
from . import world as W

HELD_OUT = 10**7  # scene seeds from here on were never drawn for training (those are tuples)


def all_captions() -> list[str]:
    ones = [f"a {c} {s}" for c in W.COLOURS for s in W.SHAPES]
    twos = [f"a {c1} {s1} and a {c2} {s2}" for c1, c2 in itertools.permutations(W.COLOURS, 2) for s1 in W.SHAPES for s2 in W.SHAPES]
    return ones + twos


def eval_captions(n_objects: int, n: int, seed: int = 0) -> list[str]:
    """n captions of n_objects objects, drawn from held-out world scenes (a fair mix)."""
    return [W.make_scene(HELD_OUT + seed * 100_000 + i, n_objects=n_objects).caption for i in range(n)]


@torch.no_grad()
def sample(b: ShapesBackbone, captions: list[str], seeds: list[int], steps: int, cfg: float, batch: int = 32) -> np.ndarray:
    """Plain CFG DDIM samples, one per (caption, seed), batched. Returns (N, H, W, 3) in [0, 1]."""
    assert len(captions) == len(seeds), f"{len(captions)} captions but {len(seeds)} seeds"
    out = []
    ts = b.timesteps(steps)
    alphas, final = b.schedule()
    for k in range(0, len(captions), batch):
        caps, sds = captions[k : k + batch], seeds[k : k + batch]
        cond = torch.cat([b.encode_prompt(c).cond for c in caps])
        uncond = b.encode_prompt("").cond.expand_as(cond)
        z = torch.cat([torch.randn((1, *b.latent_shape()), generator=torch.Generator().manual_seed(s)) for s in sds])

        def denoise(i, t, z, eps_cond=None):
            eps_u, eps_c = b.eps(torch.cat([z, z]), t, torch.cat([uncond, cond])).chunk(2)
            return eps_u + cfg * (eps_c - eps_u)

        z = sample_ddim(denoise, z, ts, alphas, final, disable=True, clip=b.clip_x0)
        out.append(b.decode(z).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def fidelity(images: np.ndarray, captions: list[str]) -> dict:
    colours = exact = 0
    for im, cap in zip(images, captions):
        c, a = W.matches_caption(W.detect(im), cap)
        colours += c
        exact += a
    return {"n": len(captions), "colours_right": colours / len(captions), "all_right": exact / len(captions)}


@torch.no_grad()
def localisation(b: ShapesBackbone, n: int = 64, timesteps=(100, 300, 500, 700, 900)) -> dict:
    """For two-object world scenes noised to t: mean IoU of the top-k cells of each object's shape
    word (k = object area) with that object's mask, and with the other object's mask."""
    layers = cross_attention_layers(b.unet, b.defaults.attn_layers)
    res = {}
    scenes = [W.make_scene(HELD_OUT + 500_000 + i, n_objects=2) for i in range(n)]
    alphas = b.alphas_cumprod()
    for t in timesteps:
        own, other = [], []
        for i, s in enumerate(scenes):
            x = torch.from_numpy(s.image).permute(2, 0, 1)[None] * 2 - 1
            noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
            z = alphas[t].sqrt() * x + (1 - alphas[t]).sqrt() * noise
            store = ProbeStore(b.latent_shape()[1:], detach=True)
            with probing(b.unet, store, layers):
                b.eps(z, t, b.encode_prompt(s.caption).cond)
            maps = F.interpolate(store.token_maps(b.defaults.map_res), size=s.image.shape[:2], mode="bilinear", align_corners=False)[0]
            for j, o in enumerate(s.objects):
                word_pos = 3 if j == 0 else 7  # "<bos> a red circle and a blue square": positions 3 and 7
                a = maps[word_pos].numpy()
                k = int(o.mask.sum())
                top = np.zeros(a.size, bool)
                top[np.argsort(a.ravel())[-k:]] = True
                top = top.reshape(a.shape)
                own.append(W.mask_iou(top, o.mask))
                other.append(W.mask_iou(top, s.objects[1 - j].mask))
        res[int(t)] = {"own_object": float(np.mean(own)), "other_object": float(np.mean(other))}
    return res


@torch.no_grad()
def inversion(b: ShapesBackbone, images: np.ndarray, captions: list[str], steps: int = 50, fixed_point: int = 0) -> dict:
    """Invert each image with DDIM (cond only, cfg 1) and regenerate; PSNR against the input."""
    ts = b.timesteps(steps)
    alphas, final = b.schedule()
    scores = []
    for im, cap in zip(images, captions):
        x = torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].float() * 2 - 1
        cond = b.encode_prompt(cap).cond
        eps = lambda z, t: b.eps(z, t, cond)  # noqa: E731
        zs = invert_ddim(eps, x, ts, alphas, final, fixed_point=fixed_point, disable=True)
        rec = sample_ddim(lambda i, t, z, e=None: eps(z, t), zs[0], ts, alphas, final, disable=True)
        scores.append(psnr(b.decode(rec), b.decode(x)))
    s = np.array(scores)
    return {"n": len(s), "mean_psnr": float(s.mean()), "min_psnr": float(s.min()), "share_at_least_30db": float((s >= 30).mean())}


def _features(out) -> torch.Tensor:
    """CLIPModel.get_*_features returns a tensor in transformers 4 and an output object (whose
    pooler_output is the projected embedding) in transformers 5."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def clip_retrieval(b: ShapesBackbone, n: int = 256) -> dict:
    """Zero-shot top-1 retrieval among every caption of the world, on held-out scenes."""
    if b.clip is None:
        return {}
    caps = all_captions()
    ids = b.tokenizer(caps, padding="max_length", max_length=M.MAX_LENGTH, return_tensors="pt").input_ids
    text = F.normalize(_features(b.clip.get_text_features(input_ids=ids)), dim=-1)
    scenes = [W.make_scene(HELD_OUT + 900_000 + i) for i in range(n)]
    pixels = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2) * 2 - 1
    img = F.normalize(_features(b.clip.get_image_features(pixel_values=pixels)), dim=-1)
    best = (img @ text.T).argmax(1)
    right = [caps[j] == s.caption for j, s in zip(best.tolist(), scenes)]
    one = [r for r, s in zip(right, scenes) if len(s.objects) == 1]
    two = [r for r, s in zip(right, scenes) if len(s.objects) == 2]
    return {"n": n, "candidates": len(caps), "top1": float(np.mean(right)), "top1_one_object": float(np.mean(one)), "top1_two_objects": float(np.mean(two))}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m sampler.shapes.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="shapes")
    p.add_argument("--n", type=int, default=64, help="samples per caption kind")
    p.add_argument("--cfg", type=float, nargs="*", default=None, help="cfg scales to compare (default: the model's)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("docs/shapes-model.json"))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    b = ShapesBackbone(args.model)
    d = b.sampling_defaults
    steps = args.steps or d["steps"]
    report = {"model": args.model, "steps": steps, "fidelity": {}}
    t0 = time.time()
    ones, twos = eval_captions(1, args.n, 1), eval_captions(2, args.n, 2)
    seeds = list(range(args.n))
    for cfg in tqdm(args.cfg or [d["cfg"]], desc="fidelity"):
        report["fidelity"][str(cfg)] = {
            "one_object": fidelity(sample(b, ones, seeds, steps, cfg), ones),
            "two_objects": fidelity(sample(b, twos, seeds, steps, cfg), twos),
        }
    report["localisation"] = localisation(b)
    gen_caps = twos[:16] + ones[:16]
    generated = sample(b, gen_caps, list(range(len(gen_caps))), steps, d["cfg"])
    world_scenes = [W.make_scene(HELD_OUT + 700_000 + i) for i in range(32)]
    report["inversion"] = {
        "generated": inversion(b, generated, gen_caps),
        "generated_fixed_point_2": inversion(b, generated, gen_caps, fixed_point=2),
        "world": inversion(b, np.stack([s.image for s in world_scenes]), [s.caption for s in world_scenes]),
    }
    report["clip"] = clip_retrieval(b)
    report["seconds"] = round(time.time() - t0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    card = args.out.with_suffix(".md")
    card.write_text(model_card(report, b.model.card.get("training", {}), " ".join(["python -m sampler.shapes.evaluate", *(argv or [])])))
    print(card.read_text())


def model_card(r: dict, training: dict, command: str) -> str:
    """The model card: how the shipped model was made and what it measures."""
    L = ["# The shapes model", "",
         "steer's shipped text-to-image model for the shapes world (circle, square, triangle in red, green, blue, yellow on",
         "black, 32x32). Built from Stable Diffusion's classes: a transformers `CLIPTextModel` (2 layers, 64 wide) with a",
         "word-level `tokenizers` tokenizer, a diffusers `UNet2DConditionModel` in pixel space (channels 32/64/128, cross-",
         "attention at 16x16 and 8x8, epsilon prediction), diffusers' DDIM scheduler, and a shapes CLIP (`CLIPModel`, ViT",
         "image tower on 4x4 patches) for the ViT and CLIP energies. Weights are safetensors in `sampler/shapes/weights/`.", "",
         "## Training", ""]
    if training:
        L += ["- commands, in order (a resumed run continues the same seeded schedule): "
              + "; ".join(f"`{c}`" for c in training.get("commands", [training.get("command", "?")])),
              f"- seed {training.get('seed')}, batch {training.get('batch')}, UNet + text encoder {training.get('unet_steps')} steps "
              f"in {training.get('unet_minutes')} min (final loss {training.get('final_loss', float('nan')):.4f}), "
              f"CLIP {training.get('clip_steps')} steps in {training.get('clip_minutes')} min",
              f"- machine: {training.get('machine')}, torch {training.get('torch')}; date {training.get('date')}",
              "- data: fresh world scenes every step (50% one-object), 10% empty captions for classifier-free guidance,",
              "  AdamW with warm-up and cosine decay, bf16 autocast with fp32 weights, EMA 0.999 (the EMA weights ship)"]
        ft = training.get("finetune")
        if ft:
            L += [f"- then fine-tuned for {ft['steps']} steps ({ft['minutes']} min) from the step-{ft['from_steps']} model: fresh "
                  f"optimizer, peak lr {ft['lr']:g}, {1 - ft['p_one']:.0%} two-object scenes, data seed {ft['seed']}"
                  + ("; the UNet alone (text encoder frozen)" if ft.get("freeze_text") else "") + f"; why: {ft['why']}"]
        L += [""]
    L += ["## Measured", "", f"Reproduce with `{command}` ({r['seconds']} s). Samples use {r['steps']} DDIM steps.", "",
          "### Caption fidelity (detector on samples; held-out captions, one seed each)", "",
          "| cfg | one object: right colour and shape | two objects: both right, nothing extra | two objects: colours right |",
          "| --- | --- | --- | --- |"]
    for cfg, f in r["fidelity"].items():
        L.append(f"| {cfg} | {f['one_object']['all_right']:.0%} (n={f['one_object']['n']}) | {f['two_objects']['all_right']:.0%} "
                 f"(n={f['two_objects']['n']}) | {f['two_objects']['colours_right']:.0%} |")
    L += ["", "### Cross-attention localisation", "",
          "World images with two objects, noised to t; for each object's shape word, the top-k cells of its attention map",
          "(k = the object's area, maps averaged over every cross-attention layer) against the object's mask, and against",
          "the other object's mask.", "", "| t | IoU with its object | IoU with the other object |", "| --- | --- | --- |"]
    for t, v in r["localisation"].items():
        L.append(f"| {t} | {v['own_object']:.2f} | {v['other_object']:.2f} |")
    inv = r["inversion"]
    L += ["", "### DDIM inversion and regeneration (50 steps, cfg 1)", "", "| images | mean PSNR | min PSNR | share >= 30 dB |",
          "| --- | --- | --- | --- |"]
    for k, name in (("generated", "generated samples"), ("generated_fixed_point_2", "generated, 2 fixed-point iterations per step"),
                    ("world", "world ground-truth images")):
        v = inv[k]
        L.append(f"| {name} (n={v['n']}) | {v['mean_psnr']:.1f} dB | {v['min_psnr']:.1f} dB | {v['share_at_least_30db']:.0%} |")
    c = r.get("clip") or {}
    if c:
        L += ["", "### Shapes CLIP", "", f"Zero-shot caption retrieval on {c['n']} held-out scenes among all {c['candidates']} captions of the",
              f"world: top-1 {c['top1']:.0%} (one object {c['top1_one_object']:.0%}, two objects {c['top1_two_objects']:.0%})."]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()

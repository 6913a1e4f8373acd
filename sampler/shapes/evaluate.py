"""Measure the shapes model and write its model card: `python -m sampler.shapes.evaluate`.

Every figure is measured by the world's own detector or ground truth, on samples drawn here:
  - caption fidelity at the default settings: every one-object caption (12) and every two-object
    caption (108: both object orders, every pair of colours and shapes), several seeds each, with
    per-shape and per-colour rows for the objects of two-object scenes;
  - cross-attention localisation of shape and colour words, per shape: IoU of the top-k cells of
    a word's map with its own object and with the other object;
  - inversion of generated images saved as PNG and regenerated through the editor's own
    `source "image.png"` path (inversion cache included, an edit with nothing to do), and of
    world images; beside it, sampling from the inverted noise alone;
  - the shapes CLIP's zero-shot caption retrieval on held-out scenes.

Seeds come in two splits: `--split tune` (seeds from 0) is where settings are chosen, `--split
report` (seeds from 1,000,000) is what the model card quotes. Training never sees either: its
scenes are drawn from tuple seeds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from energies.files import atomic_write

from ..backbones import ShapesBackbone, ShapesFlowBackbone, flow_kind, load_backbone
from ..bench.inversion import cache_in, regenerate
from ..editor import Editor
from ..feature_models import projected_features
from ..guided import classifier_free, sample_ddim
from ..probes import ProbeStore, cross_attention_layers, probing
from . import model as M
from . import world as W
from .card import model_card

HELD_OUT = 10**7  # scene seeds from here on were never drawn for training (those are tuples)
SPLITS = {"tune": 0, "report": 1_000_000}  # sampling seeds of each split start here


def one_object_captions() -> list[str]:
    return [f"a {c} {s}" for c in W.COLOURS for s in W.SHAPES]


def two_object_captions() -> list[str]:
    """Every caption of two objects: the world never gives two objects one colour."""
    return [f"a {c1} {s1} and a {c2} {s2}" for c1, c2 in itertools.permutations(W.COLOURS, 2) for s1 in W.SHAPES for s2 in W.SHAPES]


def all_captions() -> list[str]:
    return one_object_captions() + two_object_captions()


def caption_grid(captions: list[str], per_caption: int, split: str) -> tuple[list[str], list[int]]:
    """Each caption `per_caption` times, with distinct sampling seeds of the split."""
    caps = [c for c in captions for _ in range(per_caption)]
    base = SPLITS[split]
    return caps, [base + i for i in range(len(caps))]


@torch.no_grad()
def sample(b, captions: list[str], seeds: list[int], steps: int, cfg: float, batch: int = 32,
           progress: bool = False) -> np.ndarray:
    """Plain CFG DDIM samples, one per (caption, seed), batched, from a shapes backbone (the UNet
    model, or the flow model through its velocity-as-eps wrapper). Returns (N, H, W, 3) in [0, 1]."""
    assert len(captions) == len(seeds), f"{len(captions)} captions but {len(seeds)} seeds"
    out = []
    ts = b.timesteps(steps)
    alphas, final = b.schedule()
    for k in tqdm(range(0, len(captions), batch), disable=not progress, desc=f"sample cfg {cfg:g}", leave=False):
        caps, sds = captions[k : k + batch], seeds[k : k + batch]
        conds = [b.encode_prompt(c) for c in caps]  # the flow model's pooled embeddings ride in `added`
        context = torch.cat([c.uncond for c in conds] + [c.cond for c in conds])
        added = {k: torch.cat([c.added_uncond[k] for c in conds] + [c.added[k] for c in conds]) for k in conds[0].added}
        z = torch.cat([torch.randn((1, *b.latent_shape()), generator=torch.Generator().manual_seed(s)) for s in sds])
        z = z.to(b.device)  # drawn on the CPU: the same images on any device

        def denoise(i, t, z, eps_cond=None, eps_uncond=None):
            eps_u, eps_c = b.eps(torch.cat([z, z]), t, context, added).chunk(2)
            return classifier_free(eps_u, eps_c, cfg)

        z = sample_ddim(denoise, z, ts, alphas, final, disable=True, clip=b.clip_x0)
        out.append(b.decode(z).permute(0, 2, 3, 1).float().cpu().numpy())
    return np.concatenate(out)


def fidelity(images: np.ndarray, captions: list[str], seeds=None) -> dict:
    """Whole-caption figures, and per object of the caption (by its shape and by its colour):
    an object counts as drawn when the detector finds an object of its colour and shape. Every
    caption not drawn right is listed (with its seed, when given) with what the detector found."""
    colours = exact = 0
    per: dict[str, list[bool]] = {}
    failures = []
    for k, (im, cap) in enumerate(zip(images, captions)):
        found = W.detect(im)
        c, a = W.matches_caption(found, cap)
        colours += c
        exact += a
        if not a:
            failures.append({"caption": cap, **({"seed": int(seeds[k])} if seeds is not None else {}),
                             "found": [o.phrase for o in found]})
        for colour, shape in W.parse_caption(cap):
            hit = W.find(found, colour, shape) is not None
            per.setdefault(shape, []).append(hit)
            per.setdefault(colour, []).append(hit)
    n = len(captions)
    return {"n": n, "colours_right": colours / n, "all_right": exact / n,
            "per_object": {k: {"n": len(v), "right": float(np.mean(v))} for k, v in per.items()}, "failures": failures}


@torch.no_grad()
def localisation(b: ShapesBackbone, n: int = 96, timesteps=(100, 300, 500, 700, 900)) -> dict:
    """For two-object world scenes noised to t: mean IoU of the top-k cells of a word's map
    (k = its object's area) with that object's mask and with the other object's mask, for the
    shape word and the colour word of each object, per shape. Maps are averaged over the
    backbone's attention layers, as the energies read them."""
    layers = cross_attention_layers(b.unet, b.defaults.attn_layers)
    size = b.image_size()[0]
    scenes = [W.make_scene(HELD_OUT + 500_000 + i, size, n_objects=2) for i in range(n)]
    alphas = b.alphas_cumprod()
    rows: dict = {}
    for t in timesteps:
        acc: dict = {}
        for i, s in enumerate(scenes):
            z0 = b.encode(torch.from_numpy(s.image).permute(2, 0, 1)[None])
            noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(i))
            z = alphas[t].sqrt() * z0 + (1 - alphas[t]).sqrt() * noise
            store = ProbeStore(b.latent_shape()[1:], detach=True)
            with probing(b.unet, store, layers):
                b.eps(z, t, b.encode_prompt(s.caption).cond)
            maps = F.interpolate(store.token_maps(b.defaults.map_res), size=s.image.shape[:2], mode="bilinear", align_corners=False)[0]
            for j, o in enumerate(s.objects):
                # "<bos> a red circle and a blue square": colour words at 2 and 6, shape words at 3 and 7
                for word, pos in (("shape", 3 + 4 * j), ("colour", 2 + 4 * j)):
                    a = maps[pos].numpy()
                    k = int(o.mask.sum())
                    top = np.zeros(a.size, bool)
                    top[np.argsort(a.ravel())[-k:]] = True
                    top = top.reshape(a.shape)
                    for key in (f"{word} word", f"{word} word, {o.shape}", f"{word} word, {('first', 'second')[j]} object"):
                        own, other = acc.setdefault(key, ([], []))
                        own.append(W.mask_iou(top, o.mask))
                        other.append(W.mask_iou(top, s.objects[1 - j].mask))
        for key, (own, other) in acc.items():
            rows.setdefault(key, {})[int(t)] = {"own_object": float(np.mean(own)), "other_object": float(np.mean(other)), "n": len(own)}
    return rows


def inversion(b: ShapesBackbone, images: np.ndarray, captions: list[str], steps: int = 50) -> dict:
    """Regenerate each image through the editor's `source` path (DDIM inversion at cfg 1 with
    safeguarded fixed-point refinement, then an edit with nothing to do); PSNR against the input,
    through `source` and from the inverted noise alone."""
    editor = Editor(b)
    through, alone = [], []
    with tempfile.TemporaryDirectory() as d, cache_in(Path(d) / "cache"):
        for i, (im, cap) in enumerate(zip(tqdm(images, desc="inversion", leave=False), captions)):
            a, f = regenerate(editor, im, cap, Path(d), f"im{i}", steps)
            through.append(a)
            alone.append(f)
            editor.sources.clear()

    def summary(s):
        s = np.array(s)
        return {"mean_psnr": float(s.mean()), "min_psnr": float(s.min()),
                "share_at_least_30db": float((s >= 30).mean()), "share_under_25db": float((s < 25).mean())}

    return {"n": len(through), "steps": steps, **summary(through), "from_noise_alone": summary(alone)}


@torch.no_grad()
def clip_retrieval(b: ShapesBackbone, n: int = 256) -> dict:
    """Zero-shot top-1 retrieval among every caption of the world, on held-out scenes."""
    if b.clip is None:
        return {}
    caps = all_captions()
    ids = b.tokenizer(caps, padding="max_length", max_length=M.MAX_LENGTH, return_tensors="pt").input_ids
    text = F.normalize(projected_features(b.clip.get_text_features(input_ids=ids)), dim=-1)
    size = b.clip.config.vision_config.image_size
    scenes = [W.make_scene(HELD_OUT + 900_000 + i, size) for i in range(n)]
    pixels = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2) * 2 - 1
    img = F.normalize(projected_features(b.clip.get_image_features(pixel_values=pixels)), dim=-1)
    best = (img @ text.T).argmax(1)
    right = [caps[j] == s.caption for j, s in zip(best.tolist(), scenes)]
    one = [r for r, s in zip(right, scenes) if len(s.objects) == 1]
    two = [r for r, s in zip(right, scenes) if len(s.objects) == 2]
    return {"n": n, "candidates": len(caps), "top1": float(np.mean(right)), "top1_one_object": float(np.mean(one)), "top1_two_objects": float(np.mean(two))}


INVERSION_IMAGES = 96  # generated images inverted (and a third as many world images)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m sampler.shapes.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="shapes")
    p.add_argument("--split", choices=list(SPLITS), default="report", help="sampling seeds: tune (choose settings) or report (quote)")
    p.add_argument("--per-caption", type=int, default=3, help="seeds per two-object caption (108 captions); one-object captions get 8")
    p.add_argument("--cfg", type=float, nargs="*", default=None, help="cfg scales to compare (default: the model's)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--device", default="cpu", help="where to sample (cuda: the caption fidelity only; the images are the same)")
    p.add_argument("--batch", type=int, default=32, help="images sampled at once")
    p.add_argument("--only", choices=["fidelity", "localisation", "inversion"],
                   help="just the caption fidelity, or just the cross-attention localisation (quick checks during training); "
                        "inversion: re-measure only that section of an existing report (--out, default docs/shapes-model.json) "
                        "and rewrite its card")
    p.add_argument("--out", type=Path, default=None, help="the report (default: docs/shapes-model.json, and the card beside it; "
                   "with --only, the report is printed and written only where --out names)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    flow = flow_kind(args.model) == ShapesFlowBackbone.kind
    if flow and args.only != "fidelity":  # localisation and inversion here read a UNet
        p.error("a shapes flow model is measured here with --only fidelity; its blocks' localisation: "
                "python -m sampler.shapes.flow_blocks")
    if args.device != "cpu" and args.only != "fidelity":
        p.error("off the CPU only the caption fidelity is measured (--only fidelity)")
    b = load_backbone(args.model, device=args.device) if flow else ShapesBackbone(args.model, device=args.device)
    d = b.sampling_defaults
    steps = args.steps or d["steps"]
    report = {"model": args.model, "split": args.split, "steps": steps, "image_size": list(b.image_size()), "fidelity": {}}
    t0 = time.time()
    ones, one_seeds = caption_grid(one_object_captions(), 8, args.split)
    twos, two_seeds = caption_grid(two_object_captions(), args.per_caption, args.split)
    two_seeds = [s + 100_000 for s in two_seeds]
    cfgs = [] if args.only in ("localisation", "inversion") else (args.cfg or [d["cfg"]])
    for cfg in tqdm(cfgs, desc="fidelity"):
        report["fidelity"][str(cfg)] = {
            "one_object": fidelity(sample(b, ones, one_seeds, steps, cfg, args.batch, progress=True), ones, one_seeds),
            "two_objects": fidelity(sample(b, twos, two_seeds, steps, cfg, args.batch, progress=True), twos, two_seeds),
        }
    if args.only in (None, "localisation"):
        report["localisation"] = localisation(b)
    if args.only in (None, "inversion"):
        gen_caps = (two_object_captions()[::9][:12] * 7 + one_object_captions())[:INVERSION_IMAGES]  # every colour pair, both orders
        generated = sample(b, gen_caps, [SPLITS[args.split] + 200_000 + i for i in range(len(gen_caps))], steps, d["cfg"])
        world_scenes = [W.make_scene(HELD_OUT + 700_000 + i, b.image_size()[0]) for i in range(INVERSION_IMAGES // 3)]
        report["inversion"] = {
            "generated": inversion(b, generated, gen_caps, steps),
            "world": inversion(b, np.stack([s.image for s in world_scenes]), [s.caption for s in world_scenes], steps),
        }
    if not args.only:
        report["clip"] = clip_retrieval(b)
    report["seconds"] = round(time.time() - t0)
    command = " ".join(["python -m sampler.shapes.evaluate", *(argv if argv is not None else __import__("sys").argv[1:])])
    if args.only == "inversion":  # one section of the card's report measured again, with its own command
        args.out = args.out or Path("docs/shapes-model.json")
        full = json.loads(args.out.read_text())
        full["inversion"] = {**report["inversion"], "command": command, "seconds": report["seconds"]}
        atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(full, indent=2) + "\n"))
        text = model_card(full, b, full.get("command", command))
        atomic_write(args.out.with_suffix(".md"), lambda tmp: tmp.write_text(text))
        print(text)
        return
    if args.only:
        print(json.dumps(report, indent=2))
        if args.out:
            atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n"))
        return
    args.out = args.out or Path("docs/shapes-model.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report["command"] = command
    atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n"))
    text = model_card(report, b, command)
    atomic_write(args.out.with_suffix(".md"), lambda tmp: tmp.write_text(text))
    print(text)


if __name__ == "__main__":
    main()

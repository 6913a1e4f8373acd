"""Which joint blocks of the shapes flow model localise objects: the measurement behind the probed
blocks (probes.joint_attention_layers picks the middle third until this has been run).

    python -m sampler.shapes.flow_blocks --model runs/shapes-flow/ema --scenes 64 --at 0.3 0.5 0.7

For world scenes of two objects, whose masks are known, the scene is encoded, noised to x_s along
the flow's path (fixed noise per scene), and one conditional forward with its caption is probed
at every joint block. Each object's shape word gives a map (16 x 16, softmax over the text tokens
as the probes compute it); per block it is scored as relocation uses maps (energies/relocate.py):
normalised to [0, 1], thresholded at 0.5, its IoU with the object's mask at the map's size. The
table is the mean IoU per block and s; the blocks worth probing are those near the best.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import dsl
from energies.files import atomic_write

from ..backbones.flow import ShapesFlowBackbone, grid_step
from ..probes import ProbeStore, probing
from . import model as M
from . import world

BLOCKS = 1 << 23  # the middle element of a measured scene's seed: scenes no trainer draws


def joint_blocks(transformer) -> list[str]:
    """Every joint block's attention module, in order."""
    return [n[: -len(".processor")] for n in transformer.attn_processors
            if n.startswith("transformer_blocks.") and n.endswith(".attn.processor")]


def map_iou(attn: torch.Tensor, mask: np.ndarray) -> float:
    """IoU of a (h, w) map, normalised to [0, 1] and thresholded at 0.5, with a mask at that size."""
    a = (attn - attn.min()) / (attn.max() - attn.min() + 1e-8)
    m = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=attn.shape, mode="area")[0, 0] > 0.5
    hit = a > 0.5
    union = (hit | m).sum().item()
    return (hit & m).sum().item() / union if union else 0.0


@torch.no_grad()
def measure(b: ShapesFlowBackbone, scenes: int, at: list[float], seed: int = 0) -> dict:
    """{"blocks": [...], "at": [...], "iou": [[mean IoU of block k at s_j] ...], "best": block}."""
    layers = joint_blocks(b.transformer)
    scores = np.zeros((len(layers), len(at)))
    n = 0
    for i in range(scenes):
        scene = world.make_scene((seed, BLOCKS, i), size=M.IMAGE_SIZE, n_objects=2)
        image = torch.from_numpy(scene.image).permute(2, 0, 1)[None]
        x0 = b.encode(image)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(i)).to(x0)
        c = b.encode_prompt(scene.caption)
        for j, s in enumerate(at):
            t = grid_step(s)
            s_grid = (t + 0.5) / 1000
            x = (1 - s_grid) * x0 + s_grid * noise
            store = ProbeStore(b.latent_shape()[1:], detach=True)
            with probing(b.unet, store, layers):
                b.eps(x / ((1 - s_grid) ** 2 + s_grid**2) ** 0.5, t, c.cond, c.added)
            for obj in scene.objects:
                word = dsl.token_indices(f"{obj.shape}#{_occurrence(scene, obj)}", scene.caption, b.tokenizer)
                for k, name in enumerate(layers):
                    scores[k, j] += map_iou(store.attn[name][0, word].mean(0), obj.mask)
        n += len(scene.objects)
    iou = scores / max(n, 1)
    best = int(iou.mean(1).argmax())
    return {"blocks": layers, "at": at, "iou": iou.round(4).tolist(), "best": layers[best], "objects": n}


def _occurrence(scene, obj) -> int:
    """Which occurrence of its shape word in the caption this object is (two squares: #1, #2)."""
    same = [o for o in scene.objects if o.shape == obj.shape]
    return same.index(obj) + 1


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m sampler.shapes.flow_blocks", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="shapes-flow", help="a shapes flow model folder (default: the shipped one)")
    p.add_argument("--scenes", type=int, default=64)
    p.add_argument("--at", type=float, nargs="+", default=[0.3, 0.5, 0.7], help="flow times s (1 = noise) to probe at")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the table as JSON")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from ..backbones import quiet_loading
    from . import flow_model

    quiet_loading()
    b = ShapesFlowBackbone(flow_model.resolve(args.model))
    result = measure(b, args.scenes, args.at, args.seed)
    print("block".ljust(30) + "".join(f"s={s:<7}" for s in args.at) + "mean")
    for name, row in zip(result["blocks"], result["iou"]):
        print(name.ljust(30) + "".join(f"{v:<9.3f}" for v in row) + f"{np.mean(row):.3f}")
    print(f"best: {result['best']} (mean IoU over {result['objects']} objects)")
    if args.out:
        atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=2)))
    return result


if __name__ == "__main__":
    main()

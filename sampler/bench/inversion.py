"""Real-image editing's first step, measured: invert an image through the user's own path
(`source "image.png"`), regenerate it, and compare (PSNR, dB), for generated images and for world
ground-truth images."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import dsl

from ..editor import Editor
from ..inversion import psnr
from ..shapes import world as W
from .scene import PROMPT


def measure_inversion(editor: Editor, seeds: list[int], steps: int, progress: bool = False) -> dict:
    """Real-image editing's first step, through the user's own path (`source "image.png"`): invert
    a generated image and a world ground-truth image, regenerate, and compare (PSNR, dB)."""
    from PIL import Image

    rows = {"generated": [], "world": []}
    size = editor.backbone.image_size()[0]  # world images at the model's own size
    old = os.environ.get("STEER_CACHE")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["STEER_CACHE"] = tmp  # a bench must not read (or fill) the user's inversion cache
        try:
            for s in tqdm(seeds, desc="inversion", disable=not progress, leave=False):
                scene = W.make_scene(10**7 + s, size)
                plain = editor.source(editor.settings(dsl.compile(f'prompt "{PROMPT}"\nseed {s}\nsteps {steps}')), progress=False)
                for kind, image, caption in (("generated", plain.image, PROMPT), ("world", scene.image, scene.caption)):
                    path = Path(tmp) / f"{kind}-{s}.png"
                    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(path)
                    target = np.asarray(Image.open(path), dtype=np.float32) / 255  # what the user's file holds
                    prog = dsl.compile(f'source "{path.name}"\nprompt "{caption}"\nsteps {steps}')
                    src = editor.source(editor.settings(prog), progress=False, script_dir=tmp)
                    rows[kind].append(psnr(torch.from_numpy(src.image), torch.from_numpy(target)))
        finally:
            if old is None:
                os.environ.pop("STEER_CACHE", None)
            else:
                os.environ["STEER_CACHE"] = old
    return {kind: {"n": len(v), "mean_psnr": float(np.mean(v)), "min_psnr": float(np.min(v)),
                   "share_at_least_30db": float(np.mean(np.array(v) >= 30))} for kind, v in rows.items()}

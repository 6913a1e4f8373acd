"""Real-image editing's first step, measured: invert an image through the user's own path
(`source "image.png"`), regenerate it, and compare (PSNR, dB), for generated images and for world
ground-truth images."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import dsl
from energies import program as P

from ..denoiser import denoiser
from ..editor import Editor
from ..guided import sample_ddim
from ..images import load_image, write_png
from ..inversion import psnr
from ..shapes import world as W
from .scene import PROMPT


@contextlib.contextmanager
def cache_in(folder: Path):
    """Inversions kept in `folder` for the block: a measurement neither reads nor fills the
    user's inversion cache."""
    old = os.environ.get("STEER_CACHE")
    os.environ["STEER_CACHE"] = str(folder)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("STEER_CACHE", None)
        else:
            os.environ["STEER_CACHE"] = old


def regenerate(editor: Editor, image: np.ndarray, caption: str, folder: Path, name: str, steps: int) -> tuple[float, float]:
    """Save `image` as a PNG, edit nothing with it as `source`, and return two PSNRs against the
    PNG: the edit's image (the path a user's photo takes: load, encode, invert, cache, source pass,
    edit pass with the source's offsets, decode), and plain sampling from the inverted z_T alone
    (how accurate the inversion itself is, without direct inversion's offsets)."""
    path = folder / f"{name}.png"
    write_png(image, path)
    target = torch.from_numpy(load_image(path, editor.backbone.image_size())).permute(2, 0, 1)[None]
    program = P.Program(settings=P.Settings(prompt=caption, source=path.name, steps=steps))
    edited = editor.run(program, progress=False, script_dir=folder)
    b, src = editor.backbone, editor.source(editor.settings(program), progress=False, script_dir=folder)
    with torch.no_grad():
        free = b.decode(sample_ddim(denoiser(b, src.cond, 1.0), src.noise, src.timesteps, *b.schedule(), disable=True))
    return psnr(torch.from_numpy(edited.image).permute(2, 0, 1)[None], target), psnr(free, target)


def measure_inversion(editor: Editor, seeds: list[int], steps: int, progress: bool = False) -> dict:
    """Real-image editing's first step, through the user's own path (`source "image.png"`): invert
    a generated image and a world ground-truth image, regenerate with an edit that has nothing to
    do, and compare (PSNR, dB); beside it, sampling from the inverted noise alone."""
    rows = {"generated": [], "world": []}
    alone = {"generated": [], "world": []}
    size = editor.backbone.image_size()[0]  # world images at the model's own size
    with tempfile.TemporaryDirectory() as tmp, cache_in(Path(tmp)):
        for s in tqdm(seeds, desc="inversion", disable=not progress, leave=False):
            scene = W.make_scene(10**7 + s, size)
            plain = editor.source(editor.settings(dsl.compile(f'prompt "{PROMPT}"\nseed {s}\nsteps {steps}')), progress=False)
            for kind, image, caption in (("generated", plain.image, PROMPT), ("world", scene.image, scene.caption)):
                through, free = regenerate(editor, image, caption, Path(tmp), f"{kind}-{s}", steps)
                rows[kind].append(through)
                alone[kind].append(free)
    return {kind: {"n": len(v), "mean_psnr": float(np.mean(v)), "min_psnr": float(np.min(v)),
                   "share_at_least_30db": float(np.mean(np.array(v) >= 30)),
                   "from_noise_alone_mean_psnr": float(np.mean(alone[kind]))} for kind, v in rows.items()}

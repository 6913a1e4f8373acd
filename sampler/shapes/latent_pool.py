"""A pool of world scenes encoded once by the autoencoder, for the UNet stage to draw from.

Encoding a batch through the VAE is about a fifth of a UNet training step on the CPU. The world
is simple, so a few hundred thousand scenes, each drawn several times with fresh noise and a
fresh timestep, serve as well as fresh scenes. The pool is a function of (seed, size, p_one):
scene i is world.make_scene((seed, POOL, i)), a seed no other stage draws. It is built in chunks
and saved as it goes (safetensors), so building it resumes too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from energies.files import atomic_write

from . import world

POOL = 1 << 29  # the middle element of a pool scene's seed


@dataclass
class LatentPool:
    mean: torch.Tensor  # (N, C, h, w) the posterior means, fp16
    std: torch.Tensor  # (N, C, h, w) the posterior standard deviations, fp16
    caption: torch.Tensor  # (N,) index into captions
    captions: list[str]

    def __len__(self):
        return self.mean.shape[0]

    def draw(self, vae, seed: int, step: int, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        """The step's batch: latents sampled from the pooled posteriors (as SD trains), scaled
        like model.vae_encode's, and their captions. A function of (seed, step)."""
        idx = torch.from_numpy(np.random.default_rng((seed, step, POOL)).integers(len(self), size=batch))
        mean, std = self.mean[idx].float(), self.std[idx].float()
        z = mean + std * torch.randn(mean.shape, generator=generator)
        z = (z - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor
        return z, [self.captions[int(i)] for i in self.caption[idx]]


def _render(args) -> tuple[np.ndarray, str]:
    """Scene i of the pool: (image, caption). A function of its seed alone, so workers may draw it."""
    seed, i, size, p_one = args
    s = world.make_scene((seed, POOL, i), size, p_one=p_one)
    return s.image, s.caption


@torch.no_grad()
def build(path: Path, vae, seed: int, n: int, size: int, p_one: float, chunk: int = 256, progress: bool = True,
          workers: int = 1) -> LatentPool:
    """Encode scenes 0..n-1 of the pool (or load them, or go on where a saved partial pool ends).
    With workers > 1 the scenes are drawn in that many processes (drawing, not encoding, is the
    slow part where the VAE runs on a GPU); the pool is the same either way."""
    from safetensors.torch import load_file, save_file

    mean = std = None
    captions: list[str] = []
    caption_ids: list[int] = []
    done = 0
    if path.is_file():
        t = load_file(str(path))
        meta = json.loads(_metadata(path)["pool"])
        mean, std, caption_ids, captions, done = t["mean"], t["std"], t["caption"].tolist(), meta["captions"], meta["done"]
        if meta["n"] != n or meta["seed"] != seed or meta["p_one"] != p_one or meta["size"] != size:
            raise SystemExit(f"{path} is a pool of another recipe ({meta}); remove it or use its recipe")
        if done == n:
            return LatentPool(mean, std, torch.tensor(caption_ids), captions)
    bar = tqdm(total=n, initial=done, desc="latent pool", disable=not progress, dynamic_ncols=True)
    draw, executor = map, None
    if workers > 1 and done < n:
        import concurrent.futures

        executor = concurrent.futures.ProcessPoolExecutor(workers)
        draw = lambda f, items: executor.map(f, items, chunksize=16)  # noqa: E731
    means, stds = ([mean[:done]] if mean is not None else []), ([std[:done]] if std is not None else [])
    while done < n:
        k = min(chunk, n - done)
        scenes = list(draw(_render, [(seed, done + i, size, p_one) for i in range(k)]))
        x = torch.from_numpy(np.stack([image for image, _ in scenes])).permute(0, 3, 1, 2) * 2 - 1
        d = vae.encode(x.to(vae.device, vae.dtype)).latent_dist
        means.append(d.mean.half().cpu().contiguous())
        stds.append(d.std.half().cpu().contiguous())
        for _, caption in scenes:
            if caption not in captions:
                captions.append(caption)
            caption_ids.append(captions.index(caption))
        done += k
        bar.update(k)
        if done % (chunk * 40) == 0 or done == n:  # save as it goes: building resumes too
            tensors = {"mean": torch.cat(means).contiguous(), "std": torch.cat(stds).contiguous(),
                       "caption": torch.tensor(caption_ids, dtype=torch.int32)}
            meta = {"pool": json.dumps({"n": n, "seed": seed, "p_one": p_one, "size": size, "done": done, "captions": captions})}
            atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    bar.close()
    if executor is not None:
        executor.shutdown()
    return LatentPool(torch.cat(means), torch.cat(stds), torch.tensor(caption_ids), captions)


def _metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}

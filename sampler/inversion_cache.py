"""Inversions of photos, kept on disk: inverting a photo costs more than sampling it, and a
user edits the same photo many times.

An entry is one safetensors file named by the hash of everything the inversion depends on (the
model, the photo's bytes, prompt, steps, cfg, method and this code's version), holding z_T and,
for null-text inversion, one unconditional embedding per step.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from energies.files import atomic_write

VERSION = 1  # bump when the inversion changes, so cached inversions are redone


def folder() -> Path:
    """Where inversions are kept: $STEER_CACHE/inversions, else ~/.cache/steer/inversions."""
    return Path(os.environ.get("STEER_CACHE", Path.home() / ".cache" / "steer")) / "inversions"


def key_of(meta: dict) -> str:
    return hashlib.sha256(json.dumps({**meta, "version": VERSION}, sort_keys=True).encode()).hexdigest()[:32]


def load(meta: dict, device) -> dict[str, torch.Tensor] | None:
    """The cached tensors for `meta`, or None."""
    from safetensors.torch import load_file

    path = folder() / f"{key_of(meta)}.safetensors"
    if not path.is_file():
        return None
    return load_file(str(path), device=str(device))


def save(meta: dict, tensors: dict[str, torch.Tensor]):
    """Write an entry atomically (a hidden temporary file, then a rename)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(folder() / f"{key_of(meta)}.safetensors",
                 lambda tmp: save_file(tensors, str(tmp), metadata={"steer": json.dumps({**meta, "version": VERSION})}))

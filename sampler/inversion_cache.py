"""Inversions of photos, kept on disk: inverting a photo costs more than sampling it, and a
user edits the same photo many times.

An entry is one safetensors file named by the hash of everything the inversion depends on (the
model, the photo's bytes, prompt, steps, cfg, method and this code's version), holding z_T, the
inverted latent at every later step and the photo's own (the edit pass's drift correction is
taken along them), and for null-text inversion one unconditional embedding per step.

The cache only ever saves work: an entry that cannot be read, or does not hold what it should
(its metadata, every tensor in its shape, finite numbers), is reported, removed and redone; a
cache folder that cannot be written is used read-only, with a warning. Neither stops an edit.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from energies.errors import warn
from energies.files import atomic_write

VERSION = 2  # bump when the inversion changes, so cached inversions are redone


def folder() -> Path:
    """Where inversions are kept: $STEER_CACHE/inversions, else ~/.cache/steer/inversions."""
    return Path(os.environ.get("STEER_CACHE", Path.home() / ".cache" / "steer")) / "inversions"


def key_of(meta: dict) -> str:
    return hashlib.sha256(json.dumps({**meta, "version": VERSION}, sort_keys=True).encode()).hexdigest()[:32]


def path_of(meta: dict) -> Path:
    return folder() / f"{key_of(meta)}.safetensors"


def load(meta: dict, device, expected: dict[str, tuple]) -> dict[str, torch.Tensor] | None:
    """The cached tensors for `meta`, or None: when there is no entry, or when the entry is bad
    (then it is removed, so that the inversion is redone and saved again). `expected`: each
    tensor the entry must hold -> its shape."""
    path = path_of(meta)
    if not path.is_file():
        return None
    tensors, why = _read(path, meta, expected)
    if why is not None:
        warn(f"the cached inversion {path} is damaged ({why}); inverting the photo again")
        try:
            path.unlink(missing_ok=True)  # so that the redone inversion can take its place
        except OSError:  # a read-only cache: the bad entry stays, and is read past every time
            pass
        return None
    return {k: v.to(device) for k, v in tensors.items()}


def _read(path: Path, meta: dict, expected: dict[str, tuple]) -> tuple[dict | None, str | None]:
    """(tensors, None) for a good entry, (None, what is wrong) for a bad one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            recorded = (f.metadata() or {}).get("steer")
            tensors = {k: f.get_tensor(k) for k in f.keys() if k in expected}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        return None, f"unreadable: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    if recorded is None or _parsed(recorded) != {**meta, "version": VERSION}:
        return None, "its metadata is not this inversion's"
    for name, shape in expected.items():
        if name not in tensors:
            return None, f"no {name!r} tensor"
        if tuple(tensors[name].shape) != tuple(shape):
            return None, f"{name!r} is {tuple(tensors[name].shape)}, not {tuple(shape)}"
        if not bool(torch.isfinite(tensors[name]).all()):
            return None, f"{name!r} has values that are not finite"
    return tensors, None


def _parsed(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def save(meta: dict, tensors: dict[str, torch.Tensor]):
    """Write an entry atomically (a hidden temporary file, then a rename). A cache that cannot be
    written is a warning: the edit goes on, and the photo is inverted again next time."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    path = path_of(meta)
    try:
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"steer": json.dumps({**meta, "version": VERSION})}))
    except OSError as e:
        warn(f"cannot write the inversion cache in {path.parent} ({e.strerror or e}); using it read-only, "
             "so this photo will be inverted again next time")

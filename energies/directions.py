"""The store of learned directions: safetensors files with JSON metadata, found by name.

A direction NAME is the file NAME.safetensors in, first to last:
  1. a `directions/` folder next to the script,
  2. the user's folder ($STEER_DIRECTIONS, else ~/.steer/directions),
  3. the `directions/` folder shipped with the model.
Only safetensors are read; nothing is unpickled.
"""

from __future__ import annotations

import os
from pathlib import Path

from dsl.errors import SteerCompileError, did_you_mean


def search_path(script_dir: Path | None = None, model_dir: Path | None = None) -> list[Path]:
    paths = []
    if script_dir is not None:
        paths.append(Path(script_dir) / "directions")
    paths.append(Path(os.environ.get("STEER_DIRECTIONS", Path.home() / ".steer" / "directions")))
    if model_dir is not None:
        paths.append(Path(model_dir) / "directions")
    return paths


def known(paths) -> dict[str, Path]:
    """Every direction on the search path, by name; earlier folders win."""
    found: dict[str, Path] = {}
    for folder in paths:
        if folder.is_dir():
            for f in sorted(folder.glob("*.safetensors")):
                found.setdefault(f.stem, f)
    return found


def find(term, paths) -> Path:
    """The file of a Direction term, or a SteerCompileError listing the known directions."""
    table = known(paths)
    if term.name in table:
        return table[term.name]
    where = ", ".join(str(p) for p in paths)
    listing = ", ".join(table) if table else f"none (searched {where})"
    hint = did_you_mean(term.name, table)
    raise SteerCompileError(
        f"unknown direction {term.name!r}", term.span, hint=(hint + "; " if hint else "") + f"known directions: {listing}"
    )

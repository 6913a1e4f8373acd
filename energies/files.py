"""Writing a file (or a folder) so that nobody ever reads half of it: atomic_write.

At the bottom of the stack, beside the errors: the direction store, the editor's images and
caches, the trainers' checkpoints and `steer fmt -w` all write through it."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Callable


def atomic_write(path: Path | str, write: Callable[[Path], object], mode: int | None = None) -> Path:
    """Write `path` by way of a temporary beside it, then rename it into place: a reader, or a crash
    mid-write, never meets a half-written file. `write(tmp)` writes the file, or a whole folder, at
    `tmp`, a fresh hidden name in the same folder ending in ".tmp" (so a writer that guesses the
    format from the name must be told it, e.g. PIL's format="PNG"). The folder is made if missing.

    A file gets the permissions of an ordinary new file (0666 less the umask), whatever the writer
    used: safetensors and mkstemp write 0600; or `mode`, to keep a rewritten file's own. A folder replaces the old one by removing it first (a
    rename cannot put a folder over a non-empty one), so a crash in between leaves no folder rather
    than a broken one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")  # unique: two writers never share one
    try:
        write(tmp)
        if tmp.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
        else:
            os.chmod(tmp, 0o666 & ~_umask() if mode is None else mode)
            os.replace(tmp, path)
    except BaseException:  # Ctrl-C included: leave no temporary behind
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    umask = os.umask(0)  # the only way to read it is to set it
    os.umask(umask)
    return umask

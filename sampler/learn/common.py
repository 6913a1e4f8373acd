"""What the learners share: the usage error, the rule for direction names, resuming a checkpoint
only with the recipe that made it, and the command recorded in a direction file."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from .. import training as T

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")  # the grammar's NAME: what `direction NAME` can refer to


class UsageError(Exception):
    """A mistake on the command line: printed as `steer learn: error: ...`, exit status 2."""


def check_name(name: str):
    if not NAME.fullmatch(name):
        raise UsageError(f"{name!r} cannot be a direction name: use letters, digits, '_' and '-', starting with a letter")


def start(ckpt: Path, resume: bool, recipe: dict) -> tuple[dict, dict] | None:
    """The checkpoint to continue from, (tensors, state), or None for a fresh run. A checkpoint made
    with other settings is refused: continuing it would learn a mixture of two recipes."""
    if not resume:
        if ckpt.exists():
            print(f"starting fresh; {ckpt} is overwritten (--resume continues it)")
        return None
    if not ckpt.exists():
        print(f"no checkpoint at {ckpt}: starting fresh")
        return None
    try:
        return T.resume(ckpt, recipe)
    except T.SettingsChanged as e:
        raise UsageError(f"{e}; drop --resume to start again") from None


def command(argv) -> str:
    """The command line as a direction file records it (its "recipe")."""
    return "steer learn " + shlex.join(argv)

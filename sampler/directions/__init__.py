"""Learned directions in an edit: one plug-in per kind, behind one interface (base.py).

    hspace  Asyrp: delta-h added to the mid block's output, the asymmetric reverse step
    noise   NoiseCLR: a learned token's noise difference added to epsilon
    prompt  Pix2Pix-Zero: the prompt's embedding shifted by delta_c

A direction file (energies/directions.py) names its kind; the editor asks the kind to prepare
its state, to condition each step and to guide it.
"""

from __future__ import annotations

from energies import directions as files
from energies.errors import SteerCompileError

from .base import DirectionKind, Step
from .hspace import HSpace
from .noise import Noise
from .prompt import Prompt

KINDS: dict[str, DirectionKind] = {k.name: k for k in (HSpace(), Noise(), Prompt())}



def check(d: files.Direction, backbone, span=None) -> files.Direction:
    """`d` if it fits `backbone` (family and tensor shapes), else a SteerCompileError naming both."""
    learned = str(d.meta.get("backbone", "?"))
    here = files.backbone_id(backbone)

    def mismatch(why: str):
        return SteerCompileError(
            f"direction {d.name!r} was learned on {learned}, not on this model {here}: {why}", span,
            hint=f"learn it again on this model: steer learn {files.LEARN[d.kind]} ... --model {backbone.name}",
        )

    learned_kind = learned.split(":", 1)[0]
    if learned_kind != backbone.kind:
        raise mismatch(f"a {learned_kind!r} backbone, this is a {backbone.kind!r} one")
    why = KINDS[d.kind].mismatch(d, backbone)
    if why is not None:
        raise mismatch(why)
    if d.kind == "hspace" and d.tensors["delta_h"].dim() == 4 and "timesteps" not in d.tensors:
        raise SteerCompileError(f"direction {d.name!r} has one delta-h per timestep but no 'timesteps' tensor", span)
    return d


def load(path, backbone, span=None) -> files.Direction:
    """Read a direction file (energies/directions.py) and check that it fits `backbone`."""
    return check(files.read_direction(path, span), backbone, span)


__all__ = ["KINDS", "DirectionKind", "Step", "check", "load"]

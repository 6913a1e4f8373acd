"""Learned directions in an edit: one plug-in per kind, behind one interface (base.py).

    hspace  Asyrp: delta-h added to the mid block's output, the asymmetric reverse step
    noise   NoiseCLR: a learned token's noise difference added to epsilon
    prompt  Pix2Pix-Zero: the prompt's embedding shifted by delta_c

A direction file (energies/directions.py) names its kind; the editor asks the kind to prepare
its state, to condition each step and to guide it.
"""

from __future__ import annotations

from .base import DirectionKind, Step
from .hspace import HSpace
from .noise import Noise
from .prompt import Prompt

KINDS: dict[str, DirectionKind] = {k.name: k for k in (HSpace(), Noise(), Prompt())}

__all__ = ["KINDS", "DirectionKind", "Step"]

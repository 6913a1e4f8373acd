"""The interface of a direction kind: what it prepares, how it acts on a step, its window.

A kind is one module in this package: its math, and one class implementing DirectionKind. Adding
a kind is that module, its entry in KINDS (directions/__init__.py), and its name, tensor and
learner in the file format's tables (energies/directions.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sampler.guided import Guidance


@dataclass
class Step:
    """What a kind may read at one step of the edit pass."""

    backbone: object
    z: torch.Tensor  # z_t (after any relocation and latent guidance of this step's energies)
    i: int  # step index
    t: int  # timestep
    progress: float  # i / steps: the windows' clock
    cond: object  # this step's Conditioning (prompt directions already applied)
    cfg: float
    regions: dict  # id(term) -> (H, W) mask of a `within` term, or None


class DirectionKind:
    name: str
    window: tuple[float, float]  # the default window, when the script gives none

    def mismatch(self, direction, backbone) -> str | None:
        """Why a direction file of this kind does not fit `backbone` (its tensor shapes), or None."""
        raise NotImplementedError

    def prepare(self, term, direction, backbone, settings):
        """The typed state this kind reads at every step (stored on the BoundTerm)."""
        raise NotImplementedError

    def condition(self, cond, active: list):
        """The step's Conditioning, given the active terms of this kind: most kinds leave it."""
        return cond

    def guide(self, g: Guidance, terms: list, step: Step) -> Guidance:
        """The step's Guidance with this kind's terms applied. `terms` are all of this kind's
        terms with a non-zero weight, active or not (a kind may act outside its windows, as
        Asyrp's quality boosting does)."""
        return g

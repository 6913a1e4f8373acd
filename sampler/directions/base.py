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


@dataclass(frozen=True)
class ModelShapes:
    """What a direction file must fit: the model's family and name, and the shape of what each
    kind shifts. From a loaded backbone (directions.shapes_of) or from the model's config files
    alone (directions.model_shapes), so `steer check` refuses what `steer run` refuses without
    loading the weights."""

    kind: str  # "shapes" | "sd" | "sdxl"
    name: str
    mid_block: tuple[int, int, int]  # (C, h, w) of h, the UNet's mid-block output: an hspace delta-h
    token_width: int  # W of a row of the text encoders' input tables, concatenated: a noise embedding
    prompt: tuple[int, int]  # (T, D) of the encoder hidden states a prompt conditions on: a prompt delta


class DirectionKind:
    name: str
    window: tuple[float, float]  # the default window, when the script gives none

    def mismatch(self, direction, shapes: ModelShapes) -> str | None:
        """Why a direction file of this kind does not fit the model of `shapes`, or None."""
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

"""What an edit gives back: the images, the program as run, and what happened on the way."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

import dsl
from energies import program as P

from .drag import DragOutcome
from .images import write_png


@dataclass
class EditResult:
    image: np.ndarray  # (H, W, 3) float in [0, 1]
    source_image: np.ndarray
    latent: torch.Tensor
    program: P.Program  # the program as run, settings filled in
    model: str
    energies: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # term -> (step, energy)
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # word -> last edit-step attention map
    drag: DragOutcome | None = None  # what the drag's optimisation did, if the program has drags
    warnings: list = field(default_factory=list)  # SteerWarnings: statements with nothing to do, or in conflict

    def save(self, path, source_path=None):
        """Write the edited image (and the source) as PNG, atomically, with the program in it."""
        write_png(self.image, path, self.record())
        if source_path is not None:
            write_png(self.source_image, source_path, {**self.record(), "steer:image": "source"})

    def record(self) -> dict:
        """The PNG text chunks: program, model and seed, enough to make the image again."""

        return {"steer:program": dsl.format(self.program), "steer:model": self.model, "steer:seed": str(self.program.settings.seed)}

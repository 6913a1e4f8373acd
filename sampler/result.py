"""What an edit gives back: the images, the program as run, and what happened on the way.

Its token maps are DAAM's heat maps (Tang et al. 2023): a word's cross-attention, its token
positions averaged, upsampled to the image and normalised to [0, 1]. By default they are
averaged over every sampling step, as DAAM does; `at=f` takes the one step at sampling fraction
f (0: the first, noisiest step; 1: the last), `at=(a, b)` the steps whose fraction is in a..b.
The source pass recorded its maps at every step; the edit pass's are made on demand, one probed
conditional forward at the recorded edit latent of each step asked for (probes.TrajectoryMaps).
"""

from __future__ import annotations

from collections.abc import Callable
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
    # (T, r, r), indexed by token position (not by word: token_map resolves words): the maps of the
    # last edit step whose energies read attention; None when no statement read it
    maps: torch.Tensor | None = None
    drag: DragOutcome | None = None  # what the drag's optimisation did, if the program has drags
    warnings: list = field(default_factory=list)  # SteerWarnings: statements with nothing to do, or in conflict
    source_maps: list[torch.Tensor] = field(default_factory=list)  # (T, r, r) at each source step
    edit_maps: Callable[[int], torch.Tensor] | None = None  # step -> (T, r, r) of the edit pass, made on demand
    tokenizer: object = None  # the model's, to resolve words as the language does

    @property
    def steps(self) -> int:
        return len(self.source_maps)

    def token_map(self, word: str, at: float | tuple[float, float] | None = None, image: str = "edit") -> np.ndarray:
        """(H, W) in [0, 1]: the cross-attention map of `word` ("red", "red circle", "circle#2")
        in the edited image (image="edit") or the source (image="source"), averaged over the steps
        `at` names (see the module's docstring). A word not in the prompt is a SteerCompileError."""
        positions = dsl.token_indices(word, self.program.settings.prompt, self.tokenizer)
        return heat_map(self.step_maps(image, at), positions, self.image.shape[:2])

    def step_maps(self, image: str, at: float | tuple[float, float] | None = None) -> list[torch.Tensor]:
        """The (T, r, r) maps of the steps `at` names, of the edit or the source pass."""
        if image not in ("edit", "source"):
            raise ValueError(f"image is 'edit' or 'source', not {image!r}")
        if image == "edit" and self.edit_maps is None:
            raise ValueError("this result kept no edit trajectory to read maps from")
        read = self.source_maps.__getitem__ if image == "source" else self.edit_maps
        return [read(i) for i in steps_at(at, self.steps)]

    def save(self, path, source_path=None):
        """Write the edited image (and the source) as PNG, atomically, with the program in it."""
        write_png(self.image, path, self.record())
        if source_path is not None:
            write_png(self.source_image, source_path, {**self.record(), "steer:image": "source"})

    def sheet(self, path, words: list[str] | None = None, at=None):
        """One PNG: source and edit side by side, the maps of the tokens the script names (or
        `words`), every statement's energy curve (pictures.py)."""
        from .pictures import save_sheet

        save_sheet(self, path, words, at)

    def save_maps(self, path, words: list[str] | None = None, at: list | None = None):
        """DAAM-style heat maps of every prompt word (or `words`) over source and edit, at each
        sampling fraction of `at` (default: averaged over all steps), as one PNG grid."""
        from .pictures import save_maps

        save_maps(self, path, words, at)

    def _repr_png_(self) -> bytes:
        """How Jupyter shows a result: source and edit side by side, a small image enlarged by a
        whole factor (no blur), as PNG bytes."""
        import io

        from PIL import Image

        from .pictures import enlarged

        gap = np.ones((self.image.shape[0], max(1, self.image.shape[1] // 32), 3), np.float32)
        pair = enlarged(np.concatenate([self.source_image, gap, self.image], axis=1))
        buf = io.BytesIO()
        Image.fromarray((np.clip(pair, 0, 1) * 255).round().astype(np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    def _repr_pretty_(self, p, cycle):
        """IPython's text for a result: one line, not the dataclass's arrays and tensors."""
        h, w = self.image.shape[:2]
        s = self.program.settings
        p.text(f"EditResult({w}x{h}, model {self.model!r}, prompt {s.prompt!r}, seed {s.seed}, {len(self.program.terms)} statements)")

    def record(self) -> dict:
        """The PNG text chunks: program, model and seed, enough to make the image again."""

        return {"steer:program": dsl.format(self.program), "steer:model": self.model, "steer:seed": str(self.program.settings.seed)}


def steps_at(at: float | tuple[float, float] | None, steps: int) -> list[int]:
    """The step indices a sampling fraction names: None -> all of them (DAAM), f -> the step at f
    (1.0 is the last), (a, b) -> those with a <= i / steps <= b, or the one at a if none is."""
    if steps < 1:
        raise ValueError("the result has no sampling steps")
    at_fraction = lambda f: min(max(int(f * steps), 0), steps - 1)  # noqa: E731
    if at is None:
        return list(range(steps))
    if isinstance(at, (int, float)):
        return [at_fraction(float(at))]
    a, b = at
    return [i for i in range(steps) if a <= i / steps <= b] or [at_fraction(a)]


def heat_map(step_maps: list[torch.Tensor], positions: list[int], hw: tuple[int, int]) -> np.ndarray:
    """DAAM's heat map: the token positions' maps averaged over steps and positions, upsampled
    (bilinear) to `hw` and scaled to [0, 1]. A flat map is all zeros: nothing stands out."""
    import torch.nn.functional as F

    m = torch.stack([s[positions].float().mean(0) for s in step_maps]).mean(0)
    m = F.interpolate(m[None, None].cpu(), size=tuple(hw), mode="bilinear", align_corners=False)[0, 0]
    span = m.max() - m.min()
    m = (m - m.min()) / span if span > 0 else torch.zeros_like(m)
    return m.numpy()

"""Bound terms and the energy each one computes.

A BoundTerm is a Term resolved against a backbone (token positions, effective weight, window,
placement; the language's `dsl.bind` makes them). `ENERGIES` maps a term kind to a function of
(bound term, features now, source features at the same step) -> scalar energy: a table, not an
if-chain. Everything here is tensor math over features: no model, no file, no text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import attention as A
from . import defaults as D
from . import program as P
from . import vit as V
from . import x0 as X

LAYOUT_KINDS = {"move", "shift", "move_to", "resize", "size_to", "size_like", "shape_from", "drag", "remove"}  # a drag within a token moves it


@dataclass
class BoundTerm:
    term: P.TermBase
    label: str  # canonical text of the term, for progress bars and messages
    weight: float  # default weight x the script's weight
    window: tuple[float, float]
    placement: str
    every: int = 1  # energy terms: the gradient at every k-th step, reused between (`every k`)
    token: list[int] = field(default_factory=list)  # positions of the term's token
    other: list[int] = field(default_factory=list)  # positions of the other token (shape/appearance from)
    objects: list[list[int]] = field(default_factory=list)  # heads of the objects a keep term covers
    direction: object = None  # a direction term's file (energies.directions.Direction), read when binding
    edit_prompt: str | None = None  # recolour, remove: the prompt as the edit makes it (binding writes it)
    swaps: str = "words"  # recolour: what its prompt swaps, "words" (describing words) or "head" (a shape transfer's noun)
    target: tuple[float, float] | None = None  # move_to: the absolute target, from the source (the editor resolves it)
    factor: float | None = None  # size_like, size_to: the area factor, from the source (the editor resolves it)
    reach: float = 1.0  # layout terms: how far the relocation carries the object, the script's weight in [0, 1]
    state: object = None  # what the editor prepares before sampling: ClipText, StyleReference, a direction kind's state

    @property
    def kind(self) -> str:
        return self.term.kind

    def active(self, progress: float) -> bool:
        a, b = self.window
        return a <= progress < b or (b >= 1.0 and progress >= 1.0)

    @property
    def needs(self) -> set[str]:
        return NEEDS[self.kind] | ({"attn"} if self.kind == "keep_pixels" and self.token else set())


NEEDS = {
    "move_to": {"attn"},
    "size_like": {"attn"},
    "recolour": set(),  # not an energy: a shift of the prompt's embedding (its hold is a keep_attention term)
    "remove": set(),  # not an energy: a relocation that erases, then the prompt without the object
    "move": {"attn"},
    "shift": {"attn"},
    "resize": {"attn"},
    "size_to": {"attn"},
    "shape_from": {"attn"},
    "appearance_from": {"attn", "features"},
    "keep_appearance": {"attn", "features"},
    "keep_shape": {"attn"},
    "keep_attention": {"layers"},  # each held layer's maps (Readout.hold_layers), not the averaged token maps
    # the predicted-x0 family: the decoded x0 ("image"), and what a ViT or CLIP sees in it
    "keep_structure": {"image", "vit"},
    "style": {"image", "vit"},
    "clip": {"image", "clip"},
    "keep_pixels": {"image"},
    "direction": set(),  # not an energy: the editor applies directions itself (h-space hook, noise eps)
    "drag": set(),  # not an energy: sampler/drag.py optimises the bottleneck itself
}


@dataclass
class ClipText:
    """The CLIP text features a `clip` term compares against (DiffusionCLIP's directional loss)."""

    target: torch.Tensor
    source: torch.Tensor


@dataclass
class StyleReference:
    """The ViT CLS token of a `style image` term's reference image."""

    cls: torch.Tensor


@dataclass
class Features:
    """What one forward exposed, for one image: token maps, per-layer maps, decoder features,
    and for the x0 family the decoded predicted x0 and what a ViT and CLIP see in it."""

    maps: torch.Tensor | None = None  # (T, r, r), averaged over the probed layers
    layers: list[torch.Tensor] = field(default_factory=list)  # per layer (T, h, w)
    features: torch.Tensor | None = None  # (C, H, W)
    image: torch.Tensor | None = None  # (3, H, W) in [-1, 1]: the decoded predicted x0
    vit_keys: torch.Tensor | None = None  # (N, D): last-layer keys of the ViT on `image`
    vit_cls: torch.Tensor | None = None  # (D,)
    clip_image: torch.Tensor | None = None  # (D,), normalised

    def token(self, indices: list[int]) -> torch.Tensor:
        return self.maps[indices].mean(0)


def move(b: BoundTerm, now: Features, src: Features) -> torch.Tensor:
    return A.move_energy(now.token(b.token), src.token(b.token), b.term.to, D.SILHOUETTE, D.SHARP_CENTROID)


def shift(b: BoundTerm, now: Features, src: Features) -> torch.Tensor:
    start = A.object_centroid(src.token(b.token), D.SHARP_CENTROID).detach()
    target = start + torch.tensor(b.term.by, dtype=start.dtype)
    return A.move_energy(now.token(b.token), src.token(b.token), target, D.SILHOUETTE, D.SHARP_CENTROID)


def move_to(b: BoundTerm, now: Features, src: Features) -> torch.Tensor:
    return A.move_energy(now.token(b.token), src.token(b.token), b.target, D.SILHOUETTE, D.SHARP_CENTROID)


def size_like(b: BoundTerm, now: Features, src: Features) -> torch.Tensor:
    return A.resize_energy(now.token(b.token), src.token(b.token), b.factor, D.SILHOUETTE)


def resize(b: BoundTerm, now: Features, src: Features) -> torch.Tensor:
    return A.resize_energy(now.token(b.token), src.token(b.token), b.term.factor, D.SILHOUETTE)


def size_to(b: BoundTerm, now: Features, src: Features) -> torch.Tensor:
    """A resize by the factor the editor found (the area asked over the object's, in pixels): the
    map's own size is no measure of the object's area, so it is held relative to the source."""
    if b.factor is None:  # not resolved against a source (energies used on their own)
        return A.size_energy(now.token(b.token), b.term.area)
    return A.resize_energy(now.token(b.token), src.token(b.token), b.factor, D.SILHOUETTE)


def shape_from(b: BoundTerm, now: Features, src: Features) -> torch.Tensor:
    return A.shape_from_energy(now.token(b.token), src.token(b.token), src.token(b.other))


def appearance_from(b: BoundTerm, now: Features, src: Features) -> torch.Tensor:
    return A.appearance_energy(now.features, now.token(b.token), src.features, src.token(b.other))


def keep_appearance(b: BoundTerm, now: Features, src: Features) -> torch.Tensor:
    terms = [A.appearance_energy(now.features, now.token(o), src.features, src.token(o)) for o in b.objects]
    return torch.stack(terms).mean()


def keep_shape(b: BoundTerm, now: Features, src: Features) -> torch.Tensor:
    terms = [A.shape_energy(now.token(o), A.hard_mask(src.token(o))) for o in b.objects]
    return torch.stack(terms).mean()


def keep_attention(b: BoundTerm, now: Features, src: Features) -> torch.Tensor:
    return A.attention_keep_energy(now.layers, src.layers, b.objects[0] if b.objects else None)


def keep_structure(b: BoundTerm, now: Features, src: Features) -> torch.Tensor:
    return V.structure_energy(now.vit_keys, src.vit_keys)


def style(b: BoundTerm, now: Features, src: Features) -> torch.Tensor:
    return V.style_energy(now.vit_cls, b.state.cls)


def clip(b: BoundTerm, now: Features, src: Features) -> torch.Tensor:
    return X.directional_clip_energy(now.clip_image, src.clip_image, b.state.target, b.state.source)


def keep_pixels(b: BoundTerm, now: Features, src: Features) -> torch.Tensor:
    if not b.token:
        return X.keep_pixels_energy(now.image, src.image)
    return X.keep_pixels_energy(now.image, src.image, A.hard_mask(src.token(b.token)), inside=b.term.inside)


ENERGIES = {
    "move": move,
    "shift": shift,
    "move_to": move_to,
    "resize": resize,
    "size_like": size_like,
    "size_to": size_to,
    "shape_from": shape_from,
    "appearance_from": appearance_from,
    "keep_appearance": keep_appearance,
    "keep_shape": keep_shape,
    "keep_attention": keep_attention,
    "keep_structure": keep_structure,
    "style": style,
    "clip": clip,
    "keep_pixels": keep_pixels,
}

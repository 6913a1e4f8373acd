"""Bound terms: a Program's terms resolved against a backbone, and the energy each one computes.

`bind` turns Terms (symbolic, model-independent) into BoundTerms (token positions, effective
weight, window, placement). `ENERGIES` maps a term kind to a function of (bound term, features
now, source features at the same step) -> scalar energy: a table, not an if-chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dsl.errors import SteerCompileError

from . import attention as A
from . import defaults as D
from . import program as P
from . import vit as V
from . import x0 as X
from .resolve import prompt_objects, token_indices

LAYOUT_KINDS = {"move", "shift", "resize", "size_to", "shape_from", "drag"}  # a drag within a token moves it


@dataclass
class BoundTerm:
    term: P.TermBase
    label: str  # canonical text of the term, for progress bars and messages
    weight: float  # default weight x the script's weight
    window: tuple[float, float]
    placement: str
    token: list[int] = field(default_factory=list)  # positions of the term's token
    other: list[int] = field(default_factory=list)  # positions of the other token (shape/appearance from)
    objects: list[list[int]] = field(default_factory=list)  # heads of the objects a keep term covers
    direction: object = None  # a direction term's file (energies.directions.Direction), read when binding
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
    "move": {"attn"},
    "shift": {"attn"},
    "resize": {"attn"},
    "size_to": {"attn"},
    "shape_from": {"attn"},
    "appearance_from": {"attn", "features"},
    "keep_appearance": {"attn", "features"},
    "keep_shape": {"attn"},
    "keep_attention": {"attn", "layers"},
    # the predicted-x0 family: the decoded x0 ("image"), and what a ViT or CLIP sees in it
    "keep_structure": {"image", "vit"},
    "style": {"image", "vit"},
    "clip": {"image", "clip"},
    "keep_pixels": {"image"},
    "direction": set(),  # not an energy: the editor applies directions itself (h-space hook, noise eps)
    "drag": set(),  # not an energy: sampler/drag.py optimises the bottleneck itself
}


def bind(program: P.Program, prompt: str, tokenizer, direction_paths=(), backbone: str | None = None) -> list[BoundTerm]:
    """Resolve every term's tokens against the prompt and its directions against the direction
    folders; apply the defaults of the backbone family `backbone`. Raises SteerCompileError at the
    offending term."""
    from dsl.printer import term as term_text

    from . import directions

    objects = prompt_objects(prompt, tokenizer)
    resolved = {}

    def where(ref: P.TokenRef) -> list[int]:
        key = (ref.word, ref.occurrence)
        if key not in resolved:
            resolved[key] = token_indices(ref, prompt, tokenizer)
        return resolved[key]

    def phrase_of(indices: list[int]) -> set[int]:
        return {i for o in objects if set(o.tokens) & set(indices) for i in o.tokens} | set(indices)

    # Which objects other terms change, so "every object" keep terms leave them free.
    moved = set().union(*[phrase_of(where(t.token)) for t in program.terms if t.kind in LAYOUT_KINDS and t.token is not None] or [set()])
    restyled = set().union(*[phrase_of(where(t.token)) for t in program.terms if t.kind == "appearance_from"] or [set()])

    out = []
    for t in program.terms:
        d = D.term_defaults(t.kind, backbone)
        b = BoundTerm(
            term=t,
            label=term_text(t),
            weight=d.weight * t.weight,
            window=(t.window.start, t.window.end) if t.window else d.window,
            placement=t.placement or d.placement,
        )
        if getattr(t, "token", None) is not None:
            b.token = where(t.token)
        if getattr(t, "other", None) is not None:
            b.other = where(t.other)
        if t.kind in ("keep_appearance", "keep_shape") and t.token is None:
            skip = restyled if t.kind == "keep_appearance" else moved
            b.objects = [list(o.head) for o in objects if not set(o.tokens) & skip]
            if not b.objects:
                raise SteerCompileError(f"`{b.label}` has no object left to keep: the other terms change them all", t.span)
        elif t.kind in ("keep_appearance", "keep_shape"):
            b.objects = [b.token]
        if t.kind == "direction":  # an unknown name is an error listing the known ones; a bad file, its own error
            found = b.direction = directions.read_direction(directions.find(t, direction_paths), t.span)
            if found.kind == "prompt" and (t.token is not None or t.box is not None):
                raise SteerCompileError(f"`{b.label}` cannot act within a region: {found.name!r} is a prompt direction, "
                                        "a shift of the whole prompt's embedding", t.span,
                                        hint="drop the `within ...`; `keep attention` keeps the other objects where they were")
        out.append(b)
    return out


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


def resize(b: BoundTerm, now: Features, src: Features) -> torch.Tensor:
    return A.resize_energy(now.token(b.token), src.token(b.token), b.term.factor, D.SILHOUETTE)


def size_to(b: BoundTerm, now: Features, src: Features) -> torch.Tensor:
    return A.size_energy(now.token(b.token), b.term.area)


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
    return A.attention_keep_energy(now.layers, src.layers)


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
    "resize": resize,
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

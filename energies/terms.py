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
from .resolve import prompt_objects, token_indices

LAYOUT_KINDS = {"move", "shift", "resize", "size_to", "shape_from"}


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

    @property
    def kind(self) -> str:
        return self.term.kind

    def active(self, progress: float) -> bool:
        a, b = self.window
        return a <= progress < b or (b >= 1.0 and progress >= 1.0)

    @property
    def needs(self) -> set[str]:
        return NEEDS[self.kind]


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
    "direction": set(),
}


def bind(program: P.Program, prompt: str, tokenizer, direction_paths=()) -> list[BoundTerm]:
    """Resolve every term's tokens against the prompt and its directions against the direction
    folders; apply defaults. Raises SteerCompileError at the offending term."""
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
    moved = set().union(*[phrase_of(where(t.token)) for t in program.terms if t.kind in LAYOUT_KINDS] or [set()])
    restyled = set().union(*[phrase_of(where(t.token)) for t in program.terms if t.kind == "appearance_from"] or [set()])

    out = []
    for t in program.terms:
        d = D.TERMS[t.kind]
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
        if t.kind == "direction":
            directions.find(t, direction_paths)  # an unknown name is an error listing the known ones
            raise SteerCompileError(
                f"direction {t.name!r}: learned-direction terms are not built yet",
                t.span,
                hint="h-space and NoiseCLR directions arrive with `steer learn`; remove this line for now",
            )
        out.append(b)
    return out


@dataclass
class Features:
    """What one forward exposed, for one image: token maps, per-layer maps, decoder features."""

    maps: torch.Tensor  # (T, r, r), averaged over the probed layers
    layers: list[torch.Tensor] = field(default_factory=list)  # per layer (T, h, w)
    features: torch.Tensor | None = None  # (C, H, W)

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
}

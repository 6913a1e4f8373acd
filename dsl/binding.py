"""Binding: a Program's terms resolved against a model, the model-dependent half of compiling.

Tokens resolve against the model's tokenizer and the script's prompt (resolve.py), directions
against the direction folders (energies/directions.py), and every term gets its backbone's
defaults (energies/defaults.py). The result is the engine's input: a list of BoundTerms. Every
mistake is a SteerCompileError at the offending term.
"""

from __future__ import annotations

from energies import defaults as D
from energies import directions
from energies import program as P
from energies.errors import SteerCompileError
from energies.terms import LAYOUT_KINDS, BoundTerm

from .printer import term as term_text
from .resolve import prompt_objects, token_indices


def bind(program: P.Program, prompt: str, tokenizer, direction_paths=(), backbone: str | None = None) -> list[BoundTerm]:
    """Resolve every term's tokens against the prompt and its directions against the direction
    folders; apply the defaults of the backbone family `backbone`. Raises SteerCompileError at the
    offending term."""
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

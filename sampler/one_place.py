"""A warning read off the source pass: two of the prompt's objects whose maps fall on one place.

A prompt of two objects does not always get two: the model may draw one of them and leave the
other out. Nothing in the script is wrong then, but a statement about the missing object has
nothing to act on, and one about the drawn object may see its region shared. The source's
attention maps tell: where both objects are drawn, their masks (the ones relocation copies and
`within token` acts in) barely touch; where one is missing, its word's map falls on the other.

    overlap(a, b) = |mask_a & mask_b| / min(|mask_a|, |mask_b|)

A statement acting on an object (its token) whose overlap with another of the prompt's objects
is above D.SAME_PLACE_OVERLAP gets a warning at its position. The threshold is per model family
and only where it was measured: on a photo model two objects can share a place (a cat on a sofa).
"""

from __future__ import annotations

import dsl
from energies import defaults as D
from energies.errors import SteerWarning


def overlap(a, b) -> float:
    """The share of the smaller mask that the other covers (0 where either is empty)."""
    smaller = min(float(a.sum()), float(b.sum()))
    return float((a * b).sum()) / smaller if smaller > 0 else 0.0


def objects_in_one_place(backbone, bound, src, prompt: str) -> list[SteerWarning]:
    """Warnings for the statements that act on an object the source seems to have drawn in another
    object's place (or not at all); [] on a model family without a measured threshold."""
    cut = D.SAME_PLACE_OVERLAP.get(backbone.kind)
    acting = [x for x in bound if x.token and x.weight != 0]
    if cut is None or not acting:
        return []
    objects = dsl.prompt_objects(dsl.plain_prompt(prompt), backbone.tokenizer)
    if len(objects) < 2:
        return []
    hw = backbone.latent_shape()[1:]
    masks = [src.object_mask(list(o.head), hw).float() for o in objects]
    shared = {}  # object index -> (the other object's index, overlap), its worst
    for i in range(len(objects)):
        for j in range(i + 1, len(objects)):
            share = overlap(masks[i], masks[j])
            if share > cut:
                for a, b in ((i, j), (j, i)):
                    if share > shared.get(a, (None, 0.0))[1]:
                        shared[a] = (b, share)
    out, said = [], set()
    for x in acting:  # its own object, else the one a relative target names
        named = [k for positions in (x.token, x.other) for k, o in enumerate(objects) if set(o.tokens) & set(positions)]
        mine = next((k for k in named if k in shared), None)
        key = x.term.span or x.label  # a statement's word swap rides on its span: one warning a statement
        if mine is None or key in said:
            continue
        said.add(key)
        other, share = shared[mine]
        out.append(SteerWarning(
            f"`{x.label}`: in the source, the maps of {objects[mine].words!r} and {objects[other].words!r} fall on one "
            f"place ({share:.0%} of the smaller): the source may show only one of them (or neither), and this statement "
            "may act on the other", x.term.span,
            hint="look at the source image (`--source-out`), or try another seed"))
    return out

"""The bench's tasks: the suite of cases, each an edit script on the scene (scene.py) and the
check that measures its outcome (checks.py). Some scripts are written from the source image's
detections (a drag's handle is where the circle is; a shift goes to free space), so a case's script
may be a function of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..shapes import world as W
from .checks import (
    clip_score,
    measure_appearance_swap,
    measure_combined,
    measure_direction,
    measure_move,
    measure_recolour,
    measure_resize,
    measure_shape_swap,
    measure_shift,
)
from .scene import CIRCLE, GREEN_PROMPT, PROMPT, SQUARE, STYLE_IMAGE

# The shipped directions and what each should do to the red circle (see README, "Directions"):
# (script, what the detector should see). red_to_green and circle_to_square_p2p are Pix2Pix-Zero
# prompt directions, shown with the cross-attention guidance that keeps the layout, as
# Pix2Pix-Zero uses them (and red_to_green alone: it redraws the scene as a new prompt would).
DIRECTIONS = [
    ("direction circle_to_square", {"shape": "square"}),
    ("direction green", {"colour": "green"}),
    ("direction smaller", {"shrink": True}),
    ("direction red_to_green", {"colour": "green"}),
    ("direction red_to_green\nkeep attention", {"colour": "green"}),
    ("direction circle_to_square_p2p\nkeep attention", {"shape": "square"}),
]


@dataclass
class Case:
    """One task on one seed."""

    task: str
    seed: int
    script: object  # the edit (terms only), or a function (source's detections, seed) giving it; the prompt and seed are added
    measure: object  # (source objects, edited objects) -> dict of figures
    cost: str = "attention"  # which cost class the task belongs to
    score: object = None  # (editor, source image, edited image) -> more figures, from the images themselves


@dataclass
class Outcome:
    """What came of a case: its figures, its time, and the two images for the contact sheet."""

    case: Case
    figures: dict
    seconds: float
    source: np.ndarray
    image: np.ndarray


def drag_script(delta, via: str = "", region: str = "token"):
    """A drag of the circle's centre (as the detector finds it in the source) by delta: the
    point-dragging counterpart of `centroid(token "circle") += delta`. region "token": within
    token "circle" (the circle is copied along the drag, then refined); "box": within the box
    around the circle and where it goes, 2 px of margin (DragNoise alone)."""

    def script(src, seed=None):
        s = W.find(src, CIRCLE)
        if s is None:
            return None
        x, y = s.centroid
        tx, ty = (min(max(v, 0.0), 1.0) for v in (x + delta[0], y + delta[1]))
        within = ' within token "circle"'
        if region == "box":
            h, w = s.mask.shape
            ys, xs = np.nonzero(s.mask)
            x0, x1 = (xs.min() - 2) / w + min(0.0, delta[0]), (xs.max() + 3) / w + max(0.0, delta[0])
            y0, y1 = (ys.min() - 2) / h + min(0.0, delta[1]), (ys.max() + 3) / h + max(0.0, delta[1])
            within = " within ({:.3f}, {:.3f}, {:.3f}, {:.3f})".format(*(min(max(v, 0.0), 1.0) for v in (x0, y0, x1, y1)))
        return f"drag ({x:.3f}, {y:.3f}) -> ({tx:.3f}, {ty:.3f}){within}{via}"

    return script


def free_vector(src, seed: int, lengths=(0.25, 0.2, 0.15)):
    """A drag/shift vector for the circle whose target is free: the circle moved by it stays inside
    the image and at least 2 px from the square. Candidates (+-length along x and along y, in an
    order that turns with the seed; the longest length first) are tried; None if none fits. The
    fixed +-x shifts of `shift` and `drag` often ask for a place behind the square or past the
    border, where no method can keep the circle's shape."""
    s, q = W.find(src, CIRCLE), W.find(src, SQUARE)
    if s is None:
        return None
    h, w = s.mask.shape
    ys, xs = np.nonzero(s.mask)
    blocked = np.zeros((h, w), bool) if q is None else W._dilate(q.mask, 2)
    for length in lengths:
        order = [(length, 0.0), (-length, 0.0), (0.0, length), (0.0, -length)]
        for dx, dy in order[seed % 4:] + order[: seed % 4]:
            mx, my = xs + round(dx * w), ys + round(dy * h)
            inside = mx.min() >= 0 and my.min() >= 0 and mx.max() < w and my.max() < h
            if inside and not blocked[my, mx].any():
                return (dx, dy)
    return None


def free_shift_script(via: str | None = None):
    """`centroid(token "circle") += v` (via None) or a drag by v (via "" or " via latent") with
    v = free_vector(source)."""

    def script(src, seed):
        v = free_vector(src, seed)
        if v is None:
            return None
        if via is None:
            return f'centroid(token "circle") += ({v[0]:g}, {v[1]:g})\nkeep appearance'
        return drag_script(v, via)(src)

    return script


def measure_free_shift(seed: int):
    def m(src, out):
        v = free_vector(src, seed)
        return {"found": False} if v is None else measure_shift(v)(src, out)

    return m


def far_target(seed: int) -> tuple[float, float]:
    """The move target for a seed: one of four, in turn."""
    return [(0.75, 0.5), (0.25, 0.5), (0.5, 0.25), (0.5, 0.75)][seed % 4]


def suite(seeds: list[int], quick: bool) -> list[Case]:
    ks = [2.0] if quick else [0.5, 1.5, 2.0]
    cases = []
    for s in seeds:
        t = far_target(s)
        d = (0.25, 0.0) if s % 2 == 0 else (-0.25, 0.0)
        cases += [
            # The edit language issue's own figure: one fixed target, every seed.
            Case("move to (0.75, 0.5)", s, 'centroid(token "circle") -> (0.75, 0.5)\nkeep appearance', measure_move((0.75, 0.5))),
            Case("move", s, f'centroid(token "circle") -> ({t[0]}, {t[1]})\nkeep appearance', measure_move(t)),
            Case("shift", s, f'centroid(token "circle") += ({d[0]}, {d[1]})\nkeep appearance', measure_shift(d)),
            # The same shifts as point drags: within the token, the circle is copied along the drag and
            # then refined (DragNoise; DragDiffusion's latent optimisation via latent); within a box,
            # DragNoise alone.
            Case("drag", s, drag_script(d), measure_shift(d), "drag"),
            Case("drag via latent", s, drag_script(d, " via latent"), measure_shift(d), "drag"),
            Case("drag within a box", s, drag_script(d, region="box"), measure_shift(d), "drag"),
            # The same 0.25 moves, to a free place (inside the image, clear of the square).
            Case("shift to free space", s, free_shift_script(), measure_free_shift(s)),
            Case("drag to free space", s, free_shift_script(""), measure_free_shift(s), "drag"),
            *[Case(f"resize x{k:g}", s, f'size(token "square") *= {k:g}\nkeep appearance', measure_resize(k)) for k in ks],
            Case("keep", s, f'centroid(token "circle") -> ({t[0]}, {t[1]})\nkeep appearance\nkeep layout', measure_move(t)),
            Case("shape swap", s, 'shape(token "square") -> shape(token "circle")\nkeep appearance', measure_shape_swap),
            Case("appearance swap", s, 'appearance(token "circle") -> appearance(token "square")\nkeep layout', measure_appearance_swap),
            Case("combined", s, f'centroid(token "circle") -> ({t[0]}, {t[1]})\nsize(token "circle") *= 1.5\nkeep appearance',
                 measure_combined(t, 1.5)),
            # The predicted-x0 family: CLIP direction, alone and with keep structure; a style image.
            Case("clip recolour", s, f'clip "{GREEN_PROMPT}" from "{PROMPT}"', measure_recolour("green"), "x0",
                 clip_score(GREEN_PROMPT, PROMPT)),
            Case("clip recolour + keep structure", s, f'clip "{GREEN_PROMPT}" from "{PROMPT}"\nkeep structure',
                 measure_recolour("green"), "x0", clip_score(GREEN_PROMPT, PROMPT)),
            Case("style image", s, f'style image "{STYLE_IMAGE}"\nkeep structure', measure_recolour("green"), "x0",
                 clip_score(GREEN_PROMPT, PROMPT)),
            # Learned directions shipped with the shapes model (sampler/shapes/weights/directions).
            *[Case(script.replace("\n", " + "), s, script, measure_direction(**want), "direction") for script, want in DIRECTIONS],
        ]
    return cases

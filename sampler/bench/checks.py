"""What the bench measures of an outcome: functions of the shapes world detector's findings
(colour masks, centroids, areas, shape classes) in the source and the edited image, and one of the
images themselves (clip_score). Each returns a dict of figures; report.py averages them per task."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..shapes import world as W
from .scene import CIRCLE, SQUARE


def _dist(a, b) -> float:
    return math.hypot(a[0] - b[0], a[1] - b[1])


def _kept(src, out, colour) -> dict:
    """How well an object the script did not ask to change was kept."""
    s, o = W.find(src, colour), W.find(out, colour)
    if s is None:
        return {}
    return {"kept_iou": W.mask_iou(s.mask, o.mask) if o is not None else 0.0, "kept_colour": o is not None}


def _one_of(out, colour) -> bool:
    return sum(o.colour == colour for o in out) == 1


def _move_figures(src, out, target) -> dict:
    s, o = W.find(src, CIRCLE), W.find(out, CIRCLE)
    f = {"unguided_error": _dist(s.centroid, target), "found": o is not None}
    f["error"] = _dist(o.centroid, target) if o else math.nan
    f["within_0.1"] = bool(o is not None and f["error"] <= 0.1)
    f["single"] = _one_of(out, CIRCLE)
    f["kept_shape"] = bool(o is not None and o.shape == s.shape)
    return {**f, **_kept(src, out, SQUARE)}


def measure_move(target):
    def m(src, out):
        return _move_figures(src, out, target) if W.find(src, CIRCLE) else {"found": False}

    return m


def measure_shift(delta):
    def m(src, out):
        s = W.find(src, CIRCLE)
        if s is None:
            return {"found": False}
        return _move_figures(src, out, (s.centroid[0] + delta[0], s.centroid[1] + delta[1]))

    return m


def measure_resize(k):
    def m(src, out):
        s, o = W.find(src, SQUARE), W.find(out, SQUARE)
        if s is None:
            return {"found": False}
        ratio = o.area / s.area if o else math.nan
        return {"found": o is not None, "k": k, "ratio": ratio, "ratio_within_20%": bool(o is not None and abs(ratio / k - 1) <= 0.2),
                **_kept(src, out, CIRCLE)}

    return m


def measure_shape_swap(src, out):
    o = W.find(out, SQUARE)
    return {"found": o is not None, "became_circle": bool(o is not None and o.shape == "circle"), **_kept(src, out, CIRCLE)}


def measure_appearance_swap(src, out):
    s = W.find(src, CIRCLE)
    if s is None:
        return {"found": False}
    # whatever now stands where the circle was: its colour should be the square's
    here = [o for o in out if W.mask_iou(o.mask, s.mask) > 0.3]
    return {"found": bool(here), "took_colour": bool(here and here[0].colour == SQUARE)}


def measure_combined(target, k):
    move, resize = measure_move(target), measure_resize(k)

    def m(src, out):
        a, b = move(src, out), resize(src, out)
        return {**{k_: v for k_, v in a.items() if not k_.startswith("kept")}, "ratio": b.get("ratio", math.nan), "k": k,
                "ratio_within_20%": b.get("ratio_within_20%", False)}

    return m


def measure_recolour(colour):
    """The circle changed colour to `colour` where it was, and the square stayed."""

    def m(src, out):
        s = W.find(src, CIRCLE)
        if s is None:
            return {"found": False}
        here = [o for o in out if W.mask_iou(o.mask, s.mask) > 0.3]
        f = {"found": bool(here), "took_colour": bool(here and here[0].colour == colour),
             "circle_iou": max([W.mask_iou(o.mask, s.mask) for o in here], default=0.0)}
        return {**f, **_kept(src, out, SQUARE)}

    return m


def measure_direction(shape: str | None = None, colour: str | None = None, shrink: bool = False):
    """A learned direction changed the circle's shape / colour where it stood (centroid within
    0.05 of the source's), and left the square."""

    def m(src, out):
        s = W.find(src, CIRCLE)
        if s is None:
            return {"found": False}
        square = W.find(out, SQUARE)
        near = sorted((o for o in out if o is not square), key=lambda o: _dist(o.centroid, s.centroid))[:1]
        f = {"found": bool(near), "stayed_0.05": bool(near and _dist(near[0].centroid, s.centroid) <= 0.05)}
        if shape is not None:
            f["became_" + shape] = bool(near and near[0].shape == shape)
        if colour is not None:
            f["took_colour"] = bool(near and near[0].colour == colour)
        if shrink:
            f["ratio"] = near[0].area / s.area if near else math.nan
            f["shrunk"] = bool(near and near[0].area <= 0.7 * s.area)
        return {**f, **_kept(src, out, SQUARE)}

    return m


def clip_score(target: str, source: str):
    """How far the image moved toward `target` and away from `source` in the shapes CLIP:
    (cos(I, target) - cos(I, source)) of the edit minus that of the source image."""

    def score(editor, src_image, image):
        scorer = editor.clip()  # the shapes CLIP, loaded once per editor
        t = scorer.text([target, source])
        with torch.no_grad():
            ims = torch.from_numpy(np.stack([src_image, image])).permute(0, 3, 1, 2).float() * 2 - 1
            f = scorer.image(ims)
        margin = (f @ t.T)[:, 0] - (f @ t.T)[:, 1]
        delta = float(margin[1] - margin[0])
        return {"clip_delta": delta, "clip_toward": delta > 0}

    return score

"""What the bench measures of an outcome: functions of the shapes world detector's findings in the
source and the edited image (colour masks, centroids, areas, shape classes), and one of the images
themselves (clip_score).

Each check takes (source detections, edited detections, the case's Item, what the script asked
for) and returns a dict of figures; the booleans a task names as its criteria decide its success
(tasks.py). Objects are found by colour: the world never gives two objects one colour, so the
subject of "a red circle and a blue square" is the largest red blob, whatever its shape. A source
"drew the object right" when that blob has the named shape (`source_right`).
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
import torch

from ..shapes import world as W
from .scene import Item

OTHER_IOU = 0.8  # a moved object's neighbour counts as kept at this mask IoU with its source mask
STAY = 0.05  # an object changed in place stays within this distance of where it was
WITHIN = 0.1  # a moved object lands within this distance of its target
RATIO_TOLERANCE = 0.2  # an area ratio within 20% of the factor asked for
HUE_TOLERANCE = 2.0  # degrees a transition's hue distance may rise between two gammas and still count as falling
HALFTONE_MAX = 0.02  # share of half-tone pixels a clean image may have (world: 0; a 3x3 blur: about 0.1)
DARK = 0.05  # mean brightest channel of a clean image's background, away from the objects
SAME_IOU = 0.8  # an object came back when the detector finds its colour and shape at this IoU with the true mask


def dist(a, b) -> float:
    return math.hypot(a[0] - b[0], a[1] - b[1])


def subject_of(objects, item: Item):
    return W.find(objects, item.subject.colour)


def other_of(objects, item: Item):
    return W.find(objects, item.other.colour) if item.other is not None else None


def source_right(src, item: Item) -> bool:
    """The source drew the subject right: its colour's largest blob has the named shape."""
    s = subject_of(src, item)
    return bool(s is not None and s.shape == item.subject.shape)


def other_kept(src, out, item: Item, bar: float = OTHER_IOU) -> dict:
    """The other object's mask IoU with its source mask (0 when it is gone). Where the prompt has
    one object, or the source lacks the other, there is nothing to keep: other_kept is True and
    other_in_source says why."""
    if item.other is None:
        return {"other_kept": True}
    s = other_of(src, item)
    if s is None:
        return {"other_kept": True, "other_in_source": False}
    o = other_of(out, item)
    iou = W.mask_iou(s.mask, o.mask) if o is not None else 0.0
    return {"other_in_source": True, "other_iou": iou, "other_kept": bool(iou >= bar)}


def at_place(out, src_obj, exclude=()):
    """The edited image's object where `src_obj` was: of the objects not matching an excluded
    source mask (IoU > 0.3), the one overlapping src_obj's mask most, else the nearest one."""
    cands = [o for o in out if all(W.mask_iou(o.mask, m) <= 0.3 for m in exclude)]
    if not cands:
        return None
    overlap = [(int((o.mask & src_obj.mask).sum()), o) for o in cands]
    best = max(overlap, key=lambda t: t[0])
    if best[0] > 0:
        return best[1]
    return min(cands, key=lambda o: dist(o.centroid, src_obj.centroid))


def _exclude_other(src, item: Item):
    o = other_of(src, item)
    return [o.mask] if o is not None else []


def _missing(**more) -> dict:
    return {"found": False, **more}


# ----------------------------------------------------------------------------------------------
# Layout: move, shift, drag, resize


def move(src, out, item: Item, target, other_bar: float = OTHER_IOU) -> dict:
    """The subject moved to `target`: its colour's largest blob within 0.1 of it, its shape class
    kept, the other object kept (IoU >= other_bar)."""
    s = subject_of(src, item)
    if s is None:
        return _missing(within_0_1=False, kept_shape=False)
    o = subject_of(out, item)
    d0 = dist(s.centroid, target)
    f = {"found": o is not None, "unguided_error": d0}
    f["error"] = dist(o.centroid, target) if o is not None else math.nan
    f["within_0_1"] = bool(o is not None and f["error"] <= WITHIN)
    f["moved_toward"] = (d0 - f["error"]) / d0 if o is not None and d0 > 0 else math.nan
    f["single"] = sum(x.colour == item.subject.colour for x in out) == 1
    f["kept_shape"] = bool(o is not None and o.shape == s.shape)
    return {**f, **other_kept(src, out, item, other_bar)}


def shift(src, out, item: Item, delta) -> dict:
    """The subject moved by `delta` from its detected source centroid (move's criteria)."""
    s = subject_of(src, item)
    if s is None:
        return _missing(within_0_1=False, kept_shape=False)
    return move(src, out, item, (s.centroid[0] + delta[0], s.centroid[1] + delta[1]))


def beside(src, out, item: Item, offset: tuple[float, float]) -> dict:
    """`centroid(S1) -> centroid(S2) + (dx, dy)`: the subject within 0.1 of the other's detected
    source centroid + (dx, dy)."""
    other = other_of(src, item)
    if other is None:
        return _missing(within_0_1=False)
    return move(src, out, item, (other.centroid[0] + offset[0], other.centroid[1] + offset[1]))


def _ratio(src, out, item: Item, want_area: float, k: float | None = None) -> dict:
    s, o = subject_of(src, item), subject_of(out, item)
    if s is None:
        return _missing(ratio_ok=False)
    ratio = o.area / want_area if o is not None else math.nan
    unguided = s.area / want_area
    f = {"found": o is not None, "ratio": ratio, "ratio_ok": bool(o is not None and abs(ratio - 1) <= RATIO_TOLERANCE),
         "unguided_ratio": unguided, "unguided_ok": bool(abs(unguided - 1) <= RATIO_TOLERANCE)}  # right without an edit
    if k is not None:  # report the area ratio to the source, as asked
        f.update(k=k, ratio=ratio * k, unguided_ratio=1.0)
    return {**f, **other_kept(src, out, item)}


def resize(src, out, item: Item, k: float) -> dict:
    """`size *= k`: the subject's area over its source area within 20% of k."""
    s = subject_of(src, item)
    if s is None:
        return _missing(ratio_ok=False)
    return _ratio(src, out, item, k * s.area, k)


def resize_to(src, out, item: Item, area: float) -> dict:
    """`size -> A`: the subject's area within 20% of A."""
    return {**_ratio(src, out, item, area), "area": area}


def resize_like(src, out, item: Item) -> dict:
    """`size(S1) -> size(S2)`: the subject's area within 20% of the other's source area."""
    other = other_of(src, item)
    if other is None:
        return _missing(ratio_ok=False)
    return {**_ratio(src, out, item, other.area), "area": other.area}


# ----------------------------------------------------------------------------------------------
# In place: swaps, recolours, directions


def changed_in_place(src, out, item: Item, colour: str | None = None, shape: str | None = None,
                     other_bar: float | None = None) -> dict:
    """The object where the subject was (other than the other object) took `colour` and/or
    `shape`, and its centroid stayed within 0.05 of the source's."""
    s = subject_of(src, item)
    if s is None:
        return _missing(stayed_0_05=False, **({"took_colour": False} if colour else {}), **({"took_shape": False} if shape else {}))
    here = at_place(out, s, _exclude_other(src, item))
    f = {"found": here is not None, "moved": dist(here.centroid, s.centroid) if here is not None else math.nan}
    f["stayed_0_05"] = bool(here is not None and f["moved"] <= STAY)
    if colour is not None:
        f["took_colour"] = bool(here is not None and here.colour == colour)
    if shape is not None:
        f["took_shape"] = bool(here is not None and here.shape == shape)
    f["place_iou"] = W.mask_iou(here.mask, s.mask) if here is not None else 0.0
    kept = other_kept(src, out, item, other_bar if other_bar is not None else OTHER_IOU)
    return {**f, **kept}


def shape_swap(src, out, item: Item) -> dict:
    """`shape(S1) -> shape(S2)`: the subject takes the other's (detected) shape class in place."""
    other = other_of(src, item)
    want = other.shape if other is not None else item.other.shape
    return {**changed_in_place(src, out, item, shape=want), "wanted": want}


def appearance_swap(src, out, item: Item) -> dict:
    """`appearance(S1) -> appearance(S2)`: the subject takes the other's colour in place."""
    return changed_in_place(src, out, item, colour=item.other.colour)


def recolour(src, out, item: Item, colour: str, other_bar: float = 0.85) -> dict:
    """`appearance(S) -> "C"` (and the CLIP and style recolours): the subject takes `colour` in
    place; the other is kept at IoU >= other_bar."""
    return {**changed_in_place(src, out, item, colour=colour, other_bar=other_bar), "colour": colour}


def direction(src, out, item: Item, shape: str | None = None, colour: str | None = None) -> dict:
    """A learned direction changed the subject's shape / colour where it stood."""
    return changed_in_place(src, out, item, colour=colour, shape=shape)


# ----------------------------------------------------------------------------------------------
# Keeping, removing, combining


def kept(src, out, item: Item, target=None) -> dict:
    """The subject, left alone while the other object moves: its mask IoU with its source mask
    (kept_iou_0_9: >= 0.9), and the object over its source place still has its colour."""
    s = subject_of(src, item)
    if s is None:
        return _missing(kept_iou_0_9=False, kept_colour=False)
    o = subject_of(out, item)
    iou = W.mask_iou(s.mask, o.mask) if o is not None else 0.0
    here = at_place(out, s)
    f = {"found": o is not None, "kept_iou": iou, "kept_iou_0_9": bool(iou >= 0.9),
         "kept_colour": bool(here is not None and here.colour == s.colour and (here.mask & s.mask).any())}
    if target is not None:  # how the other object's move went
        m = other_of(out, item)
        f["moved_within_0_1"] = bool(m is not None and dist(m.centroid, target) <= WITHIN)
    return f


def remove(src, out, item: Item, other_bar: float = 0.85) -> dict:
    """`remove token "S"`: no blob of the subject's colour is left, nothing else is drawn, and the
    other object is kept (IoU >= other_bar)."""
    s = subject_of(src, item)
    if s is None:
        return _missing(gone=False, nothing_new=False)
    other = other_of(src, item)
    mine = other_of(out, item) if other is not None else None
    extra = [o for o in out if o is not mine]
    f = {"found": True, "gone": not any(o.colour == item.subject.colour for o in out), "nothing_new": not extra,
         "extra_objects": len(extra)}
    return {**f, **other_kept(src, out, item, other_bar)}


def combined(src, out, item: Item, target, k: float, colour: str) -> dict:
    """A move, `size *= k` and `appearance -> "C"` in one script: the object of colour C lands
    within 0.1 of the target at k times the subject's area (within 20%), and no larger blob of the
    subject's old colour is left."""
    s = subject_of(src, item)
    if s is None:
        return _missing(within_0_1=False, ratio_ok=False, took_colour=False)
    new, old = W.find(out, colour), subject_of(out, item)
    o = new if new is not None else old
    f = {"found": o is not None, "unguided_error": dist(s.centroid, target), "k": k, "colour": colour}
    f["error"] = dist(o.centroid, target) if o is not None else math.nan
    f["within_0_1"] = bool(o is not None and f["error"] <= WITHIN)
    f["ratio"] = o.area / s.area if o is not None else math.nan
    f["ratio_ok"] = bool(o is not None and abs(f["ratio"] / k - 1) <= RATIO_TOLERANCE)
    f["took_colour"] = bool(new is not None and (old is None or old.area < new.area))
    return {**f, **other_kept(src, out, item)}


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


# ----------------------------------------------------------------------------------------------
# Fine-tuned directions (DiffusionCLIP): the continuous transition, unseen-domain translation


def hue_distance(image: np.ndarray, mask: np.ndarray, colour: str) -> float:
    """Degrees between the hue of the mean colour inside `mask` and the world colour's hue."""
    r, g, b = np.asarray(image)[mask].mean(0)
    h = colorsys.rgb_to_hsv(float(r), float(g), float(b))[0] * 360
    target = colorsys.rgb_to_hsv(*W.COLOURS[colour])[0] * 360
    d = abs(h - target) % 360
    return min(d, 360 - d)


def falls(values, tolerance: float = HUE_TOLERANCE) -> bool:
    """A sequence falls: no step rises by more than `tolerance`, and the last is below the first."""
    values = list(values)
    return bool(all(b <= a + tolerance for a, b in zip(values, values[1:])) and values[-1] < values[0])


def transition(src, out, item: Item, images, gammas, colour: str) -> dict:
    """`direction NAME * gamma` over the gammas: the hue distance to `colour` inside the subject's
    source mask at each gamma (hue_g<gamma>), and whether it falls as gamma rises (monotone); the
    last gamma's image judged as a recolour (took_colour, stayed_0_05)."""
    s = subject_of(src, item)
    if s is None:
        return _missing(monotone=False)
    hues = [hue_distance(im, s.mask, colour) for im in images]
    f = {"found": True, **{f"hue_g{g:g}": h for g, h in zip(gammas, hues)}}
    f["monotone"] = falls(hues)
    f["hue_fall"] = hues[0] - hues[-1]
    last = changed_in_place(src, out, item, colour=colour)
    return {**f, "took_colour": last["took_colour"], "stayed_0_05": last["stayed_0_05"]}


def halftones(image: np.ndarray) -> float:
    """The share of pixels that are neither background nor a full colour (brightest channel in
    0.2..0.7): 0 on a world image, about 0.1 after a 3x3 blur, under 0.005 on the model's samples."""
    top = np.asarray(image).max(-1)
    return float(((top > 0.2) & (top < 0.7)).mean())


def translated(src, out, item: Item, images, degraded: str) -> dict:
    """A degraded world image came back as the clean scene: the detector finds each of the scene's
    objects (`src`, the true ones: colour, shape, IoU >= 0.8) and nothing else (same_objects), on
    a dark background with sharp edges (clean: under 2% half-tone pixels)."""
    image = images[-1]
    found = [W.find(out, o.colour, o.shape) for o in src]
    ious = [W.mask_iou(f.mask, o.mask) if f is not None else 0.0 for f, o in zip(found, src)]
    same = bool(len(out) == len(src) and all(i >= SAME_IOU for i in ious))
    away = ~np.any([W._dilate(o.mask, 2) for o in src], axis=0)
    background = float(np.asarray(image)[away].max(-1).mean()) if away.any() else 0.0
    share = halftones(image)
    return {"degraded": degraded, "found_objects": len(out), "min_iou": min(ious) if ious else 0.0,
            "same_objects": same, "background": background, "halftones": share,
            "clean": bool(background < DARK and share < HALFTONE_MAX)}

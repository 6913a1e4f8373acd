"""Targets from the source image's detections: a place the edited object can go that is inside
the image and clear of every other object (a gap of 2 px at 32 px, scaled with the image).

Shifts are whole pixels, so the free check is exact for the object's source mask; a target is then
written with three decimals, and measured as written.
"""

from __future__ import annotations

import math

import numpy as np

from ..shapes import world as W


def gap(size: int) -> int:
    return max(W.GAP, round(W.GAP * size / 32))


def blocked_by(objects, subject, size: int, grow: int = 0) -> np.ndarray:
    """Where the subject may not go: every other detection, dilated by the gap (and by `grow` px
    more, for an object that will be bigger there)."""
    blocked = np.zeros((size, size), bool)
    for o in objects:
        if o is not subject:
            blocked |= o.mask
    return W._dilate(blocked, gap(size) + grow) if blocked.any() else blocked


def fits(mask: np.ndarray, blocked: np.ndarray, px: int, py: int, pixels=None) -> bool:
    """The mask shifted by (px, py) pixels lies inside the image and off `blocked` (`pixels`: the
    mask's (ys, xs), where the caller has them)."""
    h, w = mask.shape
    ys, xs = pixels if pixels is not None else np.nonzero(mask)
    mx, my = xs + px, ys + py
    if mx.min() < 0 or my.min() < 0 or mx.max() >= w or my.max() >= h:
        return False
    return not blocked[my, mx].any()


def free_shifts(mask: np.ndarray, blocked: np.ndarray, min_len: float, max_len: float) -> list[tuple[int, int]]:
    """Every whole-pixel shift of length in [min_len, max_len] (image units) that fits."""
    h, w = mask.shape
    lo, hi = min_len * w, max_len * w
    r = int(math.ceil(hi))
    pixels = np.nonzero(mask)
    out = []
    for py in range(-r, r + 1):
        for px in range(-r, r + 1):
            if lo <= math.hypot(px, py) <= hi and fits(mask, blocked, px, py, pixels):
                out.append((px, py))
    return out


def grow_radius(subject, factor: float) -> int:
    """Pixels an object grows by on each side when its area is scaled by `factor` (0 for a shrink)."""
    x0, y0, x1, y1 = subject.bbox
    extent = max(x1 - x0, y1 - y0)
    return max(0, int(math.ceil(extent * (math.sqrt(factor) - 1) / 2)))


def pick_shift(objects, subject, rng: np.random.Generator, grow: float = 1.0,
               lengths=((0.2, 0.45), (0.12, 0.2))) -> tuple[float, float] | None:
    """A shift (dx, dy), in image units, that takes the subject to free space: drawn with `rng`
    among the free shifts of the first length band that has any. None where none fits. `grow`:
    the object's area there will be this times its area (the free check dilates by as much)."""
    size = subject.mask.shape[0]
    blocked = blocked_by(objects, subject, size, grow_radius(subject, grow))
    for lo, hi in lengths:
        cands = free_shifts(subject.mask, blocked, lo, hi)
        if cands:
            px, py = cands[int(rng.integers(len(cands)))]
            return px / size, py / size
    return None


def pick_target(objects, subject, rng: np.random.Generator, grow: float = 1.0) -> tuple[float, float] | None:
    """An absolute target (x, y) for the subject's centroid in free space (pick_shift), rounded to
    three decimals as a script writes it."""
    v = pick_shift(objects, subject, rng, grow)
    if v is None:
        return None
    return round(subject.centroid[0] + v[0], 3), round(subject.centroid[1] + v[1], 3)


BESIDE = (0.3, 0.35, 0.25, 0.4, 0.2, 0.45)  # offset lengths tried for `centroid(S1) -> centroid(S2) + (dx, dy)`


def pick_beside(objects, subject, other, rng: np.random.Generator) -> tuple[float, float] | None:
    """(dx, dy) for `centroid(token S1) -> centroid(token S2) + (dx, dy)`: the subject with its
    centroid at the other's centroid + (dx, dy) lies inside the image and clear of the other.
    Beside it first (dy = 0, the lengths in BESIDE's order, the sign drawn with `rng`), then above
    or below it (dx = 0), then diagonally off it (both, each of the length): an object near an
    edge, or a wide one, has no room on one side, and a horizontal offset alone left a quarter of
    the report split's sources without a target (with above and below too, a sixth). None where
    nothing fits."""
    size = subject.mask.shape[0]
    blocked = blocked_by(objects, subject, size)
    signs = (1, -1) if rng.random() < 0.5 else (-1, 1)
    rounds = ([(s, 0) for s in signs], [(0, s) for s in signs], [(sx, sy) for sx in signs for sy in signs])
    for ways in rounds:
        for length in BESIDE:
            for ux, uy in ways:
                d = (float(ux * length), float(uy * length))
                tx, ty = other.centroid[0] + d[0], other.centroid[1] + d[1]
                px, py = round((tx - subject.centroid[0]) * size), round((ty - subject.centroid[1]) * size)
                if fits(subject.mask, blocked, px, py):
                    return d
    return None


AREAS = (0.03, 0.05, 0.08, 0.12, 0.16)  # absolute areas `size(token "S") -> A` may ask for


def pick_area(subject, rng: np.random.Generator, min_change: float = 0.3) -> float | None:
    """An area A for `size(token "S") -> A` that differs from the source's by at least 30% either way."""
    cands = [a for a in AREAS if abs(a / subject.area - 1) >= min_change]
    return cands[int(rng.integers(len(cands)))] if cands else None

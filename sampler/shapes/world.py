"""The shapes world: coloured shapes on black, with ground truth and a detector.

Every scene is a pure function of its seed, so a training batch, a benchmark task and a test
fixture can all be regenerated exactly. The detector reads any RGB image of this world (a world
image or a model's sample) and reports the same fields as the ground truth, so an edit can be
measured on its output: where the circle is, how big, what colour, what shape.

Coordinates are image units: x to the right, y down, both in [0, 1], origin at the top-left,
the same convention as the edit language.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
}
WORDS = ("a", "and", *COLOURS, *SHAPES)

# Object extent (side of its bounding box) as a fraction of the image side. At 32 px this is
# 8 to 15 px: small enough that two objects and a move fit, large enough that the silhouette
# is still a circle, a square or a triangle after pixelisation.
MIN_EXTENT, MAX_EXTENT = 0.25, 0.47
GAP = 2  # pixels kept free between two objects at 32 px (scaled with the image), so colour masks never touch


@dataclass
class WorldObject:
    shape: str
    colour: str
    mask: np.ndarray  # (H, W) bool
    centroid: tuple[float, float]  # (x, y) in image units
    area: float  # fraction of the image
    bbox: tuple[int, int, int, int] = field(default=(0, 0, 0, 0))  # x0, y0, x1, y1 (pixels, exclusive)

    @property
    def phrase(self) -> str:
        return f"a {self.colour} {self.shape}"


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) float32 in [0, 1]
    objects: list[WorldObject]

    @property
    def caption(self) -> str:
        return caption_of(self.objects)


def caption_of(objects) -> str:
    return " and ".join(o.phrase for o in objects)


def rasterize(shape: str, cx: float, cy: float, w: float, h: float, size: int) -> np.ndarray:
    """Boolean mask of a shape whose bounding box is centred at (cx, cy) px with extent w x h px."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return (dx / (w / 2)) ** 2 + (dy / (h / 2)) ** 2 <= 1.0
    if shape == "square":
        return (np.abs(dx) <= w / 2) & (np.abs(dy) <= h / 2)
    if shape == "triangle":  # upright: apex at the top, base at the bottom
        top = cy - h / 2
        depth = (ys - top) / h  # 0 at the apex, 1 at the base
        return (depth >= 0) & (depth <= 1) & (np.abs(dx) <= depth * w / 2)
    raise ValueError(f"unknown shape {shape!r}; the world has {', '.join(SHAPES)}")


def make_object(shape: str, colour: str, mask: np.ndarray) -> WorldObject:
    size = mask.shape[0]
    ys, xs = np.nonzero(mask)
    centroid = ((xs.mean() + 0.5) / mask.shape[1], (ys.mean() + 0.5) / size)
    bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return WorldObject(shape, colour, mask, (float(centroid[0]), float(centroid[1])), float(mask.mean()), bbox)


def render(objects, size: int = 32) -> np.ndarray:
    image = np.zeros((size, size, 3), np.float32)
    for o in objects:
        image[o.mask] = COLOURS[o.colour]
    return image


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


def make_scene(seed, size: int = 32, n_objects: int | None = None, p_one: float = 0.5, p_same: float = 0.0) -> Scene:
    """The scene for `seed` (an int or a sequence of ints). Same seed, same scene. Two objects have
    two colours, except in a share p_same of two-object scenes, which give both one colour (an
    appearance transfer's result: "a red circle and a red square"); p_same 0 draws exactly the
    scenes this world always drew."""
    rng = np.random.default_rng(seed)
    n = n_objects if n_objects is not None else (1 if rng.random() < p_one else 2)
    if n == 2 and p_same > 0 and rng.random() < p_same:
        colours = np.array([rng.choice(list(COLOURS))] * 2)
    else:
        colours = rng.choice(list(COLOURS), size=n, replace=False)
    shapes = rng.choice(SHAPES, size=n)
    for _ in range(100):  # a first object in the middle can leave no room: lay out again
        objects = _place(rng, shapes, colours, size)
        if objects is not None:
            return Scene(render(objects, size), objects)
    raise RuntimeError(f"could not place {n} objects in a {size}px scene")  # pragma: no cover


def _place(rng, shapes, colours, size) -> list[WorldObject] | None:
    objects: list[WorldObject] = []
    taken = np.zeros((size, size), bool)
    gap = max(GAP, round(GAP * size / 32))
    for shape, colour in zip(shapes, colours):
        for _ in range(20):
            extent = rng.uniform(MIN_EXTENT, MAX_EXTENT) * size
            cx = rng.uniform(extent / 2 + 1, size - extent / 2 - 1)
            cy = rng.uniform(extent / 2 + 1, size - extent / 2 - 1)
            mask = rasterize(str(shape), cx, cy, extent, extent, size)
            if not (mask & taken).any():
                break
        else:
            return None
        taken |= _dilate(mask, gap)
        objects.append(make_object(str(shape), str(colour), mask))
    return objects


def scene_batch(seed, step: int, batch: int, size: int = 32, p_one: float = 0.5, p_same: float = 0.0) -> list[Scene]:
    """The training batch for one step: scene i of step s has seed (seed, s, i)."""
    return [make_scene((seed, step, i), size, p_one=p_one, p_same=p_same) for i in range(batch)]


# ----------------------------------------------------------------------------------------------
# The detector


def _to_float_image(image) -> np.ndarray:
    a = np.asarray(image)
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:  # CHW tensor layout
        a = a.transpose(1, 2, 0)
    return a[..., :3].astype(np.float32)


def colour_labels(image) -> np.ndarray:
    """Per pixel, the index into COLOURS of the nearest pure colour, or -1 for background."""
    a = _to_float_image(image)
    palette = np.array(list(COLOURS.values()), np.float32)
    dist = ((a[:, :, None, :] - palette[None, None]) ** 2).sum(-1)
    nearest = dist.argmin(-1)
    bright = a.max(-1) > 0.5
    close = dist.min(-1) < 0.45**2 * 3  # within 0.45 per channel on average
    return np.where(bright & close, nearest, -1)


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, largest first."""
    seen = np.zeros_like(mask)
    h, w = mask.shape
    out = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        comp = np.zeros_like(mask)
        queue = deque([(y0, x0)])
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            comp[y, x] = True
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    queue.append((yy, xx))
        out.append(comp)
    return sorted(out, key=lambda c: -c.sum())


def classify_shape(mask: np.ndarray) -> str:
    """The shape whose silhouette, fitted to the mask's bounding box, overlaps the mask best."""
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    size = max(mask.shape)
    padded = np.zeros((size, size), bool)
    padded[: mask.shape[0], : mask.shape[1]] = mask

    def iou(shape):
        t = rasterize(shape, cx, cy, w, h, size)
        return (t & padded).sum() / max((t | padded).sum(), 1)

    return max(SHAPES, key=iou)


def detect(image, min_area: float = 0.004) -> list[WorldObject]:
    """Objects in an RGB image of this world, found by colour.

    Each colour's largest connected blob above `min_area` (fraction of the image; 4 px at 32 px)
    is an object; further blobs of the same colour are reported too, so "nothing extra" can be
    checked. Objects are sorted by area, largest first.
    """
    labels = colour_labels(image)
    min_px = max(1, round(min_area * labels.size))
    found = []
    for index, colour in enumerate(COLOURS):
        for comp in _components(labels == index):
            if comp.sum() >= min_px:
                found.append(make_object(classify_shape(comp), colour, comp))
    return sorted(found, key=lambda o: -o.area)


def find(objects, colour: str | None = None, shape: str | None = None) -> WorldObject | None:
    """The largest object of that colour and/or shape, or None."""
    for o in objects:
        if (colour is None or o.colour == colour) and (shape is None or o.shape == shape):
            return o
    return None


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def parse_caption(caption: str) -> list[tuple[str, str]]:
    """[(colour, shape), ...] named by a world caption such as 'a red circle and a blue square'."""
    out = []
    for phrase in caption.split(" and "):
        words = phrase.split()
        if len(words) != 3 or words[0] != "a" or words[1] not in COLOURS or words[2] not in SHAPES:
            raise ValueError(f"not a shapes-world phrase: {phrase!r}")
        out.append((words[1], words[2]))
    return out


def matches_caption(objects, caption: str) -> tuple[bool, bool]:
    """(colours right, everything right) for a detection against a caption.

    Everything right means: exactly the named objects, each of the named colour and shape, and
    no extra object.
    """
    wanted = parse_caption(caption)
    colours_ok = sorted(c for c, _ in wanted) == sorted(o.colour for o in objects)
    all_ok = colours_ok and all(find(objects, c, s) is not None for c, s in wanted)
    return colours_ok, all_ok

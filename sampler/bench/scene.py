"""The world the bench edits: its splits, the balanced enumeration of prompts, which object of a
prompt is edited, and the style images.

A case is drawn from a split by its position q in that split's cycle:
  - two-object prompts: `item(q)` walks a cycle of 216 items, every two-object caption (colour
    pairs x shape pairs x order: the 108 of sampler/shapes/evaluate.py) with its first object
    edited once and its second once. The cycle is laid out so that any 12 consecutive items edit
    every colour-shape pair once, any 24 do so in both positions, and the other object turns
    through every colour and shape;
  - one-object prompts: `item(q, objects=1)` walks the 12 one-object captions.
Its seed is the split's base + q (one-object prompts: base + ONE_OBJECT_OFFSET + q). The splits'
seed ranges are disjoint, and every task that takes item q edits the same source image, so the
source pass is run once for all of them.

The cost classes and the inversion keep the one prompt they measure time and memory on (PROMPT).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from energies.files import atomic_write

from ..shapes import world as W

# The sampling seeds of each split start here: `tune` is where defaults are chosen, `report` is
# what the figures are quoted from (the same bases as the model card's, sampler/shapes/evaluate.py).
SPLITS = {"tune": 0, "report": 1_000_000}
SPLIT_SPAN = 1_000_000  # a split's seeds are base .. base + SPLIT_SPAN - 1
ONE_OBJECT_OFFSET = 500_000  # one-object prompts draw their seeds from here within the split

COLOURS = tuple(W.COLOURS)
SHAPES = W.SHAPES
CYCLE = 12 * 9 * 2  # edited (colour, shape) x other (colour, shape) x position

# The cost classes and the inversion time one fixed prompt (cost.py, inversion.py).
PROMPT = "a red circle and a blue square"
GREEN_PROMPT = "a green circle and a blue square"


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str

    @property
    def phrase(self) -> str:
        return f"a {self.colour} {self.shape}"


@dataclass(frozen=True)
class Item:
    """A prompt and which of its objects a case is about."""

    objects: tuple[Obj, ...]  # in the prompt's order
    index: int  # the edited object (0: first, 1: second)

    @property
    def caption(self) -> str:
        return " and ".join(o.phrase for o in self.objects)

    @property
    def subject(self) -> Obj:
        return self.objects[self.index]

    @property
    def other(self) -> Obj | None:
        return self.objects[1 - self.index] if len(self.objects) == 2 else None

    @property
    def position(self) -> str:
        return "first" if self.index == 0 else "second"

    def token(self, which: int | None = None) -> str:
        """`token "S"` for an object of the prompt (the subject by default): its shape word, with
        `#2` when the word names the first object too."""
        i = self.index if which is None else which
        word = self.objects[i].shape
        nth = sum(o.shape == word for o in self.objects[: i + 1])
        return f'token "{word}"' + (f"#{nth}" if nth > 1 else "")

    def other_token(self) -> str:
        return self.token(1 - self.index)

    def recaption(self, colour: str) -> str:
        """The caption with the subject recoloured."""
        objs = list(self.objects)
        objs[self.index] = Obj(colour, objs[self.index].shape)
        return " and ".join(o.phrase for o in objs)


def item(q: int, objects: int = 2) -> Item:
    """Item q of the balanced cycle (q >= 0; the cycle repeats every CYCLE, or 12 for one object)."""
    a = q % 12
    subject = Obj(COLOURS[a % 4], SHAPES[a % 3])  # 12 consecutive q: every colour-shape pair once
    if objects == 1:
        return Item((subject,), 0)
    block = (q % CYCLE) // 12  # 0..17
    position, m = block % 2, block // 2  # position alternates per block; m: 0..8 picks the other object
    ci = COLOURS.index(subject.colour)
    others = [COLOURS[(ci + 1 + j) % 4] for j in range(3)]
    other = Obj(others[(m + a + position) % 3], SHAPES[(m // 3 + a // 4 + position) % 3])
    objs = (subject, other) if position == 0 else (other, subject)
    return Item(objs, position)


def seed(split: str, q: int, objects: int = 2) -> int:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; the splits are: {', '.join(SPLITS)}")
    offset = ONE_OBJECT_OFFSET if objects == 1 else 0
    if q < 0 or offset + q >= SPLIT_SPAN:
        raise ValueError(f"case {q} is outside the {split} split's seed range")
    return SPLITS[split] + offset + q


def seed_range(split: str) -> tuple[int, int]:
    """[first, last] seed a split may draw."""
    return SPLITS[split], SPLITS[split] + SPLIT_SPAN - 1


def other_colour(item_: Item, k: int) -> str:
    """A world colour that is neither object's (for recolouring to a word), turning with k."""
    used = {o.colour for o in item_.objects}
    free = [c for c in COLOURS if c not in used]
    return free[k % len(free)]


# ----------------------------------------------------------------------------------------------
# Style images


def style_image_name(colour: str, shape: str) -> str:
    return f"style_{colour}_{shape}.png"


def style_scene(colour: str, shape: str, size: int) -> W.Scene:
    """The first one-object world scene of "a COLOUR SHAPE" at this size (seeds from 10**8)."""
    for k in range(10_000):
        scene = W.make_scene(10**8 + k, size, n_objects=1)
        if scene.caption == f"a {colour} {shape}":
            return scene
    raise RuntimeError(f"no world scene of a {colour} {shape}")  # pragma: no cover


def write_style_image(path: Path, colour: str = "green", shape: str = "circle", size: int = 32):
    """A one-object world scene of "a COLOUR SHAPE", at the model's image size, as a PNG."""
    from PIL import Image

    scene = style_scene(colour, shape, size)
    image = Image.fromarray((scene.image * 255).round().astype(np.uint8))
    atomic_write(Path(path), lambda tmp: image.save(tmp, format="PNG"))


# ----------------------------------------------------------------------------------------------
# Unseen-domain sources: the item's objects drawn by the world itself, then degraded

NOISE_SIGMA = 0.25  # Gaussian noise on [0, 1] pixels (docs/measure_finetune.py)
DEGRADATIONS = ("noise", "blur")  # blur: a 3x3 box filter


def world_scene(it: Item, seed_: int, size: int) -> W.Scene:
    """The item's objects (colours, shapes, prompt order) laid out by the world's own placement for
    this seed: a clean world image of the item's caption, not a sample of the model."""
    rng = np.random.default_rng([seed_, size])
    shapes = [o.shape for o in it.objects]
    colours = [o.colour for o in it.objects]
    for _ in range(100):  # as make_scene: a first object in the middle can leave no room
        objects = W._place(rng, shapes, colours, size)
        if objects is not None:
            return W.Scene(W.render(objects, size), objects)
    raise RuntimeError(f"could not place {it.caption} in a {size}px scene")  # pragma: no cover


def degrade(image: np.ndarray, how: str, seed_: int = 0) -> np.ndarray:
    """A world image out of the model's domain: Gaussian noise (sigma 0.25, clipped) or a 3x3 box
    blur, as docs/measure_finetune.py measured the return step on."""
    if how == "noise":
        return np.clip(image + np.random.default_rng(seed_).normal(0, NOISE_SIGMA, image.shape), 0, 1).astype(np.float32)
    if how == "blur":
        h, w = image.shape[:2]
        padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
        return (sum(padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9).astype(np.float32)
    raise ValueError(f"unknown degradation {how!r}; the bench has: {', '.join(DEGRADATIONS)}")


def degraded_name(seed_: int, how: str) -> str:
    return f"unseen_{seed_}_{how}.png"


def write_degraded(path: Path, image: np.ndarray, how: str, seed_: int) -> np.ndarray:
    """The degraded image as an 8-bit PNG (what a user's file would be); returns what was written."""
    from PIL import Image

    pixels = (degrade(image, how, seed_) * 255).round().astype(np.uint8)
    atomic_write(Path(path), lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))
    return pixels.astype(np.float32) / 255

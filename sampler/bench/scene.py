"""The scene every bench task edits: its prompt, which object is which, and the style image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..shapes import world as W

PROMPT = "a red circle and a blue square"  # circle: red, square: blue
CIRCLE, SQUARE = "red", "blue"  # the detector finds objects by colour
GREEN_PROMPT = "a green circle and a blue square"  # what the recolouring tasks ask for
STYLE_IMAGE = "style_green_circle.png"  # a world image of a green circle, written into the output folder


def write_style_image(path: Path):
    """The first one-object world scene whose caption is "a green circle", as a PNG."""
    from PIL import Image

    scenes = (W.make_scene(10**8 + k, n_objects=1) for k in range(1000))
    scene = next(s for s in scenes if s.caption == "a green circle")
    Image.fromarray((scene.image * 255).round().astype(np.uint8)).save(path)

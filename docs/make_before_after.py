"""Make docs/images/before_after.png for the README: `python docs/make_before_after.py`.

Runs examples/move_circle.edit on the shipped model and puts the source and the edit side by
side, enlarged with nearest-neighbour so the pixels of the 64x64 world stay visible.
"""

from pathlib import Path

import numpy as np

import dsl
from sampler.editor import Editor
from sampler.images import write_png

root = Path(__file__).resolve().parent.parent
program = dsl.load(root / "examples" / "move_circle.edit")
result = Editor("shapes").run(program)
gap = np.ones((result.image.shape[0], 2, 3), np.float32)
pair = np.concatenate([result.source_image, gap, result.image], axis=1)
out = root / "docs" / "images" / "before_after.png"
write_png(pair.repeat(8, 0).repeat(8, 1), out, result.record())
print(f"wrote {out}")

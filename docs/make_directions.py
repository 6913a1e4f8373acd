"""Make docs/images/directions.png: what each direction shipped with the shapes model does.

    python docs/make_directions.py

One row per direction: for four seeds of "a red circle and a blue square", the unedited image
and the image with `direction NAME` at its default strength, enlarged with nearest-neighbour. The
prompt direction red_to_green is shown alone and with `keep attention` (Pix2Pix-Zero's pairing).
"""

from pathlib import Path

import numpy as np

import dsl
from sampler.editor import Editor
from sampler.images import write_png

DIRECTIONS = ["circle_to_square", "green", "smaller", "red_to_green", "red_to_green + keep attention",
              "circle_to_square_p2p + keep attention"]
SEEDS = [0, 1, 2, 3]

root = Path(__file__).resolve().parent.parent
editor = Editor("shapes")
rows = []
for name in DIRECTIONS:
    cells = []
    for seed in SEEDS:
        r = editor.run(dsl.compile(f'prompt "a red circle and a blue square"\nseed {seed}\ndirection {name.replace(" + ", chr(10))}'), progress=False)
        cells += [r.source_image, np.ones((r.image.shape[0], 1, 3), np.float32), r.image, np.ones((r.image.shape[0], 4, 3), np.float32)]
    rows += [np.concatenate(cells, axis=1), np.ones((4, sum(c.shape[1] for c in cells), 3), np.float32)]
grid = np.concatenate(rows, axis=0)
out = root / "docs" / "images" / "directions.png"
write_png(grid.repeat(6, 0).repeat(6, 1), out, {"steer:directions": ", ".join(DIRECTIONS)})
print(f"wrote {out} (rows: {', '.join(DIRECTIONS)}; each pair: source, edit)")

"""Sweep the weight of a move and see what it does, reusing one source pass.

    python examples/sweep_weights.py

The model is loaded and the unedited source trajectory computed once; each weight costs only
the edit pass. Writes a contact sheet to examples/out/sweep_weights.png and prints, per weight,
how far the circle ended from its target (measured by the shapes world's detector).
"""

from pathlib import Path

import numpy as np

import dsl
from sampler.editor import Editor
from sampler.images import write_png
from sampler.shapes import world

TARGET = (0.75, 0.5)
editor = Editor("shapes")
base = dsl.compile('prompt "a red circle and a blue square"\nseed 3\nkeep appearance')

row = []
for w in (0.0, 0.5, 1.0, 2.0):
    move = dsl.compile(f"centroid(token \"circle\") -> ({TARGET[0]}, {TARGET[1]}) * {w}")
    result = editor.run(base + move if w else base, progress=False)
    o = world.find(world.detect(result.image), colour="red")
    err = np.hypot(o.centroid[0] - TARGET[0], o.centroid[1] - TARGET[1]) if o else float("nan")
    print(f"weight {w:>3}: circle {err:.3f} from the target")
    row.append(result.image)

out = Path(__file__).parent / "out" / "sweep_weights.png"
write_png(np.concatenate(row, axis=1).repeat(4, 0).repeat(4, 1), out)
print(f"wrote {out}")

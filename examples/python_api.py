"""Build an edit in Python, run it on the shipped shapes model, and measure it.

    python examples/python_api.py

Writes examples/out/python_api.png (source | edit) and prints where the circle went.
"""

from pathlib import Path

import numpy as np

import dsl
from energies import centroid, keep, settings, token
from sampler.editor import Editor
from sampler.images import write_png
from sampler.shapes import world

program = (
    settings(prompt="a red circle and a blue square", seed=3)
    + centroid(token("circle")).to(0.75, 0.5)
    + keep.appearance()
)
print("the program, as a script:\n" + dsl.format(program))

editor = Editor("shapes")
result = editor.run(program)

out = Path(__file__).parent / "out" / "python_api.png"
write_png(np.concatenate([result.source_image, result.image], axis=1), out)

before = world.find(world.detect(result.source_image), colour="red")
after = world.find(world.detect(result.image), colour="red")
for name, o in (("source", before), ("edit", after)):
    print(f"{name}: " + (f"red {o.shape} at ({o.centroid[0]:.2f}, {o.centroid[1]:.2f})" if o else "no red object found"))
print(f"wrote {out}")

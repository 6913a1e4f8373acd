"""Make docs/images/maps.png and docs/images/sheet.png for the README: `python docs/make_pictures.py`.

Runs examples/move_circle.edit on the shipped model at a few steps (the pictures are about
reading a run, not about its quality) and draws the two pictures steer makes of a run: the
word maps (`steer maps`) and the run sheet (`steer run --sheet`).
"""

from pathlib import Path

import dsl
from sampler.editor import Editor

STEPS = 12  # few: the maps are sharp by then, and the page is made in seconds

root = Path(__file__).resolve().parent.parent
program = dsl.load(root / "examples" / "move_circle.edit").with_settings(steps=STEPS)
result = Editor("shapes").run(program)
images = root / "docs" / "images"
result.save_maps(images / "maps.png", at=[0.3, 0.7, 1.0])
result.sheet(images / "sheet.png")
print(f"wrote {images / 'maps.png'} and {images / 'sheet.png'}")

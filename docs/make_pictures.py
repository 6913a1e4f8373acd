"""Make docs/images/maps.png, sheet.png and repl_diff.png for the README: `python docs/make_pictures.py`.

Runs examples/move_circle.edit on the shipped model at a few steps (the pictures are about
reading a run, not about its quality) and draws the pictures steer makes of a run: the word maps
(`steer maps`), the run sheet (`steer run --sheet`), and the REPL's `:diff` of two numbered runs
(the move at weight 1, then 0.5).
"""

import shutil
import tempfile
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

from dsl.repl import Repl  # noqa: E402  (a tool, imported where it is used)

with tempfile.TemporaryDirectory() as tmp:
    repl = Repl(str(root / "examples" / "move_circle.edit"), out=str(Path(tmp) / "repl.png"))
    for line in (f"steps {STEPS}", ":weight 1 0.5", ":diff 1 2"):  # each change re-runs: runs 1 and 2
        repl.handle(line)
    shutil.copyfile(Path(tmp) / "repl-diff-1-2.png", images / "repl_diff.png")
print(f"wrote {images / 'maps.png'}, {images / 'sheet.png'} and {images / 'repl_diff.png'}")

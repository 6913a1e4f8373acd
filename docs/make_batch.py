"""Make docs/images/batch_grid.png for the README: `python docs/make_batch.py`.

Runs the README's batch command on examples/move_circle.edit, on the shipped model at a few
steps: four seeds, each with the move's weight swept over 0, 0.5, 1 and 2 (term 1 is the
`centroid` line), into a temporary folder, and keeps the grid.png it writes.
"""

import shutil
import sys
import tempfile
from pathlib import Path

from dsl.cli import main

STEPS = 12  # as docs/make_pictures.py: the picture is about the batch, made in a minute on a CPU

root = Path(__file__).resolve().parent.parent
target = root / "docs" / "images" / "batch_grid.png"
with tempfile.TemporaryDirectory() as folder:
    status = main(["run", str(root / "examples" / "move_circle.edit"), "--seeds", "0-3", "--sweep", "1=0,0.5,1,2",
                   "--steps", str(STEPS), "-o", folder, "-q"])
    if status:
        sys.exit(status)
    shutil.copyfile(Path(folder) / "grid.png", target)  # a copy keeps the grid's text chunks: the program that made it
print(f"wrote {target}")

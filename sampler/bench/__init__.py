"""`steer bench`: does an edit do what its script says, and what does it cost?

Runs a fixed suite of edit tasks on the shapes model and measures every output with the shapes
world's detector (colour masks, centroids, areas, shape classes). Cost is measured in the same
process, on the same model, steps and seeds: guided edit vs plain classifier-free-guided
sampling (time and peak memory), and a REPL-style re-run vs the first run.

scene.py      the prompt every task edits, which object is which, the style image
tasks.py      the suite: each case's script and the check that measures it
checks.py     the measurements of an outcome (detector findings, the shapes CLIP)
cost.py       time and peak memory, guided vs plain (fresh processes for CPU peaks)
inversion.py  `source "image.png"`: invert, regenerate, PSNR
report.py     the per-task table, results.md and the contact sheet
run.py        run_bench and `steer bench`'s main: writes DIR/results.json, DIR/results.md and
              DIR/contact_sheet.png
backbones.py  a separate script: plain vs guided step times on the full-size SD 1.5 and SDXL
              architectures (python -m sampler.bench.backbones)
"""

from .run import main, run_bench  # noqa: F401  (dsl/cli.py: `steer bench`)

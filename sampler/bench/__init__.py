"""`steer bench`: does an edit do what its script says, across the shapes world, and what does it cost?

Every task draws its cases from the world (scene.py): two-object prompts of every colour and shape
in both orders (and one-object prompts where a task makes sense), the first or the second object
edited, seeds from one of two splits (`tune`, where defaults are chosen, and `report`, what the
figures are quoted from). Each outcome is measured with the shapes world's detector and judged by
its statement's one success criterion against its bar. Cost is measured in the same process, on
the same model and steps: guided edit vs plain classifier-free-guided sampling (time and peak
memory), and a REPL-style re-run vs the first run.

scene.py      the splits, the balanced enumeration of prompts and edited objects, style images
targets.py    targets from the source image's detections: free space, inside, clear of the other
tasks.py      the tasks: each statement's script (a function of the source's detections), its
              success criterion and its bar; the plan of cases of a split
checks.py     the measurements of an outcome (detector findings, the shapes CLIP)
cost.py       time and peak memory, guided vs plain (fresh processes for CPU peaks)
inversion.py  `source "image.png"`: invert, regenerate, PSNR
report.py     the rows (success over all sources and over right ones, per shape, per colour, bars),
              the weight curves, results.md and the contact sheet
docs.py       the README's Status lines and docs/bench-results.md, from a results.json
run.py        run_bench and `steer bench`'s main: writes DIR/results.json, DIR/results.md and
              DIR/contact_sheet.png (and DIR/weight_curves.png where matplotlib is installed)
backbones.py  a separate script: plain vs guided step times on the full-size SD 1.5 and SDXL
              architectures (python -m sampler.bench.backbones)

The package imports its parts when they are used, so `steer --help` does not load torch.
"""


def run_bench(*args, **kwargs) -> dict:
    from .run import run_bench as run

    return run(*args, **kwargs)


def main(args) -> int:
    """`steer bench` (dsl/cli.py parses the flags)."""
    from .run import main as run_main

    return run_main(args)


def add_arguments(parser) -> None:
    """The bench's flags on an argparse parser (light: imports nothing heavy)."""
    from .flags import add_arguments as add

    add(parser)

"""The bench's command-line flags, in one place for `steer bench` (dsl/cli.py) and
`python -m sampler.bench`. Imports nothing heavy, so building the parser does not load torch."""

from __future__ import annotations

import argparse

SPLIT_NAMES = ("tune", "report")  # scene.SPLITS' keys (kept here so that this module stays light)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", choices=SPLIT_NAMES, default="report",
                   help="report (default): the split figures are quoted from; tune: the split defaults are chosen on")
    p.add_argument("--per-task", type=int, help="edits per task (default 48; --quick: 2)")
    p.add_argument("--seeds", type=int, help=argparse.SUPPRESS)  # the old name of --per-task
    p.add_argument("--quick", action="store_true", help="a smoke run: a few cases, few steps")
    p.add_argument("--steps", type=int, help="sampling steps (default: the model's; --quick: 10)")
    p.add_argument("--out", default="bench-out")
    p.add_argument("--task", action="append", help="run only this task (repeatable), e.g. --task move")
    p.add_argument("--model", default="shapes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-cost", action="store_true", help="only the tasks: skip the cost classes and the inversion")
    p.add_argument("--no-curves", action="store_true", help="skip the weight curves")
    p.add_argument("--directions", metavar="DIR", help="a folder of more direction files for the tasks (e.g. fine-tuned ones, "
                   "`steer learn clip ... --out DIR`); tasks naming a direction no folder has are not run")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sampler.bench", description="measure edit quality and cost on the shapes world")
    add_arguments(p)
    return p

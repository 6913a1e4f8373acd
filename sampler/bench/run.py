"""`steer bench`: run the suite (tasks.py) on the shapes model, measure every output (checks.py),
then the cost classes (cost.py) and the inversion (inversion.py), and write the report
(report.py): DIR/results.json, DIR/results.md and DIR/contact_sheet.png."""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import dsl

from ..editor import Editor
from energies.files import atomic_write
from ..shapes import world as W
from .cost import measure_cost
from .inversion import measure_inversion
from .report import contact_sheet, markdown, summarise
from .scene import PROMPT, STYLE_IMAGE, write_style_image
from .tasks import Outcome, suite


def run_bench(model: str = "shapes", seeds: int | None = None, quick: bool = False, out: Path | str = "bench-out",
              steps: int | None = None, device: str = "cpu", progress: bool = True, command: str = "steer bench",
              tasks: list[str] | None = None, cost: bool = True) -> dict:
    """The suite (or `tasks` of it), then, unless cost=False, the cost classes and the inversion."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    editor = Editor(model, device=device)
    steps = steps or (10 if quick else editor.backbone.sampling_defaults.get("steps", 25))
    n = seeds or (2 if quick else 16)
    seed_list = list(range(n))
    cases = suite(seed_list, quick)
    write_style_image(out / STYLE_IMAGE)
    if tasks:
        known = sorted({c.task for c in cases})
        unknown = [t for t in tasks if t not in known]
        if unknown:
            raise ValueError(f"unknown task {unknown[0]!r}; the suite has: {', '.join(known)}")
        cases = [c for c in cases if c.task in tasks]
    t0 = time.time()
    outcomes = []
    bar = tqdm(cases, desc="bench", disable=not progress, dynamic_ncols=True)
    for case in bar:
        bar.set_postfix(task=case.task, seed=case.seed)
        header = f'prompt "{PROMPT}"\nseed {case.seed}\nsteps {steps}\n'
        script = case.script
        if callable(script):  # a script written from the source image (a drag's handle is where the object is)
            src = editor.source(editor.settings(dsl.compile(header)), progress=False)
            script = script(W.detect(src.image), case.seed)
            if script is None:
                outcomes.append(Outcome(dataclasses.replace(case, script=None), {"found": False}, 0.0, src.image, src.image))
                continue
        t = time.perf_counter()
        r = editor.run(dsl.compile(header + script), progress=False, script_dir=out)
        dt = time.perf_counter() - t
        figures = {**case.measure(W.detect(r.source_image), W.detect(r.image)), "seconds": dt}
        if case.score is not None:
            figures.update(case.score(editor, r.source_image, r.image))
        outcomes.append(Outcome(dataclasses.replace(case, script=script), figures, dt, r.source_image, r.image))
    costs = measure_cost(editor, steps, seed_list[: 2 if quick else 4], device, model, progress) if cost else {}
    inversion = measure_inversion(editor, seed_list[: 2 if quick else 8], steps, progress) if cost else {}
    table = summarise(outcomes)
    meta = {"model": model, "steps": steps, "seeds": n, "quick": quick, "seconds": time.time() - t0, "command": command,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {device}"}
    results = {"meta": meta, "tasks": table, "cost": costs, "inversion": inversion,
               "runs": [{"task": o.case.task, "seed": o.case.seed, "script": o.case.script, "seconds": o.seconds, **o.figures} for o in outcomes]}
    atomic_write(out / "results.json", lambda tmp: tmp.write_text(json.dumps(results, indent=2, default=float) + "\n"))
    atomic_write(out / "results.md", lambda tmp: tmp.write_text(markdown(table, costs, meta, inversion)))
    contact_sheet(outcomes, out / "contact_sheet.png")
    return results


def main(args) -> int:
    """`steer bench` (dsl/cli.py parses the flags)."""
    try:
        results = run_bench(args.model, args.seeds, args.quick, args.out, command="steer " + " ".join(sys.argv[1:]), tasks=args.task,
                            cost=not args.no_cost)
    except ValueError as e:
        print(f"steer bench: error: {e}", file=sys.stderr)
        return 2
    print((Path(args.out) / "results.md").read_text())
    print(f"wrote {args.out}/results.json, results.md, contact_sheet.png")
    return 0

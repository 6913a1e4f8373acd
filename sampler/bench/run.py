"""`steer bench`: plan the cases of a split (tasks.py), run each on the shapes model and measure it
(checks.py), sweep the weight curves, then the cost classes (cost.py) and the inversion
(inversion.py), and write the report (report.py): DIR/results.json, DIR/results.md,
DIR/contact_sheet.png (and DIR/weight_curves.png where matplotlib is installed).

A task whose script does not compile yet (a statement the language does not have) is not run: its
row says "not run: <the compile error's message>" and the other tasks run as usual.
"""

from __future__ import annotations

import json
import math
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import dsl
from energies.files import atomic_write

from ..editor import Editor
from ..shapes import world as W
from . import checks as K
from .cost import measure_cost
from .inversion import measure_inversion
from .report import contact_sheet, curve_plot, markdown, summarise, summarise_curves
from .scene import SPLITS, seed_range, style_image_name, world_scene, write_degraded, write_style_image
from .tasks import CURVES, QUICK_WEIGHTS, WEIGHTS, Case, Outcome, Posed, Task, cases_of, judge, plan, select, synthetic_source

SHEET_CASES = 4  # cases per task on the contact sheet (each from a different prompt)


def header(case: Case, steps: int) -> str:
    return f'prompt "{case.item.caption}"\nseed {case.seed}\nsteps {steps}\n'


def weighted(script: str, weight) -> str:
    """The script with its statement (the first line) scaled by `weight` (a number, or a name to show)."""
    first, _, rest = script.partition("\n")
    w = f"{weight:g}" if isinstance(weight, (int, float)) else weight
    return f"{first} * {w}" + (f"\n{rest}" if rest else "")


def probe(task: Task, split: str, steps: int, size: int, editor: Editor | None = None, out: Path | None = None) -> str | None:
    """Compile the task's script, written for a made-up source, before any sampling (and, given an
    editor, bind it: a direction no folder has is found here): the error's message where the
    language does not have the statement or the model lacks what it names, else None."""
    case = cases_of(task, split, 1)[0]
    posed = task.pose(case.item, synthetic_source(case.item, size), case.rng())
    if not isinstance(posed, Posed):
        return None
    try:
        program = dsl.compile(header(case, steps) + posed.script)
        if editor is not None:
            editor.bind(program, script_dir=out)
    except dsl.SteerError as e:
        return e.message
    return None


def run_case(editor: Editor, case: Case, steps: int, out: Path, weight: float | None = None, keep_images: bool = True) -> Outcome:
    """Write the case's script from its source image's detections, run it, and measure it."""
    task, it = case.task, case.item
    top = header(case, steps)
    size = editor.backbone.image_size()[0]
    if task.world_source:  # the world's own drawing of the item: its true objects are the source's
        scene = world_scene(it, case.seed, size)
        src_image, src_found = scene.image, scene.objects
    else:
        src_image = editor.source(editor.settings(dsl.compile(top)), progress=False).image
        src_found = W.detect(src_image)
    right = K.source_right(src_found, it)
    images = (src_image, src_image) if keep_images else (None, None)
    posed = task.pose(it, src_found, case.rng())
    if not isinstance(posed, Posed):  # no script could be written (no free place, the object missing): a failure
        return Outcome(case, None, {"posed": False, "why": posed}, False, right, 0.0, *images, weight=weight)
    for colour, shape in posed.files:
        path = out / style_image_name(colour, shape)
        if not _image_of_size(path, size):  # missing, or left by a run on a model of another size
            write_style_image(path, colour, shape, size)
    shown = None  # the contact sheet's source: the degraded input where the script reads one
    for name, how in posed.degraded:
        shown = write_degraded(out / name, src_image, how, case.seed)
    sweep = task.sweep or (weight,)
    scripts = [posed.script if w is None else weighted(posed.script, w) for w in sweep]
    t = time.perf_counter()
    try:
        runs = [editor.run(dsl.compile(top + script), progress=False, script_dir=out) for script in scripts]
    except dsl.SteerError as e:  # a statement the language does not have yet, or cannot bind here
        return Outcome(case, scripts[-1], {}, None, right, 0.0, *images, not_run=e.message, weight=weight)
    dt = (time.perf_counter() - t) / len(runs)
    r = runs[-1]
    more = {"images": [x.image for x in runs]} if task.reads_images else {}
    figures = {"posed": True, **task.check(src_found, W.detect(r.image), it, **more, **posed.asked)}
    if task.score is not None:
        figures.update(task.score(it, posed.asked)(editor, r.source_image, r.image))
    success = judge(task, figures)
    script = scripts[-1] if not task.sweep else weighted(posed.script, "gamma") + f"  # gamma {', '.join(f'{w:g}' for w in sweep)}"
    sheet = (r.source_image if shown is None else shown, r.image)
    return Outcome(case, script, figures, success, right, dt, *(sheet if keep_images else (None, None)),
                   weight=weight)


def _image_of_size(path: Path, size: int) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size == (size, size)
    except OSError:
        return False


def run_cases(editor: Editor, cases: list[Case], steps: int, out: Path, not_run: dict, progress: bool = True,
              weight: float | None = None, desc: str = "bench") -> list[Outcome]:
    """Run the cases (a task in `not_run` is skipped: its row says why)."""
    outcomes = []
    bar = tqdm(cases, desc=desc, disable=not progress, dynamic_ncols=True)
    for case in bar:
        if case.task.name in not_run:
            continue
        bar.set_postfix(task=case.task.name, seed=case.seed)
        outcomes.append(run_case(editor, case, steps, out, weight, keep_images=case.k < SHEET_CASES))
    return outcomes


def run_curves(editor: Editor, tasks: list[Task], split: str, n: int, weights, steps: int, out: Path, not_run: dict,
               progress: bool) -> dict:
    """For move, resize and recolour: the statement's weight swept over `weights` on the task's
    first n cases of the split."""
    by_name = {t.name: t for t in tasks}
    curves = {}
    for name, (task_name, figure, label) in CURVES.items():
        task = by_name.get(task_name)
        if task is None:
            continue
        if task.name in not_run:
            curves[name] = {"task": task.name, "figure": figure, "label": label, "weights": list(weights),
                            "not_run": not_run[task.name], "rows": [], "runs": []}
            continue
        runs = []
        for w in weights:
            runs += run_cases(editor, cases_of(task, split, n), steps, out, {}, progress, weight=w, desc=f"curve {name} x{w:g}")
        curves[name] = {"task": task.name, "figure": figure, "label": label, "weights": list(weights),
                        **summarise_curves(runs, weights, figure)}
    return curves


def run_bench(model: str = "shapes", seeds: int | None = None, quick: bool = False, out: Path | str = "bench-out",
              steps: int | None = None, device: str = "cpu", progress: bool = True, command: str = "steer bench",
              tasks: list[str] | None = None, cost: bool = True, split: str = "report", per_task: int | None = None,
              curves: bool = True, curve_cases: int | None = None, weights=None, task_list: list[Task] | None = None,
              editor: Editor | None = None, directions: Path | str | None = None) -> dict:
    """The tasks (`tasks` names some; `task_list` gives Task objects instead) on `per_task` cases of
    the split each, the weight curves, then, unless cost=False, the cost classes and the inversion.
    `seeds` is the old name of per_task. `directions`: a folder of more direction files (copied to
    OUT/directions, the first folder a script run from OUT searches)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; the splits are: {', '.join(SPLITS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    used_directions = add_directions(Path(directions), out) if directions is not None else []
    chosen = task_list if task_list is not None else select(tasks)
    editor = editor or Editor(model, device=device)
    steps = steps or (10 if quick else editor.backbone.sampling_defaults.get("steps", 25))
    per_task = per_task or seeds or (2 if quick else 48)
    curve_cases = curve_cases or (1 if quick else 6)
    weights = tuple(weights or (QUICK_WEIGHTS if quick else WEIGHTS))
    size = editor.backbone.image_size()[0]
    t0 = time.time()
    not_run = {t.name: msg for t in chosen if (msg := probe(t, split, steps, size, editor, out)) is not None}
    cases = plan(chosen, split, per_task)
    outcomes = run_cases(editor, cases, steps, out, not_run, progress)
    curve_rows = run_curves(editor, chosen, split, curve_cases, weights, steps, out, not_run, progress) if curves else {}
    base = SPLITS[split]
    other = [base + i for i in range(2 if quick else 8)]
    costs = measure_cost(editor, steps, other[: 2 if quick else 4], device, model, progress) if cost else {}
    inversion = measure_inversion(editor, other, steps, progress) if cost else {}
    used = sorted(c.seed for c in cases)
    meta = {"model": model, "steps": steps, "cfg": editor.backbone.sampling_defaults.get("cfg"), "image_size": size,
            "split": split, "per_task": per_task, "quick": quick,
            "seeds": {"range": list(seed_range(split)), "first": used[0] if used else None, "last": used[-1] if used else None,
                      "sources": len(set(used))},
            "curve_cases": curve_cases if curves else 0, "weights": list(weights) if curves else [],
            "seconds": time.time() - t0, "command": command, "directions": used_directions,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {device}"}
    rows = summarise(chosen, outcomes, not_run)
    results = {"meta": meta, "tasks": rows, "curves": curve_rows, "cost": costs, "inversion": inversion,
               "runs": [o.record() for o in outcomes]}
    results = _plain(results)
    atomic_write(out / "results.json", lambda tmp: tmp.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n"))
    plotted = curve_plot(curve_rows, out / "weight_curves.png")
    atomic_write(out / "results.md", lambda tmp: tmp.write_text(markdown(results, plotted)))
    contact_sheet(outcomes, out / "contact_sheet.png", SHEET_CASES, order=[t.name for t in chosen])
    return results


def add_directions(folder: Path, out: Path) -> list[str]:
    """Copy the folder's direction files into OUT/directions, where every script the bench runs
    (from OUT) looks first: directions not shipped with the model, such as fine-tuned ones. The
    names copied, for results.json."""
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        raise ValueError(f"--directions {folder}: no direction files (*.safetensors) there")
    (out / "directions").mkdir(exist_ok=True)
    for f in files:
        atomic_write(out / "directions" / f.name, lambda tmp, f=f: shutil.copyfile(f, tmp))
    return [f.stem for f in files]


def _plain(x):
    """The results as plain JSON: numpy scalars as numbers, tuples as lists, NaN (a figure of an
    object that was not found) as null."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def main(args) -> int:
    """`steer bench` (dsl/cli.py parses the flags; flags.py has the full set)."""
    argv = [shlex.quote(a) for a in sys.argv[1:]]  # as a shell would take it back
    command = " ".join(["steer", *argv] if argv[:1] == ["bench"] else ["python -m sampler.bench", *argv])
    try:
        run_bench(getattr(args, "model", None) or "shapes", getattr(args, "seeds", None), args.quick, args.out,
                  steps=getattr(args, "steps", None), device=getattr(args, "device", None) or "cpu", command=command,
                  tasks=args.task, cost=not args.no_cost, split=getattr(args, "split", None) or "report",
                  per_task=getattr(args, "per_task", None), curves=not getattr(args, "no_curves", False),
                  directions=getattr(args, "directions", None))
    except ValueError as e:
        print(f"steer bench: error: {e}", file=sys.stderr)
        return 2
    print((Path(args.out) / "results.md").read_text())
    print(f"wrote {args.out}/results.json, results.md, contact_sheet.png")
    return 0

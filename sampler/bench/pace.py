"""How often to take an energy term's gradient: fidelity and time of bench tasks at `every k`.

    python -m sampler.bench.pace --task move --task "keep appearance beside a move" \
        --every 1 2 3 --per-task 16 --split tune [--kinds keep_appearance move] [--out pace.json]

For each case of each task the edit is run once per k, interleaved (so a machine's load falls on
every k alike), with every energy term of the kinds named (default: all) taking its gradient at
every k-th step, as if `every k` were its default (energies/defaults.py). The same case's plain
sampling is timed in the same process, so each k's time is also a ratio to plain sampling. It
prints one Markdown table per task: successes and each criterion's share per k, and the
guided / plain time ratio (first run, source pass cached: the edit pass alone).

This is where the `every` defaults are chosen: on the tune split, the largest k whose success
stays within seed noise of k = 1 (a difference of a case or two in 16 is noise). Figures for the
record are taken on the report split.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

import dsl
from energies import defaults as D
from energies.files import atomic_write

from ..editor import Editor
from .run import header, run_case
from .tasks import cases_of, select


@contextlib.contextmanager
def every_default(k: int, kinds: set[str] | None):
    """energies.defaults with every term kind in `kinds` (None: all) at `every k`, restored after."""
    saved_terms, saved_backbones = dict(D.TERMS), {b: dict(t) for b, t in D.BACKBONE_TERMS.items()}
    try:
        for table in (D.TERMS, *D.BACKBONE_TERMS.values()):
            for kind, d in table.items():
                if kinds is None or kind in kinds:
                    table[kind] = dataclasses.replace(d, every=k)
        yield
    finally:
        D.TERMS.clear()
        D.TERMS.update(saved_terms)
        for b, t in saved_backbones.items():
            D.BACKBONE_TERMS[b].clear()
            D.BACKBONE_TERMS[b].update(t)


def plain_seconds(editor: Editor, case, steps: int) -> float:
    settings = editor.settings(dsl.compile(header(case, steps)))
    t = time.perf_counter()
    editor.sample_plain(settings)
    return time.perf_counter() - t


def pace(editor: Editor, tasks, ks, n: int, split: str, steps: int, out: Path, kinds=None, progress=True) -> dict:
    """{task: {k: {"success": share, criterion: share, "time_ratio": median edit / plain}}}."""
    result = {}
    for task in tasks:
        cases = cases_of(task, split, n)
        runs = {k: [] for k in ks}
        plain = []
        for case in tqdm(cases, desc=task.name, disable=not progress, dynamic_ncols=True):
            editor.source(editor.settings(dsl.compile(header(case, steps))), progress=False)  # cached for every k
            plain.append(plain_seconds(editor, case, steps))
            for k in ks:
                with every_default(k, kinds):
                    o = run_case(editor, case, steps, out, keep_images=False)
                runs[k].append((o, o.seconds / plain[-1]))
        result[task.name] = {}
        for k in ks:
            done = [(o, r) for o, r in runs[k] if o.success is not None]
            row = {"cases": len(done), "success": sum(o.success for o, _ in done) / max(1, len(done))}
            for c in task.criteria:
                row[c] = sum(bool(o.figures.get(c, False)) for o, _ in done) / max(1, len(done))
            row["time_ratio"] = statistics.median(r for _, r in done) if done else None
            result[task.name][k] = row
    return result


def markdown(result: dict, ks) -> str:
    out = []
    for task, rows in result.items():
        criteria = [c for c in next(iter(rows.values())) if c not in ("cases", "success", "time_ratio")]
        out.append(f"\n{task}\n")
        out.append("| every | cases | success | " + " | ".join(criteria) + " | edit / plain time |")
        out.append("| ---: | ---: | ---: | " + " | ".join("---:" for _ in criteria) + " | ---: |")
        for k in ks:
            r = rows[k]
            ratio = "n/a" if r["time_ratio"] is None else f"{r['time_ratio']:.2f}x"
            out.append(f"| {k} | {r['cases']} | {r['success']:.0%} | " + " | ".join(f"{r[c]:.0%}" for c in criteria) + f" | {ratio} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sampler.bench.pace", description=__doc__.split("\n")[0])
    p.add_argument("--task", action="append", help="a bench task (repeatable; default: move)")
    p.add_argument("--every", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--kinds", nargs="+", help="term kinds paced (default: every energy term)")
    p.add_argument("--per-task", type=int, default=16)
    p.add_argument("--split", choices=["tune", "report"], default="tune")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--model", default="shapes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", type=Path, default=Path("bench-out/pace"), help="where the tasks' files go")
    p.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = p.parse_args(argv)
    if any(k < 1 for k in args.every):
        p.error("--every takes whole numbers of steps, 1 or more")
    try:
        tasks = select(args.task or ["move"])
    except ValueError as e:
        p.error(str(e))
    unknown = set(args.kinds or ()) - set(D.TERMS)
    if unknown:
        p.error(f"unknown term kind {sorted(unknown)[0]!r}; kinds: {', '.join(D.TERMS)}")
    editor = Editor(args.model, device=args.device)
    steps = args.steps or editor.backbone.sampling_defaults.get("steps", 50)
    args.work.mkdir(parents=True, exist_ok=True)
    result = pace(editor, tasks, args.every, args.per_task, args.split, steps, args.work, set(args.kinds) if args.kinds else None)
    sys.stdout.write(f"pace: model {args.model}, {args.split} split, {args.per_task} cases a task, {steps} steps"
                     f"{', kinds ' + ' '.join(args.kinds) if args.kinds else ''}\n" + markdown(result, args.every))
    if args.out:
        report = json.dumps({"split": args.split, "steps": steps, "kinds": args.kinds, "result": result}, indent=2)
        atomic_write(args.out, lambda tmp: tmp.write_text(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

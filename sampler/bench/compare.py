"""Two bench runs side by side: the same tasks on two models (the shipped UNet and the shipped flow
transformer), or one model before and after a change.

    python -m sampler.bench.compare bench-unet/results.json bench-flow/results.json \
        [--names "shapes (UNet)" "shapes-flow (MMDiT)"] [--out side_by_side.md]

One row per task both runs measured: each run's success over all sources and over the sources it
drew right (a flow model and a UNet draw different sources from the same seed, so both matter),
and each criterion's rate. Runs of different splits, steps or per-task counts are refused: their
figures do not compare.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from energies.files import atomic_write

from .report import _crit, pct

SAME = ("split", "per_task", "quick")  # what two runs must share for their rows to compare


def load(path: Path) -> dict:
    results = json.loads(Path(path).read_text())
    if "meta" not in results or "tasks" not in results:
        raise ValueError(f"{path} is not a bench results.json (no meta/tasks)")
    return results


def mismatch(a: dict, b: dict) -> str | None:
    for key in SAME:
        if a["meta"].get(key) != b["meta"].get(key):
            return f"the runs differ in {key}: {a['meta'].get(key)!r} vs {b['meta'].get(key)!r}"
    return None


def _success(row: dict) -> str:
    if not row.get("n"):
        return row.get("status", "not run")
    s = row["success"]
    return f"{pct(s['all'])} ({s['k_all']}/{row['n']}); right sources {pct(s['right'])} ({s['k_right']}/{row['n_right']})"


def _criteria(row: dict) -> str:
    if not row.get("n"):
        return "-"
    return ", ".join(f"{_crit(c)} {pct(v['all'])}" for c, v in row["rates"].items())


def side_by_side(a: dict, b: dict, names: tuple[str, str]) -> str:
    both = [t for t in a["tasks"] if t in b["tasks"]]
    only = sorted(set(a["tasks"]) ^ set(b["tasks"]))
    ma, mb = a["meta"], b["meta"]
    L = [f"Bench, {ma['split']} split, {ma['per_task']} cases a task: {names[0]} ({ma.get('model')}, {ma.get('steps')} steps, "
         f"{ma.get('image_size')} px) and {names[1]} ({mb.get('model')}, {mb.get('steps')} steps, {mb.get('image_size')} px).", "",
         f"| task | {names[0]}: success | {names[1]}: success | {names[0]}: criteria | {names[1]}: criteria |",
         "| --- | --- | --- | --- | --- |"]
    for t in both:
        ra, rb = a["tasks"][t], b["tasks"][t]
        L.append(f"| {t} | {_success(ra)} | {_success(rb)} | {_criteria(ra)} | {_criteria(rb)} |")
    if only:
        L += ["", "Measured in one run only: " + ", ".join(only) + "."]
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sampler.bench.compare", description=__doc__.split("\n")[0])
    p.add_argument("first", type=Path)
    p.add_argument("second", type=Path)
    p.add_argument("--names", nargs=2, metavar=("FIRST", "SECOND"), help="column names (default: the runs' models)")
    p.add_argument("--out", type=Path, help="also write the table here")
    args = p.parse_args(argv)
    try:
        a, b = load(args.first), load(args.second)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    why = mismatch(a, b)
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    text = side_by_side(a, b, tuple(args.names or (a["meta"].get("model"), b["meta"].get("model"))))
    sys.stdout.write(text)
    if args.out:
        atomic_write(args.out, lambda tmp: tmp.write_text(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

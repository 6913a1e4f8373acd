"""The README's "Status" lines and docs/bench-results.md, rendered from a bench's results.json.

Only a full run on the report split may be quoted (the tune split is where defaults were chosen;
a quick run is a smoke test): anything else is refused with a ValueError.

    python -m sampler.bench.docs bench-out/results.json [--rerun rows/results.json ...] [--readme README.md] [--page docs/bench-results.md]

prints the Status lines, or writes them into the README between the markers STATUS_START and
STATUS_END, and writes the page. `--rerun`: the rows of a later run of some tasks (`steer bench
--split report --task ...`, after a change that touches only them) replace those rows, and the
page and the Status lines say which rows came from which command.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from energies.files import atomic_write

from .report import describe, markdown, pct, points

STATUS_START = "<!-- bench-status:start -->"
STATUS_END = "<!-- bench-status:end -->"
CONTACT_SHEET = "images/bench_contact_sheet.png"  # relative to docs/


def check_quotable(results: dict) -> None:
    meta = results.get("meta", {})
    if meta.get("split") != "report":
        raise ValueError(f"only the report split is quoted; these results are from the {meta.get('split')!r} split")
    if meta.get("quick"):
        raise ValueError("a quick run is a smoke test, not figures to quote")


def merge(results: dict, rerun: dict) -> dict:
    """`results` with the rows of `rerun`'s tasks taken from `rerun`: a later report-split run of
    some tasks at the same settings. Its command and tasks are listed in meta["reruns"]."""
    check_quotable(rerun)
    same = ("split", "model", "steps", "per_task", "image_size")
    if any(results["meta"].get(k) != rerun["meta"].get(k) for k in same):
        raise ValueError("a rerun must be of the same split, model, steps, image size and edits per task: "
                         + ", ".join(f"{k} {results['meta'].get(k)!r} vs {rerun['meta'].get(k)!r}" for k in same))
    names = [n for n, r in rerun["tasks"].items() if r.get("n")]
    # re-run rows replace theirs in place; a task new since the base run is added at the end
    out = {**results, "tasks": {**results["tasks"], **{n: rerun["tasks"][n] for n in names}}}
    out["runs"] = [x for x in results.get("runs", []) if x["task"] not in names] + [x for x in rerun.get("runs", []) if x["task"] in names]
    # a weight curve measured by the rerun replaces the base's (a rerun with --no-curves has none)
    fresh = {k: c for k, c in (rerun.get("curves") or {}).items() if c.get("rows") and c.get("task") in names}
    out["curves"] = {**(results.get("curves") or {}), **fresh}
    # each row names the run it comes from: an earlier re-run keeps only the rows not run again since
    earlier = [{**r, "tasks": [t for t in r["tasks"] if t not in names]} for r in results["meta"].get("reruns", [])]
    reruns = [r for r in earlier if r["tasks"]] + [{"tasks": names, "command": rerun["meta"]["command"]}]
    out["meta"] = {**results["meta"], "reruns": reruns}
    return out


def reruns_line(meta: dict) -> str:
    return " ".join(f"Rows re-run since: {', '.join(r['tasks'])} (`{r['command']}`)." for r in meta.get("reruns", []))


def _worst(groups: dict) -> str | None:
    rated = [(g["success"], name, g["n"]) for name, g in groups.items() if g.get("n")]
    if len(rated) < 2:
        return None
    rate, name, n = min(rated)
    return f"{name} {pct(rate)} of {n}"


def _row_line(name: str, row: dict) -> str:
    head = f"- {name} (`{row['script']}`)"
    if row.get("not_run") and not row.get("n"):
        return f"{head}: not run: {row['not_run']}."
    s = row["success"]
    text = (f"{head}: {s['k_all']} of {row['n']} ({pct(s['all'])}); {pct(s['right'])} of the {row['n_right']} whose source drew "
            f"the object right")
    if row.get("bar"):
        parts = []
        for b in row["bar"]:
            what = "" if b["criterion"] == "success" else f"{b['criterion']} "
            parts.append(f"{what}bar {b['bar']:.0%} " + ("met" if b["met"] else f"missed by {points(b['miss'])} points"))
        text += "; " + ", ".join(parts)
        if len(row["bar"]) > 1 or row["bar"][0]["criterion"] != "success":
            text += " (" + ", ".join(f"{b['criterion']} {pct(b['all'])}" for b in row["bar"]) + ")"
    worst = [w for w in (_worst(row.get("by_shape", {})), _worst(row.get("by_colour", {}))) if w]
    if worst:
        text += "; weakest: " + ", ".join(worst)
    return text + "."


def status_lines(results: dict) -> list[str]:
    """The README's Status lines: how the figures were made, then one line per task with a bar
    (met or by how much missed, the weakest shape and colour), the rows without a bar, the bars
    met in all."""
    check_quotable(results)
    meta, tasks = results["meta"], results["tasks"]
    barred = {n: r for n, r in tasks.items() if r.get("bars")}
    lines = [f"Measured with `steer bench`: {describe(meta)} {reruns_line(meta) + ' ' if meta.get('reruns') else ''}"
             f"The full tables are [docs/bench-results.md](docs/bench-results.md).", ""]
    lines += [_row_line(n, r) for n, r in barred.items()]
    others = [f"{n} {pct(r['success']['all'])} of {r['n']}" if r.get("n") else f"{n} not run"
              for n, r in tasks.items() if not r.get("bars")]
    if others:
        lines.append("- Without a bar: " + "; ".join(others) + ".")
    met = [r for r in barred.values() if r.get("met")]
    run = [r for r in barred.values() if r.get("n")]
    lines.append(f"- Bars met: {len(met)} of the {len(run)} rows run ({len(barred) - len(run)} not run).")
    curves = results.get("curves") or {}
    for name, c in curves.items():
        if c.get("rows") and not c.get("not_run"):
            pts = ", ".join(f"{r['weight']:g}: {_effect(r['effect'], c['figure'])}" for r in c["rows"])
            lines.append(f"- Weight curve, {name} ({c['label']}): {pts}.")
    return lines


def _effect(v, figure: str) -> str:
    if v is None:
        return "-"
    return pct(v) if figure in ("took_colour", "within_0_1") else f"{v:.2f}"


def bench_results_page(results: dict) -> str:
    """docs/bench-results.md: the results.md tables under the page's own title, and the contact sheet."""
    check_quotable(results)
    page = markdown(results, curves_png=False, title="# steer bench results (report split)")
    if results["meta"].get("reruns"):  # under the run's own description
        first, rest = page.split("\n\n", 2)[:2], page.split("\n\n", 2)[2]
        page = "\n\n".join(first + [reruns_line(results["meta"]), rest])
    return page + f"\n![Source and edit, the first cases of each task]({CONTACT_SHEET})\n"


def replace_status(readme: str, lines: list[str]) -> str:
    """The README with the text between STATUS_START and STATUS_END replaced by `lines`."""
    if STATUS_START not in readme or STATUS_END not in readme:
        raise ValueError(f"the README has no {STATUS_START} ... {STATUS_END} block to write the Status lines into")
    head, rest = readme.split(STATUS_START, 1)
    _, tail = rest.split(STATUS_END, 1)
    return head + STATUS_START + "\n" + "\n".join(lines) + "\n" + STATUS_END + tail


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sampler.bench.docs", description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="a results.json of `steer bench` on the report split")
    p.add_argument("--rerun", action="append", default=[], help="a later report-split results.json of some tasks, whose rows replace theirs (repeatable)")
    p.add_argument("--readme", help="write the Status lines into this README (between the markers)")
    p.add_argument("--page", help="write the results page here (e.g. docs/bench-results.md)")
    p.add_argument("--keep", help="write the results, re-runs merged, here (e.g. docs/bench-results.json): the base a "
                                  "later --rerun merges into, kept with the page because a run's own folder is not")
    args = p.parse_args(argv)
    results = json.loads(Path(args.results).read_text())
    for path in args.rerun:
        results = merge(results, json.loads(Path(path).read_text()))
    lines = status_lines(results)
    if args.readme:
        text = replace_status(Path(args.readme).read_text(), lines)
        atomic_write(Path(args.readme), lambda tmp: tmp.write_text(text))
    else:
        print("\n".join(lines))
    if args.page:
        page = bench_results_page(results)
        atomic_write(Path(args.page), lambda tmp: tmp.write_text(page))
    if args.keep:
        kept = json.dumps(results, separators=(",", ":"), default=float)
        atomic_write(Path(args.keep), lambda tmp: tmp.write_text(kept))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""The bench's report: one row per task (its success over all sources and over the sources that drew
the edited object right, against its bar; per shape, per colour and per position; the share of
each criterion; the mean of every figure), the weight curves, results.md and the contact sheet.

A success rate is over every case run: a case with no script (its source lacked the object, or
there was no free place) is a failure, not left out. "Right sources" leaves out the cases whose
source did not draw the edited object with its named colour and shape; how many did not is the
row's `sources_wrong`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from energies.files import atomic_write

from ..shapes import world as W
from .tasks import Outcome, Task


def _rate(values) -> float | None:
    values = list(values)
    return float(np.mean([bool(v) for v in values])) if values else None


def _mean(values) -> float | None:
    vals = [float(v) for v in values if isinstance(v, (int, float, np.number)) and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def _split_rate(outs: list[Outcome], key) -> dict:
    right = [o for o in outs if o.right]
    return {"n": len(outs), "success": _rate(key(o) for o in outs), "n_right": len(right), "success_right": _rate(key(o) for o in right)}


def _groups(outs: list[Outcome], attr, names) -> dict:
    return {name: _split_rate([o for o in outs if attr(o) == name], lambda o: o.success) for name in names}


def _bar_lines(task: Task, rates: dict, success: dict) -> list[dict]:
    lines = []
    for criterion, bar in task.bars.items():
        r = success if criterion == "success" else rates.get(criterion, {"all": None, "right": None})
        line = {"criterion": criterion, "bar": bar, "all": r["all"], "right": r["right"]}
        for which in ("all", "right"):
            v = r[which]
            suffix = "" if which == "all" else "_right"
            line["met" + suffix] = None if v is None else bool(v >= bar - 1e-9)
            line["miss" + suffix] = None if v is None else max(0.0, bar - v)
        lines.append(line)
    return lines


def summarise(tasks: list[Task], outcomes: list[Outcome], not_run: dict | None = None) -> dict:
    """The row of each task (see the module's docstring); results.json's "tasks"."""
    not_run = dict(not_run or {})
    by_task: dict[str, list[Outcome]] = {t.name: [] for t in tasks}
    for o in outcomes:
        by_task.setdefault(o.case.task.name, []).append(o)
    rows = {}
    for task in tasks:
        all_outs = by_task[task.name]
        outs = [o for o in all_outs if o.not_run is None]
        skipped = [o for o in all_outs if o.not_run is not None]
        row = {"statement": task.statement, "script": task.script, "objects": task.objects, "criteria": list(task.criteria),
               "bars": dict(task.bars), "cost_class": task.cost, **({"sweep": list(task.sweep)} if task.sweep else {})}
        # every case the model was given refused the statement (a drag on a transformer): the
        # cases whose script could not be written never reached it, so the row was not run
        posed = [o for o in outs if o.figures.get("posed", True)]
        if task.name in not_run or (skipped and not posed):
            msg = not_run.get(task.name) or skipped[0].not_run
            rows[task.name] = {**row, "status": f"not run: {msg}", "not_run": msg, "n": 0, "met": None, "met_right": None}
            continue
        right = [o for o in outs if o.right]
        success = {"all": _rate(o.success for o in outs), "right": _rate(o.success for o in right),
                   "k_all": sum(bool(o.success) for o in outs), "k_right": sum(bool(o.success) for o in right)}
        rates = {c: {"all": _rate(o.figures.get(c, False) for o in outs), "right": _rate(o.figures.get(c, False) for o in right)}
                 for c in task.criteria}
        bars = _bar_lines(task, rates, success)
        keys = sorted({k for o in outs for k, v in o.figures.items() if isinstance(v, (bool, int, float, np.number))})
        figures = {k: m for k in keys if (m := _mean(o.figures[k] for o in outs if k in o.figures)) is not None}
        status = "run" if not skipped else f"partly run: {len(skipped)} of {len(all_outs)} not run: {skipped[0].not_run}"
        rows[task.name] = {
            **row, "status": status, "not_run": None if not skipped else skipped[0].not_run,
            "n": len(outs), "n_right": len(right), "sources_wrong": len(outs) - len(right),
            "not_posed": sum(not o.figures.get("posed", True) for o in outs),
            "success": success, "rates": rates, "bar": bars,
            "met": None if not bars else all(b["met"] for b in bars),
            "met_right": None if not bars else all(b["met_right"] for b in bars if b["met_right"] is not None),
            "by_shape": _groups(outs, lambda o: o.case.item.subject.shape, W.SHAPES),
            "by_colour": _groups(outs, lambda o: o.case.item.subject.colour, list(W.COLOURS)),
            "by_position": _groups(outs, lambda o: o.case.item.position, ["first", "second"]) if task.objects == 2 else {},
            "figures": figures,
            "seconds": _mean(o.seconds for o in outs if o.figures.get("posed", True)),
        }
    return rows


def summarise_curves(runs: list[Outcome], weights, figure: str) -> dict:
    """Per weight: n, the mean of the effect figure, the success rate (and the same for the
    right sources); and the runs themselves."""
    rows = []
    for w in weights:
        outs = [o for o in runs if o.weight == w and o.not_run is None]
        right = [o for o in outs if o.right]
        vals = [o.figures.get(figure) for o in outs]
        rows.append({"weight": w, "n": len(outs), "effect": _mean(vals), "success": _rate(o.success for o in outs),
                     "n_right": len(right), "effect_right": _mean(o.figures.get(figure) for o in right),
                     "success_right": _rate(o.success for o in right)})
    skipped = [o for o in runs if o.not_run is not None]
    out = {"rows": rows, "runs": [o.record() for o in runs]}
    if skipped and not any(r["n"] for r in rows):
        out["not_run"] = skipped[0].not_run
    return out


# ----------------------------------------------------------------------------------------------
# Markdown


def pct(v) -> str:
    return "-" if v is None else f"{v:.0%}"


def points(miss: float) -> str:
    """A bar's shortfall in percentage points: whole points, or one decimal under one point (43 of
    48 is 89.6%, short of 90% by 0.4, not by '0')."""
    return f"{miss * 100:.1f}" if miss * 100 < 0.95 else f"{miss * 100:.0f}"


def _cell(r: dict) -> str:
    """success over all sources (n) for a per-shape/colour cell."""
    return "-" if not r or not r.get("n") else f"{pct(r['success'])} ({r['n']})"


def _met(row: dict) -> str:
    if row.get("not_run") and not row.get("n"):
        return "not run"
    if not row.get("bar"):
        return "no bar"
    misses = [b for b in row["bar"] if not b["met"]]
    if not misses:
        return "yes"
    return "no: " + ", ".join((f"{_crit(b['criterion'])} " if b["criterion"] != "success" else "") + f"{points(b['miss'])} points short"
                              for b in misses)


def _crit(c: str) -> str:
    return {"success": "", "within_0_1": "within 0.1", "stayed_0_05": "stayed within 0.05", "kept_iou_0_9": "IoU >= 0.9",
            "kept_colour": "colour kept", "took_colour": "colour taken", "took_shape": "shape taken", "other_kept": "other kept",
            "kept_shape": "shape kept", "ratio_ok": "area within 20%", "gone": "gone", "nothing_new": "nothing new",
            "monotone": "hue falls over gamma", "same_objects": "same objects", "clean": "clean"}.get(c, c).strip()


def _bar_text(row: dict) -> str:
    if not row.get("bars"):
        return "-"
    return ", ".join((f"{_crit(c)} " if c != "success" else "") + f"{b:.0%}" for c, b in row["bars"].items())


def summary_table(tasks: dict) -> list[str]:
    lines = ["| task | script | n | success, all sources | success, right sources | sources wrong | bar | met? |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in tasks.items():
        if row.get("not_run") and not row.get("n"):
            lines.append(f"| {name} | `{row['script']}` | 0 | {row['status']} | | | {_bar_text(row)} | not run |")
            continue
        s = row["success"]
        lines.append(f"| {name} | `{row['script']}` | {row['n']} | {pct(s['all'])} ({s['k_all']}) | "
                     f"{pct(s['right'])} ({s['k_right']}/{row['n_right']}) | {row['sources_wrong']} | {_bar_text(row)} | {_met(row)} |")
    return lines


def criteria_table(tasks: dict) -> list[str]:
    lines = ["| task | each criterion, all sources (right sources) | no script (no free place, object missing) | s / edit |",
             "| --- | --- | --- | --- |"]
    for name, row in tasks.items():
        if not row.get("n"):
            continue
        crit = "; ".join(f"{_crit(c)} {pct(r['all'])} ({pct(r['right'])})" for c, r in row["rates"].items())
        sec = "-" if row.get("seconds") is None else f"{row['seconds']:.2f}"
        lines.append(f"| {name} | {crit} | {row['not_posed']} | {sec} |")
    return lines


def group_table(tasks: dict, key: str, names) -> list[str]:
    lines = ["| task | " + " | ".join(names) + " |", "| --- | " + " | ".join("---" for _ in names) + " |"]
    for name, row in tasks.items():
        if row.get("n") and row.get(key):
            lines.append(f"| {name} | " + " | ".join(_cell(row[key].get(n, {})) for n in names) + " |")
    return lines


def curve_table(curves: dict) -> list[str]:
    lines = []
    for name, c in curves.items():
        if c.get("not_run"):
            lines += [f"- {name} (`{c['task']}`): not run: {c['not_run']}"]
            continue
        ws = [r["weight"] for r in c["rows"]]
        lines += ["", f"{name} (`{c['task']}`, {c['rows'][0]['n'] if c['rows'] else 0} cases): {c['label']}", "",
                  "| weight | " + " | ".join(f"{w:g}" for w in ws) + " |", "| --- | " + " | ".join("---" for _ in ws) + " |",
                  "| effect | " + " | ".join(_num(r["effect"], c["figure"]) for r in c["rows"]) + " |",
                  "| success | " + " | ".join(pct(r["success"]) for r in c["rows"]) + " |"]
    return lines


def sweep_table(tasks: dict) -> list[str]:
    """A swept task's (the fine-tuned transition's) mean hue distance to the target at each weight."""
    lines = []
    for name, row in tasks.items():
        if not row.get("sweep") or not row.get("n"):
            continue
        ws = row["sweep"]
        means = [row["figures"].get(f"hue_g{w:g}") for w in ws]
        lines += ["", f"{name} ({row['n']} cases): mean hue distance to the target colour inside the object, in degrees", "",
                  "| weight | " + " | ".join(f"{w:g}" for w in ws) + " |", "| --- | " + " | ".join("---" for _ in ws) + " |",
                  "| hue distance | " + " | ".join("-" if m is None else f"{m:.0f}" for m in means) + " |"]
    return lines


def _num(v, figure: str) -> str:
    if v is None:
        return "-"
    return f"{v:.0%}" if figure in ("took_colour", "within_0_1") else f"{v:.2f}"


def _cost_lines(cost: dict) -> list[str]:
    lines = ["", "| cost (edit class) | guided / plain time | incl. source pass | guided / plain peak memory (total) | "
              "memory above the loaded model: guided / plain | plain s/image | guided s/image |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, c in cost.items():
        if name == "repl_rerun":
            continue
        if "not_run" in c:
            lines.append(f"| {name} | not run: {c['not_run']} | | | | | |")
            continue
        lines.append(f"| {name} | {c['time_ratio']:.2f} | {c['time_ratio_with_source']:.2f} | {c['total_memory_ratio']:.2f} "
                     f"(model {c['model_mb']:.0f} MB) | {c['guided_peak_mb']:.1f} / {c['plain_peak_mb']:.1f} MB | "
                     f"{c['plain_seconds_per_image']:.2f} | {c['guided_seconds_per_image']:.2f} |")
    lines += ["", "Guided time is the edit pass with the source pass cached, as in the REPL; 'incl. source pass' adds the one-off source pass."]
    r = cost["repl_rerun"]
    lines += ["", f"REPL re-run after a weight change / first run: {r['time_ratio']:.2f} ({r['rerun_seconds']:.2f}s vs {r['first_seconds']:.2f}s)", ""]
    return lines


def describe(meta: dict) -> str:
    s = meta["seeds"]
    n = s.get("sources", 0)
    seeds = f"seeds {s['first']}..{s['last']} ({n} source image{'' if n == 1 else 's'})" if s.get("first") is not None else "no seeds"
    return (f"Split `{meta['split']}` ({seeds}, of the split's range {s['range'][0]}..{s['range'][1]}); "
            f"{meta['per_task']} edits per task; model `{meta['model']}` ({meta['image_size']} px, {meta['steps']} steps, "
            f"cfg {meta.get('cfg')}); command `{meta['command']}`; {meta['seconds']:.0f}s on {meta['machine']}.")


def markdown(results: dict, curves_png: bool = False, title: str | None = None) -> str:
    meta, tasks = results["meta"], results["tasks"]
    head = title or (f"# steer bench: {meta['split']} split ({meta['model']}, {meta['steps']} steps, {meta['per_task']} edits per task"
                     f"{', quick' if meta['quick'] else ''})")
    lines = [head, "", describe(meta), "",
             "Success is each statement's one criterion (the script column; S is the edited object's token, S1/S2 the edited "
             "and the other object's, O the other object's, C a colour neither object has). A case whose script could not be "
             "written (the source lacks the object, no free place) counts as a failure. 'Right sources': the source drew the "
             "edited object with its named colour and shape. 'met?' compares the success over all sources with the bar.", "",
             "## Summary", "", *summary_table(tasks), "",
             "## What each criterion gave", "", *criteria_table(tasks), "",
             "## Per shape (of the edited object; success over all sources, and n)", "", *group_table(tasks, "by_shape", W.SHAPES), "",
             "## Per colour", "", *group_table(tasks, "by_colour", list(W.COLOURS)), "",
             "## First or second object of the prompt", "", *group_table(tasks, "by_position", ["first", "second"]), ""]
    sweeps = sweep_table(tasks)
    if sweeps:
        lines += ["## Per-case sweeps", "", "Each case run at every weight of its statement; the row's criterion is judged per "
                  "case over the weights.", *sweeps, ""]
    curves = results.get("curves") or {}
    if curves:
        lines += ["## Weight curves", "", "The statement's weight (`* w`) swept on the first cases of the split; weight 0 "
                  "turns a layout edit's relocation off.", *curve_table(curves), ""]
        if curves_png:
            lines += ["![weight curves](weight_curves.png)", ""]
    if results.get("cost"):
        lines += ["## Cost", *_cost_lines(results["cost"])]
    inversion = results.get("inversion")
    if inversion:
        lines += ["| inversion (`source \"image.png\"`, DDIM, an edit with nothing to do) | images | mean PSNR | min PSNR | >= 30 dB "
                  "| from z_T alone, mean |", "| --- | --- | --- | --- | --- | --- |"]
        for kind, r in inversion.items():
            alone = r.get("from_noise_alone_mean_psnr")
            lines.append(f"| {kind} | {r['n']} | {r['mean_psnr']:.1f} dB | {r['min_psnr']:.1f} dB | {r['share_at_least_30db']:.0%} | "
                         + (f"{alone:.1f} dB |" if alone is not None else "|"))
        lines.append("")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Pictures


def curve_plot(curves: dict, path: Path) -> bool:
    """A small PNG of the weight curves, where matplotlib is installed (False where it is not, or
    there is nothing to draw)."""
    drawn = {k: c for k, c in curves.items() if c.get("rows") and any(r["effect"] is not None for r in c["rows"])}
    if not drawn:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(drawn), figsize=(3.2 * len(drawn), 2.6), squeeze=False)
    for ax, (name, c) in zip(axes[0], drawn.items()):
        pts = [(r["weight"], r["effect"]) for r in c["rows"] if r["effect"] is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("weight", fontsize=8)
        ax.set_ylabel(c["label"], fontsize=7)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return True


def contact_sheet(outcomes: list[Outcome], path: Path, per_task: int = 4, scale: int | None = None, order: list[str] | None = None):
    """Source and edit of the first `per_task` cases of each task (each from a different prompt),
    a row per task in `order`; the edit framed green for a success, red for a failure, grey when
    not run or without a script."""
    from PIL import Image, ImageDraw

    rows: dict[str, list[Outcome]] = {name: [] for name in order or []}
    for o in sorted(outcomes, key=lambda o: o.case.k):
        if o.source is None:
            continue
        rows.setdefault(o.case.task.name, [])
        if len(rows[o.case.task.name]) < per_task:
            rows[o.case.task.name].append(o)
    rows = {name: outs for name, outs in rows.items() if outs}
    side = max([o.source.shape[0] for outs in rows.values() for o in outs] or [32])
    scale = scale or max(1, 128 // side)
    cell = side * scale
    label_w, pad = 290, 4
    width = label_w + max([len(outs) for outs in rows.values()] or [1]) * (2 * cell + 3 * pad)
    sheet = Image.new("RGB", (width, max(1, len(rows)) * (cell + 2 * pad) + pad), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    for r, (task, outs) in enumerate(rows.items()):
        y = pad + r * (cell + 2 * pad)
        draw.text((6, y + cell // 2 - 6), task, fill=(230, 230, 230))
        for c, o in enumerate(outs):
            x = label_w + c * (2 * cell + 3 * pad)
            frame = (90, 90, 90) if o.success is None or not o.figures.get("posed", True) else (0, 170, 0) if o.success else (200, 0, 0)
            draw.rectangle((x + cell + pad - 2, y - 2, x + 2 * cell + pad + 1, y + cell + 1), outline=frame, width=2)
            for k, im in enumerate((o.source, o.image)):
                tile = Image.fromarray((np.clip(im, 0, 1) * 255).astype(np.uint8)).resize((cell, cell), Image.NEAREST)
                sheet.paste(tile, (x + k * (cell + pad), y))
    atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))

"""The bench's report: the per-task table (the mean of each figure over the seeds), as markdown with
the cost and inversion tables under it, and the contact sheet (source and edit, a few seeds per
task)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from energies.files import atomic_write
from .tasks import Outcome


def summarise(outcomes: list[Outcome]) -> dict:
    by_task: dict[str, list[dict]] = {}
    for o in outcomes:
        by_task.setdefault(o.case.task, []).append(o.figures)
    table = {}
    for task, rows in by_task.items():
        keys = sorted({k for r in rows for k in r})
        agg = {"n": len(rows)}
        for k in keys:
            vals = [r[k] for r in rows if k in r and not (isinstance(r[k], float) and math.isnan(r[k]))]
            if not vals:
                continue
            agg[k] = float(np.mean([float(v) for v in vals]))
        table[task] = agg
    return table


COLUMNS = [
    ("n", "seeds", "{:.0f}"),
    ("error", "centroid error", "{:.3f}"),
    ("within_0.1", "within 0.1", "{:.0%}"),
    ("unguided_error", "unguided error", "{:.3f}"),
    ("single", "one circle", "{:.0%}"),
    ("ratio", "area ratio", "{:.2f}"),
    ("ratio_within_20%", "ratio within 20%", "{:.0%}"),
    ("kept_shape", "kept its shape", "{:.0%}"),
    ("kept_iou", "kept IoU", "{:.2f}"),
    ("kept_colour", "kept colour", "{:.0%}"),
    ("became_circle", "became circle", "{:.0%}"),
    ("took_colour", "took colour", "{:.0%}"),
    ("found", "object found", "{:.0%}"),
    ("circle_iou", "circle IoU", "{:.2f}"),
    ("became_square", "became square", "{:.0%}"),
    ("stayed_0.05", "stayed within 0.05", "{:.0%}"),
    ("shrunk", "area <= 0.7x", "{:.0%}"),
    ("clip_delta", "CLIP margin change", "{:+.3f}"),
    ("clip_toward", "CLIP toward target", "{:.0%}"),
    ("seconds", "s / edit", "{:.2f}"),
]


def _cost_lines(cost: dict) -> list[str]:
    lines = ["", "| cost (edit class) | guided / plain time | incl. source pass | guided / plain peak memory (total) | "
              "memory above the loaded model: guided / plain | plain s/image | guided s/image |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, c in cost.items():
        if name == "repl_rerun":
            continue
        lines.append(f"| {name} | {c['time_ratio']:.2f} | {c['time_ratio_with_source']:.2f} | {c['total_memory_ratio']:.2f} "
                     f"(model {c['model_mb']:.0f} MB) | {c['guided_peak_mb']:.1f} / {c['plain_peak_mb']:.1f} MB | "
                     f"{c['plain_seconds_per_image']:.2f} | {c['guided_seconds_per_image']:.2f} |")
    lines += ["", "Guided time is the edit pass with the source pass cached, as in the REPL; 'incl. source pass' adds the one-off source pass."]
    r = cost["repl_rerun"]
    lines += ["", f"REPL re-run after a weight change / first run: {r['time_ratio']:.2f} ({r['rerun_seconds']:.2f}s vs {r['first_seconds']:.2f}s)", ""]
    return lines


def markdown(table: dict, cost: dict, meta: dict, inversion: dict | None = None) -> str:
    cols = [c for c in COLUMNS if any(c[0] in row for row in table.values())]
    lines = [f"# steer bench ({meta['model']}, {meta['steps']} steps, {meta['seeds']} seeds{', quick' if meta['quick'] else ''})", ""]
    lines.append("| task | " + " | ".join(c[1] for c in cols) + " |")
    lines.append("| --- | " + " | ".join("---" for _ in cols) + " |")
    for task, row in table.items():
        cells = [c[2].format(row[c[0]]) if c[0] in row else "" for c in cols]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    if cost:
        lines += _cost_lines(cost)
    if inversion:
        lines += ["| inversion (`source \"image.png\"`, DDIM, regenerated) | images | mean PSNR | min PSNR | >= 30 dB |",
                  "| --- | --- | --- | --- | --- |"]
        for kind, r in inversion.items():
            lines.append(f"| {kind} | {r['n']} | {r['mean_psnr']:.1f} dB | {r['min_psnr']:.1f} dB | {r['share_at_least_30db']:.0%} |")
        lines.append("")
    lines.append(f"Command: `{meta['command']}`; {meta['seconds']:.0f}s on {meta['machine']}.")
    return "\n".join(lines) + "\n"


def contact_sheet(outcomes: list[Outcome], path: Path, per_task: int = 4, scale: int = 4):
    from PIL import Image, ImageDraw

    rows: dict[str, list[Outcome]] = {}
    for o in outcomes:
        rows.setdefault(o.case.task, [])
        if len(rows[o.case.task]) < per_task:
            rows[o.case.task].append(o)
    cell = 32 * scale
    label_w = 130
    width = label_w + per_task * (2 * cell + 8)
    sheet = Image.new("RGB", (width, len(rows) * (cell + 6) + 6), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    for r, (task, outs) in enumerate(rows.items()):
        y = 6 + r * (cell + 6)
        draw.text((6, y + cell // 2 - 6), task, fill=(230, 230, 230))
        for c, o in enumerate(outs):
            x = label_w + c * (2 * cell + 8)
            for k, im in enumerate((o.source, o.image)):
                tile = Image.fromarray((np.clip(im, 0, 1) * 255).astype(np.uint8)).resize((cell, cell), Image.NEAREST)
                sheet.paste(tile, (x + k * cell, y))
    atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))

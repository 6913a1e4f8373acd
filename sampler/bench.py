"""`steer bench`: does an edit do what its script says, and what does it cost?

Runs a fixed suite of edit tasks on the shapes model and measures every output with the shapes
world's detector (colour masks, centroids, areas, shape classes). Cost is measured in the same
process, on the same model, steps and seeds: guided edit vs plain classifier-free-guided
sampling (time and peak memory), and a REPL-style re-run vs the first run.

Writes DIR/results.json, DIR/results.md (the table) and DIR/contact_sheet.png.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import dsl

from .editor import Editor, write_png
from .shapes import world as W

PROMPT = "a red circle and a blue square"  # circle: red, square: blue
CIRCLE, SQUARE = "red", "blue"
GREEN_PROMPT = "a green circle and a blue square"  # what the recolouring tasks ask for
STYLE_IMAGE = "style_green_circle.png"  # a world image of a green circle, written into the output folder
# The shipped directions and what each should do to the red circle (see README, "Directions"):
# (script, what the detector should see). red_to_green and circle_to_square_p2p are Pix2Pix-Zero
# prompt directions, shown with the cross-attention guidance that keeps the layout, as
# Pix2Pix-Zero uses them (and red_to_green alone: it redraws the scene as a new prompt would).
DIRECTIONS = [
    ("direction circle_to_square", {"shape": "square"}),
    ("direction green", {"colour": "green"}),
    ("direction smaller", {"shrink": True}),
    ("direction red_to_green", {"colour": "green"}),
    ("direction red_to_green\nkeep attention", {"colour": "green"}),
    ("direction circle_to_square_p2p\nkeep attention", {"shape": "square"}),
]


@dataclass
class Case:
    task: str
    seed: int
    script: object  # the edit (terms only), or a function (source's detections, seed) giving it; the prompt and seed are added
    measure: object  # (source objects, edited objects) -> dict of figures
    cost: str = "attention"  # which cost class the task belongs to
    score: object = None  # (editor, source image, edited image) -> more figures, from the images themselves


@dataclass
class Outcome:
    case: Case
    figures: dict
    seconds: float
    source: np.ndarray
    image: np.ndarray


# ----------------------------------------------------------------------------------------------
# Measurements: functions of the detections in the source and the edited image.


def _dist(a, b) -> float:
    return math.hypot(a[0] - b[0], a[1] - b[1])


def _kept(src, out, colour) -> dict:
    """How well an object the script did not ask to change was kept."""
    s, o = W.find(src, colour), W.find(out, colour)
    if s is None:
        return {}
    return {"kept_iou": W.mask_iou(s.mask, o.mask) if o is not None else 0.0, "kept_colour": o is not None}


def _one_of(out, colour) -> bool:
    return sum(o.colour == colour for o in out) == 1


def _move_figures(src, out, target) -> dict:
    s, o = W.find(src, CIRCLE), W.find(out, CIRCLE)
    f = {"unguided_error": _dist(s.centroid, target), "found": o is not None}
    f["error"] = _dist(o.centroid, target) if o else math.nan
    f["within_0.1"] = bool(o is not None and f["error"] <= 0.1)
    f["single"] = _one_of(out, CIRCLE)
    f["kept_shape"] = bool(o is not None and o.shape == s.shape)
    return {**f, **_kept(src, out, SQUARE)}


def measure_move(target):
    def m(src, out):
        return _move_figures(src, out, target) if W.find(src, CIRCLE) else {"found": False}

    return m


def measure_shift(delta):
    def m(src, out):
        s = W.find(src, CIRCLE)
        if s is None:
            return {"found": False}
        return _move_figures(src, out, (s.centroid[0] + delta[0], s.centroid[1] + delta[1]))

    return m


def measure_resize(k):
    def m(src, out):
        s, o = W.find(src, SQUARE), W.find(out, SQUARE)
        if s is None:
            return {"found": False}
        ratio = o.area / s.area if o else math.nan
        return {"found": o is not None, "k": k, "ratio": ratio, "ratio_within_20%": bool(o is not None and abs(ratio / k - 1) <= 0.2),
                **_kept(src, out, CIRCLE)}

    return m


def measure_shape_swap(src, out):
    o = W.find(out, SQUARE)
    return {"found": o is not None, "became_circle": bool(o is not None and o.shape == "circle"), **_kept(src, out, CIRCLE)}


def measure_appearance_swap(src, out):
    s = W.find(src, CIRCLE)
    if s is None:
        return {"found": False}
    # whatever now stands where the circle was: its colour should be the square's
    here = [o for o in out if W.mask_iou(o.mask, s.mask) > 0.3]
    return {"found": bool(here), "took_colour": bool(here and here[0].colour == SQUARE)}


def measure_combined(target, k):
    move, resize = measure_move(target), measure_resize(k)

    def m(src, out):
        a, b = move(src, out), resize(src, out)
        return {**{k_: v for k_, v in a.items() if not k_.startswith("kept")}, "ratio": b.get("ratio", math.nan), "k": k,
                "ratio_within_20%": b.get("ratio_within_20%", False)}

    return m


def measure_recolour(colour):
    """The circle changed colour to `colour` where it was, and the square stayed."""

    def m(src, out):
        s = W.find(src, CIRCLE)
        if s is None:
            return {"found": False}
        here = [o for o in out if W.mask_iou(o.mask, s.mask) > 0.3]
        f = {"found": bool(here), "took_colour": bool(here and here[0].colour == colour),
             "circle_iou": max([W.mask_iou(o.mask, s.mask) for o in here], default=0.0)}
        return {**f, **_kept(src, out, SQUARE)}

    return m


def measure_direction(shape: str | None = None, colour: str | None = None, shrink: bool = False):
    """A learned direction changed the circle's shape / colour where it stood (centroid within
    0.05 of the source's), and left the square."""

    def m(src, out):
        s = W.find(src, CIRCLE)
        if s is None:
            return {"found": False}
        square = W.find(out, SQUARE)
        near = sorted((o for o in out if o is not square), key=lambda o: _dist(o.centroid, s.centroid))[:1]
        f = {"found": bool(near), "stayed_0.05": bool(near and _dist(near[0].centroid, s.centroid) <= 0.05)}
        if shape is not None:
            f["became_" + shape] = bool(near and near[0].shape == shape)
        if colour is not None:
            f["took_colour"] = bool(near and near[0].colour == colour)
        if shrink:
            f["ratio"] = near[0].area / s.area if near else math.nan
            f["shrunk"] = bool(near and near[0].area <= 0.7 * s.area)
        return {**f, **_kept(src, out, SQUARE)}

    return m


def clip_score(target: str, source: str):
    """How far the image moved toward `target` and away from `source` in the shapes CLIP:
    (cos(I, target) - cos(I, source)) of the edit minus that of the source image."""

    def score(editor, src_image, image):
        scorer = editor.clip()  # the shapes CLIP, loaded once per editor
        t = scorer.text([target, source])
        with torch.no_grad():
            ims = torch.from_numpy(np.stack([src_image, image])).permute(0, 3, 1, 2).float() * 2 - 1
            f = scorer.image(ims)
        margin = (f @ t.T)[:, 0] - (f @ t.T)[:, 1]
        delta = float(margin[1] - margin[0])
        return {"clip_delta": delta, "clip_toward": delta > 0}

    return score


def drag_script(delta, via: str = "", region: str = "token"):
    """A drag of the circle's centre (as the detector finds it in the source) by delta: the
    point-dragging counterpart of `centroid(token "circle") += delta`. region "token": within
    token "circle" (the circle is copied along the drag, then refined); "box": within the box
    around the circle and where it goes, 2 px of margin (DragNoise alone)."""

    def script(src, seed=None):
        s = W.find(src, CIRCLE)
        if s is None:
            return None
        x, y = s.centroid
        tx, ty = (min(max(v, 0.0), 1.0) for v in (x + delta[0], y + delta[1]))
        within = ' within token "circle"'
        if region == "box":
            h, w = s.mask.shape
            ys, xs = np.nonzero(s.mask)
            x0, x1 = (xs.min() - 2) / w + min(0.0, delta[0]), (xs.max() + 3) / w + max(0.0, delta[0])
            y0, y1 = (ys.min() - 2) / h + min(0.0, delta[1]), (ys.max() + 3) / h + max(0.0, delta[1])
            within = " within ({:.3f}, {:.3f}, {:.3f}, {:.3f})".format(*(min(max(v, 0.0), 1.0) for v in (x0, y0, x1, y1)))
        return f"drag ({x:.3f}, {y:.3f}) -> ({tx:.3f}, {ty:.3f}){within}{via}"

    return script


def free_vector(src, seed: int, lengths=(0.25, 0.2, 0.15)):
    """A drag/shift vector for the circle whose target is free: the circle moved by it stays inside
    the image and at least 2 px from the square. Candidates (+-length along x and along y, in an
    order that turns with the seed; the longest length first) are tried; None if none fits. The
    fixed +-x shifts of `shift` and `drag` often ask for a place behind the square or past the
    border, where no method can keep the circle's shape."""
    s, q = W.find(src, CIRCLE), W.find(src, SQUARE)
    if s is None:
        return None
    h, w = s.mask.shape
    ys, xs = np.nonzero(s.mask)
    blocked = np.zeros((h, w), bool) if q is None else W._dilate(q.mask, 2)
    for length in lengths:
        order = [(length, 0.0), (-length, 0.0), (0.0, length), (0.0, -length)]
        for dx, dy in order[seed % 4:] + order[: seed % 4]:
            mx, my = xs + round(dx * w), ys + round(dy * h)
            inside = mx.min() >= 0 and my.min() >= 0 and mx.max() < w and my.max() < h
            if inside and not blocked[my, mx].any():
                return (dx, dy)
    return None


def free_shift_script(via: str | None = None):
    """`centroid(token "circle") += v` (via None) or a drag by v (via "" or " via latent") with
    v = free_vector(source)."""

    def script(src, seed):
        v = free_vector(src, seed)
        if v is None:
            return None
        if via is None:
            return f'centroid(token "circle") += ({v[0]:g}, {v[1]:g})\nkeep appearance'
        return drag_script(v, via)(src)

    return script


def measure_free_shift(seed: int):
    def m(src, out):
        v = free_vector(src, seed)
        return {"found": False} if v is None else measure_shift(v)(src, out)

    return m


def far_target(seed: int) -> tuple[float, float]:
    """The move target for a seed: one of four, in turn."""
    return [(0.75, 0.5), (0.25, 0.5), (0.5, 0.25), (0.5, 0.75)][seed % 4]


def suite(seeds: list[int], quick: bool) -> list[Case]:
    ks = [2.0] if quick else [0.5, 1.5, 2.0]
    cases = []
    for s in seeds:
        t = far_target(s)
        d = (0.25, 0.0) if s % 2 == 0 else (-0.25, 0.0)
        cases += [
            # The edit language issue's own figure: one fixed target, every seed.
            Case("move to (0.75, 0.5)", s, 'centroid(token "circle") -> (0.75, 0.5)\nkeep appearance', measure_move((0.75, 0.5))),
            Case("move", s, f'centroid(token "circle") -> ({t[0]}, {t[1]})\nkeep appearance', measure_move(t)),
            Case("shift", s, f'centroid(token "circle") += ({d[0]}, {d[1]})\nkeep appearance', measure_shift(d)),
            # The same shifts as point drags: within the token, the circle is copied along the drag and
            # then refined (DragNoise; DragDiffusion's latent optimisation via latent); within a box,
            # DragNoise alone.
            Case("drag", s, drag_script(d), measure_shift(d), "drag"),
            Case("drag via latent", s, drag_script(d, " via latent"), measure_shift(d), "drag"),
            Case("drag within a box", s, drag_script(d, region="box"), measure_shift(d), "drag"),
            # The same 0.25 moves, to a free place (inside the image, clear of the square).
            Case("shift to free space", s, free_shift_script(), measure_free_shift(s)),
            Case("drag to free space", s, free_shift_script(""), measure_free_shift(s), "drag"),
            *[Case(f"resize x{k:g}", s, f'size(token "square") *= {k:g}\nkeep appearance', measure_resize(k)) for k in ks],
            Case("keep", s, f'centroid(token "circle") -> ({t[0]}, {t[1]})\nkeep appearance\nkeep layout', measure_move(t)),
            Case("shape swap", s, 'shape(token "square") -> shape(token "circle")\nkeep appearance', measure_shape_swap),
            Case("appearance swap", s, 'appearance(token "circle") -> appearance(token "square")\nkeep layout', measure_appearance_swap),
            Case("combined", s, f'centroid(token "circle") -> ({t[0]}, {t[1]})\nsize(token "circle") *= 1.5\nkeep appearance',
                 measure_combined(t, 1.5)),
            # The predicted-x0 family: CLIP direction, alone and with keep structure; a style image.
            Case("clip recolour", s, f'clip "{GREEN_PROMPT}" from "{PROMPT}"', measure_recolour("green"), "x0",
                 clip_score(GREEN_PROMPT, PROMPT)),
            Case("clip recolour + keep structure", s, f'clip "{GREEN_PROMPT}" from "{PROMPT}"\nkeep structure',
                 measure_recolour("green"), "x0", clip_score(GREEN_PROMPT, PROMPT)),
            Case("style image", s, f'style image "{STYLE_IMAGE}"\nkeep structure', measure_recolour("green"), "x0",
                 clip_score(GREEN_PROMPT, PROMPT)),
            # Learned directions shipped with the shapes model (sampler/shapes/weights/directions).
            *[Case(script.replace("\n", " + "), s, script, measure_direction(**want), "direction") for script, want in DIRECTIONS],
        ]
    return cases


# ----------------------------------------------------------------------------------------------
# Cost


def _timed(fn, device="cpu"):
    """(result, seconds, peak bytes) of fn(); the peak is the CUDA allocator's (0 on CPU, where
    memory is measured in fresh processes instead: see memory_probe)."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return out, dt, (torch.cuda.max_memory_allocated() - base) if cuda else 0


def _proc_status_kb(field: str) -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Linux: reset this process's peak resident set (VmHWM) to its current size (clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_probe(model: str, script: str, plain: bool) -> tuple[int, int]:
    """(resident memory with the model loaded, peak the run adds above it), in bytes. Runs in a fresh
    process (see `_peak_delta`). On Linux the peak is VmHWM after resetting it to the current size
    (so a warm-up's own peak does not hide the run's); elsewhere ru_maxrss, which can only grow."""
    import resource

    import dsl as _dsl

    editor = Editor(model)
    prog = _dsl.compile(script)
    settings = editor.settings(prog)
    editor.sample_plain(settings.model_copy(update={"steps": 1}))  # warm up: first-call allocations
    if _reset_peak() and _proc_status_kb("VmRSS") is not None:
        base = _proc_status_kb("VmRSS") * 1024
        peak = lambda: _proc_status_kb("VmHWM") * 1024  # noqa: E731
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # noqa: E731
    if plain:
        editor.sample_plain(settings)
    else:
        editor.run(prog, progress=False)  # source pass (recorded, kept) + guided pass: the whole cost
    return base, max(0, peak() - base)


def _peak_delta(model: str, script: str, plain: bool) -> tuple[int, int]:
    import subprocess
    import sys

    code = f"from sampler.bench import memory_probe; print(memory_probe({model!r}, {script!r}, {plain!r}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    base, delta = proc.stdout.strip().splitlines()[-1].strip("()").split(",")
    return int(base), int(delta)


# The cost classes: one representative script each.
COST_EDITS = {
    "attention": 'centroid(token "circle") -> (0.75, 0.5)',
    "attention + appearance": 'centroid(token "circle") -> (0.75, 0.5)\nkeep appearance',
    "x0: CLIP + ViT keys": f'clip "{GREEN_PROMPT}"\nkeep structure',
    "direction (h-space)": "direction circle_to_square",
    "direction (noise)": "direction green",
    "direction (prompt) + keep attention": "direction red_to_green\nkeep attention",
    "drag (copy, then bottleneck)": 'drag (0.3, 0.5) -> (0.55, 0.5) within token "circle"',
    "drag (bottleneck optimisation)": 'drag (0.3, 0.5) -> (0.55, 0.5) within (0.05, 0.2, 0.95, 0.8)',
}


def measure_cost(editor: Editor, steps: int, seeds: list[int], device: str, model: str = "shapes", progress: bool = False,
                 names: list[str] | None = None) -> dict:
    """Guided / plain ratios of time and peak memory per cost class (`names` of COST_EDITS, or all),
    and re-run / first run."""
    header = f'prompt "{PROMPT}"\nsteps {steps}\n'
    edits = {k: v for k, v in COST_EDITS.items() if names is None or k in names}
    out = {}
    for name, terms in tqdm(edits.items(), desc="cost", disable=not progress, leave=False):
        t_plain = t_source = t_guided = m_plain = m_guided = 0.0
        for s in seeds:
            editor._sources.clear()
            prog = dsl.compile(header + f"seed {s}\n" + terms)
            settings = editor.settings(prog)
            _, dt, mem = _timed(lambda: editor.sample_plain(settings), device)
            t_plain, m_plain = t_plain + dt, max(m_plain, mem)
            _, dt, _ = _timed(lambda: editor.source(settings, progress=False), device)
            t_source += dt
            _, dt, mem = _timed(lambda: editor.run(prog, progress=False), device)  # source cached: the guided pass alone
            t_guided, m_guided = t_guided + dt, max(m_guided, mem)
        if not device.startswith("cuda"):  # CPU: peaks from fresh processes (see memory_probe)
            script = header + f"seed {seeds[0]}\n" + terms
            (base, m_plain), (_, m_guided) = _peak_delta(model, script, True), _peak_delta(model, script, False)
        else:
            base = torch.cuda.memory_allocated()
        out[name] = {
            "time_ratio": t_guided / t_plain,
            "time_ratio_with_source": (t_guided + t_source) / t_plain,
            "memory_ratio": (m_guided / m_plain) if m_plain > 0 else math.nan,
            "plain_seconds_per_image": t_plain / len(seeds),
            "guided_seconds_per_image": t_guided / len(seeds),
            "plain_peak_mb": m_plain / 2**20,  # above the loaded model
            "guided_peak_mb": m_guided / 2**20,
            "model_mb": base / 2**20,
            "total_memory_ratio": (base + m_guided) / (base + m_plain),
        }
    # REPL: first run (source pass + edit) vs a re-run after a weight change (edit pass only)
    editor._sources.clear()
    first = dsl.compile(header + f"seed {seeds[0]}\n" + COST_EDITS["attention + appearance"])
    again = dsl.compile(header + f"seed {seeds[0]}\n" + COST_EDITS["attention + appearance"].replace("\nkeep", " * 1.5\nkeep"))
    _, t_first, _ = _timed(lambda: editor.run(first, progress=False), device)
    _, t_again, _ = _timed(lambda: editor.run(again, progress=False), device)
    out["repl_rerun"] = {"time_ratio": t_again / t_first, "first_seconds": t_first, "rerun_seconds": t_again}
    return out


def measure_inversion(editor: Editor, seeds: list[int], steps: int, progress: bool = False) -> dict:
    """Real-image editing's first step, through the user's own path (`source "image.png"`): invert
    a generated image and a world ground-truth image, regenerate, and compare (PSNR, dB)."""
    import tempfile

    from PIL import Image

    from .inversion import psnr

    rows = {"generated": [], "world": []}
    old = os.environ.get("STEER_CACHE")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["STEER_CACHE"] = tmp  # a bench must not read (or fill) the user's inversion cache
        try:
            for s in tqdm(seeds, desc="inversion", disable=not progress, leave=False):
                scene = W.make_scene(10**7 + s)
                plain = editor.source(editor.settings(dsl.compile(f'prompt "{PROMPT}"\nseed {s}\nsteps {steps}')), progress=False)
                for kind, image, caption in (("generated", plain.image, PROMPT), ("world", scene.image, scene.caption)):
                    path = Path(tmp) / f"{kind}-{s}.png"
                    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(path)
                    target = np.asarray(Image.open(path), dtype=np.float32) / 255  # what the user's file holds
                    prog = dsl.compile(f'source "{path.name}"\nprompt "{caption}"\nsteps {steps}')
                    src = editor.source(editor.settings(prog), progress=False, script_dir=tmp)
                    rows[kind].append(psnr(torch.from_numpy(src.image), torch.from_numpy(target)))
        finally:
            if old is None:
                os.environ.pop("STEER_CACHE", None)
            else:
                os.environ["STEER_CACHE"] = old
    return {kind: {"n": len(v), "mean_psnr": float(np.mean(v)), "min_psnr": float(np.min(v)),
                   "share_at_least_30db": float(np.mean(np.array(v) >= 30))} for kind, v in rows.items()}


# ----------------------------------------------------------------------------------------------
# Summary


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
    tmp = path.with_name("." + path.name)
    sheet.save(tmp, format="PNG")
    os.replace(tmp, path)


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
    _write_style_image(out / STYLE_IMAGE)
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
    import platform

    meta = {"model": model, "steps": steps, "seeds": n, "quick": quick, "seconds": time.time() - t0, "command": command,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {device}"}
    results = {"meta": meta, "tasks": table, "cost": costs, "inversion": inversion,
               "runs": [{"task": o.case.task, "seed": o.case.seed, "script": o.case.script, "seconds": o.seconds, **o.figures} for o in outcomes]}
    _write_json(out / "results.json", results)
    _write_text(out / "results.md", markdown(table, costs, meta, inversion))
    contact_sheet(outcomes, out / "contact_sheet.png")
    return results


def _write_style_image(path: Path):
    from PIL import Image

    scenes = (W.make_scene(10**8 + k, n_objects=1) for k in range(1000))
    scene = next(s for s in scenes if s.caption == "a green circle")
    Image.fromarray((scene.image * 255).round().astype(np.uint8)).save(path)


def _write_text(path: Path, text: str):
    tmp = path.with_name("." + path.name)  # write beside, then rename: a reader never sees half a file
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json(path: Path, obj):
    _write_text(path, json.dumps(obj, indent=2, default=float) + "\n")


def main(args) -> int:
    import sys

    try:
        results = run_bench(args.model, args.seeds, args.quick, args.out, command="steer " + " ".join(sys.argv[1:]), tasks=args.task,
                            cost=not args.no_cost)
    except ValueError as e:
        print(f"steer bench: error: {e}", file=sys.stderr)
        return 2
    print((Path(args.out) / "results.md").read_text())
    print(f"wrote {args.out}/results.json, results.md, contact_sheet.png")
    return 0

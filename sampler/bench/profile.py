"""Where a guided step's time goes: `python -m sampler.bench.profile [--model shapes] [--steps N] [--repeats R]`.

For each edit class (an attention edit: move + keep appearance; an x0 edit: CLIP + ViT keys;
a prompt direction + keep attention; a drag), in one process:

- time: plain classifier-free-guided sampling, the guided pass (source pass cached) and a first
  run (source pass included), repeated R times and interleaved, so that a machine's load falls
  on all three alike; the ratios are of the fastest repeats (the least disturbed on a loaded
  machine; the JSON keeps the medians too);
- a breakdown of one guided pass under torch.profiler, from the ranges the engine marks
  (sampler/guidance.py, denoiser.py, editor.py): the forward with probes, the backward, the
  unconditional forward, the batched CFG forward (steps with no energy term), the energies,
  relocation with what it wraps (a drag's copy and bottleneck optimisation), the rest of the
  loop ("other": the DDIM step, the checks, directions, the profiler's own bookkeeping) and what a run does outside the loop (binding,
  object masks, the final decode), spread over the steps. The profiler slows small ops down, so
  read shares, not seconds;
- peak memory, plain vs guided (source pass cached), above what was allocated before the call:
  on CUDA the allocator's peak, on the CPU from torch.profiler's allocation events
  (allocated_peak). This is tensor memory: the model's weights and the cached source pass are
  not in it (the bench's cost table measures the whole process). Plain sampling's call ends
  with its decode, as every guided run's does (the image is what either gives). Two ratios add
  weights back: the denoiser's alone (the stricter), and every model a run holds, as a GPU's
  allocator counts them (the denoiser, autoencoder and text encoders for both; the ViT and CLIP
  that an x0 edit loads, for the guided run only).

--recompute chooses when the guided steps recompute activations in their backward
(sampler/recompute.py): auto, the editor's default (where a graph would keep more than its budget),
always (as `steer --low-memory` runs; --low-memory says the same) or never (as before auto).

--compare adds each class "before" the exact optimisations of docs/performance.md (the whole
guided forward on the graph, the source pass recording everything) beside "after", and
--guide-every K a row guided every K-th step (opt-in, not exact). Markdown on stdout; --out writes the same figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch
from torch.autograd.profiler import record_function

import dsl

from ..denoiser import RECORDABLE
from ..editor import Editor
from ..recompute import weights_bytes
from .scene import GREEN_PROMPT, PROMPT

CLASSES = {
    "attention: move + keep appearance": 'centroid(token "circle") -> (0.75, 0.5)\nkeep appearance',
    "x0: CLIP + ViT keys": f'clip "{GREEN_PROMPT}"\nkeep structure',
    "prompt direction + keep attention": "direction red_to_green\nkeep attention",
    "drag": 'drag (0.3, 0.5) -> (0.55, 0.5) within token "circle"',
}

# profiler range -> the table's column; relocation's range holds the energies' guide, subtracted
# below, and the drag's guide (DragPlan.wrap), kept
SECTIONS = {
    "steer.guided_forward": "forward with probes",
    "steer.backward": "backward",
    "steer.uncond_forward": "unconditional forward",
    "steer.plain_forward": "CFG forward (unguided steps)",
    "steer.energies": "energies",
}
RECOMPUTE = {"auto": "auto", "always": True, "never": False}  # --recompute -> EnergyGuide.recompute

COLUMNS = [*SECTIONS.values(), "relocation, drag", "other", "run setup + decode"]


def script(terms: str, steps: int, seed: int = 0) -> str:
    return f'prompt "{PROMPT}"\nseed {seed}\nsteps {steps}\n{terms}'


def set_before(editor: Editor, before: bool):
    """Switch the editor to the path before the exact optimisations (before=True) or after."""
    editor.energies.cut_graph = not before


def first_run(editor: Editor, prog, edit, before: bool):
    """A run with no source pass in memory: the source pass (all of it recorded, before) and the edit."""
    editor.sources.clear()
    if before:
        editor.source(editor.settings(prog), progress=False, record=RECORDABLE)
    return edit()


def synchronize(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def seconds(fn, device: str) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def timings(editor: Editor, prog, edit, repeats: int, before: bool, device: str) -> dict:
    """Seconds of plain sampling, the guided pass (source cached) and a first run, interleaved:
    the fastest of the repeats, and the medians beside them."""
    settings = editor.settings(prog)
    plain, guided, first = [], [], []
    for _ in range(repeats):
        plain.append(seconds(lambda: editor.sample_plain(settings), device))
        first.append(seconds(lambda: first_run(editor, prog, edit, before), device))  # leaves its source pass cached
        guided.append(seconds(edit, device))
    # the fastest of the repeats: on a loaded machine the least disturbed, the nearest to the cost itself
    return {"plain_s": min(plain), "guided_s": min(guided), "first_run_s": min(first),
            "median": {"plain_s": statistics.median(plain), "guided_s": statistics.median(guided),
                       "first_run_s": statistics.median(first)}}


REPL_CLASS = "attention: move + keep appearance"  # the class a REPL re-run turns a dial of


def repl_rerun(editor: Editor, steps: int, repeats: int, device: str) -> dict:
    """A REPL re-run after a weight change against the first run: the attention class with its
    source pass (the source cleared), then the same script with the move's weight at 1.5 (the
    source cached), interleaved over seeds 0 and 1; re-run / first of the fastest and of the medians."""
    first, again = [], []
    for r in range(repeats):
        for seed in (0, 1):
            one = dsl.compile(script(CLASSES[REPL_CLASS], steps, seed))
            turned = dsl.compile(script(CLASSES[REPL_CLASS].replace("\nkeep", " * 1.5\nkeep"), steps, seed))
            editor.sources.clear()
            first.append(seconds(lambda: editor.run(one, progress=False), device))
            again.append(seconds(lambda: editor.run(turned, progress=False), device))
    return {"rerun_over_first": min(again) / min(first),
            "median_rerun_over_first": statistics.median(again) / statistics.median(first),
            "first_s": min(first), "rerun_s": min(again)}


def breakdown(edit, device: str) -> dict:
    """Seconds per section of one guided pass (source cached), from the profiler's ranges."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    edit()  # the source pass, cached, and a warm-up
    with profile(activities=activities) as prof:
        with record_function("steer.run"):  # the run alone, not the profiler's start and stop
            edit()
            synchronize(device)
    ranges = {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages() if e.key.startswith("steer.")}
    total = ranges["steer.run"]
    out = {column: ranges.get(name, 0.0) for name, column in SECTIONS.items()}
    out["relocation, drag"] = max(0.0, ranges.get("steer.relocation_and_guide", 0.0) - ranges.get("steer.guide", 0.0))
    loop = ranges.get("steer.edit_pass", total)
    out["other"] = max(0.0, loop - sum(out.values()))
    out["run setup + decode"] = max(0.0, total - loop)  # binding, masks, drag planning, the final decode
    out["total"] = total
    return out


def allocated_peak(fn, device: str) -> int:
    """Bytes fn() allocates at its peak above what was allocated when it began. CUDA: the
    allocator's own peak. CPU: torch.profiler's allocation events (profile_memory) summed in time
    order; a tensor's bytes count from the op that made it until the free, so the peak is at op
    granularity (an op's inner temporaries net out), the same for plain and guided runs."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    changes = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    now = peak = 0
    for _, change in changes:
        now += change
        peak = max(peak, now)
    return peak


def memory(editor: Editor, prog, edit, device: str) -> dict:
    """Peak bytes above the start of plain sampling (with its decode) and of the guided pass
    (source cached)."""
    settings = editor.settings(prog)
    edit()  # the source pass, cached
    return {"plain": allocated_peak(lambda: editor.backbone.decode(editor.sample_plain(settings)), device),
            "guided": allocated_peak(edit, device)}


def profile_class(editor: Editor, terms: str, steps: int, repeats: int, before: bool, device: str,
                  memory_too: bool, guide_every: int | None = None) -> dict:
    prog = dsl.compile(script(terms, steps))

    def edit():
        return editor.run(prog, progress=False, guide_every=guide_every)

    set_before(editor, before)
    try:
        row = timings(editor, prog, edit, repeats, before, device)
        parts = breakdown(edit, device)
        peaks = memory(editor, prog, edit, device) if memory_too else None
    finally:
        set_before(editor, False)
    row.update({
        "plain_ms_per_step": 1000 * row["plain_s"] / steps,
        "guided_ms_per_step": 1000 * row["guided_s"] / steps,
        "guided_over_plain": row["guided_s"] / row["plain_s"],
        "first_run_over_plain": row["first_run_s"] / row["plain_s"],
        "profiled_ms_per_step": {k: 1000 * v / steps for k, v in parts.items()},
    })
    if peaks is not None:
        weights = denoiser_bytes(editor)
        held, loaded = held_bytes(editor)
        row.update({"plain_peak_mb": peaks["plain"] / 2**20, "guided_peak_mb": peaks["guided"] / 2**20,
                    "peak_over_plain": peaks["guided"] / peaks["plain"] if peaks["plain"] else float("nan"),
                    "total_peak_over_plain": (weights + peaks["guided"]) / (weights + peaks["plain"]),
                    "held_peak_over_plain": (held + loaded + peaks["guided"]) / (held + peaks["plain"]),
                    "loaded_for_edit_mb": loaded / 2**20})
    return row


def _bytes(modules) -> int:
    """Bytes of the distinct parameters and buffers of `modules` (shared storage counted once)."""
    seen, total = set(), 0
    for m in modules:
        for t in (*m.parameters(), *m.buffers()):
            key = t.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
    return total


def denoiser_bytes(editor: Editor) -> int:
    """Bytes of the backbone's denoiser weights (the UNet or transformer; not its text encoders or VAE)."""
    return weights_bytes(editor.backbone.unet)


def held_bytes(editor: Editor) -> tuple[int, int]:
    """(bytes of every model the backbone holds: denoiser, autoencoder, text encoders; bytes of
    the models loaded for x0 terms so far, the ViT and CLIP, beyond those)."""
    backbone = [m for m in vars(editor.backbone).values() if isinstance(m, torch.nn.Module)]
    extra = [m for m in (getattr(editor._vit, "tower", None), getattr(editor._clip, "clip", None)) if m is not None]
    held = _bytes(backbone)
    return held, _bytes(backbone + extra) - held


def machine(device: str) -> str:
    """The machine the figures were taken on, in words."""
    threads = torch.get_num_threads()
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"{platform.processor() or platform.machine()}, {threads} torch thread(s) (torch {torch.__version__})"


def markdown(result: dict) -> str:
    rows = result["classes"]
    lines = [f"Profile: model {result['model']}, {result['steps']} steps, fastest of {result['repeats']} interleaved "
             f"repeats, on {result['machine']}, recompute {result.get('recompute', 'auto')}. Peak memory: tensors "
             f"allocated above the start of the call (plain sampling's with its decode); guided / plain with the "
             f"denoiser's {result['model_mb']:.1f} MB of weights added, and with every model's the run holds "
             f"({result.get('held_mb', float('nan')):.1f} MB; the ViT and CLIP an x0 edit loads count for it alone).", "",
             "| edit class | | plain ms/step | guided ms/step | guided / plain | first run / plain | peak MB plain | "
             "peak MB guided | peak guided / plain | with the denoiser's weights | with every model's |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, versions in rows.items():
        for version, r in versions.items():
            mem = [f"{r[k]:.1f}" if k in r else "-" for k in ("plain_peak_mb", "guided_peak_mb")]
            ratios = [f"{r[k]:.2f}" if k in r else "-" for k in ("peak_over_plain", "total_peak_over_plain", "held_peak_over_plain")]
            lines.append(f"| {name} | {version} | {r['plain_ms_per_step']:.1f} | {r['guided_ms_per_step']:.1f} | "
                         f"{r['guided_over_plain']:.2f}x | {r['first_run_over_plain']:.2f}x | {mem[0]} | {mem[1]} | "
                         f"{ratios[0]} | {ratios[1]} | {ratios[2]} |")
    lines += ["", "Where a guided step's time goes (one guided pass, source cached, under torch.profiler: "
              "ms per step, and the share of the step):", "",
              "| edit class | | " + " | ".join(COLUMNS) + " |", "| --- | --- | " + " | ".join("---:" for _ in COLUMNS) + " |"]
    for name, versions in rows.items():
        for version, r in versions.items():
            parts = r["profiled_ms_per_step"]
            cells = [f"{parts[c]:.1f} ({100 * parts[c] / parts['total']:.0f}%)" for c in COLUMNS]
            lines.append(f"| {name} | {version} | " + " | ".join(cells) + " |")
    if "repl" in result:
        r = result["repl"]
        lines += ["", f"REPL re-run after a weight change ({REPL_CLASS}, the move * 1.5, source cached) / its first "
                  f"run with the source pass: {r['rerun_over_first']:.2f} (fastest), {r['median_rerun_over_first']:.2f} (medians)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sampler.bench.profile", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="shapes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", action="append", choices=list(CLASSES), help="profile only this class (repeatable)")
    p.add_argument("--compare", action="store_true", help="each class also before the exact optimisations")
    p.add_argument("--guide-every", type=int, metavar="K",
                   help="each class also guided every K-th step, the gradient reused between (Editor.run's opt-in guide_every)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak memory (one more profiled run of each)")
    p.add_argument("--recompute", choices=list(RECOMPUTE), default="auto",
                   help="when the guided steps recompute activations in their backward (sampler/recompute.py)")
    p.add_argument("--low-memory", action="store_true", help="as `steer --low-memory`: the same as --recompute always")
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args(argv)
    if args.low_memory:
        args.recompute = "always"
    editor = Editor(args.model, device=args.device, low_memory=args.recompute == "always")
    editor.energies.recompute = RECOMPUTE[args.recompute]
    editor.sample_plain(editor.settings(dsl.compile(script("", 1))))  # first-call allocations
    classes = {k: v for k, v in CLASSES.items() if not args.only or k in args.only}
    result = {"model": args.model, "model_mb": denoiser_bytes(editor) / 2**20, "held_mb": held_bytes(editor)[0] / 2**20,
              "recompute": args.recompute, "steps": args.steps, "repeats": args.repeats, "machine": machine(args.device), "classes": {}}
    for name, terms in classes.items():
        # before: every step guided, as before issue 21; after: the terms' own `every` defaults
        versions = [("before", True, 1), ("after", False, None)] if args.compare else [("", False, None)]
        if args.guide_every:
            versions.append((f"every {args.guide_every}", False, args.guide_every))
        result["classes"][name] = {label: profile_class(editor, terms, args.steps, args.repeats, before,
                                                        args.device, not args.no_memory, every)
                                   for label, before, every in versions}
    if REPL_CLASS in classes:
        result["repl"] = repl_rerun(editor, args.steps, args.repeats, args.device)
    text = markdown(result)
    sys.stdout.write(text)
    if args.out:
        from energies.files import atomic_write

        atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=2)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What an edit costs: guided edit vs plain classifier-free-guided sampling, in time and peak
memory, on the same model, steps and seeds; and a REPL-style re-run vs the first run.

On a GPU the peak is the CUDA allocator's. On the CPU it is the process's resident set, which only
grows within a process, so each CPU peak is measured in a fresh one (memory_probe, run by
_peak_delta). resident_peak and time_and_peak are shared with backbones.py and flow_backbones.py.
"""

from __future__ import annotations

import math
import resource
import time

import torch
from tqdm.auto import tqdm

import dsl

from ..editor import Editor, source_needs
from .scene import GREEN_PROMPT, PROMPT

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


def proc_status_kb(field: str) -> int | None:
    """A field of /proc/self/status in kB (VmRSS, VmHWM), or None where there is none."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak() -> bool:
    """Linux: reset this process's peak resident set (VmHWM) to its current size (clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def resident_peak():
    """(bytes resident now, a function giving the peak from now on). On Linux the peak is VmHWM
    after resetting it to the current size, so what came before (building the models, a warm-up)
    does not hide it; elsewhere ru_maxrss, which can only grow."""
    if reset_peak() and proc_status_kb("VmRSS") is not None:
        return proc_status_kb("VmRSS") * 1024, lambda: proc_status_kb("VmHWM") * 1024

    def maxrss():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    return maxrss(), maxrss


def time_and_peak(fn, steps: int, device: str) -> tuple[float, float]:
    """(seconds per call, peak MiB a call adds) of `fn` over `steps` calls after one warm-up call.
    CUDA: the allocator's peak above what was allocated before the timed calls; CPU: the resident
    set's (resident_peak, which on Linux leaves out the models built before)."""
    cuda = device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    base, peak = resident_peak()
    fn()  # warm-up: first-call allocations and kernel selection
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    seconds = (time.perf_counter() - t0) / steps
    peak_bytes = (torch.cuda.max_memory_allocated() - base) if cuda else max(0, peak() - base)
    return seconds, peak_bytes / 2**20


def memory_probe(model: str, script: str, plain: bool) -> tuple[int, int]:
    """(resident memory with the model loaded, peak the run adds above it), in bytes. Runs in a fresh
    process (see `_peak_delta`), after a one-step warm-up whose first-call allocations
    resident_peak leaves out where it can."""
    editor = Editor(model)
    prog = dsl.compile(script)
    settings = editor.settings(prog)
    editor.sample_plain(settings.model_copy(update={"steps": 1}))  # warm up: first-call allocations
    base, peak = resident_peak()
    if plain:
        editor.sample_plain(settings)
    else:
        editor.run(prog, progress=False)  # source pass (recorded, kept) + guided pass: the whole cost
    return base, max(0, peak() - base)


def _peak_delta(model: str, script: str, plain: bool) -> tuple[int, int]:
    import subprocess
    import sys

    code = f"from sampler.bench.cost import memory_probe; print(memory_probe({model!r}, {script!r}, {plain!r}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    base, delta = proc.stdout.strip().splitlines()[-1].strip("()").split(",")
    return int(base), int(delta)


def measure_cost(editor: Editor, steps: int, seeds: list[int], device: str, model: str = "shapes", progress: bool = False,
                 names: list[str] | None = None) -> dict:
    """Guided / plain ratios of time and peak memory per cost class (`names` of COST_EDITS, or all),
    and re-run / first run."""
    header = f'prompt "{PROMPT}"\nsteps {steps}\n'
    edits = {k: v for k, v in COST_EDITS.items() if names is None or k in names}
    out = {}
    for name, terms in tqdm(edits.items(), desc="cost", disable=not progress, leave=False):
        try:  # a class this model cannot run (a shipped direction it lacks) is reported, not fatal
            editor.bind(dsl.compile(header + terms))
        except dsl.SteerCompileError as e:
            out[name] = {"not_run": e.message}
            continue
        t_plain = t_source = t_guided = m_plain = m_guided = 0.0
        for s in seeds:
            editor.sources.clear()
            prog = dsl.compile(header + f"seed {s}\n" + terms)
            settings = editor.settings(prog)
            _, dt, mem = _timed(lambda: editor.sample_plain(settings), device)
            t_plain, m_plain = t_plain + dt, max(m_plain, mem)
            record = source_needs(editor.bind(prog))  # what the run records in its source pass (docs/performance.md)
            _, dt, _ = _timed(lambda: editor.source(settings, progress=False, record=record), device)
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
    editor.sources.clear()
    first = dsl.compile(header + f"seed {seeds[0]}\n" + COST_EDITS["attention + appearance"])
    again = dsl.compile(header + f"seed {seeds[0]}\n" + COST_EDITS["attention + appearance"].replace("\nkeep", " * 1.5\nkeep"))
    _, t_first, _ = _timed(lambda: editor.run(first, progress=False), device)
    _, t_again, _ = _timed(lambda: editor.run(again, progress=False), device)
    out["repl_rerun"] = {"time_ratio": t_again / t_first, "first_seconds": t_first, "rerun_seconds": t_again}
    return out

"""The training harness the shapes trainer (sampler/shapes/train.py) and the direction learners
(sampler/learn/) share: checkpoints, resuming, the EMA of the weights, the progress bar, the
--max-minutes stop, and the flags every model trainer takes (add_run_arguments).

A checkpoint is one safetensors file: every tensor under its key, and the rest (step, elapsed
seconds, optimizer step counts, a learner's recipe) as JSON in the metadata key "state". Nothing
is pickled, and it is written beside and renamed, so an interrupted write never leaves a broken
one. A model trainer's keys (save_models / restore_models):

    model.{module}.{state_dict key}        the weights
    ema.{module}.{state_dict key}          their exponential moving average
    opt.{module}.{parameter}.exp_avg       Adam's first and second moments
    opt.{module}.{parameter}.exp_avg_sq

with state["opt_step"] = {"{module}.{parameter}": Adam's step count}. A learner keeps its own
tensors (a direction) under plain names, and its Adam moments the same way (optimizer_tensors).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from tqdm import tqdm

from energies.files import atomic_write

# ----------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(path: Path, tensors: dict, state: dict):
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"state": json.dumps(state)}))


def load_checkpoint(path: Path) -> tuple[dict, dict]:
    """(tensors, state) of a checkpoint; the tensors on the CPU."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["state"])


class SettingsChanged(ValueError):
    """A checkpoint was made with other settings than the run that would continue it."""


def resume(path: Path, recipe: dict | None = None) -> tuple[dict, dict] | None:
    """The checkpoint to continue from, (tensors, state), or None where there is none. With a
    recipe (the settings that decide what is learned), a checkpoint made with another one is
    refused (SettingsChanged): continuing it would learn a mixture of two recipes."""
    if not path.exists():
        return None
    tensors, state = load_checkpoint(path)
    if recipe is not None:
        differ = {k: (state["recipe"].get(k), v) for k, v in recipe.items() if state["recipe"].get(k) != v}
        if differ:
            listing = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in differ.items())
            raise SettingsChanged(f"{path} was made with other settings ({listing})")
    print(f"resumed from {path} at step {state['step']}")
    return tensors, state


# ----------------------------------------------------------------------------------------------
# What a checkpoint holds: optimizer moments, and a model trainer's modules and EMA


def param_names(modules: dict) -> dict:
    """{parameter: "module.parameter"}: the names a checkpoint keeps optimizer state under."""
    return {p: f"{prefix}.{n}" for prefix, m in modules.items() for n, p in m.named_parameters()}


def optimizer_tensors(opt: torch.optim.Optimizer, names: dict) -> tuple[dict, dict]:
    """Adam's moments as checkpoint tensors (opt.NAME.exp_avg, opt.NAME.exp_avg_sq), and its step
    counts {NAME: step} for the JSON state. Parameters that never stepped (frozen) have none."""
    tensors, steps = {}, {}
    for p, s in opt.state.items():
        for key in ("exp_avg", "exp_avg_sq"):
            tensors[f"opt.{names[p]}.{key}"] = s[key]
        steps[names[p]] = float(s["step"])
    return tensors, steps


def restore_optimizer(opt: torch.optim.Optimizer, names: dict, tensors: dict, steps: dict):
    for group in opt.param_groups:
        for p in group["params"]:
            n = names[p]
            if f"opt.{n}.exp_avg" in tensors:
                opt.state[p] = {
                    "step": torch.tensor(float(steps[n])),
                    "exp_avg": tensors[f"opt.{n}.exp_avg"].to(p.device),
                    "exp_avg_sq": tensors[f"opt.{n}.exp_avg_sq"].to(p.device),
                }


def save_models(path: Path, modules: dict, ema: dict, opt: torch.optim.Optimizer, state: dict):
    """A model trainer's checkpoint: the weights of `modules` ({name: module}), their EMA and the
    optimizer, with `state` (step, elapsed) and the optimizer's step counts."""
    tensors = {f"model.{prefix}.{k}": v for prefix, m in modules.items() for k, v in m.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.items()})
    moments, steps = optimizer_tensors(opt, param_names(modules))
    save_checkpoint(path, {**tensors, **moments}, {**state, "opt_step": steps})


def restore_models(tensors: dict, state: dict, modules: dict, ema: dict, opt: torch.optim.Optimizer):
    """Put a save_models checkpoint back into `modules`, `ema` and `opt`."""
    for prefix, m in modules.items():
        m.load_state_dict({k[len(f"model.{prefix}.") :]: v for k, v in tensors.items() if k.startswith(f"model.{prefix}.")})
    for k in ema:
        ema[k].copy_(tensors[f"ema.{k}"])
    restore_optimizer(opt, param_names(modules), tensors, state["opt_step"])


# ----------------------------------------------------------------------------------------------
# EMA of the weights


def ema_of(modules: dict) -> dict:
    """A copy of every entry of the modules' state dicts, {"module.key": tensor}: the EMA's start."""
    return {f"{k}.{n}": v.detach().clone() for k, m in modules.items() for n, v in m.state_dict().items()}


@torch.no_grad()
def ema_update(ema: dict, modules: dict, decay: float):
    averaged, current = [], []
    for k, m in modules.items():
        for n, v in m.state_dict().items():
            e = ema[f"{k}.{n}"]
            if v.dtype.is_floating_point:
                averaged.append(e)
                current.append(v)
            else:  # counters and the like are copied, not averaged
                e.copy_(v)
    if averaged:  # one fused call: a GPU step would otherwise launch a kernel per tensor
        torch._foreach_lerp_(averaged, current, 1 - decay)


def to_device(dev: torch.device, models, ema: dict, opt: torch.optim.Optimizer):
    """Move a trainer's models, EMA and optimizer moments to `dev`, after a checkpoint was restored
    on the CPU (AdamW keeps its moments per tensor, beside the parameter they follow)."""
    for m in models:
        m.to(dev)
    for k in ema:
        ema[k] = ema[k].to(dev)
    for s in opt.state.values():
        for k, v in s.items():
            if torch.is_tensor(v) and k != "step":
                s[k] = v.to(dev)


def optimise(loss: torch.Tensor, opt: torch.optim.Optimizer, params, ema: dict, modules: dict, step: int, ema_max: float):
    """One training step after the loss: backward, gradients clipped to norm 1, the optimiser's
    step, then the EMA, whose decay starts short (a short average while the weights move fast)
    and grows to `ema_max`. What every trainer of the shapes models does the same way."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    ema_update(ema, modules, decay=min(ema_max, (1 + step) / (10 + step)))


# ----------------------------------------------------------------------------------------------
# Progress and the time limit


def progress(start: int, total: int, desc: str) -> tqdm:
    """The steps still to do, start .. total - 1, as a bar that shows a resumed run's progress too."""
    return tqdm(range(start, total), initial=start, total=total, desc=desc, dynamic_ncols=True)


def out_of_time(started: float, max_minutes: float) -> bool:
    """--max-minutes: True once the run has gone on that long since `started` (0: no limit). The
    caller checkpoints and stops; --resume (or a plain rerun) continues."""
    return bool(max_minutes) and time.time() - started > max_minutes * 60


def say_stopping(step: int, max_minutes: float):
    print(f"stopping at step {step}: --max-minutes {max_minutes} reached (resume to continue)")


def checkpoint_or_stop(step: int, total: int, every: int, max_minutes: float, started: float, save, export=None) -> bool:
    """After optimiser step `step` (counted from 0) of `total`: a checkpoint, `save(state)` with the
    step count and the time spent, every `every` steps, at the last step and when --max-minutes
    has run out, each followed by `export()` where the trainer exports its EMA model. True when
    the time is out: the caller stops, and a rerun resumes from that checkpoint."""
    done = step + 1 == total
    stop = not done and out_of_time(started, max_minutes)
    if (step + 1) % every == 0 or done or stop:
        save({"step": step + 1, "elapsed": time.time() - started})
        if export is not None:
            export()
    if stop:
        say_stopping(step + 1, max_minutes)
    return stop


# ----------------------------------------------------------------------------------------------
# The options every model trainer takes


def machine(device: str = "CPU") -> str:
    """What a training record says a stage ran on: the processor, torch's threads, CPU or GPU."""
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {device}"


def bf16_autocast(flag: bool | None, device: str | torch.device = "cpu") -> bool:
    """Whether a training step runs under bf16 autocast: --bf16 / --no-bf16 when given, else only
    where bf16 is native. A CPU without bf16 units (no AVX512) emulates it, and a grounding step of
    the shapes UNet there took 40 s instead of 4 s in fp32 (2 cores, AVX2)."""
    if flag is not None:
        return flag
    if torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def add_run_arguments(p: argparse.ArgumentParser):
    """EMA, caption mix, precision, checkpoints and the time limit: the same flags and defaults for
    the shapes UNet (shapes/train.py) and the shapes flow model (shapes/flow_train.py)."""
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--p-one", type=float, default=0.3, help="share of one-object scenes")
    p.add_argument("--p-uncond", type=float, default=0.1, help="share of empty captions (for CFG)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast, fp32 weights (default: on a GPU, or a CPU with native bf16)")
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--max-minutes", type=float, default=0, help="stop (resumably) after this long; 0 = no limit")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")

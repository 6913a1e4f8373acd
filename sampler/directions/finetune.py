"""DiffusionCLIP's fine-tuned models as directions (Kim, Kwon, Ye, CVPR 2022, arXiv 2110.02711).

A direction of this kind is a change of the UNet's weights, learned by `steer learn clip`
(sampler/learn/clip.py): a LoRA of its attention and convolution projections (peft's state-dict
names, `<module>.lora_A.weight` and `<module>.lora_B.weight`, with W' = W + scale B A), or, from
`--full`, the changed weights themselves (`<parameter>` -> W'). Its tensor "scale" is LoRA's
alpha / r (1 for a full fine-tune: W' = W + 1 (W_full - W)).

Using it is DiffusionCLIP's noise combination (docs/methods.md, section 6b): at each step the
active fine-tuned models' noise predictions mix with the original model's,

    eps = (1 - sum_i gamma_i) eps_orig + sum_i gamma_i eps_i  =  eps_orig + sum_i gamma_i (eps_i - eps_orig)

where gamma_i is the weight of `direction NAME * gamma` inside its window (0 outside: the paper's
gamma_i(t)), times its `within` mask. The shares always sum to one: the script's weights are
shares of the noise and the original model takes what is left of 1. One direction at gamma in
[0, 1] is the paper's continuous transition; gamma 0 is exactly the original model (no
fine-tuned call). Where the weights add up to more than 1 the original model's share is
negative: the run goes past the fine-tuned models, away from the original, as classifier-free
guidance goes past the conditional model. The paper mixes fine-tuned models with convex gammas
only; steer keeps its rule (shares summing to one) and lets weights extrapolate, because on the
shapes model a shape fine-tune at share 1 leaves rounded circles and at 1.5 makes squares
(docs/methods.md 6b), and because dividing two full-strength edits by their sum (the rule steer
had first) halved both and completed neither.

Each active direction costs one more classifier-free-guided UNet call per step: its weights are
swapped in for that call only (`finetuned`), and swapped back in a `finally`, so every other call
of the run (the source pass, the probes, other kinds' forwards, the next run in a REPL) sees the
original model, bit for bit. No module is replaced: hooks and attention processors stay where
they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import torch

from energies.errors import SteerCompileError

from ..guided import classifier_free
from ..regions import local
from .base import DirectionKind, Step

LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "conv1", "conv2")  # what a LoRA adapts (the learner's default)
RETURN_DEFAULT = 0.5  # DiffusionCLIP's return step t0 = 500 of 1000 for its edits (its README's --t_0 500)


def lora_modules(tensors: dict) -> list[str]:
    """The module names a LoRA file adapts (each has an A and a B)."""
    return sorted(k[: -len(LORA_A)] for k in tensors if k.endswith(LORA_A))


def is_lora(tensors: dict) -> bool:
    return any(k.endswith(LORA_A) for k in tensors)


def lora_delta(a: torch.Tensor, b: torch.Tensor, scale: float, shape) -> torch.Tensor:
    """scale * B A, in the shape of the weight it adds to: a Linear's (out, in) from A (r, in) and
    B (out, r); a Conv2d's (out, in, kh, kw) from A (r, in, kh, kw) and B (out, r, 1, 1)."""
    delta = b.flatten(1) @ a.flatten(1)  # (out, in * kh * kw)
    return (scale * delta).reshape(shape)


@dataclass
class FineTune:
    """What a step reads of a fine-tuned direction: per parameter of the UNet, how to make its
    fine-tuned value from the original one (kept on the model's device, in its dtype)."""

    parts: dict  # parameter name -> (A, B) of a LoRA, or the full fine-tuned weight
    scale: float
    lora: bool
    t0: float  # the return step it was learned at

    def weight(self, name: str, original: torch.Tensor) -> torch.Tensor:
        part = self.parts[name]
        if self.lora:
            return original + lora_delta(part[0], part[1], self.scale, original.shape).to(original.dtype)
        return original + self.scale * (part - original)


def fine_tune_of(direction, unet) -> FineTune:
    """The FineTune of a direction file on this UNet, or a ValueError saying which tensor does not fit."""
    tensors = direction.tensors
    params = dict(unet.named_parameters())
    p = next(unet.parameters())
    scale = float(tensors["scale"].reshape(-1)[0])
    t0 = float(direction.meta.get("return", RETURN_DEFAULT))
    if is_lora(tensors):
        parts = {}
        for m in lora_modules(tensors):
            name = m + ".weight"
            if name not in params or m + LORA_B not in tensors:
                raise ValueError(f"its LoRA adapts {m!r}, which this UNet has no weight for" if name not in params
                                 else f"its LoRA of {m!r} has no B matrix")
            a, b = tensors[m + LORA_A], tensors[m + LORA_B]
            want, got = tuple(params[name].shape), (b.shape[0], a.shape[1], *a.shape[2:])
            if tuple(got) != want:
                raise ValueError(f"its LoRA of {m!r} makes a {'x'.join(map(str, got))} weight, this UNet's is {'x'.join(map(str, want))}")
            parts[name] = (a.to(p.device, torch.float32), b.to(p.device, torch.float32))
        return FineTune(parts, scale, True, t0)
    parts = {}
    for name, w in tensors.items():
        if name == "scale":
            continue
        if name not in params or tuple(params[name].shape) != tuple(w.shape):
            raise ValueError(f"its weight {name!r} is not one of this UNet's" if name not in params
                             else f"its weight {name!r} is {tuple(w.shape)}, this UNet's is {tuple(params[name].shape)}")
        parts[name] = w.to(p.device, p.dtype)
    return FineTune(parts, scale, False, t0)


@contextlib.contextmanager
def finetuned(unet, ft: FineTune):
    """Inside the block, the UNet's parameters are the fine-tuned ones; outside, the very tensors
    they were (restored however the block exits, so the original model is exact, not recomputed)."""
    params = dict(unet.named_parameters())
    originals = {name: params[name].data for name in ft.parts}
    try:
        with torch.no_grad():
            for name, w in originals.items():
                params[name].data = ft.weight(name, w)
        yield unet
    finally:
        for name, w in originals.items():
            params[name].data = w


def noise_shares(gammas: list) -> tuple[list, object]:
    """DiffusionCLIP's noise-combination weights from a script's: (each fine-tuned model's share,
    the original model's share), summing to one everywhere. `gammas` are numbers or (H, W) maps
    (a weight times its `within` mask); each is its model's share, and the original model takes
    1 - sum (negative where they add up to more than 1: extrapolation past the fine-tuned models)."""
    return list(gammas), 1 - sum(gammas)


def combine(eps_orig: torch.Tensor, eps_models: list, gammas: list) -> torch.Tensor:
    """The noise combination itself, eps = keep eps_orig + sum_i share_i eps_i (what the DDIM loop
    computes from Guidance.eps_models and Guidance.eps_keep)."""
    shares, keep = noise_shares(gammas)
    return keep * eps_orig + sum(s * e for s, e in zip(shares, eps_models))


def _map(gamma: float, mask, like: torch.Tensor):
    """gamma inside a `within` mask (resized to the latent grid), or the plain number."""
    if mask is None:
        return gamma
    return local(torch.full(like.shape[-2:], float(gamma), device=like.device, dtype=like.dtype), mask)


# ----------------------------------------------------------------------------------------------
# The plug-in: how the editor uses a direction of this kind (directions/base.py)


class FineTuned(DirectionKind):
    name = "finetune"
    window = (1.0 - RETURN_DEFAULT, 1.0)  # replaced in `prepare` by the file's own return step

    def mismatch(self, direction, shapes):
        learned = direction.meta.get("mid_block")  # a fingerprint of the UNet, comparable without its weights
        if learned is not None and tuple(learned) != tuple(shapes.mid_block):
            return (f"it fine-tunes a UNet whose mid block gives {'x'.join(map(str, learned))}, "
                    f"this one's gives {'x'.join(map(str, shapes.mid_block))}")
        return None

    def prepare(self, term, direction, backbone, settings):
        refuse_negative_share(term)
        try:
            ft = fine_tune_of(direction, backbone.unet)
        except ValueError as e:
            raise SteerCompileError(f"direction {direction.name!r} does not fit this model: {e}", term.term.span,
                                    hint="learn it again on this model: steer learn clip ...") from None
        if term.term.window is None:
            term.window = default_window(ft.t0, getattr(settings, "return_step", None))
        return ft

    def guide(self, g, terms, step: Step):
        active = [x for x in terms if x.active(step.progress)]
        if not active:
            return g  # gamma 0: the original model's eps, untouched
        eps_models, gammas = [], []
        with torch.no_grad():
            for x in active:
                with finetuned(step.backbone.unet, x.state):
                    eps_u, eps_c = step.backbone.eps_both(step.z, step.t, step.cond, step.i)
                eps_models.append(classifier_free(eps_u, eps_c, step.cfg))
                gammas.append(_map(x.weight, step.regions[id(x)], step.z))
        shares, keep = noise_shares(gammas)
        mixed = sum(s * e for s, e in zip(shares, eps_models))
        return dataclasses.replace(g, eps_models=mixed, eps_keep=keep)


def refuse_negative_share(term):
    """A fine-tuned direction's weight is a share of the noise: a negative one is an error at its
    statement (asked by the editor and, without the weights, by preflight.check_program)."""
    if term.weight < 0:
        name = term.term.name
        raise SteerCompileError(f"direction {name!r} is a fine-tuned model: its weight is its share of the noise, "
                                f"from 0 (the original model) to 1 (the fine-tuned one), not {term.weight:g}", term.term.span,
                                hint=f"direction {name} * 0.5 is halfway")


def default_window(t0: float, return_step: float | None) -> tuple[float, float]:
    """Where a fine-tuned model acts when the script gives no window: from its return step t0 on,
    as DiffusionCLIP edits (it was trained on t <= t0 only). Progress 0 is the run's first step:
    t = T, or t = return * T for a run with a return step."""
    top = return_step or 1.0
    return (max(0.0, 1.0 - t0 / top), 1.0)

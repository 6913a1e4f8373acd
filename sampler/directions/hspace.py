"""Asyrp's h-space (Kwon, Jeong, Uh, ICLR 2023, arXiv 2210.10960): a semantic shift in the bottleneck.

h is the output of the UNet's mid block. An edit adds a learned delta-h to it, and the reverse
step is asymmetric (docs/methods.md, section 4):

    eps     = eps(z_t | h)                               the original UNet
    eps~    = eps(z_t | h + s * delta_h)                 the same UNet with h shifted
    P_t     = (z_t - sqrt(1 - a_t) eps~) / sqrt(a_t)     predicted x0 from the SHIFTED eps
    D_t     = sqrt(1 - a_prev) eps                       direction from the ORIGINAL eps
    z_{t-1} = sqrt(a_prev) P_t + D_t

Only P_t carries the edit; keeping D_t on the original eps is what keeps the rest of the image
where it was (a symmetric step, with eps~ in both, barely changes anything: the paper's point).

The shift is a forward hook on `unet.mid_block`, installed for one call and removed in a
`finally`, like the probes in probes.py. The decoder sees h' through the shared skip connections,
exactly as Asyrp's `UNetModel.forward(..., delta_h)` runs the decoder a second time.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import torch

from energies import defaults as D

from ..guided import classifier_free
from ..hooks import forward_hook
from ..regions import local
from .base import DirectionKind, Step

# Asyrp finds t_edit and t_boost from LPIPS curves (`set_t_edit_t_addnoise`); there is no LPIPS
# here, so steer uses the README's user-defined values, --user_defined_t_edit 500 and
# --user_defined_t_addnoise 200 on 1000 training steps, as fractions of sampling progress
# (0 = pure noise, 1 = done; the convention of every window in energies/defaults.py):
T_EDIT, T_BOOST, T_TOTAL = 500, 200, 1000
EDIT_WINDOW = (0.0, 1.0 - T_EDIT / T_TOTAL)  # (0.0, 0.5): delta-h and the asymmetric step while t >= t_edit
BOOST_FROM = 1.0 - T_BOOST / T_TOTAL  # 0.8: from here on (t < t_boost) Asyrp samples with eta = 1 ("quality boosting")
BOOST_ETA = 1.0
# Between the two (t_boost <= t < t_edit) the step is plain deterministic DDIM (eta = 0).


def mid_block_shape(unet) -> tuple[int, int, int]:
    """(C, h, w) of h, the mid-block output, at the UNet's own sample size: every down block but
    the last halves the side (diffusers' layout for SD 1.x/2.x, SDXL and the shapes model).
    `unet` is the module or its config (a dict, as read from config.json): no weights are needed."""
    cfg = getattr(unet, "config", unet)
    sample, channels = cfg["sample_size"], cfg["block_out_channels"]
    size = sample if isinstance(sample, (tuple, list)) else (sample, sample)
    down = 2 ** (len(channels) - 1)
    return (int(channels[-1]), int(size[0]) // down, int(size[1]) // down)


def in_edit_window(progress: float, window: tuple[float, float] = EDIT_WINDOW) -> bool:
    return window[0] <= progress < window[1]


def boost_eta(progress: float, boost_from: float = BOOST_FROM) -> float:
    """The DDIM eta Asyrp's test sampler uses at this point of sampling."""
    return BOOST_ETA if progress >= boost_from else 0.0


def step_scale(train_steps: int, steps: int) -> float:
    """Asyrp's inference scaling n_train_step / n_test_step: delta-h acts once per step, so a
    direction learned with 20 steps applied at 50 steps is scaled by 20/50 to move as far."""
    return train_steps / steps


@dataclass
class HSpaceDelta:
    """A learned delta-h: one global (C, h, w) tensor, or a table (N, C, h, w) with the N training
    timesteps it was learned at (Asyrp's per-timestep `delta_h_dict`)."""

    delta: torch.Tensor
    timesteps: torch.Tensor | None = None

    def __post_init__(self):
        if self.delta.dim() == 4:
            if self.timesteps is None or self.timesteps.numel() != self.delta.shape[0]:
                raise ValueError(f"a per-timestep delta-h of shape {tuple(self.delta.shape)} needs {self.delta.shape[0]} timesteps")
        elif self.delta.dim() != 3:
            raise ValueError(f"delta-h must be (C, h, w) or (N, C, h, w), not {tuple(self.delta.shape)}")

    @classmethod
    def from_direction(cls, direction) -> "HSpaceDelta":
        """From a loaded energies.directions.Direction of kind "hspace"."""
        return cls(direction.tensors["delta_h"], direction.tensors.get("timesteps"))

    def at(self, t: int) -> torch.Tensor:
        """The delta-h for timestep t: the global one, or the table's row at the nearest
        training timestep (inference steps rarely land on the training ones)."""
        if self.delta.dim() == 3:
            return self.delta
        return self.delta[int((self.timesteps.float() - float(t)).abs().argmin())]


@contextlib.contextmanager
def shifting(unet, delta: torch.Tensor, rows=None):
    """Add `delta` (C, h, w) to the mid-block output of every forward run inside the block.

    `rows` (a slice or index) limits the shift to some batch rows, so one batched forward can give
    the original and the shifted eps together. `delta` may require grad: training runs the UNet
    inside the block and backpropagates into it. The hook is removed however the block exits."""
    want = tuple(mid_block_shape(unet))

    def hook(module, inputs, output):
        h = output[0] if isinstance(output, tuple) else output
        if tuple(h.shape[-3:]) != tuple(delta.shape[-3:]):
            raise ValueError(f"delta-h is {tuple(delta.shape[-3:])} but the mid block gave {tuple(h.shape[-3:])} (expected {want})")
        d = delta.to(h.device, h.dtype)
        if rows is None:
            h = h + d
        else:
            shift = torch.zeros_like(h)
            shift[rows] = d  # differentiable w.r.t. delta: the copy is recorded by autograd
            h = h + shift
        return (h, *output[1:]) if isinstance(output, tuple) else h

    with forward_hook(unet.mid_block, hook):
        yield


def eps_pair(backbone, z: torch.Tensor, t: int, context: torch.Tensor, delta: torch.Tensor, added: dict | None = None):
    """(eps, eps~) at z_t from one batched forward: the first copy of the batch unshifted, the
    second with delta added to h. z (B, ...) and context (B, T, D) as for `backbone.eps`; with
    classifier-free guidance pass the usual [uncond; cond] batch and combine each half afterwards."""
    B = z.shape[0]
    added2 = {k: torch.cat([v, v]) for k, v in (added or {}).items()} or None
    with shifting(backbone.unet, delta, rows=slice(B, None)):
        out = backbone.eps(torch.cat([z, z]), t, torch.cat([context, context]), added2)
    return out[:B], out[B:]


def asyrp_step(z_t: torch.Tensor, eps: torch.Tensor, eps_shifted: torch.Tensor, a_t: torch.Tensor, a_prev: torch.Tensor,
               clip: float | None = None) -> torch.Tensor:
    """Asyrp's asymmetric reverse step (eta = 0): x0 from the shifted eps, direction from the
    original one. With eps_shifted == eps it is the plain DDIM step.

    `clip` (pixel models) clamps each predicted x0 to [-clip, clip] as guided.clip_x0 does, and
    re-derives the direction's eps from the clamped original x0, so that a zero delta still gives
    exactly the step of the plain sampler."""
    a_t, a_prev = torch.as_tensor(a_t).to(z_t), torch.as_tensor(a_prev).to(z_t)
    x0 = (z_t - (1 - a_t).sqrt() * eps_shifted) / a_t.sqrt()  # P_t, with the edit
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
        x0_orig = ((z_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-clip, clip)
        eps = (z_t - a_t.sqrt() * x0_orig) / (1 - a_t).sqrt()
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps  # + D_t, without it


# ----------------------------------------------------------------------------------------------
# The plug-in: how the editor uses a direction of this kind (directions/base.py)


@dataclass
class HSpaceShift:
    delta: HSpaceDelta
    scale: float  # Asyrp's n_train_step / n_test_step


class HSpace(DirectionKind):
    name = "hspace"
    window = EDIT_WINDOW  # Asyrp's t_edit

    def mismatch(self, direction, shapes):
        want, got = shapes.mid_block, tuple(direction.tensors["delta_h"].shape[-3:])
        if got != want:
            return f"its delta-h is {'x'.join(map(str, got))} but this UNet's mid block gives {'x'.join(map(str, want))}"
        return None

    def prepare(self, term, direction, backbone, settings):
        train_steps = int(direction.meta.get("train_steps") or settings.steps)
        return HSpaceShift(HSpaceDelta.from_direction(direction), step_scale(train_steps, settings.steps))

    def guide(self, g, terms, step: Step):
        active = [x for x in terms if x.active(step.progress)]
        if active:  # x0 from the eps of an h-shifted forward; the step's direction keeps the original eps
            z, t = step.z, step.t
            delta = sum(x.weight * x.state.scale * local(x.state.delta.at(t).to(z), step.regions[id(x)]) for x in active)
            with torch.no_grad(), shifting(step.backbone.unet, delta):
                eps_u, eps_c = step.backbone.eps_both(z, t, step.cond, step.i)
            g = dataclasses.replace(g, x0_eps=classifier_free(eps_u, eps_c, step.cfg))
        if terms and D.HSPACE_BOOST and step.progress >= BOOST_FROM:
            g = dataclasses.replace(g, eta=BOOST_ETA)  # Asyrp's quality boosting below t_boost
        return g

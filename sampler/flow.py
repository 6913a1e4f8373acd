"""Flow matching: the Euler loop on the velocity, and what a flow model cannot do.

A rectified-flow model (SD3.x, FLUX.1, the shapes flow model) samples by integrating
dx/ds = v(x_s, s) from s = 1 (noise) to s = 0 (image). `sample_flow` is that loop, written in
the flow's own variables, with the guidance placements of guided.py's DDIM loop
(docs/methods.md, "Flow matching"):

    x_s  <- x_s - g_latent                      (before the model call)
    v    =  v_u + cfg (v_c - v_u) + g_eps / (1 - s)   (eps = x_s + (1 - s) v: a shift of epsilon)
    x0   =  x_s - s v                           (the predicted image)
    eps  =  x_s + (1 - s) v                     (the predicted noise)
    x0   <- x0 - g_x0
    x_s' =  (1 - s') x0 + s' eps                (= x_s + (s' - s) v: Euler, when x0 was not shifted)
    x_s' <- x_s' - g_mean

The editor does not call it: a flow backbone (backbones/flow.py) presents its model in the
variance-preserving coordinates z = x_s / r(s) in which DDIM's deterministic step *is* this Euler
step, so the edit pass, the source pass, the inversion (invert_ddim's fixed-point iterations are
the reversed Euler step corrected until the forward step lands back, as FireFlow and ReNoise do)
and every direction and energy run unchanged on one loop. sample_flow is the reference that
claim is tested against (tests/test_flow.py): same model, same sigmas, same guidance, same result.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from energies.errors import SteerCompileError

from .guided import Guidance


@torch.no_grad()
def sample_flow(velocity, x: torch.Tensor, sigmas: list[float], guide=None, callback=None, disable=None, desc="sampling"):
    """Euler on the velocity from x at sigmas[0] down to s = 0. `velocity(i, s, x)` is the step's
    classifier-free-guided v; `guide(i, s, x)` its Guidance, whose shifts are in x's units."""
    s_all = [float(s) for s in sigmas] + [0.0]
    for i in tqdm(range(len(sigmas)), disable=disable, desc=desc, leave=False, dynamic_ncols=True):
        s, s_next = s_all[i], s_all[i + 1]
        g = guide(i, s, x) if guide is not None else Guidance()
        if g.latent is not None:
            x = x - g.latent
        v = velocity(i, s, x)
        if g.eps is not None:
            v = v + g.eps / (1 - s)
        x0, eps = x - s * v, x + (1 - s) * v
        if g.x0 is not None:
            x0 = x0 - g.x0
        x_next = (1 - s_next) * x0 + s_next * eps
        if g.mean is not None:
            x_next = x_next - g.mean
        if callback is not None:
            callback({"i": i, "s": s, "x": x, "x0": x0, "v": v})
        x = x_next
    return x


def cfg_velocity(backbone, cond, cfg: float):
    """velocity(i, s, x) for sample_flow: the backbone's v at x_s, classifier-free guided."""

    def velocity(i, s, x):
        v_c = backbone.velocity(x.to(backbone.dtype), s, cond.cond, cond.added).float()
        if cfg == 1:
            return v_c
        v_u = backbone.velocity(x.to(backbone.dtype), s, cond.uncond, cond.added_uncond).float()
        return v_u + cfg * (v_c - v_u)

    return velocity


# ----------------------------------------------------------------------------------------------
# Statements without a meaning on a transformer: refused where they are written.

NO_MEANING = {
    "drag": ("drag is DragNoise: it optimises a UNet's bottleneck features and carries them on, and a "
             "rectified-flow transformer has no bottleneck (every block keeps the image's tokens at one size)",
             "move the object with `centroid(token \"WORD\") += (dx, dy)`, which works on flow models"),
    "hspace": ("an h-space direction (Asyrp) adds delta-h to a UNet's mid block, and a transformer has no mid block",
               "use a prompt direction (steer learn prompt) or a prompt edit (recolour, remove) instead"),
    "noise": ("noise directions (NoiseCLR) are learned tokens of a UNet model's CLIP encoder; learning and applying them "
              "on a flow model's T5 is not implemented yet", "use the direction on a UNet model"),
    "finetune": ("fine-tuned directions are LoRAs of a UNet; fine-tuning a flow transformer is not implemented yet",
                 "use the direction on a UNet model"),
}


FLOW_KINDS = ("sd3", "flux", "shapes-flow")  # the backbone families that are rectified-flow transformers


def refuse_without_meaning(bound, model) -> None:
    """A SteerCompileError at the first statement that has no meaning on a flow model (what it
    would act on does not exist there), saying why; nothing on other models. `model`: a loaded
    Backbone, or the ModelShapes `steer check` reads from the config files (both have `kind`)."""
    if model.kind not in FLOW_KINDS:
        return
    for x in bound:
        kind = x.direction.kind if x.kind == "direction" and x.direction is not None else x.kind
        if x.kind in ("drag", "direction") and kind in NO_MEANING:
            why, hint = NO_MEANING[kind]
            raise SteerCompileError(f"`{x.label}` cannot run on {model.name} (a rectified-flow transformer): {why}",
                                    x.term.span, hint=hint)

"""The guided DDIM loop: one short function whose body follows the equations.

DDIM (Song et al. 2021, arXiv 2010.02502) with classifier-free guidance (Ho & Salimans 2022) and
energy guidance applied where each term asks (docs/methods.md, section 8, "Where a guidance
term goes"):

    z_t     <- z_t - g_latent                          (Pix2Pix-Zero, Attend-and-Excite)
    eps     =  eps_u + cfg (eps_c - eps_u)             (the model; with fine-tuned models, DiffusionCLIP's
               -> keep eps + sum_i gamma_i eps_i         noise combination, keep = 1 - sum_i gamma_i)
    eps     <- eps + g_eps                             (Self-Guidance, NoiseCLR)
    x0      =  (z_t - sqrt(1 - a_t) eps~) / sqrt(a_t)  (eq. 12, "predicted x0"; clipped for pixel models;
                                                        eps~ = eps, or Asyrp's h-shifted eps)
    x0      <- x0 - g_x0                               (MPGD: a step on x0 itself, no UNet backward)
    z_{t-1} =  sqrt(a_prev) x0 + sqrt(1 - a_prev - s^2) eps + s noise    (eq. 12)
    z_{t-1} <- z_{t-1} - g_mean                        (DiffuseIT, FreeDoM)

Like k-diffusion's samplers, it knows nothing about prompts: `denoise(i, t, z, eps_cond)` gives
the classifier-free-guided epsilon (reusing the conditional half the guide's forward computed at
this z_t; a guide that ran both halves in one batch passes its eps_uncond as a fifth argument)
and `guide(i, t, z)` gives the Guidance for the step.

Every tensor the step adds or shifts, and the latent it ends on, is checked for NaN and infinity
(require_finite): cast to 8 bits a non-finite image is all black, so a run must stop at the step
where one appeared, naming the statements that made it (Guidance.by).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from energies.errors import SteerRuntimeError


@dataclass
class Guidance:
    eps: torch.Tensor | None = None  # added to epsilon
    latent: torch.Tensor | None = None  # subtracted from z_t before the UNet call
    mean: torch.Tensor | None = None  # subtracted from z_{t-1} after the step
    eps_cond: torch.Tensor | None = None  # the guided forward's eps_c at z_t, reusable if z_t did not move
    eps_uncond: torch.Tensor | None = None  # ... and its eps_u, when that forward was CFG's batched one
    x0_eps: torch.Tensor | None = None  # Asyrp: the eps of an h-shifted forward, used for x0 only
    x0: torch.Tensor | None = None  # subtracted from the predicted x0 before the step
    eps_models: torch.Tensor | None = None  # DiffusionCLIP: sum_i gamma_i eps_i of fine-tuned models, replacing
    eps_keep: torch.Tensor | float = 1.0  # ... all but this share (1 - sum_i gamma_i) of the model's eps
    eta: float | None = None  # this step's DDIM eta, if not the loop's (Asyrp's quality boosting: 1)
    # Who made what, for errors: a field's name (or "prediction", the model's eps under the
    # step's conditioning) -> the bound terms (`label`, `term.span`) that contributed to it.
    by: dict = field(default_factory=dict)

    def blame(self, name: str, terms) -> "Guidance":
        """This Guidance with `terms` added to those that made `name`."""
        if not terms:
            return self
        return dataclasses.replace(self, by={**self.by, name: (*self.by.get(name, ()), *terms)})

    def culprits(self) -> tuple:
        """Every term that contributed to this step, once each, in order."""
        return tuple({id(x): x for terms in self.by.values() for x in terms}.values())


SHIFTS = ("latent", "eps_models", "eps", "x0_eps", "x0", "mean")  # the Guidance fields that move the step
WHAT = {  # each checked quantity as an error names it
    "latent": "the shift of z_t",
    "prediction": "the model's prediction",
    "features": "the model's attention maps and features",
    "eps_models": "the fine-tuned models' prediction",
    "eps": "the shift of epsilon",
    "x0_eps": "the h-shifted prediction",
    "x0": "the shift of the predicted image",
    "mean": "the shift of z_t-1",
    "z": "the latent z_t-1",
    "conditioning": "the prompt's conditioning",
}


def require_finite(value: torch.Tensor, what: str, i: int, t: int, by=()) -> torch.Tensor:
    """`value`, if every entry is a finite number; else a SteerRuntimeError at the statement that
    made it. Of several terms summed into one tensor, the one with the largest weight is named
    (a weight of 1e30 is the likely cause), the others listed. No term: the model itself."""
    if bool(torch.isfinite(value).all()):
        return value
    what = WHAT.get(what, what)
    if not by:
        raise SteerRuntimeError(f"{what} is not finite at step {i} (t = {t}), with no term acting", None,
                                hint="the model overflowed: run in fp32 (--dtype fp32)")
    first = max(by, key=lambda x: abs(x.term.weight))
    others = [f"`{x.label}`" for x in by if x is not first]
    also = f" (with {', '.join(others)})" if others else ""
    raise SteerRuntimeError(f"`{first.label}`{also} made {what} not finite at step {i} (t = {t})", first.term.span,
                            hint="lower its weight, or narrow its window with @ a..b")


def after_move(g: Guidance, z: torch.Tensor, moved: torch.Tensor) -> Guidance:
    """The guidance `g` (computed at `moved`) for a step whose z_t is first moved to `moved`:
    z_t <- z_t - latent, with latent = (z - moved) + g's own latent step. g's eps_cond was taken at
    `moved`, not z, so it is dropped (and its eps_uncond)."""
    return dataclasses.replace(g, latent=(z - moved) + (g.latent if g.latent is not None else 0), eps_cond=None, eps_uncond=None)


def checked(g: Guidance, i: int, t: int) -> Guidance:
    """`g`, once every shift in it is finite (require_finite, naming the terms that made it)."""
    for name in SHIFTS:
        value = getattr(g, name)
        if value is not None:
            require_finite(value, name, i, t, g.by.get(name, ()))
    return g


def classifier_free(eps_u: torch.Tensor, eps_c: torch.Tensor, cfg: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): eps_u + cfg (eps_c - eps_u)."""
    return eps_u + cfg * (eps_c - eps_u)


def step_alphas(alphas: torch.Tensor, timesteps, final_alpha) -> list[torch.Tensor]:
    """alpha_bar at each of the run's timesteps, padded with the one after the last step: step i
    goes from a[i] to a[i + 1]. Every DDIM loop (sampling, inversion, learning) reads this."""
    return [alphas[t] for t in timesteps] + [torch.as_tensor(final_alpha).to(alphas)]


def pred_x0(z: torch.Tensor, eps: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """The model's estimate of the clean sample (DDIM eq. 12, first term)."""
    return (z - (1 - a_t).sqrt() * eps) / a_t.sqrt()


def clip_x0(z: torch.Tensor, x0: torch.Tensor, a_t: torch.Tensor, limit: float):
    """Clip x0 to the data range and re-derive eps from it (DDPM's clip_denoised), so the step
    stays consistent. Pixel models need it at the noisiest steps, where sqrt(a_t) is ~1e-4 and any
    error in eps is magnified into x0."""
    x0 = x0.clamp(-limit, limit)
    return x0, (z - a_t.sqrt() * x0) / (1 - a_t).sqrt()


def ddim_sigma(a_t: torch.Tensor, a_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """DDIM eq. 16: eta = 0 is deterministic DDIM, eta = 1 is DDPM's posterior noise."""
    return eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, a_prev: torch.Tensor, sigma=0.0, noise=None) -> torch.Tensor:
    """DDIM eq. 12: move to the previous timestep along the predicted noise direction."""
    z = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps
    return z if noise is None else z + sigma * noise


@torch.no_grad()
def sample_ddim(denoise, z, timesteps, alphas, final_alpha, guide=None, callback=None, disable=None, eta=0.0, generator=None,
                desc="sampling", clip=None, offsets=None, blend=None, start: int = 0):
    """Run DDIM from z at timesteps[start] (0: the first) down to t = 0 and return the final
    sample; steps keep their numbers i, so a run that starts later is the tail of a whole one.
    `offsets`, one per step, are added to each step's result: a photo's drift correction
    (inversion.offsets_along); `blend(i, z)` then replaces it: a local blend with the source
    (regions.local_blend)."""
    a = step_alphas(alphas, timesteps, final_alpha)
    for i in tqdm(range(start, len(timesteps)), initial=start, total=len(timesteps), disable=disable, desc=desc, leave=False,
                  dynamic_ncols=True):  # a late start shows as the steps it did not need to run
        t, a_t, a_prev = timesteps[i], a[i], a[i + 1]
        g = checked(guide(i, t, z), i, t) if guide is not None else Guidance()
        if g.latent is not None:
            z = z - g.latent  # update z_t before the UNet call
        same_z = g.latent is None  # the guide's forward ran at this z_t: its halves can be reused
        reuse = (g.eps_cond, g.eps_uncond) if same_z and g.eps_uncond is not None else (g.eps_cond if same_z else None,)
        eps = require_finite(denoise(i, t, z, *reuse), "prediction", i, t, g.by.get("prediction", ()))
        if g.eps_models is not None:  # DiffusionCLIP's noise combination (directions/finetune.py)
            eps = g.eps_keep * eps + g.eps_models
        if g.eps is not None:
            eps = eps + g.eps  # Self-Guidance: eps + grad of the energy
        if g.x0_eps is not None:  # Asyrp's asymmetric step: x0 from the shifted eps, direction from eps
            x0 = pred_x0(z, g.x0_eps + (g.eps if g.eps is not None else 0), a_t)
            if clip is not None:  # clamp both x0s, so that a zero shift gives exactly the plain step
                x0 = x0.clamp(-clip, clip)
                _, eps = clip_x0(z, pred_x0(z, eps, a_t), a_t, clip)
        else:
            x0 = pred_x0(z, eps, a_t)
            if clip is not None:
                x0, eps = clip_x0(z, x0, a_t, clip)
        if g.x0 is not None:
            x0 = x0 - g.x0  # guidance on the predicted clean sample (MPGD); eps keeps the noise direction
            if clip is not None:
                x0 = x0.clamp(-clip, clip)
        eta_i = eta if g.eta is None else g.eta
        sigma = ddim_sigma(a_t, a_prev, eta_i)
        noise = torch.randn(z.shape, generator=generator).to(z) if eta_i > 0 else None
        z_prev = ddim_step(x0, eps, a_prev, sigma, noise)
        if g.mean is not None:
            z_prev = z_prev - g.mean  # guidance on the posterior mean
        if offsets is not None:
            z_prev = z_prev + offsets[i]  # direct inversion: where the source's own step missed its inverted latent
        if blend is not None:
            z_prev = blend(i, z_prev)
        require_finite(z_prev, "z", i, t, g.culprits())  # finite shifts can still overflow together
        if callback is not None:
            callback({"i": i, "t": t, "z": z, "x0": x0, "eps": eps, "guidance": g})
        z = z_prev
    return z

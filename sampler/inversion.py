"""DDIM inversion: run the deterministic sampler backwards, from an image to its noise.

Plain DDIM inversion (Song et al. 2021, Sec. 4.3; diffusers' DDIMInverseScheduler) evaluates eps
at z_t and uses it for the step to z_{t+1}, which is only approximately the inverse of the
generative step (that evaluates eps at z_{t+1}). `fixed_point` iterations repair this by solving
z_{t+1} = step^{-1}(z_t; eps(z_{t+1})) with a few fixed-point updates, so regeneration from the
inverted noise lands back on the image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .guided import classifier_free, ddim_step, pred_x0, step_alphas


def returning(timesteps: list[int], t0: float | None) -> list[int]:
    """The run's timesteps with a return step t0 (DiffusionCLIP's t_0, SDEdit's): the model's own
    schedule of `steps` timesteps scaled into [0, t0 T], so that the run starts at t0 and spends
    all of its steps below it (DiffusionCLIP's seq_inv = linspace(0, 1, S) * t_0). t0 None or 1:
    the schedule itself. Timesteps that round to the same integer are kept once."""
    if t0 is None or t0 >= 1:
        return list(timesteps)
    return list(dict.fromkeys(int(round(t * t0)) for t in timesteps))


def forward_noise(z0: torch.Tensor, t: int, alphas: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """q(z_t | z_0) = sqrt(a_t) z_0 + sqrt(1 - a_t) noise: the stochastic forward diffusion with
    which SDEdit and DiffusionCLIP's unseen-domain translation perturb an image to t0 (`invert noise`).
    Unlike DDIM inversion it forgets what the model cannot make: noise or blur the model never saw."""
    a = alphas[t].to(z0)
    return a.sqrt() * z0 + (1 - a).sqrt() * noise.to(z0)


@torch.no_grad()
def invert_ddim(eps_fn, z0, timesteps, alphas, final_alpha, fixed_point: int = 0, disable=None, callback=None,
                tol: float = 1e-5):
    """Invert z0 through `timesteps` (in sampling order, high t first). Returns [z at each t] in
    sampling order; the first element is the inverted noise to start sampling from.

    Each step's fixed-point iterations are safeguarded: the iterate whose generative step lands
    closest to z is kept, and a step that lands farther than the best one halves the update. Plain
    iteration diverges where the model's ODE is unstable (images drawn at cfg > 1, inverted at 1).
    `fixed_point` is the most iterations a step takes; it stops once it lands within `tol` of z
    (relative to z's norm)."""
    a = step_alphas(alphas, timesteps, final_alpha)  # sampling step i goes from a[i] to a[i + 1]
    z = z0
    out = []
    steps = list(reversed(range(len(timesteps))))  # undo the last sampling step first
    for k, i in enumerate(tqdm(steps, disable=disable, desc="invert", leave=False, dynamic_ncols=True)):
        t = timesteps[i]
        eps = eps_fn(z, t)  # the plain inversion step: eps at the current point
        z_next = ddim_step(pred_x0(z, eps, a[i + 1]), eps, a[i])
        best, best_eps, best_miss, rate = z_next, eps, float("inf"), 1.0
        for _ in range(fixed_point):  # make the generative step from z_next land exactly on z
            eps = eps_fn(z_next, t)
            miss = (ddim_step(pred_x0(z_next, eps, a[i]), eps, a[i + 1]) - z).norm().item()
            if miss < best_miss:
                best, best_eps, best_miss = z_next, eps, miss
                if miss < tol * z.norm().item():
                    break
            else:
                rate /= 2
            z_next = best + rate * (ddim_step(pred_x0(z, best_eps, a[i + 1]), best_eps, a[i]) - best)
        if fixed_point and best is not z_next:  # the last update is checked too: the kept iterate is the best seen
            eps = eps_fn(z_next, t)
            if (ddim_step(pred_x0(z_next, eps, a[i]), eps, a[i + 1]) - z).norm().item() < best_miss:
                best = z_next
            z_next = best
        z = z_next
        out.append(z)
        if callback is not None:
            callback({"k": k, "t": t, "z": z})
    return out[::-1]


@torch.no_grad()
def offsets_along(denoise, trajectory, z0, timesteps, alphas, final_alpha, callback=None, disable=None, desc="source"):
    """Direct inversion's source branch (Ju et al. 2024, "PnP Inversion", arXiv 2310.01506): from
    each inverted latent take the plain DDIM step, and keep by how much it misses the next one
    (the image's latent z0 after the last step). The edit pass adds these offsets to its own
    steps, so an edit with nothing to do gives back the image however unstable the model's ODE is
    around it, and the source's recorded features are those of the image's own trajectory.
    `trajectory` is invert_ddim's output; `denoise(i, t, z)` the pass's CFG epsilon."""
    a = step_alphas(alphas, timesteps, final_alpha)
    targets = list(trajectory[1:]) + [z0]
    offsets = []
    for i in tqdm(range(len(timesteps)), disable=disable, desc=desc, leave=False, dynamic_ncols=True):
        t, z = timesteps[i], trajectory[i]
        eps = denoise(i, t, z)
        x0 = pred_x0(z, eps, a[i])
        offsets.append(targets[i] - ddim_step(x0, eps, a[i + 1]))
        if callback is not None:
            callback({"i": i, "t": t, "z": z, "x0": x0, "eps": eps})
    return offsets


def null_text(backbone, cond, trajectory, z0, timesteps, cfg, alphas, final_alpha, inner: int = 10, lr: float = 1e-2, disable=None):
    """Null-text inversion (Mokady et al. 2023, arXiv 2211.09794): for each step, optimise the
    unconditional embedding so that the classifier-free-guided DDIM step from the current latent
    lands on the DDIM-inversion trajectory. Returns one embedding per step.

    `trajectory[i]` is the inverted latent at timesteps[i] (sampling order); z0 is the image latent.
    Early stop at the paper's threshold 1e-5 + 2e-5 i; the learning rate decays over the steps."""

    targets = list(trajectory[1:]) + [z0]
    uncond = cond.uncond.detach().clone()
    z = trajectory[0]
    out = []
    a = step_alphas(alphas, timesteps, final_alpha)
    for i in tqdm(range(len(timesteps)), disable=disable, desc="null-text", leave=False, dynamic_ncols=True):
        t, a_t, a_prev = timesteps[i], a[i], a[i + 1]
        eps_c = backbone.eps(z, t, cond.cond, cond.added)
        u = uncond.clone().requires_grad_(True)
        opt = torch.optim.Adam([u], lr=lr * (1 - i / (2 * len(timesteps))))
        with torch.enable_grad():
            for _ in range(inner):
                eps_u = backbone.eps(z, t, u, cond.added_uncond)
                eps = classifier_free(eps_u, eps_c, cfg)
                loss = F.mse_loss(ddim_step(pred_x0(z, eps, a_t), eps, a_prev), targets[i])
                opt.zero_grad()
                loss.backward()
                opt.step()
                if loss.item() < 1e-5 + 2e-5 * i:
                    break
        uncond = u.detach()
        out.append(uncond)
        eps_u = backbone.eps(z, t, uncond, cond.added_uncond)
        eps = classifier_free(eps_u, eps_c, cfg)
        z = ddim_step(pred_x0(z, eps, a_t), eps, a_prev)
    return out


PSNR_CAP = 100.0  # dB: an exact reconstruction counts as 100 dB, so that means over images stay finite


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio of two images in [0, 1], at most PSNR_CAP."""
    mse = torch.mean((a.float() - b.float()) ** 2).item()
    return PSNR_CAP if mse <= 10 ** (-PSNR_CAP / 10) else 10 * torch.log10(torch.tensor(1.0 / mse)).item()

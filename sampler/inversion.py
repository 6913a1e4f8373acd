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


@torch.no_grad()
def invert_ddim(eps_fn, z0, timesteps, alphas, final_alpha, fixed_point: int = 0, disable=None, callback=None):
    """Invert z0 through `timesteps` (in sampling order, high t first). Returns [z at each t] in
    sampling order; the first element is the inverted noise to start sampling from."""
    a = step_alphas(alphas, timesteps, final_alpha)  # sampling step i goes from a[i] to a[i + 1]
    z = z0
    out = []
    steps = list(reversed(range(len(timesteps))))  # undo the last sampling step first
    for k, i in enumerate(tqdm(steps, disable=disable, desc="invert", leave=False, dynamic_ncols=True)):
        t = timesteps[i]
        eps = eps_fn(z, t)  # the plain inversion step: eps at the current point
        z_next = ddim_step(pred_x0(z, eps, a[i + 1]), eps, a[i])
        for _ in range(fixed_point):  # make the generative step from z_next land exactly on z
            eps = eps_fn(z_next, t)
            z_next = ddim_step(pred_x0(z, eps, a[i + 1]), eps, a[i])
        z = z_next
        out.append(z)
        if callback is not None:
            callback({"k": k, "t": t, "z": z})
    return out[::-1]


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

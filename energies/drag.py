"""DragNoise's loss and point tracking (Liu et al. 2024, arXiv 2404.01050; docs/methods.md,
section 7), as pure functions of a decoder feature map F (C, H, W).

Points are (x, y) in feature pixels: x to the right, y down, pixel centres at integers. Image
units (0..1, the language's) convert with `to_pixels` / `to_units`.

    L = sum_i (2 r_m + 1)^2 * L1( sg(F[p_i +- r_m]), F_bilinear[p_i + d_i +- r_m] )      d_i = unit(t_i - p_i)

pulls the feature one pixel ahead of each handle towards what is at the handle now, so the
content at the handle moves a pixel towards its target per step; after each step, `track`
finds each handle again as the nearest neighbour (L1) of its original feature within r_p.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_pixels(point, size: tuple[int, int]) -> torch.Tensor:
    """(x, y) in image units -> feature pixels of a (H, W) map."""
    H, W = size
    return torch.tensor([point[0] * W - 0.5, point[1] * H - 0.5], dtype=torch.float32)


def to_units(p: torch.Tensor, size: tuple[int, int]) -> tuple[float, float]:
    H, W = size
    return (float(p[0] + 0.5) / W, float(p[1] + 0.5) / H)


def patch(feat: torch.Tensor, centre: torch.Tensor, r: int) -> torch.Tensor:
    """The (C, 2r+1, 2r+1) patch of `feat` (C, H, W) around a real-valued centre (x, y), bilinear,
    zeros outside (DragDiffusion's interpolate_feature_patch, differentiable in `feat`)."""
    C, H, W = feat.shape
    offs = torch.arange(-r, r + 1, dtype=torch.float32, device=feat.device)
    ys, xs = torch.meshgrid(centre[1].to(feat.device) + offs, centre[0].to(feat.device) + offs, indexing="ij")
    grid = torch.stack([xs / (W - 1) * 2 - 1, ys / (H - 1) * 2 - 1], dim=-1)[None]  # align_corners=True coordinates
    return F.grid_sample(feat[None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]


def unit_steps(handles: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """d_i = (t_i - p_i) / |t_i - p_i| (zero where a handle is on its target)."""
    d = targets - handles
    n = d.norm(dim=-1, keepdim=True)
    return torch.where(n > 0, d / n.clamp(min=1e-8), torch.zeros_like(d))


def alignment_loss(feat: torch.Tensor, handles: torch.Tensor, targets: torch.Tensor, r_m: int = 1, weights=None,
                   done_within: float = 0.0) -> torch.Tensor:
    """DragNoise's motion supervision on decoder features `feat` (C, H, W). Handles already within
    `done_within` pixels of their target take no part (DragDiffusion skips them at 2 px)."""
    steps = unit_steps(handles, targets)
    loss = feat.new_zeros(())
    for k, (p, d) in enumerate(zip(handles, steps)):
        if (targets[k] - p).norm() <= done_within:
            continue
        here = patch(feat, p, r_m).detach()  # sg(F[p_i +- r_m]): the content to carry
        ahead = patch(feat, p + d, r_m)  # F[p_i + d_i +- r_m]: where it should be next
        w = 1.0 if weights is None else float(weights[k])
        loss = loss + w * (2 * r_m + 1) ** 2 * F.l1_loss(ahead, here)
    return loss


def track(feat0_at_handles: torch.Tensor, feat: torch.Tensor, handles: torch.Tensor, r_p: int = 3) -> torch.Tensor:
    """Point tracking: each handle moves to the pixel within r_p (a square, as DragDiffusion) of where
    it is whose feature in `feat` (C, H, W) is nearest in L1 to its original feature
    (N, C, 2 r_t + 1, 2 r_t + 1): a single pixel's for r_t = 0 (DragDiffusion), a patch's otherwise."""
    C, H, W = feat.shape
    r_t = (feat0_at_handles.shape[-1] - 1) // 2  # features_at's patch radius
    padded = F.pad(feat.float(), (r_t, r_t, r_t, r_t))
    out = []
    for f0, p in zip(feat0_at_handles, handles):
        f0 = f0.float()
        x, y = int(round(float(p[0]))), int(round(float(p[1])))
        best, where = None, (x, y)
        for yy in range(max(0, y - r_p), min(H, y + r_p + 1)):
            for xx in range(max(0, x - r_p), min(W, x + r_p + 1)):
                d = float((padded[:, yy : yy + 2 * r_t + 1, xx : xx + 2 * r_t + 1] - f0).abs().sum())
                if best is None or d < best:
                    best, where = d, (xx, yy)
        out.append(torch.tensor(where, dtype=torch.float32))
    return torch.stack(out)


def features_at(feat: torch.Tensor, points: torch.Tensor, r_t: int = 0) -> torch.Tensor:
    """(N, C, 2 r_t + 1, 2 r_t + 1): the bilinear patch around each point (r_t = 0: its feature)."""
    return torch.stack([patch(feat, p, r_t) for p in points])


def reached(handles: torch.Tensor, targets: torch.Tensor, tolerance: float) -> bool:
    """Every handle within `tolerance` pixels of its target: DragNoise's stopping test."""
    return bool(((handles - targets).norm(dim=-1) <= tolerance).all())


def box_mask(box, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) mask, 1 inside the box (x0, y0, x1, y1) in image units: the region that may change."""
    H, W = size
    ys = (torch.arange(H, dtype=torch.float32) + 0.5) / H
    xs = (torch.arange(W, dtype=torch.float32) + 0.5) / W
    inside_y = (ys >= box[1]) & (ys <= box[3])
    inside_x = (xs >= box[0]) & (xs <= box[2])
    return (inside_y[:, None] & inside_x[None, :]).float()


def region_loss(z_prev: torch.Tensor, z_prev0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """|(z_{t-1}(s) - z_{t-1}(s0)) * (1 - M)|_1: what lies outside the editable region stays put."""
    return ((z_prev - z_prev0) * (1 - mask)).abs().sum()

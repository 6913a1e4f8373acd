"""Self-Guidance and Pix2Pix-Zero energies over cross-attention maps, as pure tensor functions.

A map is a token's cross-attention over the image, shape (..., H, W), non-negative, from the
conditional half of classifier-free guidance, averaged over heads and layers (sampler/probes.py).
Properties follow the Self-Guidance demo code (docs/methods.md, section 1):

    centroid  = attention-weighted mean position, from the raw map
    size      = mean of the soft-thresholded map
    shape     = the soft-thresholded map itself (target: the hard-thresholded source map)
    appearance = decoder activations pooled under the hard-thresholded map

Every energy is an L1 distance (the demo's default). Nothing here loads a model or touches I/O.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def minmax(a: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Per-map min-max normalisation to [0, 1]."""
    lo = a.amin(dim=(-2, -1), keepdim=True)
    hi = a.amax(dim=(-2, -1), keepdim=True)
    return (a - lo) / (hi - lo + eps)


def soft_mask(a: torch.Tensor, sharpness: float = 10.0) -> torch.Tensor:
    """Self-Guidance's differentiable threshold: normalise, sigmoid around 0.5, normalise again."""
    return minmax(torch.sigmoid(sharpness * (minmax(a) - 0.5)))


def hard_mask(a: torch.Tensor) -> torch.Tensor:
    """The silhouette of a map: normalised attention above one half."""
    return (minmax(a) > 0.5).to(a.dtype)


def grid(h: int, w: int, device=None, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates in image units: x in (0, 1) left to right, y top to bottom."""
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
    return xs, ys


def centroid(a: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> (..., 2): the (x, y) centre of mass of a map, from its normalised marginals."""
    xs, ys = grid(a.shape[-2], a.shape[-1], a.device, a.dtype)
    mx = a.sum(-2)
    my = a.sum(-1)
    x = (mx * xs).sum(-1) / (mx.sum(-1) + 1e-8)
    y = (my * ys).sum(-1) / (my.sum(-1) + 1e-8)
    return torch.stack([x, y], -1)


def size(a: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> (...): the fraction of the image the token covers (soft threshold)."""
    return soft_mask(a).mean(dim=(-2, -1))


def appearance(feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Decoder activations (C, H, W) pooled under a mask (h, w), resized to H x W -> (C,)."""
    m = resize(mask, feats.shape[-2:])
    return (feats * m).sum(dim=(-2, -1)) / (m.sum() + 1e-4)


def resize(a: torch.Tensor, hw) -> torch.Tensor:
    """Bilinear resize of (..., h, w) maps to hw."""
    if tuple(a.shape[-2:]) == tuple(hw):
        return a
    lead = a.shape[:-2]
    out = F.interpolate(a.reshape(-1, 1, *a.shape[-2:]), size=tuple(hw), mode="bilinear", align_corners=False)
    return out.reshape(*lead, *hw)


def warp(mask: torch.Tensor, shift=(0.0, 0.0), scale: float = 1.0, about=(0.5, 0.5)) -> torch.Tensor:
    """Move a (H, W) map by `shift` (image units) and scale it by `scale` about the point `about`.

    Output pixel p takes the input at about + (p - about - shift) / scale; zeros outside.
    """
    h, w = mask.shape[-2:]
    xs, ys = grid(h, w, mask.device, mask.dtype)
    src_x = about[0] + (xs - about[0] - shift[0]) / scale
    src_y = about[1] + (ys - about[1] - shift[1]) / scale
    gy, gx = torch.meshgrid(src_y * 2 - 1, src_x * 2 - 1, indexing="ij")
    g = torch.stack([gx, gy], -1)[None]
    return F.grid_sample(mask[None, None], g, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0]


# ----------------------------------------------------------------------------------------------
# Energies: each returns a scalar; lower is better. `src` arguments come from the source pass at
# the same timestep and are treated as constants.


def object_centroid(a: torch.Tensor, sharp: bool = True) -> torch.Tensor:
    """Where the object is: the centroid of the soft-thresholded map. The raw map's centroid
    (Self-Guidance) is pulled towards the image centre by the low attention every background
    pixel pays the token; thresholding first removes that bias."""
    return centroid(soft_mask(a)) if sharp else centroid(a)


def move_energy(a: torch.Tensor, src: torch.Tensor, target, silhouette: float = 1.0, sharp: bool = True) -> torch.Tensor:
    """Move a token's object to `target` (x, y).

    Self-Guidance's centroid term alone pulls attention to the target but leaves the object where
    it was, so the model tends to draw a second one. The silhouette term asks for the source
    silhouette *translated* to the target: it is zero at the old place, which lets the object go.
    """
    target = torch.as_tensor(target, dtype=a.dtype, device=a.device)
    src_mask = hard_mask(src).detach()
    moved = warp(src_mask, shift=target - centroid(src_mask))
    return (object_centroid(a, sharp) - target).abs().sum() + silhouette * (soft_mask(a) - moved).abs().mean()


def resize_energy(a: torch.Tensor, src: torch.Tensor, factor: float, silhouette: float = 1.0) -> torch.Tensor:
    """Scale a token's object area by `factor`, keeping its centre: size term plus scaled silhouette."""
    src_c = centroid(src).detach()
    target_size = size(src).detach() * factor
    scaled = warp(hard_mask(src).detach(), scale=factor**0.5, about=src_c)
    return (size(a) - target_size).abs() + silhouette * (soft_mask(a) - scaled).abs().mean()


def size_energy(a: torch.Tensor, area: float) -> torch.Tensor:
    """Absolute size: the soft-thresholded area should equal `area` (fraction of the image)."""
    return (size(a) - area).abs()


def shape_energy(a: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Silhouette match: soft-thresholded map against a hard target mask (Self-Guidance shape)."""
    return (soft_mask(a) - target_mask.detach()).abs().mean()


def shape_from_energy(a: torch.Tensor, src: torch.Tensor, other_src: torch.Tensor) -> torch.Tensor:
    """Take another object's silhouette, placed where this object is in the source."""
    shift = centroid(src) - centroid(other_src)
    return shape_energy(a, warp(hard_mask(other_src), shift=shift.detach()))


# L1's gradient has the same size however small the difference: an object that already looks as
# its target does is still pushed, in the direction of float rounding (the guided forward and the
# source pass's batched one differ in the last bits). Below this share of the target vector's mean
# magnitude the energy is quadratic (Huber), so its gradient fades to zero there; above, it is L1's.
APPEARANCE_DEADBAND = 0.01


def appearance_energy(feats, a, target_feats, target_a) -> torch.Tensor:
    """L1 between appearance vectors (features pooled under this token now vs a target token),
    quadratic within APPEARANCE_DEADBAND of the target so that a kept object is left alone."""
    mine = appearance(feats, hard_mask(a).detach())
    theirs = appearance(target_feats, hard_mask(target_a)).detach()
    beta = float(APPEARANCE_DEADBAND * theirs.abs().mean())
    return F.smooth_l1_loss(mine, theirs, beta=beta) if beta > 0 else (mine - theirs).abs().mean()


def attention_keep_energy(layer_maps, src_layer_maps, positions=None) -> torch.Tensor:
    """Pix2Pix-Zero cross-attention guidance: squared distance to the source maps, summed over
    pixels and tokens, summed over layers (maps here are already averaged over heads). With
    `positions`, only those tokens' maps are held."""
    total = 0.0
    for cur, ref in zip(layer_maps, src_layer_maps):
        if positions is not None:
            cur, ref = cur[positions], ref[positions]
        total = total + ((cur - ref.detach()) ** 2).sum()
    return total

"""Energies on the predicted clean image x0: DiffusionCLIP's directional CLIP loss and an L1 keep.

DiffusionCLIP / Asyrp (docs/methods.md, sections 6 and 4) edit by asking the change in the
image's CLIP embedding to point the same way as the change in the text's:

    dI = normalize(E_I(x0_pred)) - normalize(E_I(x0_src))
    dT = normalize(E_T(target))  - normalize(E_T(source))
    L  = -log((1 + cos(dI, dT)) / 2)        (the code's form of 1 - cos)

A direction, not an absolute score, so the parts of the image the caption does not mention are
not dragged toward a generic "red circle". An L1 to the source x0 keeps the rest in place.
sampler/feature_models.py's `ClipScorer` gives the features (texts once, images differentiably).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention import resize

# DiffusionCLIP defaults (docs/methods.md, section 6): clip_loss_w 3, l1_loss_w 0 in its main.py (1 in the
# README example). Asyrp: clip 1.0, l1 3.0.
LAMBDA_CLIP = 3.0
LAMBDA_L1 = 1.0
CLIP_MODEL_ID = "openai/clip-vit-base-patch16"  # DiffusionCLIP's and Asyrp's ViT-B/16, for latent models
IMAGENET_TEMPLATES = ("a photo of a {}.", "a bad photo of a {}.", "a close-up photo of a {}.", "a rendering of a {}.",
                      "a cropped photo of a {}.", "a bright photo of a {}.", "a good photo of a {}.", "art of a {}.")


def directional_clip_energy(img_feat, src_img_feat, txt_feat, src_txt_feat) -> torch.Tensor:
    """-log((1 + cos(dI, dT)) / 2) for features (D,) or (B, D); the source image and both texts
    are constants. As in DiffusionCLIP's code the cosine is averaged over the batch before the log."""
    d_img = F.normalize(img_feat, dim=-1) - F.normalize(src_img_feat.detach(), dim=-1)
    d_txt = F.normalize(txt_feat.detach(), dim=-1) - F.normalize(src_txt_feat.detach(), dim=-1)
    cos = F.cosine_similarity(d_img, d_txt.expand_as(d_img), dim=-1).mean()
    return -torch.log(((1 + cos) / 2).clamp_min(1e-8))


def keep_pixels_energy(x0: torch.Tensor, src_x0: torch.Tensor, mask=None, inside: bool = True) -> torch.Tensor:
    """Mean L1 between x0 (B, C, H, W) and the source x0, over the whole image, or weighted by a soft
    mask (h, w) in [0, 1] (resized bilinearly to H x W): inside it, or outside it (1 - mask)."""
    diff = (x0 - src_x0.detach()).abs()
    if mask is None:
        return diff.mean()
    m = resize(torch.as_tensor(mask, dtype=x0.dtype, device=x0.device), x0.shape[-2:])
    w = (m if inside else 1 - m).expand_as(diff)
    return (diff * w).sum() / (w.sum() + 1e-8)

"""DiffuseIT's ViT energies: structure from the self-similarity of keys, appearance from the CLS token.

DiffuseIT (docs/methods.md, section 2) reads a DINO ViT on the predicted clean image:

    keys  = the last layer's self-attention keys, heads concatenated (tokens x hidden), CLS included
    S(x)  = the cosine self-similarity matrix of those keys: where things are, not what they are
    cls   = the last block's output at token 0, before the final layernorm: what the image shows

Structure is kept by matching S to the source's (MSE) and by a PatchNCE loss that asks each key to
resemble the source key at the same position more than the source keys elsewhere. Style follows a
reference image through its CLS feature. The energies are pure tensor functions of the keys and
CLS tokens that sampler/feature_models.py reads out of a ViT; `preprocess` is how an image in
[-1, 1] is fed to one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# DiffuseIT's own weights (docs/methods.md, section 2), kept for reference: the editor multiplies
# each energy by its term's weight (energies/defaults.py, TERMS) instead.
LAMBDA_SSIM = 1000.0  # structure: MSE of key self-similarity
LAMBDA_CONTRA = 200.0  # contrastive keys (PatchNCE)
LAMBDA_DIR_CLS = 100.0  # semantic divergence from the previous step's CLS, only while t > diff_iter
LAMBDA_TRG = 2000.0  # image-guided style: MSE of CLS features to the reference image
NCE_TAU = 0.07  # PatchNCE temperature (hard-coded in DiffuseIT's PatchLoss)

# Input statistics. DINO was trained on ImageNet statistics; OpenAI CLIP on its own. The shapes
# CLIP was trained on images in [-1, 1] with no normalisation at all (sampler/shapes/train.py:
# images_to_tensor gives x * 2 - 1, augment adds noise, clip_loss feeds that as pixel_values), and
# (x+1)/2 normalised with mean = std = 0.5 is exactly x again.
DINO_MEAN, DINO_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758)
SHAPES_MEAN, SHAPES_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
STATS = {"dino": (DINO_MEAN, DINO_STD), "clip": (CLIP_MEAN, CLIP_STD), "shapes": (SHAPES_MEAN, SHAPES_STD)}

DINO_MODEL_ID = "facebook/dino-vitb8"  # DiffuseIT's dino_vitb8
DINO_SIZE = 224  # DiffuseIT: Resize(224) (shorter side); here the image is made 224 x 224


# ----------------------------------------------------------------------------------------------
# Energies: each returns a scalar; lower is better. `src`/`ref` arguments are constants.


def self_similarity(keys: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(..., N, D) keys -> (..., N, N) cosine similarities between every pair of tokens."""
    norm = keys.norm(dim=-1, keepdim=True)
    return (keys @ keys.transpose(-1, -2)) / (norm @ norm.transpose(-1, -2)).clamp_min(eps)


def structure_energy(keys: torch.Tensor, src_keys: torch.Tensor) -> torch.Tensor:
    """Keep the layout: MSE between the key self-similarity now and the source's.

    Averaged over the batch too (DiffuseIT sums over images; the same for one image)."""
    return F.mse_loss(self_similarity(keys), self_similarity(src_keys).detach())


def contrastive_key_energy(keys: torch.Tensor, src_keys: torch.Tensor, tau: float = NCE_TAU) -> torch.Tensor:
    """DiffuseIT's PatchNCE on keys (..., N, D): each token's key should be closer (cosine) to the
    source key at its own position than to the source keys at other positions.

    Logits are [cos(k_i, s_i), cos(k_i, s_j) for all j] / tau with the j = i negative set to -10
    before the division (so it never competes), cross-entropy toward index 0, mean over tokens.
    Unlike the MSE structure term this lets features change as long as positions stay distinct.
    """
    q = F.normalize(keys, dim=-1)
    k = F.normalize(src_keys.detach(), dim=-1)
    pos = (q * k).sum(-1, keepdim=True)  # (..., N, 1)
    neg = q @ k.transpose(-1, -2)  # (..., N, N)
    eye = torch.eye(neg.shape[-1], dtype=torch.bool, device=neg.device)
    logits = torch.cat([pos, neg.masked_fill(eye, -10.0)], -1) / tau
    return -logits.log_softmax(-1)[..., 0].mean()


def style_energy(cls: torch.Tensor, ref_cls: torch.Tensor) -> torch.Tensor:
    """Image-guided style: MSE between the CLS feature now and a reference image's."""
    return F.mse_loss(cls, ref_cls.detach())


def divergence_energy(cls: torch.Tensor, prev_cls: torch.Tensor) -> torch.Tensor:
    """DiffuseIT's semantic divergence: move the CLS away from the previous step's (negative MSE),
    so early steps leave the source semantics instead of settling on them."""
    return -F.mse_loss(cls, prev_cls.detach())


# ----------------------------------------------------------------------------------------------
# Feeding images to a ViT


def preprocess(x: torch.Tensor, size, mean, std) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> the ViT's input: [0, 1], resized to `size` (int: square, or (h, w)),
    normalised. Bilinear without antialias: differentiable and cheap; a no-op resize is skipped."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    x = (x + 1) / 2
    if tuple(x.shape[-2:]) != hw:
        x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=False)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s

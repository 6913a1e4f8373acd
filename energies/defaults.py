"""Every default of every term, in one place: weights, windows, placements, layers, thresholds.

A term's `weight` in a script multiplies the default weight here, so `* 2` always means "twice
the usual strength". Windows are fractions of sampling progress (0 = pure noise, 1 = done).
Sources are reference/methods.md; values marked "tuned" were chosen with `steer bench` on the
shapes model (see the bench notes in the README).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TermDefaults:
    weight: float
    window: tuple[float, float]
    placement: str  # "eps": add w * grad to epsilon (Self-Guidance); "latent": z_t -= w * grad
    # before the UNet call (Pix2Pix-Zero, A&E); "mean": x_{t-1} -= w * grad (DiffuseIT, FreeDoM)


# Self-Guidance applies its gradient to epsilon without a sigma_t factor (demo code), at steps
# 20..280 of 300; layout is decided early, so layout terms stop before the end (tuned).
TERMS = {
    "move": TermDefaults(weight=40.0, window=(0.0, 0.7), placement="eps"),
    "shift": TermDefaults(weight=40.0, window=(0.0, 0.7), placement="eps"),
    "resize": TermDefaults(weight=40.0, window=(0.0, 0.7), placement="eps"),
    "size_to": TermDefaults(weight=40.0, window=(0.0, 0.7), placement="eps"),
    "shape_from": TermDefaults(weight=40.0, window=(0.0, 0.7), placement="eps"),
    "appearance_from": TermDefaults(weight=20.0, window=(0.0, 0.9), placement="eps"),
    "keep_appearance": TermDefaults(weight=10.0, window=(0.0, 0.9), placement="eps"),
    "keep_shape": TermDefaults(weight=20.0, window=(0.0, 0.7), placement="eps"),
    # Pix2Pix-Zero: one SGD step on z_t with lr 0.1 (cross_attention_guidance_amount), every step.
    "keep_attention": TermDefaults(weight=0.1, window=(0.0, 1.0), placement="latent"),
    "direction": TermDefaults(weight=1.0, window=(0.0, 1.0), placement="eps"),
}

# Move and resize also match a translated / scaled source silhouette (energies/attention.py);
# this is that term's share relative to the centroid / size term.
SILHOUETTE = 1.0
# Centroids of moves are taken on the soft-thresholded map, not the raw one (attention.object_centroid).
SHARP_CENTROID = True
SOFT_THRESHOLD_SHARPNESS = 10.0  # Self-Guidance demo: sigmoid(10 * (a - 0.5))


@dataclass(frozen=True)
class BackboneDefaults:
    """Where the attention energies read, per backbone family."""

    attn_layers: tuple[str, ...]  # module-name prefixes of the attn2 layers averaged into a map
    map_res: int  # maps are resized to map_res x map_res before averaging
    appearance_features: str  # module whose output is pooled under a token's mask


BACKBONES = {
    # Shapes model (32 px): every cross-attention layer (16x16 and 8x8) localises objects on the
    # shapes world; averaged at 16x16. Appearance pools the last decoder block (32x32, 32 ch).
    "shapes": BackboneDefaults(attn_layers=("down_blocks", "mid_block", "up_blocks"), map_res=16, appearance_features="up_blocks.2"),
    # SD 1.x/2.x at 512 px: the Self-Guidance demo reads the lowest-resolution decoder stage that
    # still has 1/32 of the image side (16x16 here: up_blocks.1); appearance pools up_blocks[-1].
    "sd": BackboneDefaults(attn_layers=("up_blocks.1",), map_res=16, appearance_features="up_blocks.3"),
    # SDXL at 1024 px: the demo's own layers, up_blocks.0.attentions.1 (32x32); appearance from
    # up_blocks[2], the final decoder block.
    "sdxl": BackboneDefaults(attn_layers=("up_blocks.0.attentions.1",), map_res=32, appearance_features="up_blocks.2"),
}

# Words whose attention maps are too diffuse to stand for an object; "every object" terms skip them.
STOPWORDS = frozenset("a an the and of with on in at to by for is are this that its his her their".split())

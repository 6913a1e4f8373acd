"""DiffuseIT's ViT energies: structure from the self-similarity of keys, appearance from the CLS token.

DiffuseIT (docs/methods.md, section 2) reads a DINO ViT on the predicted clean image:

    keys  = the last layer's self-attention keys, heads concatenated (tokens x hidden), CLS included
    S(x)  = the cosine self-similarity matrix of those keys: where things are, not what they are
    cls   = the last block's output at token 0, before the final layernorm: what the image shows

Structure is kept by matching S to the source's (MSE) and by a PatchNCE loss that asks each key to
resemble the source key at the same position more than the source keys elsewhere. Style follows a
reference image through its CLS feature. The energies are pure tensor functions; `ViTKeys` is the
only thing here that runs a model, and it leaves the model as it found it (no hooks left behind).
"""

from __future__ import annotations

import inspect

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


def vision_tower(model: torch.nn.Module) -> torch.nn.Module:
    """The image half of a CLIPModel (which has both); any other vision model is its own tower."""
    return model.vision_model if hasattr(model, "visual_projection") else model


def key_projection(tower: torch.nn.Module) -> torch.nn.Module:
    """The last layer's key projection: `self_attn.k_proj` (CLIP), `attention.k_proj` (ViT, Dinov2
    in transformers 5) or `attention.attention.key` (ViT, Dinov2 in transformers 4). Modules are
    registered in layer order, so the last match is the last layer's."""
    found = [m for n, m in tower.named_modules() if n.endswith(".k_proj") or n.endswith("attention.key")]
    layers = getattr(tower.config, "num_hidden_layers", len(found))
    if not found or len(found) != layers:
        raise ValueError(f"found {len(found)} key projections in a {layers}-layer {type(tower).__name__}")
    return found[-1]


class ViTKeys:
    """Differentiable (keys, cls) of a transformers ViT: CLIP vision (CLIPModel, CLIPVisionModel),
    ViTModel (DINO) or Dinov2Model.

    keys: (B, N, hidden) outputs of the last layer's key projection, CLS token first; the projection
    output is already the heads concatenated, as DiffuseIT reshapes them.
    cls:  (B, hidden) last block output at token 0 before the final layernorm (hidden_states[-1];
    for CLIP that is last_hidden_state, since post_layernorm only touches the pooled output).
    """

    def __init__(self, model: torch.nn.Module, size=None, mean=DINO_MEAN, std=DINO_STD):
        self.tower = vision_tower(model)
        self.key_module = key_projection(self.tower)
        self.size = size or self.tower.config.image_size
        self.mean, self.std = mean, std
        params = inspect.signature(self.tower.forward).parameters
        self._interpolate = "interpolate_pos_encoding" in params  # Dinov2 always interpolates

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 3, H, W) in [-1, 1] -> (keys (B, N, D), cls (B, D))."""
        pixels = preprocess(x, self.size, self.mean, self.std)
        p = next(self.tower.parameters())
        pixels = pixels.to(device=p.device, dtype=p.dtype)
        kwargs = {"interpolate_pos_encoding": True} if self._interpolate and self._resized(pixels) else {}
        captured = []
        handle = self.key_module.register_forward_hook(lambda mod, inp, out: captured.append(out))
        try:
            out = self.tower(pixel_values=pixels, output_hidden_states=True, **kwargs)
        finally:
            handle.remove()
        return captured[-1], out.hidden_states[-1][:, 0]

    def _resized(self, pixels) -> bool:
        native = self.tower.config.image_size
        return tuple(pixels.shape[-2:]) != (native, native)


def load_vit(backbone_kind: str, model_id_or_path=None, **from_pretrained) -> ViTKeys:
    """The ViT the structure energies read, per backbone.

    "shapes": the shapes CLIP's vision tower, fed exactly as in training. `model_id_or_path` may be
    the CLIPModel, a loaded shapes model (its `.clip`), or a shapes folder / "shapes" (loaded).
    "sd" / "sdxl": DINO ViT-B/8 as in DiffuseIT (or any ViT / Dinov2 id or folder, or a module),
    loaded from safetensors only when called. Extra keywords go to `from_pretrained`.
    """
    if backbone_kind == "shapes":
        clip = model_id_or_path if model_id_or_path is not None else "shapes"
        if isinstance(clip, str) or hasattr(clip, "__fspath__"):
            from sampler.shapes import model as M

            clip = M.load(clip).clip
        clip = getattr(clip, "clip", clip)  # a ShapesModel
        if clip is None:
            raise ValueError("this shapes model has no clip/ folder, so there is no ViT to read")
        return ViTKeys(clip, mean=SHAPES_MEAN, std=SHAPES_STD)
    if backbone_kind in ("sd", "sdxl"):
        model = model_id_or_path if model_id_or_path is not None else DINO_MODEL_ID
        if not isinstance(model, torch.nn.Module):
            model = _load_dino(str(model), **from_pretrained)
        if vision_tower(model).config.model_type.startswith("clip"):  # a CLIP: its own size and stats
            return ViTKeys(model, mean=CLIP_MEAN, std=CLIP_STD)
        return ViTKeys(model, size=DINO_SIZE, mean=DINO_MEAN, std=DINO_STD)
    raise ValueError(f"unknown backbone kind {backbone_kind!r}; expected shapes, sd or sdxl")


def _load_dino(model_id: str, **kw) -> torch.nn.Module:
    """ViTModel (no pooler: DINO checkpoints have none) or Dinov2Model, eval, frozen."""
    from transformers import AutoConfig, AutoModel, Dinov2Model, ViTModel

    kw.setdefault("use_safetensors", True)
    try:
        config = AutoConfig.from_pretrained(model_id, **{k: v for k, v in kw.items() if k != "use_safetensors"})
        if config.model_type == "vit":
            model = ViTModel.from_pretrained(model_id, add_pooling_layer=False, **kw)
        elif config.model_type == "dinov2":
            model = Dinov2Model.from_pretrained(model_id, **kw)
        else:
            model = AutoModel.from_pretrained(model_id, **kw)
    except (OSError, ValueError) as e:
        raise OSError(
            f"could not load the DINO ViT {model_id!r} (safetensors weights). It is downloaded from the "
            "Hugging Face Hub on first use; offline (HF_HUB_OFFLINE=1 or no network) it must already be "
            "in the HF cache (HF_HOME / HF_HUB_CACHE) or be a local folder. Pass another id or folder "
            f"as the model argument. Cause: {e}"
        ) from e
    return model.eval().requires_grad_(False)

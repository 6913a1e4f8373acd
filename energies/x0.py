"""Energies on the predicted clean image x0: DiffusionCLIP's directional CLIP loss and an L1 keep.

DiffusionCLIP / Asyrp (docs/methods.md, sections 6 and 4) edit by asking the change in the
image's CLIP embedding to point the same way as the change in the text's:

    dI = normalize(E_I(x0_pred)) - normalize(E_I(x0_src))
    dT = normalize(E_T(target))  - normalize(E_T(source))
    L  = -log((1 + cos(dI, dT)) / 2)        (the code's form of 1 - cos)

A direction, not an absolute score, so the parts of the image the caption does not mention are
not dragged toward a generic "red circle". An L1 to the source x0 keeps the rest in place.
`ClipScorer` encodes texts once (cached, no grad) and images differentiably.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention import resize
from .vit import CLIP_MEAN, CLIP_STD, SHAPES_MEAN, SHAPES_STD, preprocess

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


def _features(out) -> torch.Tensor:
    """get_*_features returns a tensor in transformers 4, an output whose pooler_output is the
    projected embedding in transformers 5 (as in sampler/shapes/evaluate.py)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipScorer:
    """Normalised CLIP features: texts cached without grad, images (in [-1, 1]) differentiable.

    Texts are tokenised as the shapes CLIP was trained (sampler/shapes/train.py, train_clip): padded
    to the tokenizer's max length, input_ids only. `templates` ("a photo of a {}.", ...) average the
    text over prompts as DiffusionCLIP does over ImageNet templates; the shapes world uses none.
    """

    def __init__(self, clip, tokenizer, size=None, mean=CLIP_MEAN, std=CLIP_STD, templates=None):
        self.clip, self.tokenizer = clip, tokenizer
        self.size = size or clip.config.vision_config.image_size
        self.mean, self.std = mean, std
        self.templates = tuple(templates) if templates else None
        self._cache: dict = {}

    @classmethod
    def for_shapes(cls, model) -> "ClipScorer":
        """The shapes model's CLIP, fed exactly as in training: [-1, 1] at 32 x 32, no normalisation."""
        if model.clip is None:
            raise ValueError("this shapes model has no clip/ folder")
        return cls(model.clip, model.tokenizer, mean=SHAPES_MEAN, std=SHAPES_STD)

    @classmethod
    def from_pretrained(cls, model_id: str = CLIP_MODEL_ID, device="cpu", **kw) -> "ClipScorer":
        """OpenAI CLIP by model id or folder, for Stable Diffusion backbones (needs the hub or a local
        copy); texts averaged over a few ImageNet templates, as DiffusionCLIP does."""
        from transformers import CLIPModel, CLIPTokenizer

        try:
            clip = CLIPModel.from_pretrained(model_id, use_safetensors=True, **kw).to(device).eval().requires_grad_(False)
            tokenizer = CLIPTokenizer.from_pretrained(model_id, **kw)
        except OSError as e:
            raise OSError(f"cannot load the CLIP model {model_id!r} for `clip` terms ({e}); download it once with the hub "
                          "reachable, or set HF_HUB_OFFLINE=0") from None
        return cls(clip, tokenizer, templates=IMAGENET_TEMPLATES)

    @torch.no_grad()
    def text(self, texts, templates=None) -> torch.Tensor:
        """str or list of str -> (n, D) unit features; each text once per template set."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        templates = tuple(templates) if templates else self.templates
        missing = [t for t in dict.fromkeys(texts) if (t, templates) not in self._cache]
        for t in missing:
            prompts = [p.format(t) for p in templates] if templates else [t]
            feats = F.normalize(self._encode_text(prompts), dim=-1)
            self._cache[(t, templates)] = F.normalize(feats.mean(0), dim=-1)
        return torch.stack([self._cache[(t, templates)] for t in texts])

    def _encode_text(self, prompts) -> torch.Tensor:
        n = self.tokenizer.model_max_length
        ids = self.tokenizer(prompts, padding="max_length", max_length=n, truncation=True, return_tensors="pt").input_ids
        return _features(self.clip.get_text_features(input_ids=ids.to(self._device)))

    def image(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, D) unit features, differentiable in x."""
        p = next(self.clip.parameters())
        pixels = preprocess(x, self.size, self.mean, self.std).to(device=p.device, dtype=p.dtype)
        native = self.clip.config.vision_config.image_size
        kw = {"interpolate_pos_encoding": True} if tuple(pixels.shape[-2:]) != (native, native) else {}
        return F.normalize(_features(self.clip.get_image_features(pixel_values=pixels, **kw)), dim=-1)

    def direction_energy(self, x0, src_x0, target: str, source: str) -> torch.Tensor:
        """directional_clip_energy of x0 against the source image, along source text -> target text."""
        t = self.text([target, source])
        with torch.no_grad():
            src = self.image(src_x0)
        return directional_clip_energy(self.image(x0), src, t[0], t[1])

    @property
    def _device(self):
        return next(self.clip.parameters()).device

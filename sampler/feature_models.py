"""The image models that x0 energies read: a ViT's keys and CLS token, CLIP's image and text
features. They run models, so they live in the engine; the energies themselves (energies/vit.py,
energies/x0.py) are tensor functions of what these return.

- ViTKeys: differentiable (keys, cls) of a transformers ViT (DINO, Dinov2, a CLIP vision tower),
  read through a forward hook on the last key projection (DiffuseIT, docs/methods.md, section 2).
- load_vit: the ViT for a backbone: the shapes CLIP's tower, or DINO ViT-B/8 for Stable Diffusion.
- ClipScorer: normalised CLIP features, texts cached, images differentiable (DiffusionCLIP,
  docs/methods.md, section 6).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from energies.vit import CLIP_MEAN, CLIP_STD, DINO_MEAN, DINO_MODEL_ID, DINO_SIZE, DINO_STD, SHAPES_MEAN, SHAPES_STD, preprocess
from energies.x0 import CLIP_MODEL_ID, IMAGENET_TEMPLATES, directional_clip_energy

from .hooks import forward_hook


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
        keys, cls, _ = self.with_pooled(x)
        return keys, cls

    def with_pooled(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(keys, cls, the tower's pooled output or None) of one forward: a CLIP tower's pooled
        output is what ClipScorer.from_pooled projects, so a script with both kinds of term runs
        the tower once (ClipScorer.shares_tower)."""
        pixels = preprocess(x, self.size, self.mean, self.std)
        p = next(self.tower.parameters())
        pixels = pixels.to(device=p.device, dtype=p.dtype)
        kwargs = {"interpolate_pos_encoding": True} if self._interpolate and self._resized(pixels) else {}
        captured = []
        with forward_hook(self.key_module, lambda mod, inp, out: captured.append(out)):
            out = self.tower(pixel_values=pixels, output_hidden_states=True, **kwargs)
        return captured[-1], out.hidden_states[-1][:, 0], getattr(out, "pooler_output", None)

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
            from .shapes import model as M

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

    kw["use_safetensors"] = True  # never torch.load: a caller cannot turn this off
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


def projected_features(out) -> torch.Tensor:
    """get_*_features returns a tensor in transformers 4, an output whose pooler_output is the
    projected embedding in transformers 5."""
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
            clip = CLIPModel.from_pretrained(model_id, **{**kw, "use_safetensors": True}).to(device).eval().requires_grad_(False)
            tokenizer = CLIPTokenizer.from_pretrained(model_id, **{k: v for k, v in kw.items() if k != "use_safetensors"})
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
        return projected_features(self.clip.get_text_features(input_ids=ids.to(self._device)))

    def image(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, D) unit features, differentiable in x."""
        p = next(self.clip.parameters())
        pixels = preprocess(x, self.size, self.mean, self.std).to(device=p.device, dtype=p.dtype)
        native = self.clip.config.vision_config.image_size
        kw = {"interpolate_pos_encoding": True} if tuple(pixels.shape[-2:]) != (native, native) else {}
        return F.normalize(projected_features(self.clip.get_image_features(pixel_values=pixels, **kw)), dim=-1)

    def shares_tower(self, vit: "ViTKeys") -> bool:
        """True when `vit` is this CLIP's own vision tower fed the same pixels (the shapes model's
        ViT is its CLIP's tower): its pooled output then gives this scorer's image features."""
        return (vit.tower is getattr(self.clip, "vision_model", None) and vit.size == self.size
                and tuple(vit.mean) == tuple(self.mean) and tuple(vit.std) == tuple(self.std))

    def from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """The tower's pooled output -> (B, D) unit features: get_image_features' projection."""
        return F.normalize(self.clip.visual_projection(pooled), dim=-1)

    def direction_energy(self, x0, src_x0, target: str, source: str) -> torch.Tensor:
        """directional_clip_energy of x0 against the source image, along source text -> target text."""
        t = self.text([target, source])
        with torch.no_grad():
            src = self.image(src_x0)
        return directional_clip_energy(self.image(x0), src, t[0], t[1])

    @property
    def _device(self):
        return next(self.clip.parameters()).device

"""Backbones: one interface over the shapes model and diffusers Stable Diffusion pipelines.

Like k-diffusion's external.py, each wrapper hides a model family behind the few calls the
sampler makes: encode a prompt, predict epsilon, decode a latent to an image. The sampler never
touches a pipeline. Prediction types other than epsilon are converted here, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from energies.defaults import BACKBONES, BackboneDefaults
from energies.errors import SteerUsageError


def quiet_loading():
    """Loading a few-MB model should not print progress bars and advice about accelerate."""
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


@dataclass
class Conditioning:
    cond: torch.Tensor  # (1, T, D) prompt embedding
    uncond: torch.Tensor  # (1, T, D) negative / empty prompt embedding
    added: dict = field(default_factory=dict)  # SDXL's added_cond_kwargs (cond half)
    added_uncond: dict = field(default_factory=dict)
    uncond_steps: list | None = None  # null-text inversion: one unconditional embedding per step
    by: tuple = ()  # the terms that shifted it (prompt directions): named if what it conditions is not finite

    def uncond_at(self, i: int | None) -> torch.Tensor:
        return self.uncond if self.uncond_steps is None or i is None else self.uncond_steps[i]


class Backbone:
    kind: str  # "shapes" | "sd" | "sdxl": picks the defaults in energies/defaults.py
    name: str
    tokenizer: object
    unet: torch.nn.Module
    scheduler: object
    device: torch.device
    dtype: torch.dtype
    clip_x0: float | None = None  # clip the predicted x0 to [-c, c] (pixel-space models)

    @property
    def defaults(self) -> BackboneDefaults:
        return BACKBONES[self.kind]

    def latent_shape(self) -> tuple[int, int, int]:
        s = self.unet.config.sample_size
        return (self.unet.config.in_channels, s, s)

    @torch.no_grad()
    def _embed(self, text: str) -> torch.Tensor:
        ids = torch.tensor([self.token_ids(text)], device=self.device)
        return self.text_encoder(ids)[0]  # last hidden state, as Stable Diffusion conditions on

    def encode_prompt(self, prompt: str, negative: str | None = None) -> Conditioning:
        return Conditioning(cond=self._embed(prompt), uncond=self._embed(negative or ""))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> image (B, 3, H, W) in [0, 1]."""
        raise NotImplementedError

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, H, W) in [0, 1] -> latent."""
        raise NotImplementedError

    def image_size(self) -> tuple[int, int]:
        """(H, W) in pixels of the images the model makes."""
        raise NotImplementedError

    def alphas_cumprod(self) -> torch.Tensor:
        return self.scheduler.alphas_cumprod.to(torch.float32)

    def schedule(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_bar for every training timestep, alpha_bar after the last step) on the model's
        device: the two things the DDIM loop and the inversion need from the scheduler."""
        return self.alphas_cumprod().to(self.device), torch.as_tensor(float(self.scheduler.final_alpha_cumprod))

    def eps(self, z: torch.Tensor, t: int, context: torch.Tensor, added: dict | None = None) -> torch.Tensor:
        """Epsilon prediction at timestep t, whatever the model's own prediction type."""
        out = self.unet(z.to(self.dtype), t, encoder_hidden_states=context, added_cond_kwargs=added or None).sample.float()
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            return out
        a = self.alphas_cumprod()[t].to(z.device)
        if kind == "v_prediction":  # v = sqrt(a) eps - sqrt(1 - a) x0  =>  eps = sqrt(a) v + sqrt(1 - a) z
            return a.sqrt() * out + (1 - a).sqrt() * z.float()
        if kind == "sample":
            return (z.float() - a.sqrt() * out) / (1 - a).sqrt()
        raise ValueError(f"unsupported prediction_type {kind!r}")

    def eps_both(self, z: torch.Tensor, t: int, c: Conditioning, i: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps_uncond, eps_cond) from one batched forward: classifier-free guidance's two halves.
        `i` picks the step's unconditional embedding after null-text inversion."""
        added = {k: torch.cat([c.added_uncond[k], c.added[k]]) for k in c.added}
        return self.eps(torch.cat([z, z]), t, torch.cat([c.uncond_at(i), c.cond]), added).chunk(2)

    def timesteps(self, steps: int) -> list[int]:
        self.scheduler.set_timesteps(steps)
        return [int(t) for t in self.scheduler.timesteps]

    def token_ids(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True).input_ids


class ShapesBackbone(Backbone):
    """The shipped shapes model. Second generation: latent space through its own small
    AutoencoderKL, exactly as Stable Diffusion. A first-generation folder (no vae/) is pixel space:
    the latent is the image in [-1, 1]."""

    kind = "shapes"

    def __init__(self, name_or_path="shapes", device="cpu"):
        from .shapes import model as shapes_model

        m = shapes_model.load(name_or_path, device=device)
        self.model = m
        self.name = str(name_or_path)
        self.tokenizer, self.text_encoder, self.unet, self.scheduler = m.tokenizer, m.text_encoder, m.unet, m.scheduler
        self.clip = m.clip
        self.vae = m.vae
        self.vae_scale = 1 if m.vae is None else 2 ** (len(m.vae.config.block_out_channels) - 1)
        self.clip_x0 = 1.0 if m.vae is None else None  # pixel-space images live in [-1, 1]
        self.device = torch.device(device)
        self.dtype = torch.float32
        self.sampling_defaults = m.card.get("defaults", {})

    def decode(self, z):
        if self.vae is None:
            return ((z.float() + 1) / 2).clamp(0, 1)
        from .shapes.model import vae_decode

        return ((vae_decode(self.vae, z.float()) + 1) / 2).clamp(0, 1)

    def encode(self, image):
        x = image.float().to(self.device) * 2 - 1
        if self.vae is None:
            return x
        from .shapes.model import vae_encode

        with torch.no_grad():
            return vae_encode(self.vae, x)

    def image_size(self):
        s = self.unet.config.sample_size * self.vae_scale
        return (s, s)


class StableDiffusionBackbone(Backbone):
    """A diffusers StableDiffusionPipeline (1.x, 2.x; epsilon or v-prediction): latent space."""

    kind = "sd"

    def __init__(self, pipe, name: str = "stable-diffusion", low_memory: bool = False):
        from diffusers import DDIMScheduler

        self.pipe = pipe
        self.name = name
        self.tokenizer, self.text_encoder, self.unet, self.vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
        self.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        self.device = self.unet.device
        self.dtype = self.unet.dtype
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.sampling_defaults = {"steps": 50, "cfg": 7.5}
        for m in (self.text_encoder, self.unet, self.vae):
            m.requires_grad_(False)
        if low_memory:  # trade time for memory: recompute activations in backward, slice attention
            self.unet.enable_gradient_checkpointing()
            pipe.enable_attention_slicing()

    @classmethod
    def from_pretrained(cls, model_id_or_path: str, device="cpu", dtype=torch.float32, low_memory=False):
        """Load by Hugging Face model id or local folder (needs the hub or a local copy)."""
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(model_id_or_path, dtype=dtype, safety_checker=None, requires_safety_checker=False,
                                                       use_safetensors=True)
        return cls(pipe.to(device), name=str(model_id_or_path), low_memory=low_memory)

    def decode(self, z):
        x = self.vae.decode(z.to(self.vae.dtype) / self.vae.config.scaling_factor).sample.float()
        return ((x + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def encode(self, image):
        x = (image.to(self.device, self.vae.dtype) * 2 - 1)
        return self.vae.encode(x).latent_dist.mean.float() * self.vae.config.scaling_factor

    def image_size(self):
        s = self.unet.config.sample_size * self.vae_scale
        return (s, s)


class StableDiffusionXLBackbone(StableDiffusionBackbone):
    """A diffusers StableDiffusionXLPipeline: two text encoders (penultimate hidden states,
    concatenated), a pooled embedding and size/crop ids passed as added_cond_kwargs on every
    forward, the gradient ones included."""

    kind = "sdxl"

    def __init__(self, pipe, name: str = "stable-diffusion-xl", low_memory: bool = False):
        super().__init__(pipe, name, low_memory)
        self.tokenizer_2, self.text_encoder_2 = pipe.tokenizer_2, pipe.text_encoder_2
        self.text_encoder_2.requires_grad_(False)
        self.force_zeros = bool(pipe.config.get("force_zeros_for_empty_prompt", True))
        self.sampling_defaults = {"steps": 50, "cfg": 5.0}

    @classmethod
    def from_pretrained(cls, model_id_or_path: str, device="cpu", dtype=torch.float32, low_memory=False):
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline.from_pretrained(model_id_or_path, dtype=dtype, use_safetensors=True)
        return cls(pipe.to(device), name=str(model_id_or_path), low_memory=low_memory)

    @torch.no_grad()
    def _embed_xl(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, pooled = [], None
        for tok, enc in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
            out = enc(ids.to(self.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]  # text_encoder_2 is CLIPTextModelWithProjection: its first output is the pooled projection
        return torch.cat(hidden, dim=-1), pooled

    def _time_ids(self) -> torch.Tensor:
        h = w = self.unet.config.sample_size * self.vae_scale
        return torch.tensor([[h, w, 0, 0, h, w]], dtype=self.dtype, device=self.device)  # original size, crop, target size

    def encode_prompt(self, prompt, negative=None):
        cond, pooled = self._embed_xl(prompt)
        if not negative and self.force_zeros:
            uncond, pooled_u = torch.zeros_like(cond), torch.zeros_like(pooled)
        else:
            uncond, pooled_u = self._embed_xl(negative or "")
        ids = self._time_ids()
        return Conditioning(cond=cond, uncond=uncond, added={"text_embeds": pooled, "time_ids": ids},
                            added_uncond={"text_embeds": pooled_u, "time_ids": ids})

    def decode(self, z):
        vae = self.vae
        if vae.dtype == torch.float16 and vae.config.get("force_upcast", False):
            vae = vae.to(torch.float32)  # the SDXL VAE overflows in fp16 (use madebyollin/sdxl-vae-fp16-fix to avoid this)
        x = vae.decode(z.to(vae.dtype) / vae.config.scaling_factor).sample.float()
        return ((x + 1) / 2).clamp(0, 1)


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_backbone(model: str | None = None, device: str = "cpu", dtype: str = "fp32", low_memory: bool = False) -> Backbone:
    """"shapes" (default), a shapes model folder, or a Stable Diffusion model id / folder.
    `dtype` and `low_memory` apply to Stable Diffusion; the shapes model always runs in fp32.
    A model that cannot be found or read, or a device that is not there, is a SteerUsageError."""
    from .shapes import model as shapes_model

    check_device(device)
    quiet_loading()
    model = model or "shapes"
    path = shapes_model.resolve(model)
    if model == "shapes" or shapes_model.is_shapes_folder(Path(path)):
        return ShapesBackbone(model, device=device)
    cls = StableDiffusionXLBackbone if "XL" in pipeline_class(model) else StableDiffusionBackbone
    refuse_pickle_only(model)
    try:
        return cls.from_pretrained(model, device=device, dtype=DTYPES[dtype], low_memory=low_memory)
    except OSError as e:  # a hub id whose safetensors are missing, a folder with a part missing
        raise SteerUsageError(f"cannot load the model {model!r}: {_first_line(e)}", hint=MODEL_HINT) from None


MODEL_HINT = ('--model takes "shapes", a shapes model folder, a Stable Diffusion folder (with model_index.json) '
              "or a Hugging Face id already in the local cache")


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def pipeline_class(model: str) -> str:
    """The pipeline class a Stable Diffusion folder or hub id names (its model_index.json)."""
    from diffusers import DiffusionPipeline

    if _looks_like_a_path(model) and not Path(model).is_dir():
        raise SteerUsageError(f"model folder {model!r} does not exist", hint=MODEL_HINT)
    try:
        return DiffusionPipeline.load_config(model).get("_class_name", "")  # model_index.json, local or hub
    except (OSError, ValueError):
        raise SteerUsageError(f"cannot find the model {model!r}: it is not a shapes model, a Stable Diffusion folder "
                              "or a Hugging Face id in the local cache", hint=MODEL_HINT) from None


def _looks_like_a_path(model: str) -> bool:
    """A hub id is "owner/name"; anything else with a slash, or that starts like a path, is a folder."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model or Path(model).exists()


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def pickle_only_parts(folder: Path) -> list[str]:
    """The parts (unet, vae, text_encoder, ...) of a pipeline folder whose weights are only in
    pickle files: loading those would run whatever code the file holds."""
    parts = []
    for sub in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        files = [f.name for f in sub.iterdir() if f.is_file()]
        if any(f.endswith(PICKLE_SUFFIXES) for f in files) and not any(f.endswith(".safetensors") for f in files):
            parts.append(sub.name)
    return parts


def refuse_pickle_only(model: str):
    """steer reads weights from safetensors only: a local folder with pickle-only parts is refused,
    with how to convert it, before diffusers is asked (it would fall back to torch.load)."""
    if not Path(model).is_dir():
        return  # a hub id: from_pretrained(use_safetensors=True) refuses pickles itself
    parts = pickle_only_parts(Path(model))
    if parts:
        raise SteerUsageError(
            f"model folder {model!r} has weights only as pickle files (.bin) in {', '.join(parts)}; steer loads safetensors only",
            hint="convert it once, if you trust the files (this unpickles them): python -c \"from diffusers import DiffusionPipeline; "
                 f"DiffusionPipeline.from_pretrained('{model}').save_pretrained('{model}-safetensors', safe_serialization=True)\"")


def check_device(device: str):
    """A device name torch knows and this machine has: cpu, cuda, cuda:N, mps."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise SteerUsageError(f"--device {device!r} is not a device name", hint="cpu, cuda, cuda:1, mps ...") from None
    if d.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SteerUsageError(f"--device {device}: this machine (or this torch build) has no CUDA device", hint="use --device cpu")
        if d.index is not None and d.index >= count:
            raise SteerUsageError(f"--device {device}: there are only {count} CUDA device(s)", hint=f"use cuda:0 to cuda:{count - 1}")
    elif d.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise SteerUsageError(f"--device {device}: MPS is not available here", hint="use --device cpu")
    elif d.type not in ("cpu", "cuda", "mps"):
        raise SteerUsageError(f"--device {device}: steer runs on cpu, cuda or mps", hint="use --device cpu")


def direction_folders(script_dir, model: str | None) -> list[Path]:
    """The folders `direction NAME` is looked up in, for a script in `script_dir` run on `model`
    (its shipped directions when it is a shapes model folder), without loading the model."""
    from energies import directions

    from .shapes import model as shapes_model

    return directions.search_path(script_dir, shapes_model.resolve(model or "shapes"))


def load_tokenizer(model: str | None = None):
    """Just the tokenizer of a model, for `steer check` (no weights are loaded)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from .shapes import model as shapes_model

    model = model or "shapes"
    path = shapes_model.resolve(model)
    if model == "shapes" or shapes_model.is_shapes_folder(Path(path)):
        return PreTrainedTokenizerFast.from_pretrained(Path(path) / "tokenizer")
    pipeline_class(model)  # a clean error for a model that is not there
    try:
        return AutoTokenizer.from_pretrained(model, subfolder="tokenizer")
    except (OSError, ValueError) as e:
        raise SteerUsageError(f"cannot load the tokenizer of {model!r}: {_first_line(e)}", hint=MODEL_HINT) from None

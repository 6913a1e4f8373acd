"""Rectified-flow transformers as Backbones: Stable Diffusion 3.x, FLUX.1 and the shapes flow model.

A rectified flow interpolates x_s = (1 - s) x0 + s eps for s in [0, 1], and its transformer
predicts the velocity v = eps - x0. That is a diffusion model in other coordinates: with
r(s) = sqrt((1 - s)^2 + s^2),

    z = x_s / r(s),   alpha_bar(s) = (1 - s)^2 / r(s)^2,   eps = x_s + (1 - s) v,   x0 = x_s - s v

z is a variance-preserving latent (sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps), and the
deterministic DDIM step between two alpha_bar is exactly the Euler step x_s' = x_s + (s' - s) v
(docs/methods.md, "Flow matching"). So a flow backbone converts its prediction once, here, as
base.py converts v-prediction: the engine's loop, inversion, source pass and every guidance
placement run unchanged on it, and sampler/flow.py's sample_flow (the same loop written in flow
variables, Euler on v) is the reference they are tested against (tests/test_flow.py).

Timesteps are the engine's integers on a grid of GRID steps, t <-> s = (t + 1/2) / GRID: the
family's own sigmas (shifted as its scheduler shifts them) are rounded onto it, and the model is
called at exactly the grid's s, so the loop and the model agree on every step. s never reaches 1
(alpha_bar = 0 would divide by zero in x0 = (z - sqrt(1 - a) eps) / sqrt(a)); s = 0.9995 instead.

Token maps are per position of `tokenizer`: the T5 tokenizer when the model has a T5 (its
sentencepiece sub-words), else CLIP's. `map_tokens` is where those positions sit in the joint
attention's text sequence (SD3: after CLIP's 77; FLUX: the T5 tokens are the whole sequence),
and the probes read it from the transformer (probes.JointAttentionProbe).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

import dsl

from .base import Backbone, Conditioning, weighted

GRID = 1000  # integer timesteps of a flow backbone: s = (t + 1/2) / GRID


def sigma_of(t) -> float:
    return (float(t) + 0.5) / GRID


def grid_step(sigma: float) -> int:
    """The grid timestep nearest to `sigma`."""
    return int(min(GRID - 1, max(0, round(sigma * GRID - 0.5))))


def flow_alpha_bar(s: torch.Tensor) -> torch.Tensor:
    """alpha_bar of the variance-preserving latent z = x_s / r(s)."""
    return (1 - s) ** 2 / ((1 - s) ** 2 + s**2)


def eps_from_velocity(x: torch.Tensor, v: torch.Tensor, s: float) -> torch.Tensor:
    """eps = x_s + (1 - s) v (from x_s = (1 - s) x0 + s eps and v = eps - x0)."""
    return x + (1 - s) * v


class FlowBackbone(Backbone):
    """What SD3, FLUX and the shapes flow model share: the conversion to the engine's terms, the
    grid of timesteps, the VAE's scale and shift. A family gives `velocity` and `_states`."""

    sampler = "flow"  # the inversion cache keys on it: a flow model's inversions are its own
    features_like = "sd"  # the x0 terms' ViT and CLIP: DINO and OpenAI's, as on Stable Diffusion (editor.features_kind)
    map_tokens = slice(None)
    distilled_guidance: float | None = None  # FLUX.1-dev's guidance embedding; None: the model has none

    def _setup(self, pipe, transformer, vae, scheduler, name: str, low_memory: bool):
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.pipe, self.name = pipe, name
        self.transformer = self.unet = transformer  # `unet`: what the probes install on
        self.vae = vae
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)  # a copy: set_timesteps mutates it
        self.device = transformer.device
        self.dtype = transformer.dtype
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        for m in (transformer, vae, *self.encoders()):
            m.requires_grad_(False).eval()  # frozen; and a T5 built from its config is in training mode (dropout 0.1)
        transformer.steer_map_tokens = self.map_tokens  # read by probes.JointAttentionProbe
        self.low_memory = low_memory  # the guided backward recomputes activations (sampler/recompute.py)

    def encoders(self) -> list[torch.nn.Module]:
        return [self.text_encoder]

    # -- the schedule, on the grid ------------------------------------------------------------

    def alphas_cumprod(self) -> torch.Tensor:
        return flow_alpha_bar((torch.arange(GRID, dtype=torch.float64) + 0.5) / GRID).float()

    def schedule(self):
        return self.alphas_cumprod().to(self.device), torch.tensor(1.0)  # s = 0 after the last step: the image

    def sigmas(self, steps: int) -> list[float]:
        """The family's sampling sigmas (1 -> 1/steps, shifted as its scheduler shifts them)."""
        kwargs = {}
        if self.scheduler.config.get("use_dynamic_shifting", False):  # FLUX: the shift grows with the image's token count
            kwargs["mu"] = image_shift(self.image_tokens(), self.scheduler.config)
        self.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps), **kwargs)
        return [float(s) for s in self.scheduler.sigmas[:-1]]

    def timesteps(self, steps: int) -> list[int]:
        return [grid_step(s) for s in self.sigmas(steps)]

    def image_tokens(self) -> int:
        c, h, w = self.latent_shape()
        return (h // 2) * (w // 2)

    # -- the prediction -------------------------------------------------------------------------

    def eps(self, z, t, context, added=None):
        """Epsilon at grid timestep t from the model's velocity at x_s = r(s) z (module docstring)."""
        s = sigma_of(t)
        x = z.float() * math.sqrt((1 - s) ** 2 + s**2)
        v = self.velocity(x.to(self.dtype), s, context, added or {}).float()
        return eps_from_velocity(x, v, s)

    def velocity(self, x: torch.Tensor, s: float, context: torch.Tensor, added: dict) -> torch.Tensor:
        raise NotImplementedError

    # -- prompts ----------------------------------------------------------------------------------

    def encode_prompt(self, prompt, negative=None):
        cond, pooled = self._embed(prompt)
        uncond, pooled_u = self._embed(negative or "")
        # "text_embeds", as SDXL's pooled embedding is named: prompt directions shift it the same way
        return Conditioning(cond=cond, uncond=uncond, added={"text_embeds": pooled}, added_uncond={"text_embeds": pooled_u})

    @torch.no_grad()
    def _embed(self, text: str):
        """(joint text states, pooled embedding), the prompt's weights applied to the mapped
        positions (the tokens the maps and `token "word"` index); the pooled one is the plain prompt's."""
        plain, weights = dsl.token_weights(text, self.tokenizer)
        states, pooled = self._states(plain)
        if any(w != 1.0 for w in weights):
            empty = self._states("")[0]
            part = slice(self.map_tokens.start or 0, (self.map_tokens.start or 0) + len(weights))
            states = states.clone()
            states[:, part] = weighted(states[:, part], empty[:, part], weights)
        return states, pooled

    def _states(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _ids(self, tokenizer, text: str, length: int | None = None) -> torch.Tensor:
        length = length or tokenizer.model_max_length
        return tokenizer(text, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids.to(self.device)

    # -- pixels -----------------------------------------------------------------------------------

    def decode(self, z):
        cfg = self.vae.config
        x = self.vae.decode(z.to(self.vae.dtype) / cfg.scaling_factor + (cfg.get("shift_factor") or 0.0)).sample.float()
        return ((x + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def encode(self, image):
        cfg = self.vae.config
        x = self.vae.encode(image.to(self.device, self.vae.dtype) * 2 - 1).latent_dist.mean.float()
        return (x - (cfg.get("shift_factor") or 0.0)) * cfg.scaling_factor

    def latent_shape(self):
        s = self.sample_size
        return (int(self.vae.config.latent_channels), s, s)

    def image_size(self):
        s = self.sample_size * self.vae_scale
        return (s, s)


def image_shift(tokens: int, config) -> float:
    """FLUX's mu: the time shift grows linearly in the image's token count (diffusers' calculate_shift)."""
    x0, x1 = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    y0, y1 = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    return y0 + (y1 - y0) * (tokens - x0) / (x1 - x0)


def t5_tokenizer(tokenizer, length: int):
    """The T5 tokenizer with model_max_length = the pipeline's T5 sequence length, so that binding
    (dsl/resolve.py) truncates where the encoder does. A copy: the pipeline's own is left alone."""
    tok = copy.copy(tokenizer)
    tok.model_max_length = length
    return tok


# -------------------------------------------------------------------------------------------------

class StableDiffusion3Backbone(FlowBackbone):
    """A diffusers StableDiffusion3Pipeline (3.0, 3.5): two CLIPs' penultimate states side by side,
    zero-padded to the T5's width and followed by the T5's states in one text sequence; the two
    CLIPs' pooled projections concatenated as the pooled embedding. Without a T5 (text_encoder_3
    None) its part is zeros, as in diffusers, and the maps are over CLIP's 77 tokens."""

    kind = "sd3"
    t5_length = 256  # diffusers' max_sequence_length for SD3

    def __init__(self, pipe, name: str = "stable-diffusion-3", low_memory: bool = False):
        self.clip_tokenizers = (pipe.tokenizer, pipe.tokenizer_2)
        self.text_encoder, self.text_encoder_2 = pipe.text_encoder, pipe.text_encoder_2
        self.text_encoder_3 = getattr(pipe, "text_encoder_3", None)
        self.clip_length = pipe.tokenizer.model_max_length
        if self.text_encoder_3 is not None:
            self.t5_length = min(self.t5_length, pipe.tokenizer_3.model_max_length)
            self.tokenizer = t5_tokenizer(pipe.tokenizer_3, self.t5_length)
            self.map_tokens = slice(self.clip_length, self.clip_length + self.t5_length)
        else:
            self.tokenizer = pipe.tokenizer
            self.map_tokens = slice(0, self.clip_length)
        self.sample_size = int(getattr(pipe, "default_sample_size", None) or pipe.transformer.config.sample_size)
        self._setup(pipe, pipe.transformer, pipe.vae, pipe.scheduler, name, low_memory)
        self.sampling_defaults = {"steps": 28, "cfg": 7.0}

    def encoders(self):
        return [e for e in (self.text_encoder, self.text_encoder_2, self.text_encoder_3) if e is not None]

    @classmethod
    def from_pretrained(cls, model_id_or_path: str, device="cpu", dtype=torch.float32, low_memory=False):
        from diffusers import DiffusionPipeline, StableDiffusion3Pipeline

        index = DiffusionPipeline.load_config(model_id_or_path)
        without = {k: None for k in ("text_encoder_3", "tokenizer_3") if not (index.get(k) or [None])[0]}  # saved without its T5
        pipe = StableDiffusion3Pipeline.from_pretrained(model_id_or_path, dtype=dtype, use_safetensors=True, **without)
        return cls(pipe.to(device), name=str(model_id_or_path), low_memory=low_memory)

    def _states(self, text):
        hidden, pooled = [], []
        for tok, enc in zip(self.clip_tokenizers, (self.text_encoder, self.text_encoder_2)):
            out = enc(self._ids(tok, text, self.clip_length), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled.append(out[0])  # CLIPTextModelWithProjection: the pooled projection
        width = self.transformer.config.joint_attention_dim
        clip = torch.nn.functional.pad(torch.cat(hidden, dim=-1), (0, width - sum(h.shape[-1] for h in hidden)))
        if self.text_encoder_3 is not None:
            t5 = self.text_encoder_3(self._ids(self.tokenizer, text, self.t5_length))[0]
        else:
            t5 = torch.zeros(1, self.t5_length, width, device=self.device, dtype=clip.dtype)
        return torch.cat([clip, t5.to(clip.dtype)], dim=-2), torch.cat(pooled, dim=-1)

    def velocity(self, x, s, context, added):
        return sd3_velocity(self.transformer, x, s, context, added["text_embeds"])


class FluxBackbone(FlowBackbone):
    """A diffusers FluxPipeline (FLUX.1 dev / schnell): the T5's states are the joint attention's
    whole text sequence, CLIP's pooled output the pooled embedding; latents are packed into 2x2
    patches with positions for RoPE. FLUX.1-dev is guidance-distilled: the guidance is an input
    (`distilled_guidance`, 3.5 as diffusers' default) and the script's cfg stays 1; cfg > 1 runs
    true classifier-free guidance on top (two forwards, a negative prompt)."""

    kind = "flux"

    def __init__(self, pipe, name: str = "flux", low_memory: bool = False, guidance: float = 3.5):
        self.clip_tokenizer, self.text_encoder = pipe.tokenizer, pipe.text_encoder
        self.text_encoder_2 = pipe.text_encoder_2
        self.t5_length = min(512, pipe.tokenizer_2.model_max_length)  # FLUX.1-dev's max_sequence_length
        self.tokenizer = t5_tokenizer(pipe.tokenizer_2, self.t5_length)
        self.map_tokens = slice(0, self.t5_length)
        self.sample_size = int(getattr(pipe, "default_sample_size", 128))
        self._setup(pipe, pipe.transformer, pipe.vae, pipe.scheduler, name, low_memory)
        self.distilled_guidance = guidance if pipe.transformer.config.guidance_embeds else None
        # dev (guidance-distilled): 28 steps, its guidance embedding instead of CFG; schnell (no
        # guidance embedding, timestep-distilled): 4 steps, no CFG either
        self.sampling_defaults = {"steps": 28, "cfg": 1.0} if self.distilled_guidance is not None else {"steps": 4, "cfg": 1.0}

    def encoders(self):
        return [self.text_encoder, self.text_encoder_2]

    @classmethod
    def from_pretrained(cls, model_id_or_path: str, device="cpu", dtype=torch.bfloat16, low_memory=False):
        from diffusers import FluxPipeline

        pipe = FluxPipeline.from_pretrained(model_id_or_path, dtype=dtype, use_safetensors=True)
        return cls(pipe.to(device), name=str(model_id_or_path), low_memory=low_memory)

    def _states(self, text):
        pooled = self.text_encoder(self._ids(self.clip_tokenizer, text), output_hidden_states=False).pooler_output
        states = self.text_encoder_2(self._ids(self.tokenizer, text, self.t5_length))[0]
        return states, pooled.to(states.dtype)

    def velocity(self, x, s, context, added):
        return flux_velocity(self.transformer, x, s, context, added["text_embeds"], self.distilled_guidance)


def sd3_velocity(transformer, x, s: float, context, pooled) -> torch.Tensor:
    """SD3's transformer at x_s: its timestep is s in [0, 1000]."""
    t = torch.full((x.shape[0],), s * 1000, device=x.device, dtype=x.dtype)
    return transformer(hidden_states=x, encoder_hidden_states=context.to(x.dtype), pooled_projections=pooled.to(x.dtype),
                       timestep=t).sample


def flux_velocity(transformer, x, s: float, context, pooled, guidance: float | None = None) -> torch.Tensor:
    """FLUX's transformer at x_s: the latent packed into 2 x 2 patches with (0, row, col) ids for
    RoPE (text ids zero), s in [0, 1] (it multiplies by 1000 itself), the distilled guidance."""
    b, c, h, w = x.shape
    packed = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
    img_ids = torch.zeros(h // 2, w // 2, 3, device=x.device, dtype=x.dtype)
    img_ids[..., 1] += torch.arange(h // 2, device=x.device)[:, None]
    img_ids[..., 2] += torch.arange(w // 2, device=x.device)[None, :]
    txt_ids = torch.zeros(context.shape[1], 3, device=x.device, dtype=x.dtype)
    g = None if guidance is None else torch.full((b,), guidance, device=x.device, dtype=x.dtype)
    out = transformer(hidden_states=packed, encoder_hidden_states=context.to(x.dtype), pooled_projections=pooled.to(x.dtype),
                      timestep=torch.full((b,), s, device=x.device, dtype=x.dtype), img_ids=img_ids.reshape(-1, 3),
                      txt_ids=txt_ids, guidance=g).sample
    return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


class ShapesFlowBackbone(StableDiffusion3Backbone):
    """The shapes-world flow model (sampler/shapes/flow_train.py): an SD3-style MMDiT on the shapes
    autoencoder's 16x16x4 latents, conditioned on the shapes CLIP text encoder alone (its last
    hidden state as the text sequence, its pooled output as the pooled embedding; no T5: the
    shapes world's prompts are a few words of a closed vocabulary)."""

    kind = "shapes-flow"
    features_like = "shapes"  # the shapes CLIP's towers, as the shapes UNet model

    def __init__(self, folder, device="cpu"):
        from ..shapes import flow_model

        m = flow_model.load(folder, device=device)
        self.model = m
        self.tokenizer, self.text_encoder = m.tokenizer, m.text_encoder
        self.clip = m.clip
        self.map_tokens = slice(0, m.tokenizer.model_max_length)
        self.sample_size = int(m.transformer.config.sample_size)
        # the shipped model goes by its name in messages and records, not by this machine's path
        name = "shapes-flow" if flow_model.resolve(folder) == flow_model.SHIPPED else str(folder)
        self._setup(None, m.transformer, m.vae, m.scheduler, name, False)
        self.sampling_defaults = m.card.get("defaults", {"steps": 20, "cfg": 4.0})

    def encoders(self):
        return [self.text_encoder]

    def _states(self, text):
        out = self.text_encoder(self._ids(self.tokenizer, text))
        return out.last_hidden_state, out.pooler_output

"""Stable Diffusion 1.x/2.x and SDXL pipelines (diffusers) as Backbones: latent space, their own VAE."""

from __future__ import annotations

import torch

import dsl

from .base import Backbone, Conditioning, weighted


class StableDiffusionBackbone(Backbone):
    """A diffusers StableDiffusionPipeline (1.x, 2.x; epsilon or v-prediction): latent space."""

    kind = "sd"

    def __init__(self, pipe, name: str = "stable-diffusion", low_memory: bool = False):
        from diffusers import DDIMScheduler

        self.pipe = pipe
        self.name = name
        self.tokenizer, self.text_encoder, self.unet, self.vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
        self.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        if not isinstance(pipe.scheduler, DDIMScheduler):  # said at every run: a silent swap surprises
            self.replaced_scheduler = type(pipe.scheduler).__name__
        self.device = self.unet.device
        self.dtype = self.unet.dtype
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.sampling_defaults = {"steps": 50, "cfg": 7.5}
        for m in (self.text_encoder, self.unet, self.vae):
            m.requires_grad_(False)
        # low_memory: the guided backward recomputes activations (the Editor's sampler/recompute.py;
        # diffusers' own block checkpointing recomputes probed blocks without their probes, which
        # torch refuses), and attention is sliced
        self.low_memory = low_memory
        if low_memory:
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
        """Both encoders' states with the prompt's weights applied per token (the two tokenizers
        share CLIP's vocabulary, so positions agree); the pooled embedding is the plain prompt's."""
        plain, weights = dsl.token_weights(text, self.tokenizer)
        hidden, pooled = self._hidden_xl(plain)
        return (hidden if all(w == 1.0 for w in weights) else weighted(hidden, self._hidden_xl("")[0], weights)), pooled

    def _hidden_xl(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
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

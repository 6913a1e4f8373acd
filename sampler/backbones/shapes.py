"""The shipped shapes model as a Backbone (sampler/shapes/ has the model itself)."""

from __future__ import annotations

import torch

from .base import Backbone


class ShapesBackbone(Backbone):
    """The shipped shapes model. Second generation: latent space through its own small
    AutoencoderKL, exactly as Stable Diffusion. A first-generation folder (no vae/) is pixel space:
    the latent is the image in [-1, 1]."""

    kind = "shapes"

    def __init__(self, name_or_path="shapes", device="cpu"):
        from ..shapes import model as shapes_model

        m = shapes_model.load(name_or_path, device=device)
        self.model = m
        # The shipped folder is "shapes" however it was named: a direction learned on it by path
        # (reship passes the folder) records the same backbone as one learned on "shapes".
        self.name = "shapes" if shapes_model.is_shipped(name_or_path) else str(name_or_path)
        self.tokenizer, self.text_encoder, self.unet, self.scheduler = m.tokenizer, m.text_encoder, m.unet, m.scheduler
        self.clip = m.clip
        self.vae = m.vae
        if m.vae is not None and torch.device(device).type == "cpu":
            # channels-last convolutions: the decoder that x0 terms backpropagate through at every
            # guided step runs 10-20% faster on the CPU (docs/performance.md, section 10); the
            # UNet does not gain, so it stays as it is
            m.vae.to(memory_format=torch.channels_last)
        self.vae_scale = 1 if m.vae is None else 2 ** (len(m.vae.config.block_out_channels) - 1)
        self.clip_x0 = 1.0 if m.vae is None else None  # pixel-space images live in [-1, 1]
        self.device = torch.device(device)
        self.dtype = torch.float32
        self.sampling_defaults = m.card.get("defaults", {})

    def decode(self, z):
        if self.vae is None:
            return ((z.float() + 1) / 2).clamp(0, 1)
        from ..shapes.model import vae_decode

        return ((vae_decode(self.vae, z.float()) + 1) / 2).clamp(0, 1)

    def encode(self, image):
        x = image.float().to(self.device) * 2 - 1
        if self.vae is None:
            return x
        from ..shapes.model import vae_encode

        with torch.no_grad():
            return vae_encode(self.vae, x)

    def image_size(self):
        s = self.unet.config.sample_size * self.vae_scale
        return (s, s)

"""The Backbone interface: the few calls the sampler makes of a model.

Like k-diffusion's external.py, each backbone hides a model family behind them: encode a prompt,
predict epsilon, decode and encode a latent, the image size and the schedule. The sampler never
touches a pipeline. Prediction types other than epsilon are converted here, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import dsl
from energies.defaults import BACKBONES, BackboneDefaults


def weighted(hidden: torch.Tensor, empty: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """compel's per-token weighting: each position moved from the empty prompt's state by its
    weight, empty + w (hidden - empty), so weight 1 leaves a row exactly as it was and the
    sequence length (the positions attention maps index) does not change."""
    w = torch.tensor(weights, dtype=hidden.dtype, device=hidden.device)[None, :, None]
    return empty + (hidden - empty) * w


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
    sampler = "ddim"  # steer samples every UNet with DDIM: deterministic, recorded and invertible steps
    replaced_scheduler: str | None = None  # the class name of a pipeline's own scheduler that DDIM replaced

    def sampling_note(self, steps: int) -> str:
        """How this model is sampled, as `steer run` says it: "DDIM, 25 steps" (and what DDIM replaced)."""
        how = {"ddim": "DDIM", "flow": "Euler on the flow's velocity"}[self.sampler]
        note = f"{how}, {steps} steps"
        if self.replaced_scheduler:
            note += f"; the pipeline's {self.replaced_scheduler} is replaced by {how} of the same config"
        return note

    @property
    def defaults(self) -> BackboneDefaults:
        return BACKBONES[self.kind]

    def latent_shape(self) -> tuple[int, int, int]:
        s = self.unet.config.sample_size
        return (self.unet.config.in_channels, s, s)

    @torch.no_grad()
    def _embed(self, text: str) -> torch.Tensor:
        """The prompt's last hidden state (what Stable Diffusion conditions on), its weights
        ((word:1.3), word++) applied per token; positions are the plain prompt's."""
        plain, weights = dsl.token_weights(text, self.tokenizer)
        hidden = self._hidden(plain)
        return hidden if all(w == 1.0 for w in weights) else weighted(hidden, self._hidden(""), weights)

    def _hidden(self, text: str) -> torch.Tensor:
        ids = torch.tensor([self.token_ids(text)], device=self.device)
        return self.text_encoder(ids)[0]

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

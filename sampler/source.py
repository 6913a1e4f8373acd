"""The source pass: the unedited trajectory every edit is measured against, recorded once.

From (prompt, seed) it is plain classifier-free-guided DDIM from the seed's noise; from a photo
(`source "photo.png"`) it starts from the photo's DDIM inversion (kept on disk, see
inversion_cache.py). At every step it records what the terms compare against: the conditional
half's attention maps and decoder features, z_t and the predicted x0. Passes are kept in memory
by their settings, so re-running a script after a weight change (the REPL) costs only the edit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from energies import defaults as D
from energies import program as P
from energies import relocate as R
from energies.terms import Features

from . import inversion_cache
from .denoiser import RECORDABLE, denoiser, recorded_forward
from .guided import sample_ddim
from .images import file_hash, load_image
from .inversion import forward_noise, invert_ddim, null_text, offsets_along, returning

INVERSION_FIXED_POINT = 20  # at most this many fixed-point refinements per inversion step (sampler/inversion.py)


def run_timesteps(backbone, settings: P.Settings) -> list[int]:
    """The timesteps both passes of a run step through: the model's `steps`, or with `return t0`
    the same number below t0 (inversion.returning)."""
    return returning(backbone.timesteps(settings.steps), settings.return_step)


@dataclass
class SourcePass:
    key: tuple
    noise: torch.Tensor  # z_T
    latents: list[torch.Tensor]  # z_t at each step
    features: list[Features]  # what the probes saw at each step (conditional half)
    final: torch.Tensor  # z_0
    image: np.ndarray  # (H, W, 3) float in [0, 1]
    cond: object = None  # the Conditioning used (with null-text embeddings for inverted photos)
    clip: float | None = None  # x0 clipping used, so the edit pass steps the same way
    x0s: list[torch.Tensor] = field(default_factory=list)  # predicted x0 at each step (relocation's background)
    recorded: frozenset = RECORDABLE  # what `features` holds at every step: "attn" (maps, layers), "features"
    timesteps: list[int] = field(default_factory=list)
    filler: object = None  # (pass, what) -> records `what` at the kept latents (SourcePasses.fill)
    offsets: list | None = None  # an inverted photo's per-step drift correction, which the edit pass adds too
    mask_threshold: float = D.RELOCATE_MASK_THRESHOLD  # object masks' cut (the backbone's own, BackboneDefaults)

    def require(self, needs) -> "SourcePass":
        """This pass, once its features hold what `needs` (terms' NEEDS words) asks of the source:
        what was not recorded is recorded now, at every step's kept z_t."""
        missing = recordable(needs) - self.recorded
        if missing:
            self.filler(self, missing)
        return self

    def late_features(self) -> list[Features]:
        """The steps after D.RELOCATE_MASK_FROM, where token maps localise objects best: what
        relocation and drag regions read object masks from."""
        self.require({"attn"})
        return self.features[int(D.RELOCATE_MASK_FROM * len(self.features)):] or self.features[-1:]

    def object_mask(self, token, hw, threshold: float | None = None) -> torch.Tensor:
        """(H, W) mask of the object of `token` (its positions), from the late attention maps: what
        relocation copies, what drags and `within` terms act in; cut at the backbone's threshold
        unless another is given."""
        cut = self.mask_threshold if threshold is None else threshold
        return R.object_mask([f.token(list(token)) for f in self.late_features()], hw, cut)


def recordable(needs) -> frozenset:
    """What a source pass records for terms that need `needs` (energies.terms.NEEDS words)."""
    needs = set(needs)
    return frozenset(needs & RECORDABLE | ({"attn"} if "layers" in needs else set()))


class SourceMaps:
    """The source pass's token maps, step by step, as EditResult.source_maps reads them: recorded
    on first read if the run's terms did not need them."""

    def __init__(self, src: SourcePass):
        self.src = src

    def __len__(self):
        return len(self.src.features)

    def __getitem__(self, i):
        return self.src.require({"attn"}).features[i].maps


class SourcePasses:
    """Source passes of one backbone, the most recent `keep` of them in memory."""

    def __init__(self, backbone, readout, keep: int = 8):
        self.backbone, self.readout, self.keep = backbone, readout, keep
        self._passes: dict[tuple, SourcePass] = {}

    def clear(self):
        self._passes.clear()

    def __iter__(self):
        """The passes in memory, oldest first."""
        return iter(list(self._passes.values()))

    def __len__(self):
        return len(self._passes)

    def noise(self, seed: int) -> torch.Tensor:
        g = torch.Generator("cpu").manual_seed(seed)
        return torch.randn((1, *self.backbone.latent_shape()), generator=g).to(self.backbone.device)

    def get(self, settings: P.Settings, progress: bool = True, script_dir=None, record=RECORDABLE) -> SourcePass:
        """The unedited trajectory: from (prompt, seed), or from the inversion of a real image,
        recording `record` ("attn", "features", both or neither) at every step."""
        b = self.backbone
        image_path = Path(script_dir or ".") / settings.source if settings.source else None
        image_key = file_hash(image_path) if image_path is not None and image_path.is_file() else str(image_path)
        key = (settings.prompt, settings.negative, settings.seed, settings.steps, settings.cfg, image_key, settings.invert,
               settings.return_step)
        if key in self._passes:
            return self._passes[key].require(record)
        cond = b.encode_prompt(settings.prompt, settings.negative)
        timesteps = run_timesteps(b, settings)
        clip = b.clip_x0
        trajectory = None
        if image_path is None:
            noise = self.noise(settings.seed)
        else:
            noise, cond, trajectory = self._inverted(settings, image_path, image_key, cond, timesteps, progress)
            if settings.invert != "noise":  # SDEdit's noised image is not an inversion: it samples as a seed's noise does
                clip = None  # the inversion inverts the unclipped step; clipping would not land back on the image
        latents: list[torch.Tensor] = []
        x0s: list[torch.Tensor] = []

        def keep(d):
            latents.append(d["z"].detach())
            x0s.append(d["x0"].detach())

        what, features = frozenset(record), []
        denoise = denoiser(b, cond, settings.cfg, self.readout, features, what)
        offsets = None
        if trajectory is None:
            final = sample_ddim(denoise, noise, timesteps, *b.schedule(), callback=keep, disable=not progress, desc="source", clip=clip)
        else:  # a photo's pass walks its own inverted trajectory (direct inversion) and ends on the photo
            offsets = offsets_along(denoise, trajectory[:-1], trajectory[-1], timesteps, *b.schedule(), callback=keep,
                                    disable=not progress)
            final = trajectory[-1]
        with torch.no_grad():
            image = b.decode(final)[0].permute(1, 2, 0).cpu().numpy()
        src = SourcePass(key, noise, latents, features, final, image, cond, clip, x0s, what, timesteps, self.fill, offsets,
                         self.backbone.defaults.mask_threshold)
        self._passes[key] = src
        while len(self._passes) > self.keep:  # oldest first: dicts keep insertion order
            self._passes.pop(next(iter(self._passes)))
        return src

    def fill(self, src: SourcePass, what: frozenset):
        """Record `what` into `src`'s features now: the probed forward the pass would have made at
        each kept z_t (the same batched CFG call, with the probes it had as well, since the
        explicit attention probe rounds differently from fused attention: so the same values),
        merged into each step's Features so that the x0 family's fields computed there are kept."""
        with torch.no_grad():
            for i, (z, t) in enumerate(zip(src.latents, src.timesteps)):
                f = recorded_forward(self.backbone, self.readout, z, t, src.cond, i, what | src.recorded)[2]
                if "attn" in what:
                    src.features[i].maps, src.features[i].layers = f.maps, f.layers
                if "features" in what:
                    src.features[i].features = f.features
        src.recorded = src.recorded | what

    def _inverted(self, settings: P.Settings, path: Path, image_key: str, cond, timesteps, progress: bool):
        """(z_T, conditioning, trajectory) for a real image, from the on-disk cache or by inverting
        it now; the trajectory holds the inverted latent at every step and then the image's own
        (None for SDEdit's noising, which has none).

        DDIM inversion runs with the prompt at cfg 1, each step refined by fixed-point iterations
        so that regeneration lands back on the image; `invert null-text` then fits one
        unconditional embedding per step so that sampling at the script's cfg reproduces it."""
        b = self.backbone
        mode = settings.invert or "ddim"
        span = settings.spans.get("source")
        if mode == "noise":  # SDEdit: the seed's noise at t0, nothing to cache
            image = load_image(path, b.image_size(), span)
            with torch.no_grad():
                z0 = b.encode(torch.from_numpy(image).permute(2, 0, 1)[None])
            return forward_noise(z0, timesteps[0], b.schedule()[0], self.noise(settings.seed)), cond, None
        meta = {"model": b.name, "image": image_key, "prompt": settings.prompt, "negative": settings.negative or "",
                "steps": settings.steps, "cfg": settings.cfg, "invert": mode, "size": list(b.image_size())}
        if getattr(b, "sampler", "ddim") != "ddim":  # a flow model's inversion is its own (DDIM entries keep their keys)
            meta["sampler"] = b.sampler
        if settings.return_step is not None and settings.return_step < 1:  # a key without it is an inversion to T
            meta["return"] = settings.return_step
        cached = inversion_cache.load(meta, b.device, self._cache_layout(mode, cond, len(timesteps)))
        if cached is not None:
            steps = [cached[f"uncond.{i}"] for i in range(len(timesteps))] if mode == "null-text" else None
            trajectory = [cached["noise"]] + [cached[f"latent.{i}"] for i in range(1, len(timesteps))] + [cached["clean"]]
            return cached["noise"], dataclasses.replace(cond, uncond_steps=steps), trajectory
        image = load_image(path, b.image_size(), span)
        alphas, final = b.schedule()
        with torch.no_grad():
            z0 = b.encode(torch.from_numpy(image).permute(2, 0, 1)[None])
            trajectory = invert_ddim(lambda z, t: b.eps(z, t, cond.cond, cond.added), z0, timesteps, alphas, final,
                                     fixed_point=INVERSION_FIXED_POINT, disable=not progress)
        tensors = {"noise": trajectory[0], "clean": z0, **{f"latent.{i}": z for i, z in enumerate(trajectory[1:], 1)}}
        steps = None
        if mode == "null-text":
            steps = null_text(b, cond, trajectory, z0, timesteps, settings.cfg, alphas, final, disable=not progress)
            tensors.update({f"uncond.{i}": u for i, u in enumerate(steps)})
        inversion_cache.save(meta, tensors)
        return trajectory[0], dataclasses.replace(cond, uncond_steps=steps), trajectory + [z0]

    def _cache_layout(self, mode: str, cond, steps: int) -> dict[str, tuple]:
        """What a cached inversion holds: z_T, the inverted latent at every later step and the
        image's own ("clean"), and for null-text one unconditional embedding per step; name ->
        shape, which inversion_cache checks an entry against."""
        shape = (1, *self.backbone.latent_shape())
        layout = {"noise": shape, "clean": shape, **{f"latent.{i}": shape for i in range(1, steps)}}
        if mode == "null-text":
            layout.update({f"uncond.{i}": tuple(cond.uncond.shape) for i in range(steps)})
        return layout

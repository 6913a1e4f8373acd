"""The Editor: run a Program on a backbone, reusing the source pass across runs.

    editor = Editor("shapes")
    result = editor.run(dsl.load("examples/move_circle.edit"))
    result.save("out.png")

A run has two passes over the same timesteps from the same initial noise:
  1. the source pass: plain classifier-free-guided DDIM from (prompt, seed), recording at every
     step the conditional cross-attention maps and decoder features that terms compare against.
     It is cached by (prompt, negative, seed, steps, cfg), so re-running after a weight change
     (the REPL) costs only the edit pass;
  2. the edit pass: the same loop with a guide that, at each step, runs one conditional forward
     with only the probes the active terms need, sums their energies and takes the gradient with
     respect to the latent (torch.autograd.grad; model weights stay frozen).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dsl.errors import SteerCompileError, SteerRuntimeError
from energies import defaults as D
from energies import directions
from energies import program as P
from energies import drag as G
from energies import relocate as R
from energies import vit as V
from energies import x0 as X
from energies.resolve import prompt_objects
from energies.terms import ENERGIES, BoundTerm, Features, bind

from . import hspace as H
from . import noise_directions as N
from . import prompt_directions as PD
from .backbones import Backbone, load_backbone
from .drag import DragOutcome, DragPlan
from .guided import Guidance, after_move, pred_x0, sample_ddim
from .images import file_hash, load_image
from .inversion import invert_ddim, null_text
from .probes import ProbeStore, cross_attention_layers, probing

DEFAULT_SEED = 0
LOSS_SCALE = 1000.0  # Self-Guidance's fp16 energy scale (sg_loss_rescale)
INVERSION_VERSION = 1  # bump when the inversion changes, so cached inversions are redone
INVERSION_FIXED_POINT = 3  # fixed-point refinements per inversion step (sampler/inversion.py)


def inversion_cache() -> Path:
    """Where inversions are kept: $STEER_CACHE/inversions, else ~/.cache/steer/inversions."""
    return Path(os.environ.get("STEER_CACHE", Path.home() / ".cache" / "steer")) / "inversions"


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

    def late_features(self) -> list[Features]:
        """The steps after D.RELOCATE_MASK_FROM, where token maps localise objects best: what
        relocation and drag regions read object masks from."""
        return self.features[int(D.RELOCATE_MASK_FROM * len(self.features)):] or self.features[-1:]

    def object_mask(self, token, hw, threshold: float = D.RELOCATE_MASK_THRESHOLD) -> torch.Tensor:
        """(H, W) mask of the object of `token` (its positions), from the late attention maps: what
        relocation copies, what drags and `within` terms act in."""
        return R.object_mask([f.token(list(token)) for f in self.late_features()], hw, threshold)


@dataclass
class EditResult:
    image: np.ndarray  # (H, W, 3) float in [0, 1]
    source_image: np.ndarray
    latent: torch.Tensor
    program: P.Program  # the program as run, settings filled in
    model: str
    energies: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # term -> (step, energy)
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # word -> last edit-step attention map
    drag: DragOutcome | None = None  # what the drag's optimisation did, if the program has drags

    def save(self, path, source_path=None):
        """Write the edited image (and the source) as PNG, atomically, with the program in it."""
        write_png(self.image, path, self.record())
        if source_path is not None:
            write_png(self.source_image, source_path, {**self.record(), "steer:image": "source"})

    def record(self) -> dict:
        from dsl.printer import format as fmt

        return {"steer:program": fmt(self.program), "steer:model": self.model, "steer:seed": str(self.program.settings.seed)}


def relocating(guide, relocations: dict[int, list], src: SourcePass, alphas):
    """The guide with the copies of `relocations` (step -> [(mask, shift, scale, protect)]) made
    first: at those steps z_t is moved (energies/relocate.py) and the guide runs at the moved z_t."""

    def guide_(i, t, z):
        if i not in relocations:
            return guide(i, t, z) if guide is not None else Guidance()
        moved = z[0]
        for mask, shift, scale, protect in relocations[i]:
            moved = R.relocate(moved, src.latents[i][0], src.x0s[i][0], alphas[t], mask, shift, scale, protect)
        moved = moved[None]
        g = guide(i, t, moved) if guide is not None else Guidance()
        return after_move(g, z, moved)  # z_t <- z_t - latent: first the copy, then the guide's own step

    return guide_


def local(shift: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """A direction's shift (..., h, w) kept inside `mask` (H, W), resized to the shift's grid (a
    cell of a coarser grid counts if any of it is inside: h-space is 8x8 on the shapes model)."""
    if mask is None:
        return shift
    size = tuple(shift.shape[-2:])
    m = mask if tuple(mask.shape) == size else torch.nn.functional.adaptive_max_pool2d(mask[None, None], size)[0, 0]
    return shift * m.to(shift)


def to_pil(image: np.ndarray):
    from PIL import Image

    return Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8))


def write_png(image: np.ndarray, path, text: dict | None = None):
    """Write atomically: a temporary file in the same folder, then a rename."""
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent, prefix=f".{path.stem}-")
    try:
        with os.fdopen(fd, "wb") as f:
            to_pil(image).save(f, format="PNG", pnginfo=info)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; an image is the user's ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Editor:
    keep_sources = 8  # source passes kept in memory (a REPL session needs one; the bench a few)

    def __init__(self, backbone: Backbone | str | None = None, device: str = "cpu", dtype: str = "fp32", low_memory: bool = False):
        self.backbone = backbone if isinstance(backbone, Backbone) else load_backbone(backbone, device, dtype, low_memory)
        self._sources: dict[tuple, SourcePass] = {}
        b = self.backbone
        self.attn_layers = cross_attention_layers(b.unet, b.defaults.attn_layers)
        if not self.attn_layers:
            raise ValueError(f"no cross-attention layer under {b.defaults.attn_layers} in this UNet")
        self.feature_module = b.defaults.appearance_features
        b.unet.get_submodule(self.feature_module)  # fail early if the layout is not what we expect
        self._vit = self._clip = None  # loaded on first use: only scripts with ViT or CLIP terms pay for them

    def vit(self):
        """The ViT whose keys and CLS token the structure and style terms read (energies/vit.py):
        the shapes CLIP's image tower on the shapes model, DINO on Stable Diffusion."""
        if self._vit is None:
            b = self.backbone
            self._vit = V.load_vit(b.kind, b.model if b.kind == "shapes" else None)
        return self._vit

    def clip(self):
        """The CLIP of the directional CLIP term: the shapes CLIP, or OpenAI's ViT-B/16 (DiffusionCLIP's)."""
        if self._clip is None:
            b = self.backbone
            self._clip = X.ClipScorer.for_shapes(b.model) if b.kind == "shapes" else X.ClipScorer.from_pretrained(X.CLIP_MODEL_ID, device=b.device)
        return self._clip

    # ------------------------------------------------------------------------------------------

    def settings(self, program: P.Program) -> P.Settings:
        """The program's settings with the model's defaults filled in."""
        s = program.settings
        if not s.prompt:
            raise SteerCompileError("the script has no prompt", None, hint='add a line like: prompt "a red circle and a blue square"')
        d = self.backbone.sampling_defaults
        default_cfg = 1.0 if s.source and (s.invert or "ddim") == "ddim" else d.get("cfg", 7.5)  # DDIM inversion is exact at cfg 1
        return s.model_copy(update=dict(
            seed=DEFAULT_SEED if s.seed is None else s.seed,
            steps=s.steps or d.get("steps", 50),
            cfg=default_cfg if s.cfg is None else s.cfg,
            model=s.model or self.backbone.name,
        ))

    def bind(self, program: P.Program, script_dir=None) -> list[BoundTerm]:
        """Resolve tokens and directions against this model (the model-dependent half of compiling)."""
        s = self.settings(program)
        return bind(program, s.prompt, self.backbone.tokenizer, self._direction_paths(script_dir), self.backbone.kind)

    def _direction_paths(self, script_dir=None) -> list[Path]:
        model_dir = getattr(getattr(self.backbone, "model", None), "path", None)
        return directions.search_path(script_dir, model_dir)

    def _noise(self, seed: int) -> torch.Tensor:
        g = torch.Generator("cpu").manual_seed(seed)
        return torch.randn((1, *self.backbone.latent_shape()), generator=g).to(self.backbone.device)

    def _denoiser(self, cond, cfg: float, record: list | None = None):
        """CFG's epsilon at step i. `cond` is a Conditioning, or i -> the step's Conditioning
        (an edit pass whose prompt directions shift the prompt in their windows)."""
        b = self.backbone
        hw = b.latent_shape()[1:]
        cond_at = cond if callable(cond) else lambda i: cond

        def denoise(i, t, z, eps_cond=None):
            cond = cond_at(i)
            if eps_cond is not None:
                eps_c = eps_cond
                eps_u = b.eps(z, t, cond.uncond_at(i), cond.added_uncond) if cfg != 1 else eps_c
            elif record is not None:  # source pass: probe the conditional half of the batch
                store = ProbeStore(hw, cond=slice(1, 2), detach=True)
                with probing(b.unet, store, self.attn_layers, [self.feature_module]):
                    eps_u, eps_c = b.eps_both(z, t, cond, i)
                record.append(self._features(store, detach=True))
            elif cfg == 1:
                eps_u = eps_c = b.eps(z, t, cond.cond, cond.added)
            else:
                eps_u, eps_c = b.eps_both(z, t, cond, i)
            return eps_u + cfg * (eps_c - eps_u)

        return denoise

    def _features(self, store: ProbeStore, detach=False) -> Features:
        res = self.backbone.defaults.map_res
        maps = store.token_maps(res)[0]
        feats = store.features.get(self.feature_module)
        layers = [a[0] for a in store.attn.values()]
        if detach:  # the source pass is kept for many runs: keep it small
            maps, layers = maps.cpu(), [l.cpu() for l in layers]
            feats = feats[0].to("cpu", torch.float16 if feats.numel() > 2**20 else torch.float32) if feats is not None else None
        else:
            feats = feats[0] if feats is not None else None
        return Features(maps=maps.float(), layers=layers, features=feats)

    def source(self, settings: P.Settings, progress: bool = True, script_dir=None) -> SourcePass:
        """The unedited trajectory: from (prompt, seed), or from the inversion of a real image."""
        b = self.backbone
        image_path = Path(script_dir or ".") / settings.source if settings.source else None
        image_key = file_hash(image_path) if image_path is not None and image_path.is_file() else str(image_path)
        key = (settings.prompt, settings.negative, settings.seed, settings.steps, settings.cfg, image_key, settings.invert)
        if key in self._sources:
            return self._sources[key]
        cond = b.encode_prompt(settings.prompt, settings.negative)
        timesteps = b.timesteps(settings.steps)
        clip = b.clip_x0
        if image_path is None:
            noise = self._noise(settings.seed)
        else:
            noise, cond = self._inverted(settings, image_path, image_key, cond, timesteps, progress)
            clip = None  # the inversion inverts the unclipped step; clipping would not land back on the image
        record: list[Features] = []
        latents: list[torch.Tensor] = []
        x0s: list[torch.Tensor] = []

        def keep(d):
            latents.append(d["z"].detach())
            x0s.append(d["x0"].detach())

        final = sample_ddim(
            self._denoiser(cond, settings.cfg, record),
            noise,
            timesteps,
            *b.schedule(),
            callback=keep,
            disable=not progress,
            desc="source",
            clip=clip,
        )
        with torch.no_grad():
            image = b.decode(final)[0].permute(1, 2, 0).cpu().numpy()
        src = SourcePass(key, noise, latents, record, final, image, cond, clip, x0s)
        self._sources[key] = src
        while len(self._sources) > self.keep_sources:  # oldest first: dicts keep insertion order
            self._sources.pop(next(iter(self._sources)))
        return src

    def _inverted(self, settings: P.Settings, path: Path, image_key: str, cond, timesteps, progress: bool):
        """(z_T, conditioning) for a real image, from the on-disk cache or by inverting it now.

        DDIM inversion runs with the prompt at cfg 1, each step refined by fixed-point iterations
        so that regeneration lands back on the image; `invert null-text` then fits one
        unconditional embedding per step so that sampling at the script's cfg reproduces it."""
        from safetensors.torch import load_file, save_file

        b = self.backbone
        mode = settings.invert or "ddim"
        span = settings.spans.get("source")
        meta = {"model": b.name, "image": image_key, "prompt": settings.prompt,
                "negative": settings.negative or "", "steps": settings.steps, "cfg": settings.cfg, "invert": mode,
                "size": list(b.image_size()), "version": INVERSION_VERSION}
        key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:32]
        cached = inversion_cache() / f"{key}.safetensors"
        if cached.is_file():
            t = load_file(str(cached), device=str(b.device))
            steps = [t[f"uncond.{i}"] for i in range(len(timesteps))] if mode == "null-text" else None
            return t["noise"], dataclasses.replace(cond, uncond_steps=steps)
        image = load_image(path, b.image_size(), span)
        alphas, final = b.schedule()
        with torch.no_grad():
            z0 = b.encode(torch.from_numpy(image).permute(2, 0, 1)[None])
            trajectory = invert_ddim(lambda z, t: b.eps(z, t, cond.cond, cond.added), z0, timesteps, alphas, final,
                                     fixed_point=INVERSION_FIXED_POINT, disable=not progress)
        tensors = {"noise": trajectory[0].contiguous()}
        steps = None
        if mode == "null-text":
            steps = null_text(b, cond, trajectory, z0, timesteps, settings.cfg, alphas, final, disable=not progress)
            tensors.update({f"uncond.{i}": u.contiguous() for i, u in enumerate(steps)})
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name("." + cached.name)
        save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp), metadata={"steer": json.dumps(meta)})
        os.replace(tmp, cached)
        return trajectory[0], dataclasses.replace(cond, uncond_steps=steps)

    @torch.no_grad()
    def sample_plain(self, settings: P.Settings, progress: bool = False) -> torch.Tensor:
        """Plain classifier-free-guided DDIM, no probes: the baseline every cost is measured against."""
        b = self.backbone
        cond = b.encode_prompt(settings.prompt, settings.negative)
        return sample_ddim(
            self._denoiser(cond, settings.cfg),
            self._noise(settings.seed),
            b.timesteps(settings.steps),
            *b.schedule(),
            disable=not progress,
            clip=b.clip_x0,
        )

    def run(self, program: P.Program, progress: bool = True, script_dir=None) -> EditResult:
        settings = self.settings(program)
        bound = self.bind(program, script_dir)
        src = self.source(settings, progress, script_dir)
        b = self.backbone
        timesteps = b.timesteps(settings.steps)
        curves: dict[str, list[tuple[int, float]]] = {x.label: [] for x in bound}
        last_maps: dict = {}
        self._prepare(bound, settings, script_dir)
        others = [x for x in bound if x.kind != "drag"]
        cond_at = self._conditioning(others, src.cond, len(timesteps))
        guide = self._guide(others, src, cond_at, len(timesteps), curves, last_maps, settings.cfg) if others else None
        denoise = self._denoiser(cond_at, settings.cfg)
        drags = [x for x in bound if x.kind == "drag" and x.weight != 0]
        plan = DragPlan(b, drags, src, timesteps, progress) if drags else None
        if plan is not None:  # DragNoise: optimise the bottleneck at one step, substitute it afterwards
            denoise, guide = plan.wrap(denoise, guide, src.cond)
        relocations = self._relocations(others, src, len(timesteps), settings.prompt, plan)
        if relocations:  # first the copies, then the drag's optimisation, then the energies
            guide = relocating(guide, relocations, src, b.schedule()[0])
        final = sample_ddim(
            denoise,
            src.noise,
            timesteps,
            *b.schedule(),
            guide=guide,
            disable=not progress,
            desc="edit",
            clip=src.clip,
            generator=torch.Generator().manual_seed(settings.seed + 1),  # for steps that ask for eta > 0
        )
        with torch.no_grad():
            image = b.decode(final)[0].permute(1, 2, 0).cpu().numpy()
        ran = P.Program(settings=settings, terms=program.terms)
        return EditResult(image, src.image, final, ran, b.name, curves, last_maps.get("maps", {}), plan.outcome if plan else None)

    def _prepare(self, bound: list[BoundTerm], settings: P.Settings, script_dir=None):
        """What terms need from outside the sampling loop: CLIP text features, a style image's CLS."""
        for x in bound:
            if x.kind == "clip":
                scorer = self.clip()
                x.extra["target"] = scorer.text([x.term.target])[0]
                x.extra["source"] = scorer.text([x.term.source or settings.prompt])[0]
            elif x.kind == "direction":
                d = directions.check_direction(x.extra["direction"], self.backbone, x.term.span)  # learned on this model?
                if x.term.window is None:  # Asyrp's edit interval for h-space; NoiseCLR and Pix2Pix-Zero have none
                    x.window = {"hspace": H.EDIT_WINDOW, "noise": D.NOISE_DIRECTION_WINDOW, "prompt": D.PROMPT_DIRECTION_WINDOW}[d.kind]
                if d.kind == "prompt":  # bind() refused `within` for it
                    x.extra["prompt_shift"] = d.tensors
                elif d.kind == "hspace":
                    x.extra["delta"] = H.HSpaceDelta.from_direction(d)
                    train_steps = int(d.meta.get("train_steps") or settings.steps)
                    x.extra["scale"] = H.step_scale(train_steps, settings.steps)  # Asyrp: n_train_step / n_test_step
                else:
                    with torch.no_grad():
                        x.extra["context"] = N.direction_context(self.backbone, d.tensors["embedding"].to(self.backbone.device))
                        x.extra["empty"] = N.empty_context(self.backbone)
            elif x.kind == "style":
                path = Path(script_dir or ".") / x.term.path
                image = load_image(path, self.backbone.image_size(), x.term.span, what="style image")
                ref = torch.from_numpy(image).permute(2, 0, 1)[None].to(self.backbone.device) * 2 - 1
                with torch.no_grad():
                    x.extra["ref_cls"] = self.vit()(ref)[1][0]

    def _image_features(self, image: torch.Tensor, needs: set[str], f: Features) -> Features:
        """Fill the x0 family's fields of `f` from a decoded image (1, 3, H, W) in [-1, 1]."""
        f.image = image[0]
        if "vit" in needs:
            keys, cls = self.vit()(image)
            f.vit_keys, f.vit_cls = keys[0], cls[0]
        if "clip" in needs:
            f.clip_image = self.clip().image(image)[0]
        return f

    def _source_features(self, src: SourcePass, i: int, needs: set[str]) -> Features:
        """The source pass's features at step i, with the x0 family's computed on first use."""
        f = src.features[i]
        if "image" in needs and (f.image is None or ("vit" in needs and f.vit_keys is None) or ("clip" in needs and f.clip_image is None)):
            with torch.no_grad():
                image = self.backbone.decode(src.x0s[i]) * 2 - 1
                self._image_features(image, needs, f)
        return f

    def _relocations(self, bound: list[BoundTerm], src: SourcePass, steps: int, prompt: str,
                     plan: DragPlan | None = None) -> dict[int, list]:
        """step -> [(mask, shift, scale, protect)]: where layout terms copy their object's source region
        (energies/relocate.py), at the step D.RELOCATE_AT of sampling, if the term is active then;
        and where drags within a token copy theirs, at the drag's step (sampler/drag.py)."""
        at = min(steps - 1, round(D.RELOCATE_AT * steps))
        hw = self.backbone.latent_shape()[1:]
        plans: dict[int, list] = {}
        movers = [x for x in bound if x.kind in D.RELOCATE and x.active(at / steps) and x.weight > 0]
        copies = plan.copies if plan is not None else {}
        if not movers and not copies:
            return plans
        moved_tokens = {i for x in movers for i in x.token} | {i for token in copies for i in token}
        staying = [o.head for o in prompt_objects(prompt, self.backbone.tokenizer) if not set(o.tokens) & moved_tokens]
        protect = sum((src.object_mask(h, hw) for h in staying),
                      torch.zeros(hw)).clamp(max=1).to(self.backbone.device)
        for mask, shift in copies.values():
            plans.setdefault(plan.step, []).append((mask, shift, 1.0, protect))
        by_object: dict[tuple, list[BoundTerm]] = {}  # a move and a resize of one object make one relocation
        for x in movers:
            by_object.setdefault(tuple(x.token), []).append(x)
        for token, terms in by_object.items():
            mask = src.object_mask(token, hw)
            if mask.sum() == 0:
                continue
            core = src.object_mask(token, hw, D.RELOCATE_CENTRE_THRESHOLD)
            shift, scale = (0.0, 0.0), 1.0
            for x in terms:  # where the object is: the centre of the map's core, not of the generous copy mask
                (dx, dy), k = R.moved_by(x.kind, x.term, core if core.sum() > 0 else mask)
                shift, scale = (shift[0] + dx, shift[1] + dy), scale * k
            plans.setdefault(at, []).append((mask.to(self.backbone.device), shift, scale, protect))
        return plans

    def _conditioning(self, bound: list[BoundTerm], cond, steps: int):
        """i -> the Conditioning of step i: the source's, its conditional half shifted by the prompt
        directions active at that step (Pix2Pix-Zero's c + delta_c)."""
        shifts = [x for x in bound if x.kind == "direction" and x.extra["direction"].kind == "prompt" and x.weight != 0]
        made: dict[tuple, object] = {}

        def at(i):
            active = tuple(k for k, x in enumerate(shifts) if x.active(i / steps))
            if active not in made:
                made[active] = PD.shifted(cond, [(shifts[k].weight, shifts[k].extra["prompt_shift"]) for k in active])
            return made[active]

        return at

    def _guide(self, bound: list[BoundTerm], src: SourcePass, cond_at, steps: int, curves, last_maps, cfg: float):
        """The edit pass's guide(i, t, z); cond_at(i) is step i's Conditioning (see _conditioning)."""
        b = self.backbone
        boost = D.HSPACE_BOOST and any(x.kind == "direction" and x.extra["direction"].kind == "hspace" and x.weight != 0 for x in bound)
        regions = self._regions([x for x in bound if x.kind == "direction"], src)

        def guide(i, t, z):
            active = [x for x in bound if x.active(i / steps)]
            energies = [x for x in active if x.kind != "direction"]
            g = self._energy_guidance(energies, z, i, t, src, cond_at(i), curves, last_maps)
            hspace = [x for x in active if x.kind == "direction" and x.extra["direction"].kind == "hspace"]
            noise = [x for x in active if x.kind == "direction" and x.extra["direction"].kind == "noise"]
            if hspace:  # Asyrp: x0 from the eps of an h-shifted forward; the step's direction keeps the original eps
                delta = sum(x.weight * x.extra["scale"] * local(x.extra["delta"].at(t).to(z), regions[id(x)]) for x in hspace)
                with torch.no_grad(), H.shifting(b.unet, delta):
                    eps_u, eps_c = b.eps_both(z, t, cond_at(i), i)
                g = dataclasses.replace(g, x0_eps=eps_u + cfg * (eps_c - eps_u))
            if noise:  # NoiseCLR: eps + sum_k lambda_k (eps(z, d_k) - eps(z, ""))
                with torch.no_grad():
                    shift = sum(x.weight * D.NOISE_DIRECTION_SCALE
                                * local(N.noise_direction_eps(b, z, t, x.extra["context"], x.extra["empty"]), regions[id(x)])
                                for x in noise)
                g = dataclasses.replace(g, eps=shift if g.eps is None else g.eps + shift)
            if boost and i / steps >= H.BOOST_FROM:
                g = dataclasses.replace(g, eta=H.BOOST_ETA)  # Asyrp's quality boosting below t_boost
            return g

        return guide

    def _regions(self, terms: list[BoundTerm], src: SourcePass) -> dict[int, torch.Tensor | None]:
        """id(term) -> the (H, W) latent mask a `within` term acts in (its object from the source's
        late attention maps, dilated by a pixel; or its box), or None where it acts everywhere."""
        hw = tuple(self.backbone.latent_shape()[1:])
        out: dict[int, torch.Tensor | None] = {}
        for x in terms:
            mask = None
            if x.term.box is not None:
                mask = G.box_mask(x.term.box, hw)
            elif x.token:
                mask = R.dilate(src.object_mask(x.token, hw), 1)
            out[id(x)] = None if mask is None else mask.to(self.backbone.device)
        return out

    def _energy_guidance(self, active: list[BoundTerm], z, i, t, src: SourcePass, cond, curves, last_maps) -> Guidance:
        b = self.backbone
        hw = b.latent_shape()[1:]
        if not active:
            return Guidance()
        needs = set().union(*(x.needs for x in active))
        store = ProbeStore(hw)
        with torch.enable_grad():
            z_ = z.detach().requires_grad_(True)
            feature_modules = [self.feature_module] if "features" in needs else []
            attn = self.attn_layers if needs & {"attn", "layers", "features"} else []
            with probing(b.unet, store, attn, feature_modules):
                eps_c = b.eps(z_, t, cond.cond, cond.added)
            now = self._features(store) if attn else Features()
            x0 = None
            if "image" in needs:  # the predicted x0 of the conditional forward, decoded (through the VAE)
                a_t = b.schedule()[0][t]
                x0 = pred_x0(z_, eps_c.float(), a_t.to(z_.device))
                if src.clip is not None:
                    x0 = x0.clamp(-src.clip, src.clip)
                self._image_features(b.decode(x0) * 2 - 1, needs, now)
            ref = self._source_features(src, i, needs)
            total: dict[str, torch.Tensor] = {}
            for x in active:
                e = x.weight * ENERGIES[x.kind](x, now, ref)
                if not torch.isfinite(e):
                    raise SteerRuntimeError(
                        f"the energy of `{x.label}` is not finite at step {i} (t = {t})", x.term.span,
                        hint="lower its weight, or narrow its window with @ a..b",
                    )
                curves[x.label].append((i, float(e.detach())))
                if x.placement == "x0" and x0 is None:
                    raise SteerRuntimeError(f"`{x.label}` cannot act via x0: it does not read the predicted image", x.term.span,
                                            hint="use via eps, latent or mean")
                total[x.placement] = total.get(x.placement, 0) + e
            grads = {}
            scale = LOSS_SCALE if b.dtype == torch.float16 else 1.0  # fp16 gradients underflow unscaled
            for k, p in enumerate(total):  # one backward per placement group; x0's stops before the UNet
                wrt = x0 if p == "x0" else z_
                grads[p] = torch.autograd.grad(total[p] * scale, wrt, retain_graph=k + 1 < len(total))[0].float() / scale
        for p, g in grads.items():
            if not torch.isfinite(g).all():
                raise SteerRuntimeError(
                    f"the gradient of the {p}-placed terms is not finite at step {i} (t = {t})", active[0].term.span,
                    hint="lower the weights of the terms active at this step",
                )
        if now.maps is not None:
            last_maps["maps"] = now.maps.detach()
        return Guidance(eps=grads.get("eps"), latent=grads.get("latent"), mean=grads.get("mean"), x0=grads.get("x0"),
                        eps_cond=eps_c.detach())

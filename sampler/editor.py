"""The Editor: run a Program on a backbone, reusing the source pass across runs.

    editor = Editor("shapes")
    result = editor.run(dsl.load("examples/move_circle.edit"))
    result.save("out.png")

A run has two passes over the same timesteps from the same initial noise:
  1. the source pass (source.py): plain classifier-free-guided DDIM from (prompt, seed), or from
     a photo's inversion, recording at every step what the terms compare against; kept in
     memory, so re-running after a weight change (the REPL) costs only the edit pass;
  2. the edit pass: the same DDIM loop (guided.py) with a guide that, at each step, makes the
     relocations of layout terms and drags (regions.py, drag.py), takes the energies' gradients
     (guidance.py) and lets each learned direction's kind act (directions/).
The Editor only composes these parts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch.autograd.profiler import record_function

import dsl
from energies.errors import SteerCompileError
from energies import defaults as D
from energies import directions as direction_files
from energies import program as P
from energies.terms import ENERGIES, LAYOUT_KINDS, BoundTerm, ClipText, StyleReference

from .backbones import Backbone, load_backbone
from . import feature_models as FM
from .denoiser import denoiser
from .directions import KINDS, Step
from .directions import prompt as PD
from .directions.prompt import PromptShift
from .drag import DragPlan
from .guidance import EnergyGuide
from .guided import SHIFTS, Guidance, require_finite, sample_ddim
from .images import load_image
from .one_place import objects_in_one_place
from .preflight import check_program, refuse_return_without_source
from .probes import Readout, TrajectoryMaps
from .regions import codec_of, layout_blend, local_blend, plan_relocations, relocating, resolve_relative, settling, within_regions
from .result import EditResult  # noqa: F401  (part of the editor's API)
from .source import SourceMaps, SourcePass, SourcePasses, recordable, run_timesteps

DEFAULT_SEED = 0


def source_needs(bound: list[BoundTerm]) -> frozenset:
    """What the source pass records for these terms: what their energies compare against, and the
    token maps wherever an object mask is read from the source (relocations, drags, `within
    token`). Anything else asked of it later is recorded then (SourcePass.require)."""
    needs = set().union(*(x.needs for x in bound)) if bound else set()
    if any(x.kind in LAYOUT_KINDS or x.kind in D.RELOCATE or x.token for x in bound):
        needs.add("attn")
    return recordable(needs)


def first_change(bound: list[BoundTerm], steps: int, relocations: dict, drag_step: int | None = None) -> int:
    """The first step at which an edit can leave its source's trajectory: where a statement that
    changes something (anything but a keep) is first active, or a relocation copies. Until then
    the edit's z_t is the source's, every keep reads exactly what it holds (its gradient is zero)
    and the conditioning is the source's, so the edit pass starts there, from the source's z_t:
    a move or resize, whose energy starts with its relocation, skips that share of its steps.
    A relocation's step and a drag's (`drag_step`) are rounded, so they can come a step before
    their term is first active (0.3 of 4 steps: step 1, active from step 2). `steps` where
    nothing acts (every weight 0): the edit is the source."""
    changes = [x for x in bound if not x.kind.startswith("keep") and x.weight != 0]
    starts = [next((i for i in range(steps) if x.active(i / steps)), steps) for x in changes]
    return min([steps, *starts, *relocations, *([] if drag_step is None else [drag_step])])


def features_kind(backbone) -> str:
    """Which ViT and CLIP a backbone's x0 terms read: the shapes CLIP on either shapes model, DINO
    and OpenAI's CLIP on Stable Diffusion and the flow transformers (SD3, FLUX)."""
    return getattr(backbone, "features_like", backbone.kind)


class Editor:
    keep_sources = 8  # source passes kept in memory (a REPL session needs one; the bench a few)

    def __init__(self, backbone=None, device: str = "auto", dtype: str = "fp32", low_memory: bool = False):
        """`backbone`: a Backbone, a model name, folder or .safetensors checkpoint (load.py), or a
        diffusers StableDiffusionPipeline / StableDiffusionXLPipeline already loaded. "auto" picks
        cuda, then mps, then cpu; a pipeline object stays where it is unless a device is named."""
        self.backbone = backbone if isinstance(backbone, Backbone) else load_backbone(backbone, device, dtype, low_memory)
        self.readout = Readout(self.backbone)
        self.sources = SourcePasses(self.backbone, self.readout, self.keep_sources)
        self.energies = EnergyGuide(self.backbone, self.readout, self.vit, self.clip)
        # low_memory: every guided step's backward recomputes activations instead of keeping them
        # (sampler/recompute.py): the same gradients, less memory, more time. Without it, only
        # the graphs that would keep more than a budget do ("auto", EnergyGuide._recomputes)
        self.energies.recompute = True if low_memory or getattr(self.backbone, "low_memory", False) else "auto"
        self._vit = self._clip = None  # loaded on first use: only scripts with ViT or CLIP terms pay for them

    def vit(self):
        """The ViT whose keys and CLS token the structure and style terms read (energies/vit.py):
        the shapes CLIP's image tower on the shapes model, DINO on Stable Diffusion."""
        if self._vit is None:
            b, kind = self.backbone, features_kind(self.backbone)
            self._vit = FM.load_vit(kind, b.model if kind == "shapes" else None)
        return self._vit

    def clip(self):
        """The CLIP of the directional CLIP term: the shapes CLIP, or OpenAI's ViT-B/16 (DiffusionCLIP's)."""
        if self._clip is None:
            b = self.backbone
            self._clip = FM.ClipScorer.for_shapes(b.model) if features_kind(b) == "shapes" else FM.ClipScorer.from_pretrained(device=b.device)
        return self._clip

    # ------------------------------------------------------------------------------------------

    def settings(self, program: P.Program) -> P.Settings:
        """The program's settings with the model's defaults filled in."""
        s = program.settings
        if not s.prompt:
            raise SteerCompileError("the script has no prompt", None, hint='add a line like: prompt "a red circle and a blue square"')
        d = self.backbone.sampling_defaults
        default_cfg = 1.0 if s.source and (s.invert or "ddim") == "ddim" else d.get("cfg", 7.5)  # DDIM inversion is exact at cfg 1
        filled = s.model_copy(update=dict(
            seed=DEFAULT_SEED if s.seed is None else s.seed,
            steps=d.get("steps", 50) if s.steps is None else s.steps,  # not `or`: steps 0 is a mistake, not "the default"
            cfg=default_cfg if s.cfg is None else s.cfg,
            model=s.model or self.backbone.name,
        ))
        for name in ("seed", "steps", "cfg", "return_step"):  # a Program built in Python skipped the compiler's checks
            problem = P.setting_problem(name, getattr(filled, name))
            if problem:
                raise SteerCompileError(f"{problem}, got {getattr(filled, name)}", s.spans.get(name))
        refuse_return_without_source(s)
        return filled

    def bind(self, program: P.Program, script_dir=None, warnings: list | None = None) -> list[BoundTerm]:
        """Resolve tokens and directions against this model (the model-dependent half of compiling);
        statements with nothing to do, or in conflict, go to `warnings`."""
        s = self.settings(program)
        return dsl.bind(program, s.prompt, self.backbone.tokenizer, self._direction_paths(script_dir), self.backbone.kind, warnings)

    def _direction_paths(self, script_dir=None) -> list[Path]:
        model_dir = getattr(getattr(self.backbone, "model", None), "path", None)
        return direction_files.search_path(script_dir, model_dir)

    def source(self, settings: P.Settings, progress: bool = True, script_dir=None, record=None) -> SourcePass:
        """The unedited trajectory of these settings (source.py), from memory when it was run
        before; recording `record` ("attn", "features"), or by default everything."""
        return self.sources.get(settings, progress, script_dir, **({} if record is None else {"record": record}))

    @torch.no_grad()
    def sample_plain(self, settings: P.Settings, progress: bool = False) -> torch.Tensor:
        """Plain classifier-free-guided DDIM, no probes: the baseline every cost is measured against."""
        b = self.backbone
        cond = b.encode_prompt(settings.prompt, settings.negative)
        return sample_ddim(denoiser(b, cond, settings.cfg), self.sources.noise(settings.seed), b.timesteps(settings.steps),
                           *b.schedule(), disable=not progress, clip=b.clip_x0)

    def run(self, program: P.Program, progress: bool = True, script_dir=None, guide_every: int | None = None) -> EditResult:
        """Run `program`. Each energy term's `every k` (its default, or the script's) takes its
        gradient at every k-th step and reuses it in between (see `reusing`); `guide_every`, if
        given, sets k for every term of this run (1: a fresh gradient at every step)."""
        # Everything that can be checked without sampling is checked first (the settings, the
        # names, the direction files, the images: check_program), so that a mistake is never
        # found after minutes of source pass.
        if guide_every is not None and (not isinstance(guide_every, int) or guide_every < 1):
            raise ValueError(f"guide_every is a whole number of steps, 1 or more, not {guide_every!r}")
        settings = self.settings(program)
        warnings: list = []
        bound = self.bind(program, script_dir, warnings)
        check_program(bound, settings, script_dir, self.backbone)
        self._prepare(bound, settings, script_dir)
        src = self.source(settings, progress, script_dir, record=source_needs(bound))
        resolve_relative(self.backbone, bound, src)
        warnings.extend(objects_in_one_place(self.backbone, bound, src, settings.prompt))
        b = self.backbone
        timesteps = run_timesteps(b, settings)  # with `return t0`, below t0 only
        steps = len(timesteps)
        curves: dict[str, list[tuple[int, float]]] = {x.label: [] for x in bound}
        last_maps: dict = {}
        others = [x for x in bound if x.kind != "drag"]
        cond_at = self._conditioning(others, src.cond, timesteps)
        guide = self._guide(others, src, cond_at, steps, curves, last_maps, settings.cfg, guide_every) if others else None
        denoise = denoiser(b, cond_at, settings.cfg)
        drags = [x for x in bound if x.kind == "drag" and x.weight != 0]
        plan = DragPlan(b, drags, src, timesteps, progress) if drags else None
        if plan is not None:  # DragNoise: optimise the bottleneck at one step, substitute it afterwards
            denoise, guide = plan.wrap(denoise, guide, src.cond)
        relocations = plan_relocations(b, others, src, steps, settings.prompt, plan)
        if relocations:  # first the copies, then the drag's optimisation, then the energies
            guide = timed_as("steer.relocation_and_guide", relocating(guide, relocations, src, b.schedule()[0], codec_of(b), denoise))
        guide = settling(guide, b, others, src, steps, settings.prompt, denoise)  # a restyled object back in its place, before any copy
        first = first_change(bound, steps, relocations, plan.step if plan is not None else None)
        edit_latents: list[torch.Tensor] = list(src.latents[:first])  # each step's z_t, whose maps the pictures ask for (TrajectoryMaps)
        with record_function("steer.edit_pass"):  # the loop alone, for the profile (sampler/bench/profile.py)
            final = src.final if first == steps else sample_ddim(
                denoise,
                src.latents[first],
                timesteps,
                *b.schedule(),
                guide=guide,
                disable=not progress,
                desc="edit",
                clip=src.clip,
                offsets=src.offsets,  # a photo's drift correction: with nothing to do, the edit gives back the photo
                blend=local_blend(b, bound, src) or layout_blend(b, bound, src, relocations),
                generator=torch.Generator().manual_seed(settings.seed + 1),  # for steps that ask for eta > 0
                callback=lambda d: edit_latents.append(d["z"].detach()),
                start=first,
            )
        with torch.no_grad():  # a finite latent can still decode to NaN (an fp16 VAE overflows)
            image = require_finite(b.decode(final), "the decoded image", steps, 0)[0].permute(1, 2, 0).cpu().numpy()
        ran = P.Program(settings=settings, terms=program.terms)
        return EditResult(image, src.image, final, ran, b.name, curves, last_maps.get("maps"), plan.outcome if plan else None,
                          warnings, source_maps=SourceMaps(src),
                          edit_maps=TrajectoryMaps(b, self.readout, edit_latents, timesteps, cond_at), tokenizer=b.tokenizer)

    def _prepare(self, bound: list[BoundTerm], settings: P.Settings, script_dir=None):
        """What terms need from outside the sampling loop: CLIP text features, a style image's CLS,
        each direction's state (prepared by its kind)."""
        b = self.backbone
        for x in bound:
            if x.kind == "clip":
                scorer = self.clip()
                x.state = ClipText(scorer.text([x.term.target])[0], scorer.text([x.term.source or dsl.plain_prompt(settings.prompt)])[0])
            elif x.kind == "direction":  # check_program found it fits this model
                d = x.direction
                kind = KINDS[d.kind]
                if x.term.window is None:
                    x.window = kind.window
                x.state = kind.prepare(x, d, b, settings)
            elif x.kind in ("recolour", "remove"):  # the prompt as the edit rewrites it, as a shift of its embedding
                x.state = PromptShift(PD.edit_direction(b, [dsl.plain_prompt(settings.prompt)], [x.edit_prompt], progress=False))  # both unweighted: the shift is the edit alone
            elif x.kind == "style":
                image = load_image(Path(script_dir or ".") / x.term.path, b.image_size(), x.term.span, what="style image")
                ref = torch.from_numpy(image).permute(2, 0, 1)[None].to(b.device) * 2 - 1
                with torch.no_grad():
                    x.state = StyleReference(self.vit()(ref)[1][0])

    @staticmethod
    def _by_kind(bound: list[BoundTerm]) -> dict[str, list[BoundTerm]]:
        """Each direction kind's terms with a non-zero weight, in KINDS order."""
        out = {name: [] for name in KINDS}
        for x in bound:
            if x.kind == "direction" and x.weight != 0:
                out[x.direction.kind].append(x)
        return out

    def _conditioning(self, bound: list[BoundTerm], cond, timesteps: list[int]):
        """i -> the Conditioning of step i: the source's, as the direction kinds active at that step
        make it (Pix2Pix-Zero's c + delta_c). Made once per set of active terms; the terms that
        shifted it ride along (Conditioning.by), to be named if what it conditions is not finite."""
        by_kind = self._by_kind(bound)
        by_kind["prompt"] = by_kind["prompt"] + [x for x in bound if x.kind in ("recolour", "remove") and x.weight != 0]
        steps = len(timesteps)
        made: dict[tuple, object] = {}

        def at(i):
            active = {name: [x for x in terms if x.active(i / steps)] for name, terms in by_kind.items()}
            key = tuple(id(x) for terms in active.values() for x in terms)
            if key not in made:
                c = cond
                for name, terms in active.items():
                    if terms:
                        c = self._shifted(KINDS[name], c, terms, i, timesteps[i])
                made[key] = c
            return made[key]

        return at

    @staticmethod
    def _shifted(kind, cond, terms: list[BoundTerm], i: int, t: int):
        """kind.condition(cond, terms), checked finite and marked with the terms that shifted it."""
        c = kind.condition(cond, terms)
        if c is cond:
            return c
        for value in (c.cond, *c.added.values()):
            require_finite(value, "conditioning", i, t, terms)
        return dataclasses.replace(c, by=(*cond.by, *terms))

    def _guide(self, bound: list[BoundTerm], src: SourcePass, cond_at, steps: int, curves, last_maps, cfg: float,
               guide_every: int | None = None):
        """The edit pass's guide(i, t, z): the energies' gradients, then each direction kind's action."""
        by_kind = self._by_kind(bound)
        regions = within_regions(self.backbone, [x for x in bound if x.kind == "direction"], src)
        energy_step = reusing(self.energies.step, guide_every)

        def guide(i, t, z):
            cond = cond_at(i)
            energies = [x for x in bound if x.kind in ENERGIES and x.active(i / steps)]
            with record_function("steer.guide"):
                g = energy_step(energies, z, i, t, src, cond, curves, last_maps, cfg=cfg).blame("prediction", cond.by)
            step = Step(self.backbone, z, i, t, i / steps, cond, cfg, regions)
            for name, terms in by_kind.items():
                if terms:
                    g = self._kind_guide(KINDS[name], g, terms, step)
            return g

        return guide

    @staticmethod
    def _kind_guide(kind, g: Guidance, terms: list[BoundTerm], step: Step) -> Guidance:
        """kind.guide(g, terms, step), with the kind's active terms named on every shift it made."""
        new = kind.guide(g, terms, step)
        active = [x for x in terms if x.active(step.progress)] or terms
        for name in SHIFTS:
            if getattr(new, name) is not getattr(g, name):
                new = new.blame(name, active)
        return new



def timed_as(name: str, guide):
    """`guide`, each call inside a profiler range `name` (free when no profiler runs)."""

    def timed(i, t, z):
        with record_function(name):
            return guide(i, t, z)

    return timed


def reusing(step, every: int | None = None):
    """EnergyGuide.step, taken afresh only every k-th step of an unchanged set of active terms and
    its gradients reused in between (`every k`; it changes results). k is the smallest `every` of
    the active terms (one guided forward serves them all), or `every` for all when given. The
    reused Guidance carries no eps_cond or eps_uncond (they were taken at another z_t), so the
    denoiser runs both halves; the energy curves skip the reused steps. k = 1 is step itself."""
    if every == 1:
        return step
    last = {"key": None, "at": None, "g": None}

    def step_every(active, z, i, t, *args, **kw):
        key = tuple(id(x) for x in active)
        k = every or min((x.every for x in active), default=1)
        if not active or key != last["key"] or i - last["at"] >= k:
            g = step(active, z, i, t, *args, **kw)
            last.update(key=key, at=i, g=g)
            return g
        return dataclasses.replace(last["g"], eps_cond=None, eps_uncond=None)

    return step_every

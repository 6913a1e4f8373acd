"""DragNoise in the sampler (Liu et al., CVPR 2024, arXiv 2404.01050; docs/methods.md, section 7).

At one step t_e (the drag's window start; DragNoise: 35 of 50 inversion steps, i.e. progress 0.3)
the UNet bottleneck s = mid_block(z_t) is optimised with Adam so that decoder features move each
handle towards its target (energies/drag.py), tracking the handles after every iteration, until
all are within the stopping distance or the iteration limit. The optimised s is then substituted
for the mid block's output at every later step until the window's end ("propagation").

The substitution is a forward hook on `unet.mid_block`, installed around each UNet call and
removed in a `finally`, like the probes and the h-space shift.

A drag `within token "word"` first copies that object's region of z_t along the drag (the mean of
its drags' vectors), as RegionDrag does (Lu et al., ECCV 2024) and as steer's layout terms relocate
objects (energies/relocate.py); the optimisation then starts from the copied handles and only has
to do what a rigid copy cannot (several drags that pull one object apart). Why: on the shapes
model the bottleneck is 8x8 and its layout lives in the skip connections, so optimising the
bottleneck alone moved the tracked features but not the object (0 of 16 seeds within 0.1,
docs/bench-results.md). A drag `within` a box, or with no region, is DragNoise alone.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from energies.errors import SteerCompileError
from energies import defaults as D
from energies import drag as G
from energies import relocate as R

from .guided import Guidance, after_move, ddim_step, pred_x0, step_alphas
from .hooks import forward_hook
from .probes import ProbeStore, probing


@contextlib.contextmanager
def substituting(unet, s: torch.Tensor):
    """Replace the mid block's output by `s` (1, C, h, w), for every batch row, inside the block."""

    def hook(module, inputs, output):
        h = output[0] if isinstance(output, tuple) else output
        if tuple(h.shape[-3:]) != tuple(s.shape[-3:]):
            raise ValueError(f"the bottleneck is {tuple(s.shape[-3:])} but the mid block gave {tuple(h.shape[-3:])}")
        new = s.to(h.dtype).expand(h.shape[0], *s.shape[1:])
        return (new, *output[1:]) if isinstance(output, tuple) else new

    with forward_hook(unet.mid_block, hook):
        yield


@dataclass
class DragOutcome:
    """What the optimisation did, for the result and the bench."""

    step: int
    iterations: int
    handles: list[tuple[float, float]]  # where tracking found the handles at the end, image units
    distances: list[float] = field(default_factory=list)  # largest handle-target distance per iteration, image units


def feature_map(store: ProbeStore, module: str, size: tuple[int, int]) -> torch.Tensor:
    """The supervision features (C, H, W): the decoder block's output, bilinearly resized (DragNoise
    upsamples up_blocks[2] of SD to half the image size)."""
    f = store.features[module][0].float()
    return f if tuple(f.shape[-2:]) == tuple(size) else F.interpolate(f[None], size=size, mode="bilinear", align_corners=False)[0]


def optimise_drag(backbone, z, t: int, a_t, a_prev, context, added, handles, targets, weights=None, region=None,
                  progress: bool = True, what: str = "bottleneck"):
    """The drag's optimisation at one step. Returns (the optimised tensor, DragOutcome).

    what = "bottleneck": DragNoise, optimise s = mid_block(z_t) and return it;
    what = "latent": DragDiffusion (its parent method), optimise z_t itself and return it.
    handles, targets: lists of (x, y) in image units. region: (H, W) latent mask of what may
    change (1) or None (everything may). Only the conditional branch is run (CFG 1, as both do)."""
    unet, d = backbone.unet, backbone.defaults
    size = tuple(max(1, round(n * d.drag_scale)) for n in backbone.image_size())
    module = d.drag_features
    with torch.no_grad():
        store = ProbeStore(tuple(z.shape[-2:]))
        with probing(unet, store, (), [module, "mid_block"]):
            eps0 = backbone.eps(z, t, context, added)
        s0 = store.features["mid_block"]
        feat0 = feature_map(store, module, size)
        z_prev0 = ddim_step(pred_x0(z, eps0, a_t), eps0, a_prev)
    h = torch.stack([G.to_pixels(p, size) for p in handles])
    goal = torch.stack([G.to_pixels(p, size) for p in targets])
    f0 = G.features_at(feat0, h, d.drag_track_patch)
    latent = what == "latent"
    s = (z if latent else s0).detach().clone().float().requires_grad_(True)
    opt = torch.optim.Adam([s], lr=D.DRAG_LR)
    substitute = contextlib.nullcontext if latent else lambda: substituting(unet, s)
    scale = 1000.0 if backbone.dtype == torch.float16 else 1.0  # fp16 gradients underflow unscaled (DragNoise: GradScaler)
    outcome = DragOutcome(step=-1, iterations=0, handles=[])
    unit = 1.0 / max(size)
    bar = tqdm(range(D.DRAG_ITERATIONS), disable=not progress, desc="drag", leave=False, dynamic_ncols=True)
    for it in bar:
        with torch.enable_grad():
            store = ProbeStore(tuple(z.shape[-2:]))
            zz = s if latent else z
            with probing(unet, store, (), [module]), substitute():
                eps = backbone.eps(zz, t, context, added)
            feat = feature_map(store, module, size)
            if it > 0:  # DragDiffusion tracks on this iteration's features, before the update
                h = G.track(f0, feat.detach(), h, D.DRAG_TRACK_RADIUS)
            dist = float((h - goal).norm(dim=-1).max()) * unit
            outcome.distances.append(dist)
            bar.set_postfix(distance=f"{dist:.3f}")
            if G.reached(h, goal, D.DRAG_STOP_PIXELS):
                break
            loss = G.alignment_loss(feat, h, goal, d.drag_patch_radius, weights, done_within=D.DRAG_STOP_PIXELS)
            if region is not None:
                z_prev = ddim_step(pred_x0(zz, eps, a_t), eps, a_prev)
                loss = loss + D.DRAG_REGION_WEIGHT * G.region_loss(z_prev, z_prev0, region.to(z_prev))
            (grad,) = torch.autograd.grad(loss * scale, s)
        if latent and region is not None:  # z_t outside the region that may change is left as it is
            grad = grad * region.to(grad)
        s.grad = grad / scale
        opt.step()
        opt.zero_grad(set_to_none=True)
        outcome.iterations = it + 1
    bar.close()
    outcome.handles = [G.to_units(p, size) for p in h]
    return s.detach().to(z.dtype if latent else s0.dtype), outcome


class DragPlan:
    """The drags of one run: optimised together at one step, then carried to the window's end."""

    def __init__(self, backbone, terms, src, timesteps: list[int], progress: bool = True):
        starts = sorted({x.window[0] for x in terms})
        if len(starts) > 1:
            late = next(x for x in terms if x.window[0] == starts[1])
            raise SteerCompileError("every drag of a script acts at the same step", late.term.span,
                                    hint=f"give all drags the same window start (the first starts at {starts[0]:g})")
        ways = sorted({x.placement for x in terms})
        if len(ways) > 1:
            raise SteerCompileError("every drag of a script optimises the same tensor", terms[-1].term.span,
                                    hint="use via latent on all of them, or on none")
        self.what = ways[0]  # "bottleneck": DragNoise; "latent": DragDiffusion
        self.backbone, self.terms, self.timesteps, self.progress = backbone, terms, timesteps, progress
        self.steps = steps = len(timesteps)
        self.step = min(steps - 1, round(starts[0] * steps))
        self.end = max(x.window[1] for x in terms)
        self.region = self._region(terms, src)
        self.copies = self._copies(terms, src)
        self.s: torch.Tensor | None = None
        self.outcome: DragOutcome | None = None

    def _region(self, terms, src) -> torch.Tensor | None:
        """The latent mask of what may change, or None if any drag leaves the whole image free. A
        token's region is its object (from the source's late attention maps, as relocation reads
        them) together with where each of its drags takes it; a box is itself."""
        hw = tuple(self.backbone.latent_shape()[1:])
        masks = []
        for x in terms:
            t = x.term
            if t.box is not None:
                masks.append(G.box_mask(t.box, hw))
            elif x.token:
                m = src.object_mask(x.token, hw)
                moved = R.transform(m[None], (t.target[0] - t.handle[0], t.target[1] - t.handle[1]))[0]
                masks.append(R.dilate(torch.maximum(m, moved), 1))
            else:
                return None
        return torch.stack(masks).amax(0).to(self.backbone.device)

    def _copies(self, terms, src) -> dict[tuple[int, ...], tuple[torch.Tensor, tuple[float, float]]]:
        """token -> (the object's latent mask, the shift to copy it by) for the drags within a token."""
        hw = tuple(self.backbone.latent_shape()[1:])
        by_token: dict[tuple[int, ...], list] = {}
        for x in terms:
            if x.token and x.term.box is None:
                by_token.setdefault(tuple(x.token), []).append(x.term)
        copies = {}
        for token, drags in by_token.items():
            mask = src.object_mask(token, hw)
            if mask.sum() > 0:
                dx = sum(d.target[0] - d.handle[0] for d in drags) / len(drags)
                dy = sum(d.target[1] - d.handle[1] for d in drags) / len(drags)
                copies[token] = (mask.to(self.backbone.device), (dx, dy))
        return copies

    def starts(self) -> list[tuple[float, float]]:
        """Where each handle is when the optimisation starts: carried along by its object's copy."""
        out = []
        for x in self.terms:
            _, (dx, dy) = self.copies.get(tuple(x.token), (None, (0.0, 0.0)))
            out.append((x.term.handle[0] + dx, x.term.handle[1] + dy))
        return out

    def carrying(self, i: int):
        """The substitution for step i: active from the edit step until the window's end."""
        if self.s is None or self.what == "latent" or i < self.step or i / self.steps >= self.end and self.end < 1.0:
            return contextlib.nullcontext()
        return substituting(self.backbone.unet, self.s)

    def optimise(self, z, t: int, cond):
        b = self.backbone
        alphas, final = b.schedule()
        a = step_alphas(alphas, self.timesteps, final)
        self.s, self.outcome = optimise_drag(
            b, z, t, a[self.step].to(z.device), a[self.step + 1].to(z.device), cond.cond, cond.added,
            self.starts(), [x.term.target for x in self.terms], [x.weight for x in self.terms],
            self.region, self.progress, what=self.what,
        )
        self.outcome.step = self.step

    def wrap(self, denoise, guide, cond):
        """The run's denoiser and guide with the drag in them: optimise at the edit step, then
        substitute the bottleneck in every UNet call of the later steps (guide's and denoiser's)."""

        def denoise_(i, t, z, eps_cond=None, eps_uncond=None):
            with self.carrying(i):
                return denoise(i, t, z, eps_cond, eps_uncond)

        def guide_(i, t, z):
            moved = None
            if i == self.step and self.s is None:
                self.optimise(z, t, cond)
                if self.what == "latent":  # DragDiffusion: continue from the optimised z_t
                    moved = self.s
            here = z if moved is None else moved
            with self.carrying(i):
                g = guide(i, t, here) if guide is not None else Guidance()
            if moved is not None:
                g = after_move(g, z, moved).blame("latent", self.terms)  # first the drag, then the other terms' own step
            if self.s is not None and i >= self.step and self.what != "latent":
                g = g.blame("prediction", self.terms)  # the substituted bottleneck makes this step's prediction
            return g

        return denoise_, guide_

"""Energy guidance: the autograd core of an edit step.

At step i, one conditional forward at z_t runs with only the probes the active terms read; the
terms' energies are summed per placement and differentiated with torch.autograd.grad (w.r.t.
z_t, or w.r.t. the predicted x0 for the x0 placement, which needs no backward through the UNet).
Model weights stay frozen. A non-finite prediction, energy or gradient stops the run at the
statement and step where it appeared.

The guided forward records a graph only up to the last probe the active terms read (graph_until):
the rest of the UNet, which makes eps_c but nothing the energies read, runs without autograd;
when every active term acts via x0, none of it does (EnergyGuide._graph).
Autograd only ever walks back from the energy, so the gradients are the same bits; what it saves
is the graph's memory and bookkeeping over the rest of the forward (docs/performance.md).
"""

from __future__ import annotations

import contextlib

import torch
from torch.autograd.profiler import record_function

from energies.errors import SteerRuntimeError
from energies.terms import ENERGIES, BoundTerm, Features

from .guided import Guidance, pred_x0, require_finite
from .hooks import forward_hook
from .probes import ProbeStore, probing
from .recompute import GRAPH_BUDGET, graph_bytes, recomputing, weights_bytes

LOSS_SCALE = 1000.0  # Self-Guidance's fp16 energy scale (sg_loss_rescale)


class ProbesDone(Exception):
    """Raised inside a forward (graph_until with stop) once every probed module has run: the rest
    of the network computes nothing anyone reads."""


@contextlib.contextmanager
def graph_until(model, names, stop: bool = False):
    """Inside the block, a forward of `model` records autograd's graph only until each module in
    `names` has run (once): then grad mode goes off for the rest of that forward, and is restored
    when the block ends; with `stop`, the forward ends there instead (ProbesDone, which the
    caller catches). `fired` counts the modules that ran, for tests."""
    left = set(names)
    state = {"fired": 0}
    was = torch.is_grad_enabled()

    def hook(name):
        def ran(module, inputs, output):
            state["fired"] += 1
            left.discard(name)
            if not left:
                torch.set_grad_enabled(False)
                if stop:
                    raise ProbesDone

        return ran

    with contextlib.ExitStack() as hooks:
        for name in set(names):
            hooks.enter_context(forward_hook(model.get_submodule(name), hook(name)))
        try:
            yield state
        finally:
            torch.set_grad_enabled(was)


class EnergyGuide:
    """The energies of one backbone: its readout, and the ViT and CLIP that x0 terms read
    (`vit()` and `clip()` load them on first use)."""

    cut_graph = True  # graph_until the last probe (False: the whole forward, as before; for the profile's comparison)
    # recompute the probe-free sub-blocks in the backward (sampler/recompute.py): True always
    # (Editor(low_memory=True)), False never, "auto" where the graph would keep more than
    # GRAPH_BUDGET of the denoiser's weights (measured once per graph, _recomputes)
    recompute: bool | str = "auto"

    def __init__(self, backbone, readout, vit, clip):
        self.backbone, self.readout = backbone, readout
        self.vit, self.clip = vit, clip
        self._graph_sizes: dict[tuple, int] = {}  # "auto": bytes each guided graph keeps, by its probes and shape
        self._weights_bytes: int | None = None

    def image_features(self, image: torch.Tensor, needs: set[str], f: Features) -> Features:
        """Fill the x0 family's fields of `f` from a decoded image (1, 3, H, W) in [-1, 1]."""
        f.image = image[0]
        pooled = None
        if "vit" in needs:
            keys, cls, pooled = self.vit().with_pooled(image)
            f.vit_keys, f.vit_cls = keys[0], cls[0]
        if "clip" in needs:  # one tower forward for both where the ViT is CLIP's own tower
            clip = self.clip()
            shared = pooled is not None and clip.shares_tower(self.vit())
            f.clip_image = (clip.from_pooled(pooled) if shared else clip.image(image))[0]
        return f

    def source_features(self, src, i: int, needs: set[str]) -> Features:
        """The source pass's features at step i, with the x0 family's computed on first use."""
        f = src.require(needs).features[i]
        if "image" in needs and (f.image is None or ("vit" in needs and f.vit_keys is None) or ("clip" in needs and f.clip_image is None)):
            with torch.no_grad():
                self.image_features(self.backbone.decode(src.x0s[i]) * 2 - 1, needs, f)
        return f

    def step(self, active: list[BoundTerm], z, i: int, t: int, src, cond, curves, last_maps, cfg: float | None = None) -> Guidance:
        """The Guidance of the active energy terms at step i: gradients per placement, and the
        conditional eps of the guided forward (reused by the denoiser when z_t does not move).
        Given the run's `cfg`, a forward that needs neither probes nor a graph (every term via x0)
        is CFG's batched one, and its unconditional eps is reused too."""
        b = self.backbone
        if not active:
            return Guidance()
        needs = set().union(*(x.needs for x in active))
        store = ProbeStore(b.latent_shape()[1:])
        eps_u = None
        with torch.enable_grad():
            z_ = z.detach().requires_grad_(True)
            feature_modules = [self.readout.feature_module] if "features" in needs else []
            attn = self.readout.probed(needs)
            batched = cfg is not None and cfg != 1 and not attn and not feature_modules and self._off_graph(active)
            stop = self._stops_at_probes(active, needs) and bool(attn or feature_modules)
            eps_c = None
            probes = [*attn, *feature_modules]

            def forward_counted():  # the guided forward below up to its last probe (no graph after it), for _recomputes
                try:
                    with probing(b.unet, ProbeStore(b.latent_shape()[1:]), attn, feature_modules), self._graph(active, needs, probes, True):
                        b.eps(z.detach().requires_grad_(True), t, cond.cond, cond.added)
                except ProbesDone:
                    pass

            recompute = self._recomputes(active, needs, probes, z, forward_counted)
            try:
                with record_function("steer.guided_forward"), probing(b.unet, store, attn, feature_modules), \
                        self._graph(active, needs, probes, stop), recomputing(b.unet, enabled=recompute):
                    if batched:  # plain sampling's forward: the x0 terms' gradient never enters the UNet
                        eps_u, eps_c = b.eps_both(z_, t, cond, i)
                    else:
                        eps_c = b.eps(z_, t, cond.cond, cond.added)
            except ProbesDone:  # every term moves z_t: the denoiser runs afresh at the new z_t anyway
                pass
            # a prompt direction's shift can make the prediction itself non-finite: name it, not the
            # energy terms that read the prediction
            if eps_c is not None:
                require_finite(eps_c.detach(), "prediction", i, t, cond.by)
            else:  # the forward stopped at its probes: what they read is what the shift could spoil
                for value in (*store.attn.values(), *store.features.values()):
                    require_finite(value.detach(), "features", i, t, cond.by)
            with record_function("steer.energies"):
                now, x0, total, by = self._energies(active, needs, store, attn, z_, eps_c, i, t, src, curves)
            grads = {}
            scale = LOSS_SCALE if b.dtype == torch.float16 else 1.0  # fp16 gradients underflow unscaled
            with record_function("steer.backward"):
                for k, p in enumerate(total):  # one backward per placement group; x0's stops before the UNet
                    wrt = x0 if p == "x0" else z_
                    grads[p] = torch.autograd.grad(total[p] * scale, wrt, retain_graph=k + 1 < len(total))[0].float() / scale
        for p, g in grads.items():
            require_finite(g, f"the gradient of the {p}-placed terms", i, t, by[p])
        if now.maps is not None:
            last_maps["maps"] = now.maps.detach()
        return Guidance(eps=grads.get("eps"), latent=grads.get("latent"), mean=grads.get("mean"), x0=grads.get("x0"),
                        eps_cond=None if eps_c is None else eps_c.detach(), eps_uncond=None if eps_u is None else eps_u.detach(),
                        by={p: tuple(terms) for p, terms in by.items()})

    def _graph(self, active: list[BoundTerm], needs: set[str], probes: list[str], stop: bool = False):
        """How much of the guided forward autograd records: nothing when every term acts via x0
        (its gradient is taken w.r.t. the predicted x0, which pred_x0 makes from z_t outside the
        forward); all of it when a term reads the predicted image via another placement (the
        gradient crosses eps_c); else up to the last probe (graph_until), and with `stop` nothing
        after it at all."""
        if not self.cut_graph:
            return contextlib.nullcontext()
        if self._off_graph(active):
            return torch.no_grad()
        if "image" in needs:
            return contextlib.nullcontext()
        return graph_until(self.backbone.unet, probes, stop)

    def _recomputes(self, active: list[BoundTerm], needs: set[str], probes: list[str], z, forward) -> bool:
        """Whether the guided forward's probe-free blocks recompute in the backward. "auto": a
        graph through the predicted image always does (the decoder at image size and the towers
        keep more than the shapes UNet's weights weigh, 16 MB); a graph that ends in the UNet does
        when it would keep more than GRAPH_BUDGET of the denoiser's weights, counted once per
        probe set and latent shape by running `forward` to its last probe with a graph that keeps
        nothing (graph_bytes). Recomputing a small graph costs more than it saves: prompt direction + keep
        attention keeps 2.4 MB on the shapes model and recomputing it cost 1.35x -> 1.59x plain."""
        if self.recompute != "auto":
            return bool(self.recompute)
        if self._off_graph(active):
            return False  # no graph in the UNet at all
        if "image" in needs:
            return True
        key = (tuple(probes), self.cut_graph, tuple(z.shape), z.dtype)
        if key not in self._graph_sizes:
            with torch.enable_grad():
                self._graph_sizes[key] = graph_bytes(forward, self.backbone.unet)
        if self._weights_bytes is None:
            self._weights_bytes = weights_bytes(self.backbone.unet)
        return self._graph_sizes[key] > GRAPH_BUDGET * self._weights_bytes

    def _stops_at_probes(self, active: list[BoundTerm], needs: set[str]) -> bool:
        """True when nothing reads the guided forward's output: every term moves z_t itself (via
        latent, Pix2Pix-Zero's placement), so the denoiser predicts afresh at the moved z_t, and
        none reads the predicted image. The forward can end at its last probe."""
        return self.cut_graph and "image" not in needs and all(x.placement == "latent" for x in active)

    def _off_graph(self, active: list[BoundTerm]) -> bool:
        """True when the guided forward needs no graph at all: every term acts via x0."""
        return self.cut_graph and all(x.placement == "x0" for x in active)

    def _energies(self, active, needs, store, attn, z_, eps_c, i, t, src, curves):
        """(features now, the predicted x0 if read, energy per placement, terms per placement)."""
        b = self.backbone
        now = self.readout.features(store) if attn else Features()
        x0 = None
        if "image" in needs:  # the predicted x0 of the conditional forward, decoded (through the VAE)
            x0 = pred_x0(z_, eps_c.float(), b.schedule()[0][t].to(z_.device))
            if src.clip is not None:
                x0 = x0.clamp(-src.clip, src.clip)
            towers = [self.vit().tower] if "vit" in needs else []
            towers += [self.clip().clip] if "clip" in needs else []
            with recomputing(getattr(b, "vae", None), *towers, enabled=self.recompute in (True, "auto")):
                self.image_features(b.decode(x0) * 2 - 1, needs, now)
        ref = self.source_features(src, i, needs)
        total: dict[str, torch.Tensor] = {}
        by: dict[str, list[BoundTerm]] = {}
        for x in active:
            e = x.weight * ENERGIES[x.kind](x, now, ref)
            if not torch.isfinite(e):
                raise SteerRuntimeError(f"the energy of `{x.label}` is not finite at step {i} (t = {t})", x.term.span,
                                        hint="lower its weight, or narrow its window with @ a..b")
            curves[x.label].append((i, float(e.detach())))
            if x.placement == "x0" and x0 is None:
                raise SteerRuntimeError(f"`{x.label}` cannot act via x0: it does not read the predicted image", x.term.span,
                                        hint="use via eps, latent or mean")
            total[x.placement] = total.get(x.placement, 0) + e
            by.setdefault(x.placement, []).append(x)
        return now, x0, total, by

"""Recompute instead of remember: activation checkpointing for the guided forward's backward.

A guided step's backward needs the activations its forward saved, and the model's weights are
frozen, so those activations are the whole of an edit's extra memory over plain sampling: on the
shapes model a move + keep appearance kept 10 MB of them (every block from the encoder to the
decoder block that keep appearance reads), an x0 edit 16 MB (the VAE decoder at image size and
the ViT). Inside `recomputing(...)`, the probe-free blocks of the given models (a UNet's whole
down, mid and up blocks where no probe is in them, else their resnets, samplers, feed-forwards
and unprobed attention; an MMDiT's blocks; a ViT's MLPs) run under torch's non-reentrant
checkpoint when autograd records them: they keep only their inputs, and the backward runs each
of them again to get the rest. The values are the same computation done twice, so the gradients
are the same bits (tested); the price is one more forward of those sub-blocks per guided step,
where the memory falls by half or more (docs/performance.md, section 13).

Only modules whose recomputation is the same computation are wrapped: none that is, or holds, a
module with a probe processor or a forward hook installed when the block is entered (a hook that
shifts an output and is gone by the backward would make the recomputation differ; a probed
layer's processor is restored before the backward too). Install it innermost, after the probes
and hooks of the call. Plain sampling never records a graph and so never recomputes anything.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
from torch.utils.checkpoint import checkpoint

# By default (EnergyGuide.recompute "auto") a guided graph that ends in the denoiser recomputes
# only when it would keep more than this share of the denoiser's weights. It is the project's
# memory bar read as a budget: a graph within it keeps a guided run's peak, weights included,
# within 1.15 of plain sampling's; above it, the recomputation is worth its time.
GRAPH_BUDGET = 0.15


def _probe_free(modules) -> bool:
    """No forward hook, pre-hook or steer probe processor on any of `modules` (a unit and
    everything below it)."""
    for m in modules:
        if m._forward_hooks or m._forward_pre_hooks:
            return False
        if type(m.__dict__.get("processor")).__module__ == "sampler.probes":  # __dict__: a miss via getattr is slow
            return False
    return True


def recomputable(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The outermost probe-free units of `model`, in forward order. Units are the blocks worth
    recomputing whole: a UNet's down, mid or up block, a transformer (Transformer2DModel,
    BasicTransformerBlock, an MMDiT's joint or single block), an attention layer, a feed-forward
    or MLP (transformers' CLIP and DINO towers), a resnet, an up/down sampler. A unit holding a
    probe is not wrapped; its probe-free units inside it are (a probed transformer block gives
    its feed-forward and self-attention)."""
    picked: list[torch.nn.Module] = []
    covered: set[int] = set()
    for unit, below in _units(model):
        if id(unit) in covered or not _probe_free(below):
            continue
        picked.append(unit)
        covered.update(map(id, below))
    return picked


_UNITS: "weakref.WeakKeyDictionary[torch.nn.Module, list]" = weakref.WeakKeyDictionary()


def _units(model: torch.nn.Module) -> list[tuple[torch.nn.Module, tuple]]:
    """(unit, the unit and the modules under it) in pre-order, found once per model: walking a
    UNet's ~700 modules at every guided step cost 3 ms on the shapes model. Which units are
    probe-free changes with each call's probes, so that is checked at each install."""
    if model not in _UNITS:
        _UNITS[model] = [(m, tuple(m.modules())) for m in model.modules() if _is_unit(m)]
    return _UNITS[model]


def _is_unit(m: torch.nn.Module) -> bool:
    from diffusers.models.attention import BasicTransformerBlock, FeedForward
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D

    name = type(m).__name__
    return (isinstance(m, (BasicTransformerBlock, Attention, FeedForward, ResnetBlock2D, Upsample2D, Downsample2D))
            or name.endswith("MLP") or name in _BLOCKS)


# whole blocks, by class name (diffusers moves them between modules across versions): a UNet's
# down, mid and up blocks and their transformers (one checkpoint for a probe-free block costs less
# than one per resnet: a move + keep appearance 2.34 -> 2.29 s, 3.7 -> 3.1 MB), an MMDiT's blocks
_BLOCKS = frozenset({"CrossAttnDownBlock2D", "DownBlock2D", "UNetMidBlock2DCrossAttn", "CrossAttnUpBlock2D", "UpBlock2D",
                     "Transformer2DModel", "JointTransformerBlock", "FluxTransformerBlock", "FluxSingleTransformerBlock"})


def _checkpointed(forward):
    def run(*args, **kwargs):
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return run


@contextlib.contextmanager
def recomputing(*models: torch.nn.Module | None, enabled: bool = True):
    """Inside the block, the recomputable sub-blocks of `models` (None skipped) keep only their
    inputs for the backward. Restored in a `finally`."""
    wrapped: list[torch.nn.Module] = []
    try:
        if enabled:
            for model in models:
                if model is None:
                    continue
                for m in recomputable(model):
                    if "forward" in vars(m):  # already wrapped by an enclosing block
                        continue
                    m.forward = _checkpointed(m.forward)  # an instance attribute over the class's method
                    wrapped.append(m)
        yield wrapped
    finally:
        for m in wrapped:
            del m.forward  # back to the class's method


def weights_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's parameters: what GRAPH_BUDGET is a share of (the denoiser's)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def graph_bytes(run, frozen: torch.nn.Module) -> int:
    """Bytes of the activations autograd would keep for run()'s backward: each tensor its ops
    save, counted once (a storage saved twice while alive is one), the frozen model's weights not
    counted. Nothing is kept: the count is taken as each tensor is saved and the tensor dropped,
    so run() costs a forward without a graph's memory, and its graph can never be walked back."""
    weights = {t.untyped_storage().data_ptr() for t in (*frozen.parameters(), *frozen.buffers())}
    alive: dict[int, weakref.ref] = {}
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in weights or (key in alive and alive[key]() is not None):
            return None
        alive[key] = weakref.ref(t)  # dead once freed, so an address the allocator reuses counts again
        total += storage.nbytes()
        return None

    def unpack(_):
        raise RuntimeError("graph_bytes' graph keeps nothing and cannot be walked back")

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        run()
    return total

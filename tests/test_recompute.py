"""Recomputing the guided backward's activations (sampler/recompute.py, Editor(low_memory=True)):
the same image, bit for bit, with less kept for the backward; never across a probe; restored."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

import dsl
from sampler.probes import ProbeStore, cross_attention_layers, probing
from sampler.recompute import recomputable, recomputing

MOVE = 'prompt "a red circle and a blue square"\nseed 0\nsteps 4\ncentroid(token "circle") -> (0.7, 0.5)\nkeep appearance'
X0 = 'prompt "a red circle and a blue square"\nseed 0\nsteps 4\nclip "a green circle and a blue square"\nkeep structure'


def kept_bytes(run) -> tuple[object, int]:
    """run()'s result, and the bytes of the activations autograd keeps for backwards during it
    (not the frozen weights, which every backward shares)."""
    kept, seen = 0, set()

    def pack(t):
        nonlocal kept
        key = t.untyped_storage().data_ptr()
        if not isinstance(t, torch.nn.Parameter) and key not in seen:
            seen.add(key)
            kept += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = run()
    return result, kept


@contextlib.contextmanager
def recompute(editor, on: bool):
    was = editor.energies.recompute
    editor.energies.recompute = on
    try:
        yield
    finally:
        editor.energies.recompute = was


@pytest.mark.parametrize("text", [MOVE, X0], ids=["attention", "x0"])
def test_the_same_image_with_less_kept_on_the_shipped_model(shapes_editor, text):
    program = dsl.compile(dsl.parse(text))
    shapes_editor.run(program, progress=False)  # the source pass, cached: both runs below are the edit alone
    with recompute(shapes_editor, False):
        plain, kept_plain = kept_bytes(lambda: shapes_editor.run(program, progress=False))
    with recompute(shapes_editor, True):
        low, kept_low = kept_bytes(lambda: shapes_editor.run(program, progress=False))
    assert np.array_equal(plain.image, low.image)  # the same computation twice: the same gradients
    assert kept_low < 0.6 * kept_plain, (kept_low, kept_plain)  # measured: 0.37 (attention), 0.48 (x0)


def test_nothing_is_left_wrapped_after_the_block_even_when_it_raises(shapes_editor):
    unet = shapes_editor.backbone.unet
    with pytest.raises(RuntimeError), recomputing(unet) as wrapped:
        assert wrapped and all("forward" in vars(m) for m in wrapped)
        raise RuntimeError("boom")
    assert not any("forward" in vars(m) for m in unet.modules())


def test_a_probed_layer_or_a_hooked_module_is_never_recomputed(shapes_editor):
    unet = shapes_editor.backbone.unet
    layers = cross_attention_layers(unet, ("up_blocks.1",))
    hooked = unet.get_submodule("down_blocks.0.resnets.0")
    everything = recomputable(unet)
    handle = hooked.register_forward_hook(lambda m, i, o: None)
    try:
        with probing(unet, ProbeStore((16, 16)), layers):
            picked = recomputable(unet)
    finally:
        handle.remove()
    inside = {id(m) for p in picked for m in p.modules()}
    assert all(id(unet.get_submodule(n)) not in inside for n in layers)
    assert id(hooked) not in inside
    # unprobed, the up block is recomputed whole; probed, not, but its transformer block's
    # feed-forward still is
    up = unet.get_submodule("up_blocks.1")
    block = unet.get_submodule(layers[0].rsplit(".", 1)[0])
    assert up in everything and up not in picked and block not in picked and block.ff in picked


def test_low_memory_edits_on_stable_diffusion_run_and_match(tmp_path):
    """Stable Diffusion's --low-memory used diffusers' block checkpointing, whose recomputation runs
    a probed block without its probe: torch refused every attention edit (CheckpointError)."""
    from tiny import tiny_sd_pipeline

    from sampler.backbones.stable_diffusion import StableDiffusionBackbone
    from sampler.editor import Editor

    pipe = tiny_sd_pipeline(tmp_path)
    program = dsl.compile(dsl.parse('prompt "a red square and a blue triangle"\nseed 0\nsteps 4\n'
                                    'centroid(token "square") -> (0.7, 0.5)\nkeep appearance'))
    images = [Editor(StableDiffusionBackbone(pipe, low_memory=low)).run(program, progress=False).image for low in (False, True)]
    assert np.allclose(images[0], images[1], atol=1e-5)  # attention slicing sums in another order


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_low_memory_on_flow_transformers_gives_the_same_edit(kind, request):
    editor = request.getfixturevalue(kind)
    program = dsl.compile(dsl.parse('prompt "a red circle and a blue square"\nsteps 3\ncentroid(token "circle") -> (0.7, 0.5)\nkeep appearance'))
    with recompute(editor, False):
        plain = editor.run(program, progress=False).image
    with recompute(editor, True):
        low = editor.run(program, progress=False).image
    assert np.array_equal(plain, low)

"""Recomputing the guided backward's activations (sampler/recompute.py, Editor(low_memory=True)):
the same image, bit for bit, with less kept for the backward; never across a probe; restored."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

import dsl
from sampler.probes import ProbeStore, cross_attention_layers, probing
from sampler.recompute import GRAPH_BUDGET, graph_bytes, recomputable, recomputing

MOVE = 'prompt "a red circle and a blue square"\nseed 0\nsteps 4\ncentroid(token "circle") -> (0.7, 0.5)\nkeep appearance'
PROMPT_DIRECTION = 'prompt "a red circle and a blue square"\nseed 0\nsteps 4\ndirection red_to_green\nkeep attention'
X0 = 'prompt "a red circle and a blue square"\nseed 0\nsteps 4\nclip "a green circle and a blue square"\nkeep structure'


def kept_bytes(run, frozen: torch.nn.Module | None = None) -> tuple[object, int]:
    """run()'s result, and the bytes of the activations autograd keeps for backwards during it
    (not the frozen weights, which every backward shares: the parameters, and with `frozen` every
    storage of its weights, views such as a transposed weight too)."""
    kept, seen = 0, set()
    weights = {p.untyped_storage().data_ptr() for p in frozen.parameters()} if frozen is not None else set()

    def pack(t):
        nonlocal kept
        key = t.untyped_storage().data_ptr()
        if not isinstance(t, torch.nn.Parameter) and key not in seen and key not in weights:
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


def test_graph_bytes_counts_what_a_graph_keeps_and_keeps_none_of_it(shapes_editor):
    unet = shapes_editor.backbone.unet
    z = torch.randn(1, *shapes_editor.backbone.latent_shape())
    cond = shapes_editor.backbone.encode_prompt("a red circle and a blue square")

    def forward():
        with torch.enable_grad():
            return unet(z.requires_grad_(True), 500, encoder_hidden_states=cond.cond).sample.sum()

    _, kept = kept_bytes(forward, unet)
    counted = graph_bytes(forward, unet)
    assert kept > 0 and abs(counted - kept) < 0.05 * kept, (counted, kept)
    loss = [None]
    graph_bytes(lambda: loss.__setitem__(0, forward()), unet)
    with pytest.raises(RuntimeError, match="keeps nothing"):  # nothing was kept to walk back through
        loss[0].backward()


def test_auto_recomputes_the_large_graph_and_not_the_small_one(shapes_editor, monkeypatch):
    """By default a graph recomputes only where it would keep more than GRAPH_BUDGET of the UNet's
    weights: the move's graph reaches the decoder (10 MB, measured), prompt direction + keep
    attention's ends in the encoder (2.4 MB). Either way the image is the same bits."""
    import sampler.guidance as guidance

    assert shapes_editor.energies.recompute == "auto"
    unet = shapes_editor.backbone.unet
    weights = sum(p.numel() * p.element_size() for p in unet.parameters())
    calls = []

    def spy(*models, enabled=True):
        if unet in models:
            calls.append(enabled)
        return recomputing(*models, enabled=enabled)

    monkeypatch.setattr(guidance, "recomputing", spy)
    for text, recomputes in ((MOVE, True), (PROMPT_DIRECTION, False)):
        program = dsl.compile(dsl.parse(text))
        shapes_editor.energies._graph_sizes.clear()
        shapes_editor.run(program, progress=False)  # the source pass, and auto's count of each graph
        sizes = list(shapes_editor.energies._graph_sizes.values())
        assert sizes and all((size > GRAPH_BUDGET * weights) == recomputes for size in sizes), (text, sizes, weights)
        calls.clear()
        auto, kept_auto = kept_bytes(lambda: shapes_editor.run(program, progress=False), unet)
        assert calls and all(on == recomputes for on in calls), (text, calls)
        with recompute(shapes_editor, False):
            never, kept_never = kept_bytes(lambda: shapes_editor.run(program, progress=False), unet)
        assert np.array_equal(auto.image, never.image)
        if recomputes:
            assert kept_auto < 0.6 * kept_never, (kept_auto, kept_never)


def test_low_memory_means_always_and_the_default_auto():
    from sampler.editor import Editor

    assert Editor("shapes").energies.recompute == "auto"
    assert Editor("shapes", low_memory=True).energies.recompute is True

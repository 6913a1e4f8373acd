"""SD3 and FLUX backbones (sampler/backbones/flow.py) and their joint-attention probes
(sampler/probes.py), on tests/tiny_flow.py's random-weight pipelines: no download."""

import pytest
import torch

import dsl
from energies.errors import SteerCompileError
from energies.directions import backbone_id, save_direction
from sampler.backbones import FluxBackbone, StableDiffusion3Backbone, flow_kind, load_backbone, load_tokenizer
from sampler.backbones.flow import GRID, eps_from_velocity, flow_alpha_bar, sigma_of
from sampler.editor import Editor
from sampler.probes import ProbeStore, Readout, probing

PROMPT = "a red circle and a blue square"


def test_editor_takes_sd3_and_flux_pipelines(sd3, flux):
    assert type(sd3.backbone) is StableDiffusion3Backbone and sd3.backbone.kind == "sd3"
    assert type(flux.backbone) is FluxBackbone and flux.backbone.kind == "flux"
    assert flux.backbone.distilled_guidance == 3.5 and flux.backbone.sampling_defaults["cfg"] == 1.0  # dev: no CFG by default


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory, sd3):
    folder = tmp_path_factory.mktemp("saved") / "sd3"
    sd3.backbone.pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def test_a_pipeline_folder_loads_by_path_offline(sd3_folder, sd3):
    assert flow_kind(str(sd3_folder)) == "sd3" and flow_kind("shapes") is None
    b = load_backbone(str(sd3_folder), device="cpu")
    assert type(b) is StableDiffusion3Backbone
    c1, c2 = b.encode_prompt(PROMPT), sd3.backbone.encode_prompt(PROMPT)
    assert torch.allclose(c1.cond, c2.cond, atol=1e-5) and torch.allclose(c1.added["text_embeds"], c2.added["text_embeds"], atol=1e-5)


def test_token_references_resolve_through_t5_sentencepiece_sub_words(flow_editor):
    """"circle" is "▁cir" + "cle" in the T5 vocabulary: both positions, in the T5 part of the
    text sequence the maps index."""
    tok = flow_editor.backbone.tokenizer
    pieces = tok.convert_ids_to_tokens(tok(PROMPT).input_ids)
    bound = flow_editor.bind(dsl.compile(dsl.parse(f'prompt "{PROMPT}"\nsize(token "circle") *= 0.5\n')))
    assert [pieces[i] for i in bound[0].token] == ["▁cir", "cle"]


def test_sd3_without_t5_maps_clip_bpe_positions(tmp_path):
    from tiny_flow import tiny_sd3_pipeline

    b = Editor(tiny_sd3_pipeline(tmp_path, t5=False), device="cpu").backbone
    assert b.map_tokens == slice(0, b.clip_length) and b.encode_prompt(PROMPT).cond.shape[1] == b.clip_length + b.t5_length
    bound = dsl.bind(dsl.compile(dsl.parse(f'prompt "{PROMPT}"\nsize(token "circle") *= 0.5\n')), PROMPT, b.tokenizer)
    assert b.tokenizer.convert_ids_to_tokens([b.token_ids(PROMPT)[i] for i in bound[0].token]) == ["cir", "cle</w>"]


def test_sd3_text_sequence_is_clip_then_t5(sd3):
    b = sd3.backbone
    c = b.encode_prompt(PROMPT)
    assert c.cond.shape == (1, b.clip_length + b.t5_length, b.transformer.config.joint_attention_dim)
    assert c.added["text_embeds"].shape == (1, b.transformer.config.pooled_projection_dim)
    assert torch.all(c.cond[:, : b.clip_length, 32:] == 0)  # two 16-wide CLIPs, zero-padded to the T5's width
    assert b.map_tokens == slice(b.clip_length, b.clip_length + b.t5_length)


def test_eps_is_the_velocity_converted_in_vp_coordinates(flow_editor):
    """eps(z, t) = x + (1 - s) v at x = r(s) z, and z = sqrt(a) x0 + sqrt(1 - a) eps holds for the
    x0 = x - s v the velocity predicts."""
    b = flow_editor.backbone
    c = b.encode_prompt(PROMPT)
    z = torch.randn(1, *b.latent_shape(), generator=torch.Generator().manual_seed(0))
    t = 700
    s = sigma_of(t)
    x = z * ((1 - s) ** 2 + s**2) ** 0.5
    with torch.no_grad():
        v = b.velocity(x, s, c.cond, c.added)
        eps = b.eps(z, t, c.cond, c.added)
    assert torch.allclose(eps, eps_from_velocity(x, v, s), atol=1e-5)
    a = flow_alpha_bar(torch.tensor(s))
    assert torch.allclose(z, a.sqrt() * (x - s * v) + (1 - a).sqrt() * eps, atol=1e-4)
    assert torch.allclose(b.alphas_cumprod()[t], a.float())


def test_timesteps_follow_the_family_schedule_on_the_grid(sd3, flux):
    for b in (sd3.backbone, flux.backbone):
        ts = b.timesteps(6)
        assert ts == sorted(ts, reverse=True) and len(set(ts)) == 6 and ts[0] == GRID - 1
        assert all(abs(sigma_of(t) - s) <= 0.5 / GRID + 1e-9 for t, s in zip(ts, b.sigmas(6)))
    s = sd3.backbone.sigmas(4)[1]  # SD3: shift 3 on 1 - 1/4 * 1 ... : s' = 3 s / (1 + 2 s)
    assert s == pytest.approx(3 * 0.75 / (1 + 2 * 0.75), abs=1e-4)


def test_flux_guidance_embedding_changes_the_prediction(flux):
    b = flux.backbone
    c = b.encode_prompt(PROMPT)
    z = torch.randn(1, *b.latent_shape(), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        e1 = b.eps(z, 500, c.cond, c.added)
        b.distilled_guidance = 7.0
        try:
            e2 = b.eps(z, 500, c.cond, c.added)
        finally:
            b.distilled_guidance = 3.5
    assert not torch.allclose(e1, e2)


# --- probes ----------------------------------------------------------------------------------


def _probed(flow_editor, z=None):
    b = flow_editor.backbone
    readout = Readout(b)
    c = b.encode_prompt(PROMPT)
    z = torch.randn(1, *b.latent_shape(), generator=torch.Generator().manual_seed(2)) if z is None else z
    store = ProbeStore(b.latent_shape()[1:])
    with probing(b.unet, store, readout.attn_layers, [readout.feature_module]):
        eps = b.eps(z, 600, c.cond, c.added)
    return readout, store, eps, z


def test_probes_read_the_middle_joint_blocks(sd3, flux):
    assert Readout(sd3.backbone).attn_layers == ["transformer_blocks.1.attn"]  # 4 blocks: the middle third
    assert Readout(flux.backbone).attn_layers == ["transformer_blocks.1.attn"]  # 3 double blocks; single blocks not probed
    assert Readout(sd3.backbone).feature_module == "transformer_blocks.3"


def test_maps_have_the_token_count_and_grid_and_sum_to_one_over_tokens(flow_editor):
    b = flow_editor.backbone
    readout, store, _, _ = _probed(flow_editor)
    (name, maps), = store.attn.items()
    t5 = b.map_tokens.stop - b.map_tokens.start
    grid = b.latent_shape()[1] // (2 if b.kind == "flux" else 1)  # FLUX packs 2 x 2 latent patches into a token
    assert maps.shape == (1, t5, grid, grid)
    assert torch.allclose(maps.sum(1), torch.ones(1, grid, grid), atol=1e-5)
    features = readout.features(store)
    assert features.maps.shape == (t5, readout.map_res, readout.map_res)
    assert features.features.dim() == 3 and features.features.shape[-2:] == (grid, grid)  # the image stream as a grid


def test_probing_leaves_the_prediction_and_the_processors_as_they_were(flow_editor):
    b = flow_editor.backbone
    before = {k: type(v) for k, v in b.unet.attn_processors.items()}
    _, _, probed, z = _probed(flow_editor)
    c = b.encode_prompt(PROMPT)
    with torch.no_grad():
        plain = b.eps(z, 600, c.cond, c.added)
    assert torch.allclose(probed, plain, atol=1e-5)
    assert {k: type(v) for k, v in b.unet.attn_processors.items()} == before


def test_gradients_reach_the_latent_through_the_maps(flow_editor):
    b = flow_editor.backbone
    z = torch.randn(1, *b.latent_shape(), generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    _, store, _, _ = _probed(flow_editor, z)
    maps = next(iter(store.attn.values()))
    (grad,) = torch.autograd.grad(maps[0, 2].pow(2).sum(), z)  # the energy of one token's map
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# --- statements without a meaning on a transformer ---------------------------------------------


def test_drag_is_a_compile_error_that_says_why_at_its_line(flow_editor):
    program = dsl.compile(dsl.parse(f'prompt "{PROMPT}"\nsteps 2\ndrag (0.3, 0.5) -> (0.6, 0.5) within token "circle"\n'))
    with pytest.raises(SteerCompileError, match="bottleneck") as e:
        flow_editor.run(program, progress=False)
    assert e.value.span.line == 3


def test_an_hspace_direction_is_a_compile_error_that_says_why(flow_editor, tmp_path):
    save_direction(tmp_path / "directions" / "smile.safetensors", {"delta_h": torch.zeros(8, 2, 2)}, "hspace", "sd:x")
    program = dsl.compile(dsl.parse(f'prompt "{PROMPT}"\nsteps 2\nkeep appearance\ndirection smile\n'))
    with pytest.raises(SteerCompileError, match="no mid block") as e:
        flow_editor.run(program, progress=False, script_dir=tmp_path)
    assert e.value.span.line == 4


def test_steer_check_reads_a_flow_folder_without_weights_and_refuses_a_drag_at_its_line(sd3_folder, tmp_path, capsys):
    from dsl.cli import main

    assert load_tokenizer(str(sd3_folder)).model_max_length == 12  # the T5's, as the backbone binds with
    good, bad = tmp_path / "good.edit", tmp_path / "bad.edit"
    good.write_text(f'prompt "{PROMPT}"\nsize(token "circle") *= 0.5\n')
    bad.write_text(f'prompt "{PROMPT}"\n\ndrag (0.3, 0.5) -> (0.6, 0.5) within token "circle"\n')
    assert main(["check", str(good), "--model", str(sd3_folder)]) == 0
    assert main(["check", str(bad), "--model", str(sd3_folder)]) == 2
    assert "bad.edit:3:1" in capsys.readouterr().err


def test_a_prompt_direction_fits_a_flow_model_and_shifts_its_image(sd3, sd3_folder, tmp_path):
    """Pix2Pix-Zero's delta_c over the whole text sequence (and the pooled embedding); its shape
    as steer check reads it from the config files is the loaded model's."""
    from dsl.cli import main
    from sampler.backbones.load import flow_prompt_shape
    from sampler.directions.prompt import edit_direction

    b = sd3.backbone
    tensors = edit_direction(b, ["a red circle", "a red square"], ["a blue circle", "a blue square"], progress=False)
    assert tuple(tensors["delta"].shape) == flow_prompt_shape(str(sd3_folder)) == tuple(b.encode_prompt("").cond.shape[1:])
    save_direction(tmp_path / "directions" / "bluer.safetensors", tensors, "prompt", backbone_id(b))
    script = tmp_path / "bluer.edit"
    script.write_text(f'prompt "{PROMPT}"\nsteps 3\ndirection bluer * 2\n')
    result = sd3.run(dsl.load(str(script)), progress=False, script_dir=tmp_path)
    assert abs(result.image - result.source_image).mean() > 1e-3
    assert main(["check", str(script), "--model", str(sd3_folder)]) == 0


@pytest.mark.parametrize("make", ["flux", "sd3 without t5"])
def test_config_files_give_the_loaded_models_kind_tokens_and_prompt_shape(make, tmp_path):
    from sampler.backbones.load import flow_prompt_shape
    from tiny_flow import tiny_flux_pipeline, tiny_sd3_pipeline

    pipe = tiny_flux_pipeline(tmp_path) if make == "flux" else tiny_sd3_pipeline(tmp_path, t5=False)
    pipe.save_pretrained(tmp_path / "saved", safe_serialization=True)
    folder = str(tmp_path / "saved")
    b = load_backbone(folder, device="cpu")
    assert flow_kind(folder) == b.kind
    assert load_tokenizer(folder).model_max_length == b.tokenizer.model_max_length
    assert load_tokenizer(folder).convert_ids_to_tokens(b.token_ids("a circle")) == b.tokenizer.convert_ids_to_tokens(b.token_ids("a circle"))
    assert flow_prompt_shape(folder) == tuple(b.encode_prompt("").cond.shape[1:])


def test_sd35_dual_attention_blocks_are_probed_at_their_joint_attention_only(tmp_path):
    """SD3.5's dual-attention blocks add attn2, an image-only self-attention: not a text map."""
    from tiny_flow import tiny_sd3_pipeline

    flow_editor = Editor(tiny_sd3_pipeline(tmp_path, dual=(0, 1, 2)), device="cpu")
    assert "transformer_blocks.1.attn2.processor" in flow_editor.backbone.unet.attn_processors
    assert flow_editor.readout.attn_layers == ["transformer_blocks.1.attn"]
    readout, store, _, _ = _probed(flow_editor)
    assert torch.allclose(next(iter(store.attn.values())).sum(1), torch.ones(1, 8, 8), atol=1e-5)


def test_fused_projections_give_the_same_maps(flux):
    b = flux.backbone
    _, before, eps_before, z = _probed(flux)
    b.transformer.fuse_qkv_projections()
    try:
        assert b.transformer.transformer_blocks[1].attn.fused_projections  # the probe reads to_qkv / to_added_qkv now
        _, after, eps_after, _ = _probed(flux, z)
    finally:
        b.transformer.unfuse_qkv_projections()
    (name, maps), = before.attn.items()
    assert torch.allclose(after.attn[name], maps, atol=1e-5) and torch.allclose(eps_after, eps_before, atol=1e-5)


def test_prompt_weights_move_only_their_words_t5_positions(sd3):
    b = sd3.backbone
    plain, heavy = b.encode_prompt(PROMPT).cond, b.encode_prompt("a red (circle:1.5) and a blue square").cond
    pieces = b.tokenizer.convert_ids_to_tokens(b.token_ids(PROMPT))
    moved = sorted({int(i) - b.map_tokens.start for i in torch.nonzero((heavy - plain).abs().amax(-1)[0] > 1e-6)})
    assert [pieces[i] for i in moved] == ["▁cir", "cle"]  # the CLIP part and every other T5 position unchanged


def test_the_shipped_shapes_flow_model_loads_by_name_offline_and_draws_at_64_px():
    """The second shipped model: found by its name, safetensors only, its card's defaults, and
    a few Euler steps give a 64 x 64 image of the world (not a blank one)."""
    import numpy as np

    from sampler.shapes import flow_model
    from sampler.shapes import world as W
    from sampler.shapes.evaluate import sample

    assert flow_model.is_flow_folder(flow_model.SHIPPED)
    b = load_backbone("shapes-flow", device="cpu")
    assert b.image_size() == (64, 64) and b.sampling_defaults == flow_model.DEFAULTS
    image = sample(b, ["a red circle"], [1000000], 8, b.sampling_defaults["cfg"])[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()
    assert len(W.detect(image)) >= 1, "a few steps already draw an object"


def test_a_move_on_the_shipped_flow_model_lands_and_leaves_the_other_object():
    """The edit path on the grounded flow model, at 10 Euler steps, judged by the world's detector:
    the circle goes to its target, the square stays where it was."""
    import numpy as np

    from sampler.editor import Editor
    from sampler.shapes import world as W

    r = Editor("shapes-flow").run(dsl.compile('prompt "a red circle and a blue square"\nseed 0\nsteps 10\n'
                                              'centroid(token "circle") -> (0.75, 0.25)\nkeep appearance'), progress=False)
    before, after = W.detect(r.source_image), W.detect(r.image)
    circle, square = W.find(before, "red", "circle"), W.find(before, "blue", "square")
    assert circle is not None and square is not None, "the source draws both objects"
    moved, kept = W.find(after, "red", "circle"), W.find(after, "blue", "square")
    assert moved is not None and kept is not None
    target = np.array([0.75, 0.25])
    assert np.abs(np.array(moved.centroid) - target).max() < 0.1 < np.abs(np.array(circle.centroid) - target).max()
    assert np.abs(np.array(kept.centroid) - np.array(square.centroid)).max() < 0.05


# --- full-size architectures, on the meta device (shapes only, no memory, no weights) -------------

@pytest.mark.parametrize("arch", ["sd3.5-medium", "flux.1-dev"])
def test_full_size_architectures_probe_the_middle_joint_blocks_with_maps_per_t5_token(arch):
    """SD3.5-medium and FLUX.1-dev as configured on the hub, built on the meta device: the family's
    velocity call (FLUX: packed 2 x 2, RoPE ids, guidance) runs with the probes on the blocks the
    default picks, and each map is (T5 tokens, 64, 64) at 1024 px."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    from sampler.backbones.flow import flux_velocity, sd3_velocity
    from sampler.bench.flow_backbones import FLUX_DEV, SD35_MEDIUM
    from sampler.probes import joint_attention_layers

    flux = arch.startswith("flux")
    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**FLUX_DEV) if flux else SD3Transformer2DModel(**SD35_MEDIUM)
        x, context, pooled = torch.randn(1, 16, 128, 128), torch.randn(1, 512 if flux else 77 + 256, 4096), torch.randn(1, 768 if flux else 2048)
    transformer.steer_map_tokens = slice(0, 512) if flux else slice(77, 333)
    layers = joint_attention_layers(transformer)
    assert layers == [f"transformer_blocks.{i}.attn" for i in (range(6, 12) if flux else range(8, 16))]
    store = ProbeStore((128, 128))
    with probing(transformer, store, layers):
        v = flux_velocity(transformer, x, 0.5, context, pooled, 3.5) if flux else sd3_velocity(transformer, x, 0.5, context, pooled)
    assert v.shape == x.shape and list(store.attn) == layers
    assert all(a.shape == (1, 512 if flux else 256, 64, 64) for a in store.attn.values())


def test_the_full_size_flow_bench_runs_at_smoke_size():
    from sampler.bench import flow_backbones

    for r in flow_backbones.main(["--smoke"]):
        assert r["attention_layers"] == 1 and r["plain_s_per_step"] > 0
        assert r["guided_attention_time_ratio"] == pytest.approx(r["guided_attention_s_per_step"] / r["plain_s_per_step"])

"""The guided loop and the Editor on a tiny latent Stable Diffusion pipeline built from configs."""

import numpy as np
import pytest
import torch

import dsl
from sampler.backbones import StableDiffusionBackbone
from sampler.editor import Editor
from sampler.guided import Guidance, ddim_step, pred_x0, sample_ddim
from tiny import tiny_sd_pipeline

PROMPT = 'prompt "a red circle and a blue square"\nsteps 4\n'


@pytest.fixture(scope="module")
def editor(tmp_path_factory):
    return Editor(StableDiffusionBackbone(tiny_sd_pipeline(tmp_path_factory.mktemp("sd")), "tiny-sd"))


def test_ddim_helpers_invert_each_other():
    x0, eps, a = torch.randn(3), torch.randn(3), torch.tensor(0.3)
    z = a.sqrt() * x0 + (1 - a).sqrt() * eps
    assert torch.allclose(pred_x0(z, eps, a), x0, atol=1e-6)
    assert torch.allclose(ddim_step(x0, eps, a), z, atol=1e-6)


def test_placements_act_where_they_say():
    alphas = torch.linspace(0.9, 0.1, 10)
    calls = []

    def denoise(i, t, z, eps_cond):
        calls.append(z.clone())
        return torch.zeros_like(z)

    z0 = torch.ones(1, 1)
    plain = sample_ddim(denoise, z0, [5], alphas, torch.tensor(1.0), disable=True)
    shifted = sample_ddim(denoise, z0, [5], alphas, torch.tensor(1.0), guide=lambda i, t, z: Guidance(latent=torch.full_like(z, 0.5)), disable=True)
    assert torch.allclose(calls[-1], z0 - 0.5), "latent placement moves z_t before the UNet call"
    assert shifted < plain
    meaned = sample_ddim(denoise, z0, [5], alphas, torch.tensor(1.0), guide=lambda i, t, z: Guidance(mean=torch.full_like(z, 0.25)), disable=True)
    assert torch.allclose(meaned, plain - 0.25)
    eps_guided = sample_ddim(denoise, z0, [5], alphas, torch.tensor(1.0), guide=lambda i, t, z: Guidance(eps=torch.ones_like(z)), disable=True)
    assert not torch.allclose(eps_guided, plain)


def test_asymmetric_step_takes_x0_from_the_shifted_eps_and_the_direction_from_the_original():
    alphas = torch.linspace(0.9, 0.1, 10)
    a_t, a_prev = alphas[5], alphas[2]
    eps, shifted = torch.full((1, 1), 0.2), torch.full((1, 1), -0.3)
    z = torch.ones(1, 1)
    out = sample_ddim(lambda i, t, z, e: eps, z, [5, 2], alphas, torch.tensor(1.0),
                      guide=lambda i, t, z: Guidance(x0_eps=shifted) if i == 0 else Guidance(), disable=True)
    step = ddim_step(pred_x0(z, shifted, a_t), eps, a_prev)  # Asyrp: P_t(eps~), D_t(eps)
    expected = ddim_step(pred_x0(step, eps, a_prev), eps, torch.tensor(1.0))
    assert torch.allclose(out, expected, atol=1e-6)
    same = sample_ddim(lambda i, t, z, e: eps, z, [5, 2], alphas, torch.tensor(1.0), guide=lambda i, t, z: Guidance(x0_eps=eps), disable=True)
    assert torch.allclose(same, sample_ddim(lambda i, t, z, e: eps, z, [5, 2], alphas, torch.tensor(1.0), disable=True), atol=1e-6)


def test_a_step_can_ask_for_its_own_eta():
    alphas = torch.linspace(0.9, 0.1, 10)
    run = lambda eta_step: sample_ddim(lambda i, t, z, e: torch.zeros_like(z), torch.ones(1, 4), [5, 2], alphas, torch.tensor(1.0),
                                       guide=lambda i, t, z: Guidance(eta=eta_step), disable=True,
                                       generator=torch.Generator().manual_seed(0))
    assert torch.equal(run(None), run(0.0))
    assert not torch.allclose(run(1.0), run(0.0))
    assert torch.equal(run(1.0), run(1.0))  # seeded: the same noise every time


def test_a_script_runs_end_to_end_on_a_latent_pipeline(editor):
    prog = dsl.compile(PROMPT + 'centroid(token "circle") -> (0.7, 0.5)\nkeep appearance\nkeep attention\nsize(token "square") *= 2')
    r = editor.run(prog, progress=False)
    assert r.image.shape == (32, 32, 3) and np.isfinite(r.image).all()
    assert r.source_image.shape == (32, 32, 3)
    assert all(len(v) > 0 for v in r.energies.values())
    assert not np.allclose(r.image, r.source_image), "the guidance changed the image"


def test_no_terms_reproduces_the_source_and_reuses_it(editor):
    prog = dsl.compile(PROMPT + "seed 5")
    first = editor.run(prog, progress=False)
    source = next(iter(editor.sources))
    again = editor.run(prog + dsl.compile("keep layout"), progress=False)
    assert next(iter(editor.sources)) is source, "the source pass is cached"
    assert np.allclose(first.image, first.source_image, atol=1e-5)
    assert np.array_equal(again.source_image, first.source_image)


def test_v_prediction_backbone_runs(tmp_path):
    ed = Editor(StableDiffusionBackbone(tiny_sd_pipeline(tmp_path, "v_prediction"), "tiny-v"))
    r = ed.run(dsl.compile(PROMPT + 'centroid(token "square") += (0.1, 0)'), progress=False)
    assert np.isfinite(r.image).all()


def test_non_finite_energy_names_the_term(editor):
    prog = dsl.compile(dsl.parse(PROMPT + 'keep shape(token "square") * 1e308', "bad.edit"))
    with pytest.raises(dsl.SteerRuntimeError) as info:
        editor.run(prog, progress=False)
    e = info.value
    assert "keep shape" in e.message and (e.file, e.line) == ("bad.edit", 3)


def test_missing_prompt_is_a_user_error(editor):
    with pytest.raises(dsl.SteerCompileError, match="no prompt"):
        editor.run(dsl.compile("keep layout"), progress=False)


TERMS = [
    'centroid(token "circle") -> (0.7, 0.5)',
    'centroid(token "circle") += (0.2, 0)',
    'size(token "square") *= 1.5',
    'size(token "square") -> 0.2',
    'shape(token "square") -> shape(token "circle")',
    'appearance(token "circle") -> appearance(token "square")',
    "keep appearance",
    "keep layout",
    'keep shape(token "square")',
    'keep appearance(token "square")',
    "keep attention",
    'centroid(token "circle") -> (0.7, 0.5) * 2 @ 0..0.5 via latent',
    'size(token "square") *= 2 via mean',
]


@pytest.mark.parametrize("term", TERMS)
def test_every_term_guides_the_latent_pipeline(editor, term):
    """Each construct's energy is computed, has a gradient, and changes the result. A keep term
    is zero while the image equals the source, so it is tested against a move it must resist."""
    base = 'centroid(token "circle") -> (0.9, 0.9) * 5\n' if term.startswith("keep") else ""
    weight = " * 50" if term.startswith("keep") else ""
    with_term = editor.run(dsl.compile(PROMPT + "seed 1\n" + base + term + weight), progress=False)
    without = editor.run(dsl.compile(PROMPT + "seed 1\n" + base), progress=False)
    curve = with_term.energies[list(with_term.energies)[-1]]
    assert curve and all(np.isfinite(v) for _, v in curve)
    assert (with_term.latent - without.latent).abs().max() > 1e-3


def test_sdxl_pipeline_threads_added_conditioning_through_guided_forwards(tmp_path):
    from sampler.backbones import StableDiffusionXLBackbone
    from tiny import tiny_sdxl_pipeline

    b = StableDiffusionXLBackbone(tiny_sdxl_pipeline(tmp_path), "tiny-xl")
    ed = Editor(b)
    assert ed.readout.attn_layers and all(n.startswith("up_blocks.0.attentions.1") for n in ed.readout.attn_layers)
    c = b.encode_prompt("a red circle")
    assert c.cond.shape[-1] == 64 and c.added["text_embeds"].shape == (1, 32) and c.added["time_ids"].shape == (1, 6)
    assert torch.count_nonzero(c.uncond) == 0, "SDXL zeroes the empty negative prompt"
    prog = dsl.compile(PROMPT + 'centroid(token "circle") -> (0.7, 0.5)\nkeep appearance')
    r = ed.run(prog, progress=False)
    assert r.image.shape == (32, 32, 3) and np.isfinite(r.image).all()
    assert all(len(v) > 0 for v in r.energies.values())

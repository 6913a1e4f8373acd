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
    """One step from t = 5 (a_t = 0.5) to the end (a_prev = 1), eps = 0.1 everywhere, z = 1: each
    placement pinned to the value its equation gives (docs/methods.md, section 8)."""
    alphas = torch.full((10,), 0.5)
    a, final = torch.tensor(0.5), torch.tensor(1.0)
    calls = []

    def denoise(i, t, z, eps_cond):
        calls.append(z.clone())
        return torch.full_like(z, 0.1)

    def run(**g):
        return sample_ddim(denoise, torch.ones(1, 1), [5], alphas, final, guide=lambda i, t, z: Guidance(**g), disable=True)

    def step(z, eps):  # DDIM to a_prev = 1 is just the predicted x0
        return (z - (1 - a).sqrt() * eps) / a.sqrt()

    assert torch.allclose(run(), step(torch.tensor(1.0), torch.tensor(0.1)))
    # latent: z_t <- z_t - g before the UNet call, which then sees the moved z_t
    assert torch.allclose(run(latent=torch.full((1, 1), 0.5)), step(torch.tensor(0.5), torch.tensor(0.1)))
    assert torch.allclose(calls[-1], torch.tensor([[0.5]])), "the UNet saw the moved z_t"
    # eps: eps <- eps + g (Self-Guidance), so x0 moves by -sqrt(1 - a) g / sqrt(a)
    assert torch.allclose(run(eps=torch.full((1, 1), 0.3)), step(torch.tensor(1.0), torch.tensor(0.4)))
    # mean: z_{t-1} <- z_{t-1} - g after the step
    assert torch.allclose(run(mean=torch.full((1, 1), 0.25)), step(torch.tensor(1.0), torch.tensor(0.1)) - 0.25)
    # x0: x0 <- x0 - g, with eps kept: at a_prev = 1 the result is x0 - g exactly
    assert torch.allclose(run(x0=torch.full((1, 1), 0.2)), step(torch.tensor(1.0), torch.tensor(0.1)) - 0.2)
    # the same at a middle step (a_prev = 0.8): x0's shift is scaled by sqrt(a_prev), eps's direction kept
    mid = sample_ddim(denoise, torch.ones(1, 1), [5, 2], torch.tensor([1.0, 1, 0.8, 1, 1, 0.5, 1, 1, 1, 1]), final,
                      guide=lambda i, t, z: Guidance(x0=torch.full_like(z, 0.2)) if i == 0 else Guidance(), disable=True)
    x0 = step(torch.tensor(1.0), torch.tensor(0.1)) - 0.2
    z1 = 0.8 ** 0.5 * x0 + 0.2 ** 0.5 * 0.1
    assert torch.allclose(mid, (z1 - 0.2 ** 0.5 * 0.1) / 0.8 ** 0.5)


def test_classifier_free_guidance_and_the_padded_schedule():
    from sampler.guided import classifier_free, step_alphas

    assert torch.equal(classifier_free(torch.tensor(1.0), torch.tensor(3.0), 7.5), torch.tensor(16.0))
    assert torch.equal(classifier_free(torch.tensor(1.0), torch.tensor(3.0), 1.0), torch.tensor(3.0))
    a = step_alphas(torch.arange(10.0) / 10, [9, 4, 0], torch.tensor(1.0))
    assert [float(x) for x in a] == pytest.approx([0.9, 0.4, 0.0, 1.0])


def test_epsilon_from_v_and_sample_predictions_is_exact():
    """Backbone.eps converts a v-prediction (v = sqrt(a) eps - sqrt(1 - a) x0) and an x0
    prediction to epsilon: pinned on a UNet stand-in whose output is chosen exactly."""
    from types import SimpleNamespace

    from sampler.backbones import Backbone

    a = torch.tensor(0.36)  # sqrt 0.6, sqrt(1 - a) 0.8
    x0, eps = torch.full((1, 1, 2, 2), 0.5), torch.full((1, 1, 2, 2), -1.0)
    z = a.sqrt() * x0 + (1 - a).sqrt() * eps
    outputs = {"v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0, "sample": x0, "epsilon": eps}
    for kind, out in outputs.items():
        b = Backbone()
        b.dtype = torch.float32
        b.unet = lambda *args, out=out, **kw: SimpleNamespace(sample=out)
        b.scheduler = SimpleNamespace(config=SimpleNamespace(prediction_type=kind), alphas_cumprod=torch.full((10,), 0.36))
        assert torch.allclose(b.eps(z, 3, None), eps, atol=1e-6), kind


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


def test_v_prediction_backbone_edits_like_an_epsilon_one(tmp_path):
    """A v-prediction pipeline: the edit changes the image, weight 0 reproduces the source."""
    ed = Editor(StableDiffusionBackbone(tiny_sd_pipeline(tmp_path, "v_prediction"), "tiny-v"))
    r = ed.run(dsl.compile(PROMPT + 'centroid(token "square") += (0.1, 0) * 50'), progress=False)
    zero = ed.run(dsl.compile(PROMPT + 'centroid(token "square") += (0.1, 0) * 0'), progress=False)
    assert np.isfinite(r.image).all() and not np.allclose(r.image, r.source_image, atol=1e-4)
    assert np.allclose(zero.image, zero.source_image, atol=1e-5)


def test_non_finite_energy_names_the_term(editor):
    # beside a move: a keep alone has nothing to hold against, and the edit is the source
    prog = dsl.compile(dsl.parse(PROMPT + 'centroid(token "circle") -> (0.7, 0.5)\nkeep shape(token "square") * 1e308', "bad.edit"))
    with pytest.raises(dsl.SteerRuntimeError) as info:
        editor.run(prog, progress=False)
    e = info.value
    assert "keep shape" in e.message and (e.file, e.line) == ("bad.edit", 4)


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
    base = 'centroid(token "circle") -> (0.9, 0.9) * 5 @ 0..0.7\n' if term.startswith("keep") else ""  # from the first of its 4 steps
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

"""Learned directions: the file format, the h-space hook and asymmetric step, NoiseCLR's token
context, Pix2Pix-Zero's prompt directions, and `steer learn` on the shipped shapes model at tiny
settings (resumed runs included)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dsl.errors import SteerCompileError
from energies import directions as D
import sampler.directions as SD
from sampler.directions import hspace as H
from sampler import learn
from sampler.learn.noiseclr import named_moments, noiseclr_loss
from sampler.directions import noise as N
from sampler.directions import prompt as PD
from sampler.backbones import StableDiffusionBackbone, load_backbone
from sampler.guided import clip_x0, ddim_step, pred_x0
from tiny import tiny_sd_pipeline


@pytest.fixture(scope="module")
def shapes(shapes_path):
    return load_backbone(shapes_path)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return StableDiffusionBackbone(tiny_sd_pipeline(tmp_path_factory.mktemp("sd")), "tiny-sd")


def _meta(path):
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["steer"])


# ----------------------------------------------------------------------------------------------
# Direction files


def test_save_load_round_trip(shapes, tmp_path):
    delta = torch.randn(H.mid_block_shape(shapes.unet))
    path = D.save_direction(tmp_path / "bigger.safetensors", {"delta_h": delta}, "hspace", D.backbone_id(shapes),
                            {"resolution": [32, 32], "recipe": "steer learn hspace bigger ...", "train_steps": 20})
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == ["bigger.safetensors"]  # no temporary left behind
    d = SD.load(path, shapes)
    assert (d.name, d.kind) == ("bigger", "hspace")
    assert torch.equal(d.tensors["delta_h"], delta)
    assert d.meta["backbone"] == f"shapes:{shapes.name}" and d.meta["resolution"] == [32, 32]
    assert d.meta["recipe"].startswith("steer learn hspace") and d.meta["train_steps"] == 20 and d.meta["format"] == 1
    assert d.meta["date"][:2] == "20"
    assert D.known([tmp_path]) == {"bigger": path}  # found by name on a search path

    emb = torch.randn(N.width(shapes))
    D.save_direction(tmp_path / "n.safetensors", {"embedding": emb}, "noise", D.backbone_id(shapes), {"recipe": "x"})
    n = SD.load(tmp_path / "n.safetensors", shapes)
    assert n.kind == "noise" and torch.equal(n.tensors["embedding"], emb) and n.meta["resolution"] is None


def test_save_refuses_a_file_without_its_tensor(tmp_path):
    with pytest.raises(ValueError, match="delta_h"):
        D.save_direction(tmp_path / "x.safetensors", {"embedding": torch.zeros(4)}, "hspace", "shapes:shapes")


def test_direction_from_another_backbone_is_refused(shapes, tiny_sd, tmp_path):
    # another family: named both ways in the message
    D.save_direction(tmp_path / "sdish.safetensors", {"delta_h": torch.zeros(1280, 8, 8)}, "hspace", "sd:stable-diffusion-v1-5")
    with pytest.raises(SteerCompileError) as e:
        SD.load(tmp_path / "sdish.safetensors", shapes)
    assert "sd:stable-diffusion-v1-5" in e.value.message and f"shapes:{shapes.name}" in e.value.message
    # the same family but another architecture: the shapes are compared
    D.save_direction(tmp_path / "shapes_dir.safetensors", {"delta_h": torch.zeros(H.mid_block_shape(shapes.unet))}, "hspace", D.backbone_id(shapes))
    other = D.save_direction(tmp_path / "wide.safetensors", {"delta_h": torch.zeros(128, 8, 8)}, "hspace", "sd:tiny-sd")
    with pytest.raises(SteerCompileError) as e:
        SD.load(other, tiny_sd)
    assert "128x8x8" in e.value.message and "x".join(map(str, H.mid_block_shape(tiny_sd.unet))) in e.value.message
    assert "tiny-sd" in e.value.message
    with pytest.raises(SteerCompileError, match="shapes:"):
        SD.load(tmp_path / "shapes_dir.safetensors", tiny_sd)
    # a noise direction of the wrong width
    D.save_direction(tmp_path / "n.safetensors", {"embedding": torch.zeros(768)}, "noise", D.backbone_id(shapes))
    with pytest.raises(SteerCompileError, match="768 dimensions"):
        SD.load(tmp_path / "n.safetensors", shapes)


def test_foreign_files_are_errors_and_never_unpickled(shapes, tmp_path):
    save_file({"delta_h": torch.zeros(3)}, str(tmp_path / "plain.safetensors"))  # no steer metadata
    with pytest.raises(SteerCompileError, match="not a steer direction"):
        SD.load(tmp_path / "plain.safetensors", shapes)
    (tmp_path / "evil.safetensors").write_bytes(pickle.dumps({"delta_h": [1, 2, 3]}))
    with pytest.raises(SteerCompileError, match="cannot read"):
        SD.load(tmp_path / "evil.safetensors", shapes)
    with pytest.raises(SteerCompileError, match="does not exist"):
        SD.load(tmp_path / "missing.safetensors", shapes)


# ----------------------------------------------------------------------------------------------
# h-space


def _eps(b, z, t, ctx):
    with torch.no_grad():
        return b.eps(z, t, ctx)


@pytest.mark.parametrize("which", ["shapes", "tiny_sd"])
def test_mid_block_hook_shifts_eps_and_is_removed(which, request):
    b = request.getfixturevalue(which)
    ctx = b.encode_prompt("a red square").cond
    z = torch.randn((1, *b.latent_shape()), generator=torch.Generator().manual_seed(0))
    plain = _eps(b, z, 500, ctx)
    shape = H.mid_block_shape(b.unet)
    with H.shifting(b.unet, torch.zeros(shape)):
        assert len(b.unet.mid_block._forward_hooks) == 1
        same = _eps(b, z, 500, ctx)
    assert torch.equal(same, plain)
    with H.shifting(b.unet, torch.randn(shape, generator=torch.Generator().manual_seed(1))):
        moved = _eps(b, z, 500, ctx)
    assert (moved - plain).abs().max() > 1e-3
    assert len(b.unet.mid_block._forward_hooks) == 0
    with pytest.raises(RuntimeError, match="boom"):  # removed when the call inside raises, too
        with H.shifting(b.unet, torch.ones(shape)):
            raise RuntimeError("boom")
    assert len(b.unet.mid_block._forward_hooks) == 0
    assert torch.equal(_eps(b, z, 500, ctx), plain)


def test_eps_pair_shifts_only_the_second_copy_and_is_differentiable(shapes):
    b = shapes
    ctx = b.encode_prompt("a red circle").cond
    z = torch.randn((1, *b.latent_shape()), generator=torch.Generator().manual_seed(2))
    delta = torch.randn(H.mid_block_shape(b.unet), generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    eps, eps_s = H.eps_pair(b, z, 400, ctx, delta)
    assert torch.allclose(eps, _eps(b, z, 400, ctx), atol=1e-5)
    with H.shifting(b.unet, delta.detach()):
        assert torch.allclose(eps_s, _eps(b, z, 400, ctx), atol=1e-5)
    (g,) = torch.autograd.grad(eps_s.square().sum(), delta)
    assert g.abs().sum() > 0
    with pytest.raises(ValueError, match="delta-h"):
        with H.shifting(b.unet, torch.zeros(7, 8, 8)):
            _eps(b, z, 400, ctx)


def test_asyrp_step_is_ddim_when_unshifted_and_asymmetric_otherwise():
    g = torch.Generator().manual_seed(0)
    z, eps, eps_s = (torch.randn(1, 3, 8, 8, generator=g) for _ in range(3))
    a_t, a_prev = torch.tensor(0.3), torch.tensor(0.6)
    plain = ddim_step(pred_x0(z, eps, a_t), eps, a_prev)
    assert torch.allclose(H.asyrp_step(z, eps, eps, a_t, a_prev), plain, atol=1e-6)
    x0c, epsc = clip_x0(z, pred_x0(z, eps, a_t), a_t, 1.0)  # the pixel-model path of the plain loop
    assert torch.allclose(H.asyrp_step(z, eps, eps, a_t, a_prev, clip=1.0), ddim_step(x0c, epsc, a_prev), atol=1e-5)
    # P_t from the shifted eps, D_t from the original: not the symmetric step with either eps
    want = a_prev.sqrt() * pred_x0(z, eps_s, a_t) + (1 - a_prev).sqrt() * eps
    got = H.asyrp_step(z, eps, eps_s, a_t, a_prev)
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, ddim_step(pred_x0(z, eps_s, a_t), eps_s, a_prev), atol=1e-3)


def test_windows_and_tables():
    assert H.EDIT_WINDOW == (0.0, 0.5) and H.BOOST_FROM == pytest.approx(0.8)
    assert H.in_edit_window(0.0) and H.in_edit_window(0.49) and not H.in_edit_window(0.5)
    assert H.boost_eta(0.79) == 0.0 and H.boost_eta(0.8) == 1.0
    assert H.step_scale(20, 50) == pytest.approx(0.4)
    table = H.HSpaceDelta(torch.arange(3.0).view(3, 1, 1, 1).expand(3, 2, 1, 1), torch.tensor([900, 700, 500]))
    assert table.at(880)[0, 0, 0] == 0 and table.at(640)[0, 0, 0] == 1 and table.at(10)[0, 0, 0] == 2
    with pytest.raises(ValueError):
        H.HSpaceDelta(torch.zeros(3, 2, 1, 1))


# ----------------------------------------------------------------------------------------------
# NoiseCLR


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    from sampler.backbones import StableDiffusionXLBackbone
    from tiny import tiny_sdxl_pipeline

    return StableDiffusionXLBackbone(tiny_sdxl_pipeline(tmp_path_factory.mktemp("xl")), "tiny-xl")


def _word_rows(b, word):
    """The input-embedding rows of `word` in each of the backbone's text encoders, concatenated."""
    return torch.cat([enc.get_input_embeddings().weight[tok.convert_tokens_to_ids(word)].detach().clone()
                      for tok, enc in N.encoders(b)])


@pytest.mark.parametrize("which,word", [("shapes", "red"), ("tiny_sd", "red</w>"), ("tiny_sdxl", "red</w>")])
def test_direction_context_is_the_one_token_prompt_and_leaves_the_model_alone(which, word, request):
    b = request.getfixturevalue(which)
    tables = [enc.get_input_embeddings().weight for _, enc in N.encoders(b)]
    before, vocab = [t.detach().clone() for t in tables], dict(b.tokenizer.get_vocab())
    row = _word_rows(b, word)
    assert row.shape == (N.width(b),)
    # the embedding of a real word gives exactly the conditioning of the prompt of that word
    ctx = N.direction_context(b, row)
    prompt = b.encode_prompt(word.replace("</w>", ""))
    assert torch.allclose(ctx.hidden, prompt.cond, atol=1e-5)
    assert set(ctx.added) == set(prompt.added)
    for k in ctx.added:  # SDXL: the pooled embedding and the size ids
        assert torch.allclose(ctx.added[k].float(), prompt.added[k].float(), atol=1e-5), k
    # differentiable w.r.t. the embedding, K at once
    emb = torch.randn(3, row.shape[0], generator=torch.Generator().manual_seed(0)).mul(0.02).requires_grad_(True)
    ctx3 = N.direction_context(b, emb)
    assert ctx3.hidden.shape == (3, *ctx.hidden.shape[1:])
    (g,) = torch.autograd.grad(ctx3.hidden[1].square().sum(), emb)
    assert g[1].abs().sum() > 0 and g[0].abs().sum() == 0 and g[2].abs().sum() == 0
    if b.kind == "sdxl":  # both encoders' halves of the row condition the UNet
        w1 = N.widths(b)[0]
        assert g[1, :w1].abs().sum() > 0 and g[1, w1:].abs().sum() > 0
    assert all(torch.equal(t, t0) and not t.requires_grad for t, t0 in zip(tables, before))
    assert dict(b.tokenizer.get_vocab()) == vocab and len(b.tokenizer) == len(vocab)
    assert all(len(enc.get_input_embeddings()._forward_hooks) == 0 for _, enc in N.encoders(b))
    # the noise difference of a direction is eps(z, d) - eps(z, "")
    z = torch.randn((2, *b.latent_shape()), generator=torch.Generator().manual_seed(1))
    empty = N.empty_context(b)
    with torch.no_grad():
        diff = N.noise_direction_eps(b, z, 300, ctx, empty)
        d2, e2 = ctx.batch(2), empty.batch(2)
        want = b.eps(z, 300, d2.hidden, d2.added) - b.eps(z, 300, e2.hidden, e2.added)
    assert torch.allclose(diff, want, atol=1e-5) and diff.abs().max() > 0


def test_in_phrase_puts_the_placeholder_in_the_objects_words_and_keeps_the_length():
    # "a red circle and a blue square": BOS a red circle and a blue square EOS pad pad
    ids = [2, 4, 8, 12, 5, 4, 9, 11, 3, 0, 0]
    assert N.in_phrase(ids, [2, 3], [3], 99) == ([2, 4, 99, 12, 5, 4, 9, 11, 3, 0, 0], 2)
    # two describing words become one placeholder; the padding fills the end
    assert N.in_phrase(ids, [5, 6, 7], [7], 99) == ([2, 4, 8, 12, 5, 99, 11, 3, 0, 0, 0], 5)
    # a phrase that is its head alone gets the placeholder before the head
    assert N.in_phrase(ids, [3], [3], 99) == ([2, 4, 8, 99, 12, 5, 4, 9, 11, 3, 0], 3)
    # a full prompt keeps its last id (EOS) last
    full = [2, 4, 12, 5, 3]
    assert N.in_phrase(full, [2], [2], 99) == ([2, 4, 99, 12, 3], 2)


@pytest.mark.parametrize("which,word", [("shapes", "red"), ("tiny_sd", "red</w>"), ("tiny_sdxl", "red</w>")])
def test_a_direction_within_a_token_stands_in_the_objects_phrase(which, word, request):
    """`direction NAME within token "circle"` compares the prompt with the direction's token in
    the circle's phrase against the prompt itself: with the embedding of a real word, exactly the
    prompt with that word there ("a blue circle" -> "a red circle"; "a circle" -> "a red circle")."""
    import dsl

    b = request.getfixturevalue(which)
    row = _word_rows(b, word)
    for prompt in ("a blue circle and a blue square", "a circle and a blue square"):
        token = dsl.token_indices("circle", prompt, b.tokenizer)
        edited, base = N.phrase_contexts(b, prompt, token, row)
        want, plain = b.encode_prompt("a red circle and a blue square"), b.encode_prompt(prompt)
        assert torch.allclose(edited.hidden, want.cond, atol=1e-5) and torch.allclose(base.hidden, plain.cond, atol=1e-5)
        for k in edited.added:  # SDXL: the pooled embeddings of both prompts
            assert torch.allclose(edited.added[k].float(), want.added[k].float(), atol=1e-5), k
            assert torch.allclose(base.added[k].float(), plain.added[k].float(), atol=1e-5), k
    # the word the phrase already has makes no difference at all: the edit is zero
    token = dsl.token_indices("circle", "a red circle", b.tokenizer)
    edited, base = N.phrase_contexts(b, "a red circle", token, row)
    assert torch.allclose(edited.hidden, base.hidden, atol=1e-6)


def test_noiseclr_loss_prefers_consistent_distinct_directions():
    g = torch.Generator().manual_seed(0)
    a, other = torch.nn.functional.normalize(torch.randn(2, 64, generator=g), dim=-1)
    good = noiseclr_loss(a.expand(4, -1), other.expand(2, 4, -1), 0.5)  # same on every image, unlike the others
    bad = noiseclr_loss(torch.nn.functional.normalize(torch.randn(4, 64, generator=g), dim=-1), a.expand(2, 4, -1), 0.5)
    assert good < bad
    assert good.item() == pytest.approx(-np.log(np.exp(2.0) / np.exp(float(a @ other) / 0.5)), rel=1e-5)


# ----------------------------------------------------------------------------------------------
# steer learn, at tiny settings on the shipped model


def _hspace(tmp_path, work, iters, *extra):
    return learn.main(["hspace", "tiny", "--from", "a red circle", "--to", "a red square", "--steps", "4", "--n-images", "2",
                       "--iters", str(iters), "--out", str(tmp_path / "out"), "--work", str(work), "--ckpt-every", "1", *extra])


def test_learn_hspace_writes_a_loadable_direction_and_resumes(shapes, shapes_path, tmp_path, capsys):
    assert _hspace(tmp_path, tmp_path / "w_full", 2, "--model", shapes_path) == 0
    out = tmp_path / "out" / "tiny.safetensors"
    assert f"to {out}" in capsys.readouterr().out.strip().splitlines()[-1]
    full = SD.load(out, shapes)
    meta = full.meta
    assert full.kind == "hspace" and full.tensors["delta_h"].shape == H.mid_block_shape(shapes.unet)
    assert full.tensors["delta_h"].abs().sum() > 0  # it learned something from a zero start
    assert meta["recipe"].startswith("steer learn hspace tiny --from 'a red circle'") and meta["train_steps"] == 4
    assert meta["from"] == "a red circle" and meta["to"] == "a red square" and meta["resolution"] == list(shapes.image_size())

    # stopped after the first pass, then resumed: the same direction as the uninterrupted run
    assert _hspace(tmp_path, tmp_path / "w_part", 1, "--model", shapes_path) == 0
    half = SD.load(out, shapes).tensors["delta_h"]
    assert not torch.allclose(half, full.tensors["delta_h"])
    assert _hspace(tmp_path, tmp_path / "w_part", 2, "--model", shapes_path, "--resume") == 0
    assert "resumed from" in capsys.readouterr().out
    assert torch.allclose(SD.load(out, shapes).tensors["delta_h"], full.tensors["delta_h"], atol=1e-6)

    # a checkpoint is never continued with another recipe
    assert learn.main(["hspace", "tiny", "--from", "a red circle", "--to", "a blue circle", "--steps", "4", "--n-images", "2",
                       "--iters", "3", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w_part"), "--resume",
                       "--model", shapes_path]) == 2
    assert "other settings" in capsys.readouterr().err


def _world_images(folder, n=4):
    from PIL import Image

    from sampler.shapes.world import make_scene

    folder.mkdir()
    for i in range(n):
        Image.fromarray((make_scene(100 + i).image * 255).round().astype(np.uint8)).save(folder / f"scene{i}.png")
    return folder


def _noiseclr(tmp_path, images, work, iters, *extra):
    return learn.main(["noiseclr", "--images", str(images), "--k", "3", "--iters", str(iters), "--batch", "3", "--out",
                       str(tmp_path / "dirs"), "--work", str(work), "--ckpt-every", "1", *extra])


def test_learn_noiseclr_writes_k_directions_and_resumes(shapes, shapes_path, tmp_path, capsys):
    images = _world_images(tmp_path / "images")
    assert _noiseclr(tmp_path, images, tmp_path / "w_full", 2, "--model", shapes_path) == 0
    assert "noiseclr_00 ... noiseclr_02" in capsys.readouterr().out.strip().splitlines()[-1]
    files = sorted((tmp_path / "dirs").glob("*.safetensors"))
    assert [f.stem for f in files] == ["noiseclr_00", "noiseclr_01", "noiseclr_02"]
    full = [SD.load(f, shapes) for f in files]
    assert all(d.kind == "noise" and d.tensors["embedding"].shape == (N.width(shapes),) for d in full)
    assert full[1].meta["index"] == 1 and full[1].meta["k"] == 3 and full[1].meta["recipe"].startswith("steer learn noiseclr")
    N.direction_context(shapes, full[0].tensors["embedding"]).hidden  # usable as it is

    assert _noiseclr(tmp_path, images, tmp_path / "w_part", 1, "--model", shapes_path) == 0
    assert _noiseclr(tmp_path, images, tmp_path / "w_part", 2, "--model", shapes_path, "--resume") == 0
    resumed = [SD.load(f, shapes).tensors["embedding"] for f in files]
    for a, d in zip(resumed, full):
        assert torch.allclose(a, d.tensors["embedding"], atol=1e-6)  # the optimizer state came back too


def test_a_noiseclr_checkpoint_with_unnamed_moments_gets_the_harness_names():
    """Checkpoints written before sampler/training.py kept AdamW's state as opt.exp_avg with a plain
    step number; they resume with their moments under the names the harness restores."""
    emb, m, v = torch.randn(3, 4), torch.randn(3, 4), torch.rand(3, 4)
    old = {"embeddings": emb, "opt.exp_avg": m, "opt.exp_avg_sq": v}
    tensors, state = named_moments(old, {"step": 2, "opt_step": 2.0, "recipe": {}})
    assert tensors.keys() == {"embeddings", "opt.embeddings.exp_avg", "opt.embeddings.exp_avg_sq"}
    assert torch.equal(tensors["opt.embeddings.exp_avg"], m) and state["opt_step"] == {"embeddings": 2.0}
    opt = torch.optim.AdamW([p := torch.nn.Parameter(emb.clone())], lr=1e-3)
    from sampler import training as T

    T.restore_optimizer(opt, {p: "embeddings"}, tensors, state["opt_step"])
    assert torch.equal(opt.state[p]["exp_avg_sq"], v) and float(opt.state[p]["step"]) == 2.0
    assert named_moments(tensors, state) == (tensors, state)  # the new layout passes through


def test_learn_noiseclr_needs_two_images(tmp_path, capsys):
    images = _world_images(tmp_path / "one", n=1)
    assert _noiseclr(tmp_path, images, tmp_path / "w", 1) == 2
    assert "at least 2" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Pix2Pix-Zero prompt directions


@pytest.mark.parametrize("which", ["shapes", "tiny_sd"])
def test_edit_direction_is_the_difference_of_mean_embeddings(which, request):
    b = request.getfixturevalue(which)
    E = lambda text: b.encode_prompt(text).cond[0]  # noqa: E731
    one = PD.edit_direction(b, ["a red circle"], ["a green circle"], progress=False)
    assert set(one) == {"delta"} and tuple(one["delta"].shape) == PD.prompt_shape(b)
    assert torch.allclose(one["delta"], E("a green circle") - E("a red circle"), atol=1e-6)
    many = PD.edit_direction(b, ["a red circle", "a red square"], ["a green circle"], progress=False)
    want = E("a green circle") - (E("a red circle") + E("a red square")) / 2  # sets of any sizes: means
    assert torch.allclose(many["delta"], want, atol=1e-5)
    assert one["delta"].abs().max() > 0
    with pytest.raises(ValueError):
        PD.edit_direction(b, [], ["a green circle"], progress=False)


def test_shifted_moves_only_the_conditional_half(shapes):
    cond = shapes.encode_prompt("a red circle and a blue square")
    d1 = {"delta": torch.randn(PD.prompt_shape(shapes), generator=torch.Generator().manual_seed(0))}
    d2 = {"delta": torch.randn(PD.prompt_shape(shapes), generator=torch.Generator().manual_seed(1))}
    out = PD.shifted(cond, [(1.5, d1), (-0.5, d2)])
    assert torch.allclose(out.cond, cond.cond + 1.5 * d1["delta"] - 0.5 * d2["delta"])
    assert torch.equal(out.uncond, cond.uncond) and out is not cond
    assert PD.shifted(cond, []) is cond
    assert torch.equal(PD.shifted(cond, [(0.0, d1)]).cond, cond.cond)


def test_shifted_adds_the_pooled_delta_on_sdxl(tmp_path):
    from sampler.backbones import StableDiffusionXLBackbone
    from tiny import tiny_sdxl_pipeline

    b = StableDiffusionXLBackbone(tiny_sdxl_pipeline(tmp_path), "tiny-xl")
    d = PD.edit_direction(b, ["a red circle"], ["a green circle"], progress=False)
    assert set(d) == {"delta", "pooled"} and tuple(d["delta"].shape) == PD.prompt_shape(b)
    cond = b.encode_prompt("a red circle")
    out = PD.shifted(cond, [(1.0, d)])
    green = b.encode_prompt("a green circle")
    assert torch.allclose(out.cond, green.cond, atol=1e-5)
    assert torch.allclose(out.added["text_embeds"], green.added["text_embeds"], atol=1e-5)
    assert torch.equal(out.added_uncond["text_embeds"], cond.added_uncond["text_embeds"])


def test_a_prompt_direction_of_another_shape_is_refused(shapes, tiny_sd, tmp_path):
    path = D.save_direction(tmp_path / "p.safetensors", {"delta": torch.zeros(PD.prompt_shape(tiny_sd))}, "prompt", D.backbone_id(tiny_sd))
    assert SD.load(path, tiny_sd).kind == "prompt"
    wrong = D.save_direction(tmp_path / "q.safetensors", {"delta": torch.zeros(7, 32)}, "prompt", D.backbone_id(shapes))
    with pytest.raises(SteerCompileError) as e:
        SD.load(wrong, shapes)
    assert "7x32" in e.value.message and "x".join(map(str, PD.prompt_shape(shapes))) in e.value.message
    assert "steer learn prompt" in e.value.hint
    with pytest.raises(ValueError, match="delta"):
        D.save_direction(tmp_path / "r.safetensors", {"embedding": torch.zeros(4)}, "prompt", "shapes:shapes")


def test_learn_prompt_writes_the_direction_and_its_sentences(shapes, shapes_path, tmp_path, capsys):
    (tmp_path / "more.txt").write_text("# source sentences\na red square\n\na red triangle and a blue circle\n")
    argv = ["prompt", "red_to_green", "--from", "a red circle", "--from-file", str(tmp_path / "more.txt"),
            "--swap", "red", "green", "--out", str(tmp_path / "out"), "--model", shapes_path]
    assert learn.main(argv) == 0
    out = tmp_path / "out" / "red_to_green.safetensors"
    assert f"to {out}" in capsys.readouterr().out
    d = SD.load(out, shapes)
    assert d.kind == "prompt" and d.meta["method"] == "pix2pix-zero"
    assert d.meta["from"] == ["a red circle", "a red square", "a red triangle and a blue circle"]
    assert d.meta["to"] == ["a green circle", "a green square", "a green triangle and a blue circle"]
    assert d.meta["recipe"].startswith("steer learn prompt red_to_green --from 'a red circle'")
    want = PD.edit_direction(shapes, d.meta["from"], d.meta["to"], progress=False)["delta"]
    assert torch.allclose(d.tensors["delta"], want, atol=1e-6)


@pytest.mark.parametrize("argv,message", [
    (["--to", "a green circle"], "no source sentences"),
    (["--from", "a red circle"], "no target sentences"),
    (["--from", "a red circle", "--swap", "blue", "green"], "has no word 'blue'"),
    (["--from", "a red circle", "--to", "a green circle", "--swap", "red", "green"], "drop --to"),
    (["--from-file", "missing.txt", "--to", "a green circle"], "cannot read sentences"),
])
def test_learn_prompt_mistakes_are_usage_errors(argv, message, tmp_path, capsys):
    assert learn.main(["prompt", "x", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("steer learn: error:") and message in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("which", ["sd", "sdxl"])
def test_prompt_direction_runs_on_latent_pipelines(which, tmp_path):
    """The editor's path for a prompt direction on SD (77-token context) and SDXL (two encoders and
    a pooled embedding): weight 0 is the source pass exactly; weight 1 changes the image."""
    import dsl
    from sampler.backbones import StableDiffusionXLBackbone
    from sampler.editor import Editor
    from tiny import tiny_sdxl_pipeline

    if which == "sd":
        b = StableDiffusionBackbone(tiny_sd_pipeline(tmp_path / "build"), "tiny-sd")
    else:
        b = StableDiffusionXLBackbone(tiny_sdxl_pipeline(tmp_path / "build"), "tiny-xl")
    tensors = PD.edit_direction(b, ["a photo of a dog"], ["a photo of a red dog"], progress=False)
    D.save_direction(tmp_path / "directions" / "redder.safetensors", tensors, "prompt", D.backbone_id(b))
    editor = Editor(b)

    def run(extra):
        return editor.run(dsl.compile(f'prompt "a photo of a dog"\nsteps 3\n{extra}'), progress=False, script_dir=tmp_path)

    zero, one, kept = run("direction redder * 0"), run("direction redder"), run("direction redder\nkeep attention")
    assert np.abs(zero.image - zero.source_image).max() < 1e-5
    assert np.abs(one.image - one.source_image).max() > 1e-4
    assert np.isfinite(kept.image).all() and not np.array_equal(kept.image, one.image)


def test_noiseclr_learns_and_edits_on_sdxl(tmp_path, capsys):
    """NoiseCLR on a tiny SDXL pipeline saved to disk: `steer learn noiseclr` learns rows for both
    text encoders, and `direction NAME` runs through the editor (weight 0: the source exactly)."""
    import dsl
    from sampler.editor import Editor
    from tiny import tiny_sdxl_pipeline

    tiny_sdxl_pipeline(tmp_path / "build").save_pretrained(tmp_path / "xl", safe_serialization=True)
    images = _world_images(tmp_path / "images")
    assert _noiseclr(tmp_path, images, tmp_path / "work", 2, "--model", str(tmp_path / "xl")) == 0
    b = load_backbone(str(tmp_path / "xl"))
    d = SD.load(tmp_path / "dirs" / "noiseclr_01.safetensors", b)
    assert b.kind == "sdxl" and d.tensors["embedding"].shape == (sum(N.widths(b)),) and len(N.widths(b)) == 2
    assert D.backbone_id(b) == d.meta["backbone"]

    (tmp_path / "dirs").rename(tmp_path / "directions")  # next to the script: found by name
    editor = Editor(b)

    def run(weight):
        return editor.run(dsl.compile(f'prompt "a photo of a dog"\nsteps 3\ndirection noiseclr_01 * {weight}'),
                          progress=False, script_dir=tmp_path)

    zero, one = run(0), run(1)
    assert np.abs(zero.image - zero.source_image).max() < 1e-5
    assert np.abs(one.image - one.source_image).max() > 1e-4

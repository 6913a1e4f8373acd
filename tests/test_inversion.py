"""Real images: loading rule, DDIM and null-text inversion, the on-disk cache, clear errors."""

import numpy as np
import pytest
import torch
from PIL import Image

import dsl
from sampler.backbones import StableDiffusionBackbone
from sampler.editor import Editor
from sampler.images import load_image
from sampler.inversion import psnr
from tiny import tiny_sd_pipeline


@pytest.fixture(scope="module")
def editor(tmp_path_factory):
    """A tiny random pipeline whose noise prediction changes slowly with the latent, as a trained
    one's does: a random UNet's output is a high-frequency function of z, and no DDIM inversion
    can invert that (its fixed point does not exist). Scaling the output layer tames it."""
    pipe = tiny_sd_pipeline(tmp_path_factory.mktemp("sd"))
    with torch.no_grad():
        pipe.unet.conv_out.weight.mul_(2e-3)
        pipe.unet.conv_out.bias.mul_(2e-3)
    return Editor(StableDiffusionBackbone(pipe, "tiny-sd"))


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STEER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def photo(path, size=(48, 40), mode="RGB"):
    rng = np.random.default_rng(0)
    a = (rng.random((size[1], size[0], 4 if mode == "RGBA" else 3)) * 255).astype(np.uint8)
    a[..., :3] = np.kron(a[::8, ::8, :3], np.ones((8, 8, 1), np.uint8))[: size[1], : size[0]]  # smooth blocks
    Image.fromarray(a, mode).save(path)
    return path


def test_any_size_and_mode_becomes_the_models_square(tmp_path):
    p = photo(tmp_path / "wide.png", (80, 40), "RGBA")
    im = load_image(p, (32, 32))
    assert im.shape == (32, 32, 3) and im.dtype == np.float32 and 0 <= im.min() and im.max() <= 1


def test_missing_and_corrupt_files_are_user_errors(tmp_path, editor):
    with pytest.raises(dsl.SteerCompileError) as info:
        editor.run(dsl.compile(dsl.parse('prompt "a red circle"\nsteps 2\nsource "nope.png"', str(tmp_path / "x.edit"))),
                   progress=False, script_dir=tmp_path)
    assert (info.value.line, info.value.col) == (3, 8) and "does not exist" in info.value.message
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(dsl.SteerCompileError, match="cannot read source image"):
        editor.run(dsl.compile('prompt "a red circle"\nsteps 2\nsource "bad.png"'), progress=False, script_dir=tmp_path)


def test_ddim_inversion_regenerates_the_photo_and_is_cached(tmp_path, editor, cache, monkeypatch):
    photo(tmp_path / "p.png")
    prog = dsl.compile('prompt "a red circle"\nsteps 6\nsource "p.png"')
    r = editor.run(prog, progress=False, script_dir=tmp_path)
    target = torch.from_numpy(load_image(tmp_path / "p.png", (32, 32))).permute(2, 0, 1)[None]
    recon = torch.from_numpy(r.source_image).permute(2, 0, 1)[None]
    through_vae = editor.backbone.decode(editor.backbone.encode(target))
    assert psnr(recon, through_vae) > 30, "inversion + regeneration reproduces the encoded photo"
    assert len(list(cache.glob("inversions/*.safetensors"))) == 1
    editor.sources.clear()
    monkeypatch.setattr("sampler.source.invert_ddim", lambda *a, **k: pytest.fail("inverted again instead of using the cache"))
    again = editor.run(prog, progress=False, script_dir=tmp_path)
    assert np.allclose(again.source_image, r.source_image, atol=1e-5)


def test_null_text_inversion_reproduces_at_cfg_above_one(tmp_path, editor):
    photo(tmp_path / "p.png")
    prog = dsl.compile('prompt "a red circle"\nsteps 4\ncfg 4\nsource "p.png"\ninvert null-text')
    r = editor.run(prog, progress=False, script_dir=tmp_path)
    target = torch.from_numpy(load_image(tmp_path / "p.png", (32, 32))).permute(2, 0, 1)[None]
    through_vae = editor.backbone.decode(editor.backbone.encode(target))
    plain_ddim = dsl.compile('prompt "a red circle"\nsteps 4\ncfg 4\nsource "p.png"')
    r_plain = editor.run(plain_ddim, progress=False, script_dir=tmp_path)
    recon = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None]  # noqa: E731
    assert psnr(recon(r.source_image), through_vae) > psnr(recon(r_plain.source_image), through_vae)
    edited = editor.run(prog + dsl.compile('centroid(token "circle") -> (0.7, 0.5)'), progress=False, script_dir=tmp_path)
    assert np.isfinite(edited.image).all()

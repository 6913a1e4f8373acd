"""The training script is seeded and resumable: 2 steps + resume to 3 equals 3 steps straight."""

import pytest
import torch
from safetensors.torch import load_file

from sampler.shapes import train


def vae_stage(work, steps=2):
    train.main(["vae", "--work", str(work), "--vae-steps", str(steps), "--vae-batch", "2", "--ckpt-every", "1"])


def run(work, steps):
    if not (work / "vae").is_dir():
        vae_stage(work)
    train.main(["unet", "--work", str(work), "--out", str(work / "out"), "--steps", str(steps), "--batch", "2",
                "--warmup", "1", "--cooldown", "1", "--ckpt-every", "1", "--clip-steps", "0"])


def test_vae_stage_measures_its_latents(tmp_path):
    vae_stage(tmp_path, 3)
    vae = train.load_vae(tmp_path)
    from sampler.shapes import model as M
    from sampler.shapes import world

    x = train.images_to_tensor([world.make_scene(i, M.IMAGE_SIZE) for i in range(8)])
    z = M.vae_encode(vae, x)
    assert z.shape == (8, 4, M.LATENT_SIZE, M.LATENT_SIZE)
    # the shift and scale were measured on world images: latents come out centred, of unit spread
    assert abs(z.mean().item()) < 0.5 and 0.5 < z.std().item() < 2.0
    assert M.vae_decode(vae, z).shape == x.shape


def test_the_unet_stage_needs_an_autoencoder(tmp_path):
    with pytest.raises(SystemExit, match="vae stage"):
        train.main(["unet", "--work", str(tmp_path), "--steps", "1", "--batch", "2"])


def test_training_never_writes_the_shipped_model_unasked(tmp_path):
    vae_stage(tmp_path)
    train.main(["unet", "--work", str(tmp_path), "--steps", "1", "--batch", "2", "--warmup", "1", "--ckpt-every", "1"])
    assert (tmp_path / "model" / "steer_shapes.json").is_file()


def test_wsd_schedule_holds_then_decays():
    lr = [train.lr_at(s, 100, 1.0, 10, "wsd", 20) for s in range(100)]
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)
    assert all(v == 1.0 for v in lr[10:80]) and lr[99] == pytest.approx(0.1 + 0.9 / 20) and lr[90] < lr[85] < 1.0


def test_resume_continues_exactly(tmp_path):
    straight, resumed = tmp_path / "a", tmp_path / "b"
    run(straight, 3)
    run(resumed, 2)
    run(resumed, 3)
    a = load_file(str(straight / "unet.ckpt.safetensors"))
    b = load_file(str(resumed / "unet.ckpt.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the exported model folder loads
    from sampler.shapes import model as M

    assert M.load(straight / "out", with_clip=False).unet is not None


def test_freeze_text_trains_the_unet_alone(tmp_path):
    vae_stage(tmp_path)
    train.main(["unet", "--work", str(tmp_path), "--out", str(tmp_path / "out"), "--steps", "2", "--batch", "2",
                "--warmup", "1", "--ckpt-every", "1", "--clip-steps", "0", "--freeze-text", "--restart"])
    first = load_file(str(tmp_path / "unet.ckpt.safetensors"))
    torch.manual_seed(0)  # what train_unet builds before its first step: the same seed, the same initial weights
    from transformers import CLIPTextModel

    from sampler.shapes import model as M

    tok = M.build_tokenizer()
    init_text = CLIPTextModel(M.text_config(tok)).state_dict()
    init_unet = M.build_unet().state_dict()
    text = {k[len("model.text_encoder."):]: v for k, v in first.items() if k.startswith("model.text_encoder.")}
    unet = {k[len("model.unet."):]: v for k, v in first.items() if k.startswith("model.unet.")}
    assert all(torch.equal(text[k], init_text[k]) for k in init_text), "the frozen text encoder moved"
    assert any(not torch.equal(unet[k], init_unet[k]) for k in init_unet), "the UNet did not train"
    assert any(k.startswith("opt.unet.") for k in first) and not any(k.startswith("opt.text_encoder.") for k in first)

"""The training script is seeded and resumable: 2 steps + resume to 3 equals 3 steps straight."""

import torch
from safetensors.torch import load_file

from sampler.shapes import train


def run(work, steps):
    train.main(["unet", "--work", str(work), "--out", str(work / "out"), "--steps", str(steps), "--batch", "2",
                "--warmup", "1", "--ckpt-every", "1", "--clip-steps", "0"])


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

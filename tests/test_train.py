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

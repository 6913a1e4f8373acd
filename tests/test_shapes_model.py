"""The shipped shapes model loads offline and samples an image of the right size."""

import socket

import numpy as np
import pytest

import dsl
from sampler.shapes import model as M
from sampler.shapes import world as W


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_shipped_weights_are_safetensors_and_small():
    files = [p for p in M.SHIPPED.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights), "no pickled weights"
    assert sum(p.stat().st_size for p in files) <= 50 * 2**20  # the size the model may ship at


def test_loads_offline_and_samples(no_network, shapes_path):
    m = M.load(shapes_path)
    assert m.clip is not None and m.card["defaults"]["steps"] > 0
    from sampler.editor import Editor

    editor = Editor(shapes_path)
    r = editor.run(dsl.compile('prompt "a red circle"'), progress=False)  # the model's default steps and cfg
    assert r.image.shape == (*editor.backbone.image_size(), 3) and np.isfinite(r.image).all()
    assert [o.phrase for o in W.detect(r.image)] == ["a red circle"]  # what it drew, by the world's detector


def test_tokenizer_is_word_level_and_fast():
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(M.SHIPPED / "tokenizer")
    assert tok.tokenize("a red circle and a blue square") == ["a", "red", "circle", "and", "a", "blue", "square"]
    assert tok("a red circle").input_ids == [tok.bos_token_id, tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("red"),
                                            tok.convert_tokens_to_ids("circle"), tok.eos_token_id]


def latent_model_path(shapes_path):
    """The model under test if it is a latent one, else the committed second-generation snapshot."""
    from pathlib import Path

    return shapes_path if (M.resolve(shapes_path) / "vae").is_dir() else Path(M.__file__).parent / "next"


def test_the_autoencoder_reconstructs_world_images(shapes_path):
    """World scenes the training never drew (seed outside the trainer's) through encode and decode:
    close in PSNR, and the world's detector finds the same objects in the reconstruction."""
    import torch

    from sampler.inversion import psnr

    m = M.load(latent_model_path(shapes_path), with_clip=False)
    size = m.vae.config.sample_size
    scenes = W.scene_batch(987654, 0, 8, size=size, p_one=0.5)
    x = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2)
    with torch.no_grad():
        z = M.vae_encode(m.vae, x * 2 - 1)
        y = ((M.vae_decode(m.vae, z) + 1) / 2).clamp(0, 1)
    assert z.shape[-1] == size // 4
    values = [psnr(y[i], x[i]) for i in range(len(scenes))]
    assert min(values) > 28 and sum(values) / len(values) > 32, values
    for s, img in zip(scenes, y.permute(0, 2, 3, 1).numpy()):
        assert sorted(o.phrase for o in W.detect(img)) == sorted(o.phrase for o in s.objects)


def test_a_half_precision_snapshot_loads_in_fp32_and_edits():
    """sampler/shapes/next is stored in fp16 to stay small; loaded, it runs in fp32 like the shipped model."""
    import torch
    from pathlib import Path

    from sampler.editor import Editor

    path = Path(M.__file__).parent / "next"
    m = M.load(path)
    assert all(p.dtype == torch.float32 for mod in (m.unet, m.text_encoder, m.clip) for p in mod.parameters())
    r = Editor(path).run(dsl.compile('prompt "a red circle"\nsteps 3'), progress=False)
    assert r.image.shape == (64, 64, 3) and np.isfinite(r.image).all()

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
    r = editor.run(dsl.compile('prompt "a red circle"\nsteps 5'), progress=False)
    assert r.image.shape == (*editor.backbone.image_size(), 3) and np.isfinite(r.image).all()
    assert [o.phrase for o in W.detect(r.image)] == ["a red circle"]  # what it drew, by the world's detector


def test_tokenizer_is_word_level_and_fast():
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(M.SHIPPED / "tokenizer")
    assert tok.tokenize("a red circle and a blue square") == ["a", "red", "circle", "and", "a", "blue", "square"]
    assert tok("a red circle").input_ids == [tok.bos_token_id, tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("red"),
                                            tok.convert_tokens_to_ids("circle"), tok.eos_token_id]

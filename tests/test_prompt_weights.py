"""Prompt weights: A1111's (word:1.3) and compel's word++ / (words)1.3, read through compel, applied
per token by the backbone's encoder, with token positions those of the plain prompt."""

import pytest
import torch

import dsl
from dsl import weights as W
from energies.errors import SteerCompileError

WEIGHTED = "a (red:1.5) circle and a blue square"
PLAIN = "a red circle and a blue square"


@pytest.mark.parametrize("prompt,plain,wanted", [
    (WEIGHTED, PLAIN, {"red": 1.5}),
    ("a red++ circle and a blue-- square", PLAIN, {"red": 1.21, "blue": 0.81}),
    ("(a red circle)1.2 and a blue square", PLAIN, {"a": 1.2, "red": 1.2, "circle": 1.2}),
    ("a ((red:1.2) circle)0.5 and a blue square", PLAIN, {"red": 0.6, "circle": 0.5}),
    ("a blue-green circle, here.", "a blue-green circle, here.", {}),  # a hyphen inside a word is text
    (PLAIN, PLAIN, {}),
])
def test_weights_are_read_through_compel(prompt, plain, wanted):
    assert W.plain(prompt) == plain
    got: dict = {}
    for s, e, w in W.weighted_words(prompt):
        got.setdefault(plain[s:e], w)  # a word's first occurrence: "a" is there twice
    for word, w in got.items():
        assert w == pytest.approx(wanted.get(word, 1.0)), word


@pytest.mark.parametrize("prompt,col,what", [
    ("a (red:abc) circle", 16, "'abc' is not a number"),  # the column of abc: prompt "a (red:|abc
    ("a (red circle", 11, "never closed"),
    ("a red) circle", 14, "closes no"),
    ("a (red) circle", 11, "without a weight"),
    ("a [red] circle", 11, "not supported"),
    ("a red circle.and()", 21, "not supported"),
    ("a red <lora:x:1> circle", 15, "not supported"),
    ("a well--known circle", 11, "ambiguous"),  # compel would weigh "well" 0.81; read as text it would not
])
def test_bad_weight_syntax_is_an_error_at_its_column(prompt, col, what):
    with pytest.raises(SteerCompileError) as e:
        dsl.compile(dsl.parse(f'prompt "{prompt}"\n', "w.edit"))
    assert (e.value.line, e.value.col) == (1, col) and what in e.value.message
    rendered = e.value.render()
    assert rendered.startswith(f"w.edit:1:{col}: error: prompt weights") and "^" in rendered


def test_negative_prompt_weights_are_checked_too():
    with pytest.raises(SteerCompileError) as e:
        dsl.compile(dsl.parse('prompt "a red circle"\nnegative "(blurry:x)"\n'))
    assert e.value.line == 2


def test_the_printer_keeps_the_prompt_as_written():
    program = dsl.compile(dsl.parse(f'prompt "{WEIGHTED}"\n'))
    assert program.settings.prompt == WEIGHTED and WEIGHTED in dsl.format(program)


@pytest.fixture(scope="module")
def shapes(shapes_editor):
    return shapes_editor.backbone


def test_token_references_resolve_through_weights(shapes):
    text = f'prompt "{WEIGHTED}"\ncentroid(token "circle") -> (0.7, 0.5)\nkeep appearance(token "red")\n'
    weighted = dsl.bind(dsl.compile(dsl.parse(text)), WEIGHTED, shapes.tokenizer)
    plain = dsl.bind(dsl.compile(dsl.parse(text.replace(WEIGHTED, PLAIN))), PLAIN, shapes.tokenizer)
    assert [b.token for b in weighted] == [b.token for b in plain]
    assert weighted[0].token == [3]  # <bos> a red circle


def test_the_weight_reaches_the_embedding_row_of_its_token(shapes):
    plain, weights = dsl.token_weights(WEIGHTED, shapes.tokenizer)
    assert plain == PLAIN and len(weights) == shapes.tokenizer.model_max_length == 16
    red = weights.index(1.5)
    assert shapes.tokenizer.convert_ids_to_tokens(shapes.token_ids(PLAIN))[red] == "red"
    w, p = shapes.encode_prompt(WEIGHTED).cond, shapes.encode_prompt(PLAIN).cond
    assert w.shape == p.shape == (1, 16, p.shape[-1])  # the positions attention maps index do not move
    moved = (w - p)[0].norm(dim=-1)
    assert moved[red] > 0.05  # (the shapes text encoder's rows share most of their norm: 0.15 of 10 here)
    assert torch.cat([moved[:red], moved[red + 1:]]).max() < 1e-4 * moved[red]


def test_weights_on_a_clip_tokenizer_keep_its_length(tmp_path):
    from tiny import tiny_sd_pipeline

    from sampler.backbones import StableDiffusionBackbone

    b = StableDiffusionBackbone(tiny_sd_pipeline(tmp_path), "tiny-sd")
    prompt = "a (circle)1.4 and a red square"
    plain, weights = dsl.token_weights(prompt, b.tokenizer)
    tokens = b.tokenizer.convert_ids_to_tokens(b.token_ids(plain))
    assert [t for t, w in zip(tokens, weights) if w != 1.0] == ["cir", "cle</w>"]  # both pieces of the split word
    w, p = b.encode_prompt(prompt).cond, b.encode_prompt(plain).cond
    assert w.shape == p.shape == (1, b.tokenizer.model_max_length, 32)
    assert not torch.equal(w, p)


def test_a_weighted_prompt_runs_end_to_end(shapes_editor):
    text = f'prompt "{WEIGHTED}"\nsteps 4\nseed 1\ncentroid(token "circle") -> (0.7, 0.5)\n'
    result = shapes_editor.run(dsl.compile(dsl.parse(text)), progress=False)
    plain = shapes_editor.run(dsl.compile(dsl.parse(text.replace(WEIGHTED, PLAIN))), progress=False)
    assert torch.isfinite(torch.as_tensor(result.image)).all()
    assert result.program.settings.prompt == WEIGHTED
    assert not torch.equal(torch.as_tensor(result.source_image), torch.as_tensor(plain.source_image))  # the weight changed the picture


def test_the_package_reads_a_weighted_prompt_as_its_plain_words(shapes):
    assert dsl.token_indices("circle", WEIGHTED, shapes.tokenizer) == dsl.token_indices("circle", PLAIN, shapes.tokenizer)
    assert dsl.prompt_words(WEIGHTED) == dsl.prompt_words(PLAIN)
    assert [o.tokens for o in dsl.prompt_objects(WEIGHTED, shapes.tokenizer)] == [o.tokens for o in dsl.prompt_objects(PLAIN, shapes.tokenizer)]


def test_any_prompt_is_read_or_refused_with_a_position():
    """Random prompts over the weight syntax's characters: a plain prompt and one weight per word,
    or a WeightError inside the prompt; nothing else escapes (compel's parser included)."""
    import random

    r = random.Random(0)
    for _ in range(400):
        prompt = "".join(r.choices("ab  c(:)1.5+-[]<\\\",", k=r.randint(0, 14)))
        try:
            words = W.weighted_words(prompt)
        except W.WeightError as e:
            assert 0 <= e.offset <= len(prompt), prompt
            continue
        text = W.plain(prompt)
        assert "(" not in text and ")" not in text and all(0 < w for _, _, w in words), prompt


def test_sdxl_weights_both_encoders_and_keeps_the_pooled_embedding(tmp_path):
    from tiny import tiny_sdxl_pipeline

    from sampler.backbones import StableDiffusionXLBackbone

    b = StableDiffusionXLBackbone(tiny_sdxl_pipeline(tmp_path), "tiny-xl")
    w, p = b.encode_prompt("a (red:1.5) square"), b.encode_prompt("a red square")
    assert w.cond.shape == p.cond.shape == (1, b.tokenizer.model_max_length, 64)
    moved = (w.cond - p.cond)[0].norm(dim=-1)
    red = dsl.token_weights("a (red:1.5) square", b.tokenizer)[1].index(1.5)
    assert moved[red] > 0 and moved.argmax() == red
    assert torch.equal(w.added["text_embeds"], p.added["text_embeds"])


def test_steer_check_points_at_a_malformed_weight(tmp_path, capsys, shapes_path):
    from dsl.cli import main

    script = tmp_path / "w.edit"
    script.write_text('prompt "a (red:abc) circle"\ncentroid(token "circle") -> (0.7, 0.5)\n')
    assert main(["check", str(script), "--model", shapes_path]) == 2
    err = capsys.readouterr().err
    assert f"{script}:1:16: error: prompt weights: the weight 'abc' is not a number" in err and "^" in err

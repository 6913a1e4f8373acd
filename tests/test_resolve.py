import pytest

import dsl
from energies import program as P
from dsl.binding import bind
from dsl.resolve import prompt_objects, token_indices
from sampler.shapes.model import build_tokenizer
from tiny import write_clip_tokenizer


@pytest.fixture(scope="module")
def word_tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def bpe_tok(tmp_path_factory):
    from transformers import CLIPTokenizerFast

    return CLIPTokenizerFast.from_pretrained(write_clip_tokenizer(tmp_path_factory.mktemp("tok")))


PROMPT = "a red circle and a blue square"


def test_word_level_positions_count_the_bos_token(word_tok):
    assert token_indices(P.TokenRef(word="circle"), PROMPT, word_tok) == [3]
    assert token_indices(P.TokenRef(word="square"), PROMPT, word_tok) == [7]


def test_a_word_split_into_sub_words_uses_all_of_them(bpe_tok):
    assert bpe_tok.tokenize("circle") == ["cir", "cle</w>"]
    assert token_indices(P.TokenRef(word="circle"), PROMPT, bpe_tok) == [3, 4]
    assert token_indices(P.TokenRef(word="square"), PROMPT, bpe_tok) == [8]


def test_second_occurrence_and_phrases(bpe_tok):
    prompt = "a red dog and a blue dog"
    assert token_indices(P.TokenRef(word="dog", occurrence=2), prompt, bpe_tok) == [7]
    assert token_indices(P.TokenRef(word="blue dog"), prompt, bpe_tok) == [6, 7]
    with pytest.raises(dsl.SteerCompileError, match="only 2 occurrences"):
        token_indices(P.TokenRef(word="dog", occurrence=3), prompt, bpe_tok)


def test_missing_word_lists_the_prompts_words(word_tok):
    ref = dsl.compile(dsl.parse('centroid(token "circel") -> (0.5, 0.5)', "x.edit")).terms[0].token
    with pytest.raises(dsl.SteerCompileError) as info:
        token_indices(ref, PROMPT, word_tok)
    e = info.value
    assert 'token "circel" is not in the prompt' in e.message
    assert "did you mean 'circle'" in e.hint and "a, red, circle, and, blue, square" in e.hint
    assert (e.line, e.col) == (1, 10)


def test_objects_are_noun_phrases_with_their_heads(bpe_tok):
    objs = prompt_objects(PROMPT, bpe_tok)
    assert [o.words for o in objs] == ["red circle", "blue square"]
    assert objs[0].head == (3, 4) and objs[0].tokens == (2, 3, 4)


def test_keep_terms_leave_edited_objects_free(word_tok):
    prog = dsl.compile('centroid(token "circle") -> (0.7, 0.5); keep layout; keep appearance')
    bound = bind(prog, PROMPT, word_tok)
    assert bound[1].objects == [[7]], "keep layout must not hold the moved circle in place"
    assert bound[2].objects == [[3], [7]], "appearance is kept for every object, moved or not"


def test_defaults_and_weights_apply(word_tok):
    from energies.defaults import TERMS

    b = bind(dsl.compile('centroid(token "circle") -> (0.7, 0.5) * 2 @ 0.1..0.5 via latent'), PROMPT, word_tok)[0]
    assert b.weight == 2 * TERMS["move"].weight and b.window == (0.1, 0.5) and b.placement == "latent"
    assert b.active(0.1) and b.active(0.49) and not b.active(0.5) and not b.active(0.05)


def test_a_backbone_can_have_its_own_default(word_tok):
    from energies.defaults import BACKBONE_TERMS, TERMS

    prog = dsl.compile("keep attention * 2")
    assert bind(prog, PROMPT, word_tok)[0].weight == 2 * TERMS["keep_attention"].weight  # Pix2Pix-Zero's 0.1
    assert bind(prog, PROMPT, word_tok, backbone="sd")[0].weight == 2 * TERMS["keep_attention"].weight
    shapes = bind(prog, PROMPT, word_tok, backbone="shapes")[0]
    assert shapes.weight == 2 * BACKBONE_TERMS["shapes"]["keep_attention"].weight and shapes.weight != 2 * TERMS["keep_attention"].weight


def test_unknown_direction_lists_known_ones(word_tok, tmp_path):
    prog = dsl.compile(dsl.parse("direction smiel", "x.edit"))
    with pytest.raises(dsl.SteerCompileError) as info:
        bind(prog, PROMPT, word_tok, [tmp_path])
    assert "unknown direction 'smiel'" in info.value.message and "none" in info.value.hint
    (tmp_path / "smile.safetensors").write_bytes(b"")
    with pytest.raises(dsl.SteerCompileError) as info:
        bind(prog, PROMPT, word_tok, [tmp_path])
    assert "did you mean 'smile'" in info.value.hint and "known directions: smile" in info.value.hint
    with pytest.raises(dsl.SteerCompileError, match="cannot read direction file"):
        bind(dsl.compile("direction smile"), PROMPT, word_tok, [tmp_path])  # found, but not a safetensors file

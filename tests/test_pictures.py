"""Token maps and the pictures made of them: on tensors (word -> positions, normalisation) and on
the shipped shapes model at a few steps (the map of a word lies on its object)."""

import numpy as np
import pytest
import torch

import dsl
from energies import program as P
from sampler.result import EditResult, heat_map, steps_at
from sampler.shapes.model import build_tokenizer
from tiny import write_clip_tokenizer

PROMPT = "a red circle and a blue square"


@pytest.fixture(scope="module")
def bpe_tok(tmp_path_factory):
    from transformers import CLIPTokenizerFast

    return CLIPTokenizerFast.from_pretrained(write_clip_tokenizer(tmp_path_factory.mktemp("tok")))


def spot_maps(tokens: int = 16, r: int = 8, steps: int = 3) -> list[torch.Tensor]:
    """Maps in which token position t lights pixel (t // r, t % r) only: which positions a map
    averaged is readable from where it is bright."""
    m = torch.zeros(tokens, r, r)
    for t in range(tokens):
        m[t, t // r, t % r] = 1.0
    return [m.clone() for _ in range(steps)]


def result_with(prompt: str, tokenizer, maps: list[torch.Tensor], side: int = 8) -> EditResult:
    program = P.Program(settings=P.Settings(prompt=prompt))
    image = np.zeros((side, side, 3), np.float32)
    return EditResult(image, image, torch.zeros(1), program, "test", source_maps=maps, edit_maps=maps.__getitem__, tokenizer=tokenizer)


def bright(m: np.ndarray, r: int = 8) -> set[int]:
    """The token positions whose pixel is lit in a map at r x r (the spot_maps layout)."""
    return {int(i) for i in np.flatnonzero(m.reshape(-1) > 0.5)}


def test_a_word_split_into_sub_words_averages_all_its_positions(bpe_tok):
    r = result_with(PROMPT, bpe_tok, spot_maps())
    assert dsl.token_indices("circle", PROMPT, bpe_tok) == [3, 4]  # "cir" "cle"
    assert bright(r.token_map("circle", image="source")) == {3, 4}
    assert bright(r.token_map("square", image="edit")) == {8}


def test_second_occurrence_and_phrases(bpe_tok):
    prompt = "a red dog and a red cat"
    r = result_with(prompt, bpe_tok, spot_maps())
    assert bright(r.token_map("red")) == {2}
    assert bright(r.token_map("red#2")) == {6}
    assert bright(r.token_map("red cat")) == {6, 7}
    assert dsl.prompt_words(prompt) == ["a", "red", "dog", "and", "a#2", "red#2", "cat"]


def test_a_map_is_normalised_and_the_image_size():
    word_tok = build_tokenizer()
    r = result_with(PROMPT, word_tok, [torch.rand(16, 4, 4) * 3 + 1 for _ in range(4)], side=32)
    m = r.token_map("circle")
    assert m.shape == (32, 32)
    assert m.min() == pytest.approx(0.0) and m.max() == pytest.approx(1.0)
    flat = heat_map([torch.ones(16, 4, 4)], [3], (32, 32))
    assert flat.shape == (32, 32) and not flat.any()  # nothing stands out: no NaN from 0 / 0


def test_a_word_not_in_the_prompt_is_a_clean_error():
    r = result_with(PROMPT, build_tokenizer(), spot_maps())
    with pytest.raises(dsl.SteerCompileError, match="not in the prompt") as e:
        r.token_map("triangle")
    assert "red, circle" in e.value.hint  # the prompt's words, to choose from
    with pytest.raises(dsl.SteerCompileError, match="only 1 occurrence"):
        r.token_map("circle#2")


def test_sampling_fractions_name_steps():
    assert steps_at(None, 10) == list(range(10))  # DAAM: every step
    assert steps_at(0.0, 10) == [0] and steps_at(1.0, 10) == [9] and steps_at(0.35, 10) == [3]
    assert steps_at((0.5, 1.0), 10) == [5, 6, 7, 8, 9]
    assert steps_at((0.91, 0.95), 10) == [9]  # no step inside: the one at its start


# ------------------------------------------------------------------------------------------------
# On the shipped shapes model


@pytest.fixture(scope="module")
def moved(shapes_editor):
    program = dsl.compile(f'prompt "{PROMPT}"\nseed 2\nsteps 8\ncentroid(token "circle") -> (0.75, 0.5)')
    return shapes_editor.run(program, progress=False)


def test_the_map_of_circle_lies_on_the_circle_in_source_and_edit(moved):
    from sampler.shapes.world import detect, find

    for kind, image in (("source", moved.source_image), ("edit", moved.image)):
        circle = find(detect(image), shape="circle")
        assert circle is not None, f"no circle in the {kind} image"
        for at in (None, (0.5, 1.0)):
            m = moved.token_map("circle", at=at, image=kind)
            assert m.shape == image.shape[:2]
            assert m[circle.mask].mean() > m[~circle.mask].mean() + 0.2, (kind, at)


def test_the_edit_maps_follow_the_moved_circle(moved):
    """The edited image's map is made from the edit pass, not copied from the source's: its centre
    is where the circle was moved to, the source's where it was."""
    from sampler.shapes.world import detect, find

    for kind, image in (("source", moved.source_image), ("edit", moved.image)):
        m = moved.token_map("circle", at=(0.5, 1), image=kind) ** 4  # the peak, not the diffuse rest
        ys, xs = (np.arange(n) / n for n in m.shape)
        centre = ((m.sum(0) * xs).sum() / m.sum(), (m.sum(1) * ys).sum() / m.sum())
        assert np.hypot(*np.subtract(centre, find(detect(image), shape="circle").centroid)) < 0.12, kind
    assert isinstance(moved.maps, torch.Tensor) and moved.maps.ndim == 3  # by token position, the last edit step's


def test_the_maps_grid_and_the_sheet_are_written(moved, tmp_path):
    from PIL import Image

    from sampler.pictures import grid_size
    from sampler.preflight import written_by_steer

    moved.save_maps(tmp_path / "maps.png", words=["red", "circle#1"], at=[0.3, 1.0])
    with Image.open(tmp_path / "maps.png") as im:
        assert (im.height, im.width) == grid_size((32, 32), words=2, fractions=2)
    moved.sheet(tmp_path / "sheet.png")
    assert written_by_steer(tmp_path / "maps.png") and written_by_steer(tmp_path / "sheet.png")
    with Image.open(tmp_path / "sheet.png") as im:
        assert im.width > 300 and im.height > 300


# ------------------------------------------------------------------------------------------------
# The command line and the REPL

SCRIPT = f'prompt "{PROMPT}"\nseed 2\nsteps 6\ncentroid(token "circle") -> (0.75, 0.5)\n'


def test_steer_maps_writes_the_grid_of_the_words_and_fractions_asked(tmp_path, shapes_path, capsys):
    from PIL import Image

    from dsl.cli import main
    from sampler.pictures import grid_size

    script = tmp_path / "move.edit"
    script.write_text(SCRIPT)
    out = tmp_path / "grid.png"
    assert main(["maps", str(script), "--words", "red", "circle", "square", "--at", "0.3", "0.7", "1.0", "-o", str(out),
                 "--model", shapes_path, "-q"]) == 0
    with Image.open(out) as im:
        assert (im.height, im.width) == grid_size((32, 32), words=3, fractions=3)
    assert f"wrote {out}" in capsys.readouterr().out
    assert main(["maps", str(script), "--model", shapes_path, "-q"]) == 0  # every word but "a", "and"; all steps
    with Image.open(tmp_path / "move-maps.png") as im:
        assert (im.height, im.width) == grid_size((32, 32), words=4, fractions=1)


def test_steer_maps_refuses_before_sampling(tmp_path, shapes_path, capsys):
    from dsl.cli import main

    script = tmp_path / "move.edit"
    script.write_text(SCRIPT)
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"a user's file")
    assert main(["maps", str(script), "--words", "triangle", "--model", shapes_path, "-q"]) == 2
    err = capsys.readouterr().err
    assert "--words triangle: token \"triangle\" is not in the prompt" in err and "Traceback" not in err
    assert main(["maps", str(script), "-o", str(mine), "--model", shapes_path, "-q"]) == 2
    assert "steer did not write it" in capsys.readouterr().err and mine.read_bytes() == b"a user's file"
    assert main(["maps", str(script), "-o", str(script), "--model", shapes_path, "-q"]) == 2  # never over an input
    assert main(["maps", str(script), "--at", "1.5", "--model", shapes_path, "-q"]) == 2
    assert not (tmp_path / "move-maps.png").exists()


def test_steer_run_sheet(tmp_path, shapes_path, capsys):
    from PIL import Image

    from dsl.cli import main

    script = tmp_path / "move.edit"
    script.write_text(SCRIPT)
    assert main(["run", str(script), "-o", str(tmp_path / "e.png"), "--sheet", "--model", shapes_path, "-q"]) == 0
    with Image.open(tmp_path / "e-sheet.png") as im:
        assert im.width > 300 and im.text.get("steer:image") == "sheet"
    assert main(["run", str(script), "--sheet", str(tmp_path / "s.png"), "--model", shapes_path, "-q"]) == 0
    assert (tmp_path / "s.png").exists() and "the sheet" in capsys.readouterr().out


def test_repl_maps_and_curves_write_their_pictures(tmp_path, shapes_path, capsys):
    from dsl.repl import Repl

    repl = Repl(model=shapes_path, out=str(tmp_path / "r.png"))
    with pytest.raises(ValueError, match="nothing has run"):
        repl.handle(":maps")
    repl.handle(f'prompt "{PROMPT}"; seed 2; steps 5')
    repl.handle('centroid(token "circle") -> (0.75, 0.5)')
    repl.handle(":maps circle red")
    repl.handle(":curves")
    assert (tmp_path / "r-1-maps.png").exists() and (tmp_path / "r-1-sheet.png").exists()  # of run 1, r-1.png
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'r-1-maps.png'}" in out and f"wrote {tmp_path / 'r-1-sheet.png'}" in out
    with pytest.raises(ValueError, match="dog.*not in the prompt.*a, red, circle"):
        repl.handle(":maps dog")

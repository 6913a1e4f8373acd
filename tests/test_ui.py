"""The web page's logic without a browser: checking the script, rewriting it for sliders and
clicks (dsl/ui/script.py), the session that keeps the Editor and the runs (dsl/ui/session.py),
and the page's guard that turns any mistake into a message."""

from __future__ import annotations

import numpy as np
import pytest

import dsl
from dsl.ui import script as S
from energies.errors import SteerError, SteerUsageError

SCRIPT = """\
# move it
prompt "a red circle and a blue square"
seed 5
steps 4

centroid(token "circle") -> (0.7, 0.5)  # to the right
keep appearance * 2 @ 0..0.5; keep layout
"""


def test_check_gives_the_terms_sliders():
    c = S.check(SCRIPT)
    assert c.ok and c.message() == "ok (3 terms)"
    assert [(s.label, s.weight, s.window, s.window_set) for s in c.slots] == [
        ('centroid(token "circle") -> (0.7, 0.5)', 1.0, (0.3, 0.7), False),  # its default window, from energies/defaults.py
        ("keep appearance", 2.0, (0.0, 0.5), True),
        ("keep layout", 1.0, (0.0, 0.7), False),
    ]


def test_a_mistake_reads_as_steer_check_prints_it(tmp_path, capsys):
    from dsl.cli import main

    text = 'prompt "a red circle"\ncentroid(token "dog") -> (0.7, 0.5)\n'
    path = tmp_path / "m.edit"
    path.write_text(text)
    assert main(["check", str(path)]) == 2
    c = S.check(text, str(path), tmp_path)
    assert not c.ok and (c.error.line, c.error.col) == (2, 10)
    assert c.message() == capsys.readouterr().err.strip()  # the same message, line, caret and hint


def test_a_script_without_a_prompt_is_pointed_at_its_first_line():
    c = S.check("seed 2\n")
    assert c.message().startswith("page.edit:1:1: error: the script has no prompt\n  seed 2\n  ^")
    assert S.check("").error.message == "the script has no prompt"


def test_a_weight_is_rewritten_in_its_statement_and_nothing_else_moves():
    out = S.set_weight(SCRIPT, 0, 1.5)
    assert out == SCRIPT.replace("(0.7, 0.5)  #", "(0.7, 0.5) * 1.5  #")
    assert dsl.compile(out).terms[0].weight == 1.5
    out = S.set_weight(SCRIPT, 2, 0.25)  # the second statement of a line
    assert out.endswith("keep appearance * 2 @ 0..0.5; keep layout * 0.25\n")
    assert S.set_weight(SCRIPT, 1, 1) .endswith("keep appearance @ 0..0.5; keep layout\n")  # weight 1 is the default: not written


def test_a_window_is_rewritten_and_a_wrong_one_refused():
    out = S.set_window(SCRIPT, 0, 0.1, 0.6)
    assert 'centroid(token "circle") -> (0.7, 0.5) @ 0.1..0.6  # to the right' in out
    with pytest.raises(SteerUsageError, match="start must come before its end"):
        S.set_window(SCRIPT, 0, 0.6, 0.6)


def test_a_script_with_a_mistake_is_not_rewritten():
    with pytest.raises(SteerError, match='unknown|expected|not'):
        S.set_weight(SCRIPT + "centroid(\n", 0, 2)
    with pytest.raises(SteerUsageError, match="no term 9"):
        S.set_weight(SCRIPT, 8, 2)


def test_clicks_become_lines_printed_from_their_terms():
    assert (S.fraction(0, 384), S.fraction(191, 384), S.fraction(383, 384), S.fraction(400, 384)) == (0.001, 0.499, 0.999, 1.0)
    line = S.drag_line((0.25, 0.5), (0.75, 0.5))
    assert line == "drag (0.25, 0.5) -> (0.75, 0.5)"
    assert S.drag_line((0.25, 0.5), (0.75, 0.5), "circle") == 'drag (0.25, 0.5) -> (0.75, 0.5) within token "circle"'
    assert S.move_line("red#2", (0.3, 0.4)) == 'centroid(token "red"#2) -> (0.3, 0.4)'
    with pytest.raises(SteerUsageError, match="the target is the handle"):
        S.drag_line((0.5, 0.5), (0.5, 0.5))
    out = S.add_line(SCRIPT.rstrip("\n"), line)
    assert out.endswith("keep layout\ndrag (0.25, 0.5) -> (0.75, 0.5)\n")
    assert dsl.compile(out).terms[-1].kind == "drag"


def test_a_setting_is_replaced_where_it_is_or_added_after_the_others():
    assert S.set_setting(SCRIPT, "seed", 7).count("seed") == 1 and "\nseed 7\nsteps 4\n" in S.set_setting(SCRIPT, "seed", 7)
    out = S.set_setting(SCRIPT, "source", "photo.png")
    assert '\nsteps 4\nsource "photo.png"\n' in out and dsl.compile(out).settings.source == "photo.png"
    assert S.set_setting("keep layout\n", "source", "p.png") == 'source "p.png"\nkeep layout\n'


# ------------------------------------------------------------------------------------------------
# The session: one Editor, the source pass reused, the history


@pytest.fixture(scope="module")
def session(shapes_path, tmp_path_factory):
    from dsl.ui.session import LiveSession

    return LiveSession(model=shapes_path, device="cpu", folder=tmp_path_factory.mktemp("ui"))


def test_a_weight_change_reruns_only_the_edit_pass(session, monkeypatch):
    from sampler.preflight import written_by_steer

    first = session.run(SCRIPT, progress=False)
    sources = session.editor.sources
    calls = []
    monkeypatch.setattr(sources, "noise", lambda seed: calls.append(seed))  # a new source pass would call it
    second = session.run(S.set_weight(SCRIPT, 0, 3), progress=False)
    assert calls == [] and (second.number, first.number) == (2, 1)
    assert np.array_equal(second.source_image, first.source_image) and not np.array_equal(second.image, first.image)
    assert written_by_steer(second.png) and second.script.read_text() == S.set_weight(SCRIPT, 0, 3)
    assert "* 3" in second.result.record()["steer:program"]  # the download carries its program
    assert session.find(1) is first


def test_a_run_with_a_mistake_is_located_in_the_script(session):
    with pytest.raises(SteerError) as e:
        session.run(SCRIPT.replace('token "circle"', 'token "dog"'), progress=False)
    assert (e.value.line, e.value.col) == (6, 10) and "^~~" in e.value.render()
    with pytest.raises(SteerUsageError, match="there is no run 99"):
        session.find(99)


def test_word_maps_are_shown_enlarged_without_blur(session):
    from dsl.ui.session import marked, shown

    run = session.run(SCRIPT, progress=False) if not session.runs else session.runs[-1]
    assert session.words(run) == ["red", "circle", "blue", "square"]
    m = session.word_map(run.number, "circle", "source")
    assert m.shape == (384, 384, 3) and m.dtype == np.uint8
    assert np.array_equal(m[::12, ::12], m[5::12, 5::12])  # each 32 px pixel is a 12x12 block
    with pytest.raises(SteerUsageError, match='dog'):
        session.word_map(run.number, "dog")
    program = dsl.compile(SCRIPT + "drag (0.25, 0.5) -> (0.75, 0.5)\n")
    drawn = marked(shown(run.source_image), program)
    assert tuple(drawn[192, 96]) == (255, 0, 0) and tuple(drawn[192, 288]) == (0, 0, 255)  # handle red, target blue


def test_a_dropped_photo_becomes_the_source_and_its_inversion_is_cached(session, tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("STEER_CACHE", str(tmp_path / "cache"))
    run = session.runs[-1] if session.runs else session.run(SCRIPT, progress=False)
    dropped = tmp_path / "my photo.png"
    Image.fromarray((run.source_image * 255).astype(np.uint8)).save(dropped)
    photo = session.add_photo(str(dropped))
    assert photo.parent.parent == session.folder and session.add_photo(str(dropped)) == photo  # the same bytes, the same file
    text = S.set_setting(SCRIPT, "source", str(photo))
    session.run(text, progress=False)
    assert list((tmp_path / "cache" / "inversions").glob("*.safetensors"))  # as `steer run` caches it
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(SteerError, match="not an image|cannot"):
        session.add_photo(str(tmp_path / "notes.png"))


def test_the_page_shows_every_mistake_and_stays_up():
    pytest.importorskip("gradio")
    from dsl.ui.app import guarded

    @guarded("status")
    def broken(kind):
        raise SteerUsageError("no such model", hint="check the name") if kind == "user" else ZeroDivisionError("a bug")

    assert "steer: error: no such model" in broken("user")["status"] and "hint: check the name" in broken("user")["status"]
    assert "internal error" in broken("bug")["status"] and "ZeroDivisionError: a bug" in broken("bug")["status"]


def test_steer_ui_refuses_a_missing_script(tmp_path, capsys):
    from dsl.cli import main

    assert main(["ui", str(tmp_path / "nope.edit")]) == 2
    assert "cannot read" in capsys.readouterr().err

import pytest

from dsl.repl import Repl
from energies.errors import SteerError


def test_repl_adds_reweights_removes_and_reuses_the_source(tmp_path, shapes_path, monkeypatch, capsys):
    repl = Repl(model=shapes_path, out=str(tmp_path / "r.png"))
    repl.handle('prompt "a red circle and a blue square"; seed 2; steps 5')
    repl.handle('centroid(token "circle") -> (0.75, 0.5)')
    assert (tmp_path / "r-1.png").exists() and (tmp_path / "r-1-source.png").exists()
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"[1] wrote {tmp_path / 'r-1.png'} and ")
    source = next(iter(repl.editor.sources))
    calls = []
    monkeypatch.setattr(repl.editor.sources, "noise", lambda seed: calls.append(seed))  # a new source pass would call this
    repl.handle(":weight 1 2")
    assert repl.program.terms[0].weight == 2.0
    repl.handle("keep appearance")
    repl.handle(":rm 1")
    assert [t.kind for t in repl.program.terms] == ["keep_appearance"]
    assert calls == [] and next(iter(repl.editor.sources)) is source
    assert [r.number for r in repl.runs] == [1, 2, 3, 4]  # each change ran, and kept its own images
    assert all((tmp_path / f"r-{k}.png").exists() and (tmp_path / f"r-{k}-source.png").exists() for k in (1, 2, 3, 4))
    assert not (tmp_path / "r.png").exists()
    repl.handle(":save " + str(tmp_path / "saved.edit"))
    assert "keep appearance" in (tmp_path / "saved.edit").read_text()
    with pytest.raises(ValueError):
        repl.handle(":save " + str(tmp_path / "saved.edit"))
    with pytest.raises(ValueError):
        repl.handle(":rm 9")
    assert repl.handle(":quit") is False


def test_repl_loop_reports_mistakes_and_goes_on(tmp_path, shapes_path, monkeypatch, capsys):
    import io

    lines = io.StringIO(':auto off\ncentroid("circle") -> (1, 1)\nkeep layout\n:list\n')
    monkeypatch.setattr("sys.stdin", lines)
    assert Repl(model=shapes_path, out=str(tmp_path / "r.png")).loop() == 0
    out, err = capsys.readouterr()
    assert "<repl>:2:10: error" in err  # the second line typed, shown with its caret
    assert '  centroid("circle") -> (1, 1)\n           ^~~~~~~~' in err
    assert "[1] keep layout" in out


def test_repl_lists_directions(tmp_path, shapes_path, monkeypatch, capsys):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(":directions\n"))
    assert Repl(model=shapes_path, out=str(tmp_path / "r.png")).loop() == 0
    out = capsys.readouterr().out
    assert "red_to_green" in out and "prompt (Pix2Pix-Zero)" in out and "h-space (Asyrp)" in out


def test_runs_are_listed_and_two_are_compared(tmp_path, shapes_path, capsys):
    import numpy as np
    from PIL import Image

    from sampler.pictures import LABEL_HEIGHT, enlarged
    from sampler.preflight import written_by_steer

    repl = Repl(model=shapes_path, out=str(tmp_path / "v.png"))
    repl.handle('prompt "a red circle and a blue square"; seed 2; steps 4')
    repl.handle('centroid(token "circle") -> (0.75, 0.5)')
    repl.handle(":weight 1 3")
    capsys.readouterr()
    repl.handle(":runs")
    listing = capsys.readouterr().out.splitlines()
    assert listing == [f'[1] {tmp_path / "v-1.png"}  seed 2, steps 4: centroid(token "circle") -> (0.75, 0.5)',
                       f'[2] {tmp_path / "v-2.png"}  seed 2, steps 4: centroid(token "circle") -> (0.75, 0.5) * 3']

    repl.handle(":diff 1 2")
    out = capsys.readouterr().out
    assert '\n-centroid(token "circle") -> (0.75, 0.5)\n+centroid(token "circle") -> (0.75, 0.5) * 3\n' in out
    assert out.startswith("--- [1]\n+++ [2]\n") and " seed 2\n" in out  # what stayed, as context
    picture = tmp_path / "v-diff-1-2.png"
    assert f"wrote {picture}" in out and written_by_steer(picture)  # a later :diff may replace it
    pixels = np.asarray(Image.open(picture).convert("RGB"))
    first, second = (enlarged((np.clip(r.edit, 0, 1) * 255).round().astype(np.uint8)) for r in repl.runs)
    side = first.shape[1]
    assert pixels.shape == (LABEL_HEIGHT + first.shape[0], 3 * side, 3)  # [1] | [2] | where they differ
    assert np.array_equal(pixels[LABEL_HEIGHT:, :side], first) and np.array_equal(pixels[LABEL_HEIGHT:, side : 2 * side], second)
    assert pixels[LABEL_HEIGHT:, 2 * side :].max() == 255  # the difference, scaled to its largest value

    repl.handle(":diff 2 2")
    assert "[2] and [2] ran the same program" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no run 3"):
        repl.handle(":diff 1 3")
    picture.write_bytes(b"someone's file")
    with pytest.raises(SteerError, match="v-diff-1-2.png"):  # never over a file steer did not write
        repl.handle(":diff 1 2")
    assert picture.read_bytes() == b"someone's file"


def completions(repl, text: str, tab: bool = False) -> list[str]:
    from prompt_toolkit.completion import CompleteEvent
    from prompt_toolkit.document import Document

    from dsl.repl import _completer

    return [c.text for c in _completer(repl).get_completions(Document(text), CompleteEvent(completion_requested=tab))]


def test_completion_offers_commands_keywords_prompt_words_and_directions(shapes_path):
    repl = Repl(model=shapes_path)
    repl.handle(':auto off')
    repl.handle('prompt "a red circle and a red square"')
    assert completions(repl, "cen") == ["centroid"]
    assert completions(repl, 'size(token "ci') == ['"circle"']
    assert completions(repl, ":we") == [":weight"]
    assert completions(repl, ":maps sq") == ["square"]  # bare words after :maps
    assert "red_to_green" in completions(repl, "direction red_")  # the shipped directions, by name
    assert completions(repl, "keep ") == []  # nothing pops up while typing before a word is begun
    assert {":run", "centroid", '"red"'} <= set(completions(repl, "", tab=True))  # Tab asks for everything
    assert completions(repl, '"').count('"red"') == 1


def test_highlighting_classes_keywords_strings_numbers_comments_and_commands():
    from dsl.repl import highlight

    def classes(line):
        return [(style.removeprefix("class:"), text) for style, text in highlight(line) if style]

    assert classes('centroid(token "dog"#2) -> (0.75, -.5) * 2 @ 0.2..0.8  # there') == [
        ("keyword", "centroid"), ("keyword", "token"), ("string", '"dog"#2'), ("number", "0.75"), ("number", "-.5"),
        ("number", "2"), ("number", "0.2"), ("number", "0.8"), ("comment", "# there")]
    assert classes(":weight 1 2") == [("command", ":weight"), ("number", "1"), ("number", "2")]
    assert classes('prompt "a # b') == [("keyword", "prompt"), ("string", '"a # b')]  # an unfinished string, not a comment
    assert classes("direction keep_red-2 via x0") == [("keyword", "direction"), ("keyword", "via")]  # names are not keywords
    assert "".join(text for _, text in highlight("keep  layout # x")) == "keep  layout # x"


def test_the_prompt_keeps_its_history_in_a_file_across_sessions(tmp_path, shapes_path, monkeypatch, capsys):
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    history = tmp_path / "history"
    monkeypatch.setenv("STEER_HISTORY", str(history))
    repl = Repl(model=shapes_path)
    assert repl.history == history
    with create_pipe_input() as keys:
        keys.send_text(":auto off\rkeep layout\rcentroid(\"circle\") -> (1, 1)\r\x04")  # Enter, Enter, Enter, Ctrl-D
        assert repl.loop(repl.session(input=keys, output=DummyOutput())) == 0
    assert [t.kind for t in repl.program.terms] == ["keep_shape"]
    assert "<repl>:3:10: error" in capsys.readouterr().err  # a mistake at the prompt is reported as from a pipe
    saved = [line[1:] for line in history.read_text().splitlines() if line.startswith("+")]
    assert saved == [":auto off", "keep layout", 'centroid("circle") -> (1, 1)']

    again = Repl(model=shapes_path, history=str(history))
    with create_pipe_input() as keys:
        keys.send_text("\x1b[A\x1b[A\r\x04")  # Up, Up: the line before the last of the earlier session
        again.loop(again.session(input=keys, output=DummyOutput()))
    assert [t.kind for t in again.program.terms] == ["keep_shape"]

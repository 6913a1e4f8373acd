import pytest

from dsl.repl import Repl


def test_repl_adds_reweights_removes_and_reuses_the_source(tmp_path, shapes_path, monkeypatch, capsys):
    repl = Repl(model=shapes_path, out=str(tmp_path / "r.png"))
    repl.handle('prompt "a red circle and a blue square"; seed 2; steps 5')
    repl.handle('centroid(token "circle") -> (0.75, 0.5)')
    assert (tmp_path / "r.png").exists() and (tmp_path / "r-source.png").exists()
    source = next(iter(repl.editor.sources))
    calls = []
    monkeypatch.setattr(repl.editor.sources, "noise", lambda seed: calls.append(seed))  # a new source pass would call this
    repl.handle(":weight 1 2")
    assert repl.program.terms[0].weight == 2.0
    repl.handle("keep appearance")
    repl.handle(":rm 1")
    assert [t.kind for t in repl.program.terms] == ["keep_appearance"]
    assert calls == [] and next(iter(repl.editor.sources)) is source
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


def test_completion_offers_keywords_and_prompt_words(shapes_path):
    repl = Repl(model=shapes_path)
    repl.handle(':auto off')
    repl.handle('prompt "a red circle"')
    complete = repl._completer()
    assert complete("cen", 0) == "centroid"
    assert complete('"ci', 0) == '"circle"'
    assert complete(":we", 0) == ":weight"
    assert complete("red_", 0) == "red_to_green"  # the shipped directions, by name

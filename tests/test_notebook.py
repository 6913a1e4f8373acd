"""The notebook side: an EditResult shows itself (source | edit) and %%steer runs a cell against a
kept editor, driven through IPython's own shell."""

import io

import numpy as np
import pytest

pytest.importorskip("IPython")

from IPython.core.interactiveshell import InteractiveShell  # noqa: E402
from IPython.utils.capture import capture_output  # noqa: E402

CELL = 'prompt "a red circle and a blue square"; seed 2; steps 4\ncentroid(token "circle") -> (0.75, 0.5)\n'


@pytest.fixture(scope="module")
def shell(tmp_path_factory, monkeypatch_module):
    from traitlets.config import Config

    monkeypatch_module.setenv("IPYTHONDIR", str(tmp_path_factory.mktemp("ipython")))  # not the user's profile
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    shell.run_line_magic("load_ext", "dsl.notebook")
    yield shell
    shell.magics_manager.registry["SteerMagics"].editor = None
    InteractiveShell.clear_instance()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as m:
        yield m


def png_pixels(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def run(shell, text: str):
    with capture_output() as captured:
        outcome = shell.run_cell(text)
    return outcome, captured


def test_a_result_displays_source_and_edit_side_by_side_enlarged(shapes_editor):
    import dsl

    result = shapes_editor.run(dsl.compile(dsl.parse(CELL)), progress=False)
    picture = png_pixels(result._repr_png_())
    h, w = result.image.shape[:2]  # 32 px: enlarged by a whole factor, to at least 128
    k = picture.shape[0] // h
    assert picture.shape[0] == k * h and k * h >= 128
    source, edit = picture[:, : k * w], picture[:, -k * w :]
    assert np.array_equal(edit[::k, ::k], (np.clip(result.image, 0, 1) * 255).round().astype(np.uint8))
    assert np.array_equal(source[::k, ::k], (np.clip(result.source_image, 0, 1) * 255).round().astype(np.uint8))
    assert np.array_equal(edit[1::k, ::k], edit[::k, ::k])  # pixels repeated, not interpolated
    assert (picture[:, k * w : -k * w] == 255).all()  # a white gap between them
    from IPython.lib.pretty import pretty

    assert pretty(result) == "EditResult(64x64, model 'shapes', prompt 'a red circle and a blue square', seed 2, 1 statements)"


def test_the_cell_magic_shows_binds_and_reuses_the_editor(shell, shapes_path, monkeypatch):
    outcome, shown = run(shell, f"%%steer first --model {shapes_path}\n{CELL}")
    assert outcome.success and "Traceback" not in shown.stderr
    result = shell.user_ns["first"]
    assert result.program.settings.seed == 2 and result.program.terms[0].kind == "move"
    (display,) = shown.outputs
    assert display.data["image/png"] == result._repr_png_()  # shown inline, source | edit
    assert display.data["text/plain"].startswith("EditResult(64x64, model ")

    magics = shell.magics_manager.registry["SteerMagics"]
    editor, source = magics.editor, next(iter(magics.editor.sources))
    calls = []
    monkeypatch.setattr(editor.sources, "noise", lambda seed: calls.append(seed))  # a new source pass would call this
    outcome, shown = run(shell, f"%%steer --model {shapes_path}\n{CELL}centroid(token \"circle\") -> (0.75, 0.5) * 2\n")
    assert outcome.success
    assert magics.editor is editor and calls == [] and next(iter(editor.sources)) is source
    assert len(shell.user_ns["_steer"].program.terms) == 2  # the default name
    assert shell.user_ns["first"] is result


def test_options_replace_the_cells_settings(shell, shapes_path):
    outcome, _ = run(shell, f"%%steer r --model {shapes_path} --seed 5 --steps 3\n{CELL}")
    s = shell.user_ns["r"].program.settings
    assert outcome.success and (s.seed, s.steps) == (5, 3)


def test_a_mistake_is_shown_like_the_compilers_without_a_traceback(shell, shapes_path):
    shell.user_ns.pop("bad", None)
    outcome, shown = run(shell, f'%%steer bad --model {shapes_path}\nprompt "a red circle"; steps 4\ncentroid(token "dog") -> (0.7, 0.5)\n')
    assert outcome.success  # reported, not raised: the notebook shows no traceback
    assert shown.stderr.startswith('<cell>:2:10: error: token "dog" is not in the prompt\n')
    assert '  centroid(token "dog") -> (0.7, 0.5)\n           ^~~~~~~~~~~\nhint: ' in shown.stderr
    assert "Traceback" not in shown.stderr + shown.stdout and "bad" not in shell.user_ns and not shown.outputs

    outcome, shown = run(shell, f"%%steer --model {shapes_path} --steps 0\n{CELL}")
    assert shown.stderr.strip() == "steer: error: --steps 0: steps must be between 1 and 1000"

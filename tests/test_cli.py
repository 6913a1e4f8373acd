"""The command line as a user meets it: exit codes, messages, files written and not written."""

import subprocess
import sys

from PIL import Image

from dsl.cli import main

MOVE = 'prompt "a red circle and a blue square"\nseed 1\nsteps 6\ncentroid(token "circle") -> (0.75, 0.5)\nkeep appearance\n'


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_check_ok_and_mistakes(tmp_path, shapes_path, capsys):
    good = write(tmp_path, "good.edit", MOVE)
    assert main(["check", str(good), "--model", shapes_path]) == 0
    assert capsys.readouterr().out.strip().endswith("samples with DDIM)")  # the sampler is said, never implied
    bad = write(tmp_path, "bad.edit", 'prompt "a red circle"\ncentroid(token "dog") -> (0.7,0.5); keep appearance; direction smile*1.5\n')
    assert main(["check", str(bad), "--model", shapes_path]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2:10: error: token \"dog\" is not in the prompt" in err
    assert "           ^~~~~~~~~~~" in err and "hint: the prompt's words are: a, red, circle" in err
    assert "Traceback" not in err


def test_design_card_example_fails_on_the_unknown_direction(tmp_path, shapes_path, capsys):
    p = write(tmp_path, "card.edit", 'prompt "a red circle"\ncentroid(token "circle") -> (0.7,0.5); keep appearance; direction smile*1.5\n')
    assert main(["check", str(p), "--model", shapes_path]) == 2
    err = capsys.readouterr().err
    assert "2:57: error: unknown direction 'smile'" in err and "known directions" in err


def test_directions_lists_the_search_path_and_what_each_is(tmp_path, shapes_path, monkeypatch, capsys):
    import torch

    from energies import directions as D

    monkeypatch.setenv("STEER_DIRECTIONS", str(tmp_path / "user"))
    script = write(tmp_path, "s.edit", MOVE)
    mine = D.save_direction(tmp_path / "directions" / "green.safetensors", {"delta": torch.zeros(2, 2)}, "prompt", "shapes:shapes",
                            {"from": ["a red circle", "a red square"], "to": ["a green circle", "a green square"]})
    (tmp_path / "directions" / "broken.safetensors").write_bytes(b"not a safetensors file")
    assert main(["directions", str(script), "--model", shapes_path]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{mine.parent}:" and out[3] == f"{tmp_path / 'user'}: (none)"
    assert out[1].split()[0] == "broken" and "unreadable" in out[1]
    assert out[2].split()[0] == "green" and 'prompt (Pix2Pix-Zero): "a red circle" (+1 more) -> "a green circle" (+1 more)' in out[2]
    shipped = {line.split()[0]: line for line in out[5:]}
    from sampler.shapes.model import resolve

    assert out[4] == f"{resolve(shapes_path) / 'directions'}:"
    assert "[hidden by an earlier folder]" in shipped["green"] and "noise (NoiseCLR)" in shipped["green"]
    assert "h-space (Asyrp)" in shipped["circle_to_square"] and "hidden" not in shipped["circle_to_square"]


def test_check_refuses_a_prompt_direction_within_a_region(tmp_path, shapes_path, capsys):
    p = write(tmp_path, "within.edit", 'prompt "a red circle"\ndirection red_to_green within token "circle"\n')
    assert main(["check", str(p), "--model", shapes_path]) == 2
    err = capsys.readouterr().err
    assert f"{p}:2:1: error:" in err and "prompt direction" in err and "hint: drop the `within ...`" in err


def test_syntax_error_exit_code_in_a_real_process(tmp_path):
    p = write(tmp_path, "syntax.edit", 'centroid("circle") -> (0.7, 0.5)\n')
    proc = subprocess.run([sys.executable, "-m", "dsl", "check", str(p)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"{p}:1:10: error:") and "Traceback" not in proc.stderr
    assert 'hint: write token "circle"' in proc.stderr


def test_missing_script_is_a_clean_error(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.edit")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_fmt_prints_checks_and_writes(tmp_path, capsys):
    p = write(tmp_path, "f.edit", 'prompt  "a red circle" # scene\nkeep layout;seed 3\n')
    assert main(["fmt", str(p)]) == 0
    out = capsys.readouterr().out
    assert out == 'prompt "a red circle"  # scene\nkeep layout\nseed 3\n'
    assert p.read_text() == 'prompt  "a red circle" # scene\nkeep layout;seed 3\n', "fmt without -w never touches the file"
    assert main(["fmt", "--check", str(p)]) == 1
    assert main(["fmt", "-w", str(p)]) == 0
    assert p.read_text() == out
    assert main(["fmt", "--check", str(p)]) == 0


def test_run_writes_the_edit_and_the_source_and_never_an_input(tmp_path, shapes_path, shapes_editor, capsys):
    script = write(tmp_path, "move.edit", MOVE)
    assert main(["run", str(script), "--model", shapes_path, "--source-out", str(tmp_path / "src.png"), "-q"]) == 0
    out = tmp_path / "move.png"
    with Image.open(out) as im:
        assert im.size[::-1] == tuple(shapes_editor.backbone.image_size())  # the model's own size, not enlarged
        assert "centroid(token \"circle\")" in im.text["steer:program"] and im.text["steer:seed"] == "1"
    assert (tmp_path / "src.png").exists()
    import os

    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not mkstemp's 0600
    assert main(["run", str(script), "--model", shapes_path, "-o", str(script), "-q"]) == 2
    assert script.read_text() == MOVE


def test_default_output_never_replaces_a_users_image(tmp_path, shapes_path):
    script = write(tmp_path, "edit.edit", MOVE)
    Image.new("RGB", (4, 4)).save(tmp_path / "edit.png")  # the user's own picture
    assert main(["run", str(script), "--model", shapes_path, "-q"]) == 0
    with Image.open(tmp_path / "edit.png") as im:
        assert im.size == (4, 4)
    assert (tmp_path / "edit-2.png").exists()


def test_a_pipeline_scheduler_replaced_by_ddim_is_said(tmp_path):
    """SDXL's tiny pipeline comes with EulerDiscreteScheduler: steer samples with DDIM of the same
    config, and the note `steer run` prints names what it replaced; a DDIM pipeline has nothing to name."""
    from sampler.backbones.stable_diffusion import StableDiffusionBackbone, StableDiffusionXLBackbone
    from tiny import tiny_sd_pipeline, tiny_sdxl_pipeline

    xl = StableDiffusionXLBackbone(tiny_sdxl_pipeline(tmp_path / "xl"))
    assert type(xl.scheduler).__name__ == "DDIMScheduler"
    assert xl.sampling_note(8) == "DDIM, 8 steps; the pipeline's EulerDiscreteScheduler is replaced by DDIM of the same config"
    assert StableDiffusionBackbone(tiny_sd_pipeline(tmp_path / "sd")).sampling_note(8) == "DDIM, 8 steps"


def test_sheet_before_the_script_is_the_default_sheet():
    """`--sheet` has an optional value; written before the script it must not swallow the script."""
    from dsl.cli import _sheet_before_script, build_parser

    args = build_parser().parse_args(_sheet_before_script(["run", "--sheet", "x.edit"]))
    assert args.script == "x.edit" and args.sheet == ""
    args = build_parser().parse_args(_sheet_before_script(["run", "x.edit", "--sheet", "s.png"]))
    assert args.script == "x.edit" and args.sheet == "s.png"

"""The reliability classes, each as a user meets it on the command line: the exit status, the
message (file:line:col and a caret for a script line, `steer: error:` and a hint otherwise), no
traceback, and the run's input files byte for byte as they were."""

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dsl.cli import main
from energies import directions as D
from energies.errors import SteerCompileError, SteerRuntimeError
from sampler.shapes.model import resolve

SCENE = 'prompt "a red circle and a blue square"\nseed 1\nsteps 3\n'
SHIPPED = resolve("shapes") / "directions"


# -- helpers -------------------------------------------------------------------------------------

def write(folder: Path, name: str, text: str) -> Path:
    p = folder / name
    p.write_text(text)
    return p


def digest(paths) -> dict:
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def steer(capsys, *argv):
    """(exit status, stdout, stderr) of the command line, run in this process."""
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def refused(capsys, argv, message: str, inputs=(), at: str | None = None):
    """The command exits 2 with `message` (at `at`, file:line:col), no traceback, inputs untouched."""
    before = digest(inputs)
    status, out, err = steer(capsys, *argv)
    assert status == 2, (out, err)
    assert message in err, err
    assert "Traceback" not in err
    if at is not None:
        assert err.startswith(at + ": error:"), err
    assert digest(inputs) == before
    return err


@pytest.fixture
def no_sampling(monkeypatch):
    """The run must stop before the source pass: sampling at all is a failure."""
    from sampler.source import SourcePasses

    def sampled(*a, **k):
        raise AssertionError("the run sampled before finding the mistake")

    monkeypatch.setattr(SourcePasses, "get", sampled)


def bomb_png(path: Path, side: int = 20000) -> Path:
    """A PNG whose header says side x side pixels (a decompression bomb), a few bytes on disk."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


@contextmanager
def read_only(folder: Path):
    """`folder` as the file system refuses to write it. Root ignores permission bits, so as root
    it is bind-mounted read-only over itself (skipped where mounting is not allowed)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    mount = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip("running as root and cannot mount a read-only folder here")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True, capture_output=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def copy_direction(src_name: str, folder: Path, name: str, change=None) -> Path:
    """A shipped direction saved under another name, its tensors changed by `change`."""
    d = D.read_direction(SHIPPED / f"{src_name}.safetensors")
    tensors = {k: v.clone() for k, v in d.tensors.items()}
    if change is not None:
        change(tensors)
    meta = {k: v for k, v in d.meta.items() if k not in ("format", "kind", "backbone")}
    return D.save_direction(folder / "directions" / f"{name}.safetensors", tensors, d.kind, d.meta["backbone"], meta)


# -- 1. silent black images ----------------------------------------------------------------------

def test_a_huge_direction_weight_stops_at_its_statement_and_writes_nothing(tmp_path, capsys):
    script = write(tmp_path, "big.edit", SCENE + "direction circle_to_square * 1e30\n")
    err = refused(capsys, ["run", script, "-q"], "`direction circle_to_square * 1e+30` made the h-shifted prediction not finite at step 0",
                  [script], at=f"{script}:4:1")
    assert "  direction circle_to_square * 1e30\n  ^~~~" in err and "hint: lower its weight" in err
    assert not (tmp_path / "big.png").exists()


def test_a_prompt_direction_is_blamed_not_the_keep_attention_that_reads_it(tmp_path, capsys):
    script = write(tmp_path, "p.edit", SCENE + "direction red_to_green * 1e30\nkeep attention\n")
    # keep attention moves z_t, so its forward stops at the probes (sampler/guidance.py): the maps are checked
    err = refused(capsys, ["run", script, "-q"], "`direction red_to_green * 1e+30` made the model's attention maps and features not finite at step 0",
                  [script], at=f"{script}:4:1")
    assert "keep attention" not in err.splitlines()[0]
    assert not (tmp_path / "p.png").exists()


def test_a_nan_direction_file_is_refused_when_loaded_naming_the_file(tmp_path, capsys, no_sampling):
    def poison(t):
        t["delta_h"][0, 0, 0] = float("nan")

    bad = copy_direction("circle_to_square", tmp_path, "nanny", poison)
    script = write(tmp_path, "n.edit", SCENE + "direction nanny\nkeep attention\n")
    for command in (["run", script, "-q"], ["check", script]):
        refused(capsys, command, f"direction file {str(bad)!r} has 1 value(s) in 'delta_h' that are not finite", [script, bad],
                at=f"{script}:4:1")


def test_a_drag_whose_bottleneck_goes_wrong_is_named(shapes_editor, monkeypatch):
    import dsl
    from sampler import drag as DR

    optimise = DR.optimise_drag

    def poisoned(*args, **kw):
        s, outcome = optimise(*args, **kw)
        return s * float("nan"), outcome

    monkeypatch.setattr(DR, "optimise_drag", poisoned)
    text = SCENE.replace("steps 3", "steps 6") + "drag (0.487, 0.746) -> (0.237, 0.746) within (0.1, 0.5, 0.9, 0.99)\n"
    with pytest.raises(SteerRuntimeError, match="`drag .*` made the model's prediction not finite") as e:
        shapes_editor.run(dsl.compile(dsl.parse(text, "d.edit")), progress=False)
    assert (e.value.file, e.value.line) == ("d.edit", 4)


def test_no_image_with_a_nan_is_ever_written(tmp_path):
    from sampler.images import write_png

    image = np.full((4, 4, 3), 0.5, np.float32)
    image[1, 1, 1] = np.nan
    with pytest.raises(SteerRuntimeError, match="not finite"):
        write_png(image, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_the_loop_checks_every_shift_and_the_latent_naming_who_made_it():
    from sampler.guided import Guidance, sample_ddim

    class Term:  # what the loop reads of a bound term
        label, term = "keep layout * 3", type("T", (), {"span": None, "weight": 3.0})()

    alphas = torch.linspace(0.9, 0.1, 10)
    nan = torch.full((1, 4), float("nan"))

    def run(guide, denoise=lambda i, t, z, e: torch.zeros_like(z)):
        return sample_ddim(denoise, torch.ones(1, 4), [5, 2], alphas, torch.tensor(1.0), guide=guide, disable=True)

    for field in ("latent", "eps", "x0", "mean", "x0_eps"):
        with pytest.raises(SteerRuntimeError, match="`keep layout \\* 3` made .* not finite at step 0"):
            run(lambda i, t, z, f=field: Guidance(**{f: nan}, by={f: (Term(),)}))
    with pytest.raises(SteerRuntimeError, match="the model's prediction is not finite at step 0 .* with no term acting"):
        run(None, denoise=lambda i, t, z, e: torch.full_like(z, float("inf")))


# -- 2. inputs overwritten -----------------------------------------------------------------------

def test_no_output_is_written_over_an_input_of_the_run(tmp_path, capsys, no_sampling):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (32, 32), (200, 40, 40)).save(photo)
    direction = copy_direction("circle_to_square", tmp_path, "square")
    script = write(tmp_path, "s.edit", SCENE + 'source "photo.png"\ndirection square\n')
    inputs = [script, photo, direction]
    for target, what in ((script, "the script"), (photo, "the source photo"), (direction, "the direction file of `square`")):
        for extra in ([], ["--overwrite"]):
            refused(capsys, ["run", script, "-q", "-o", target, *extra], f"-o {target}: it is {what}, an input of this run", inputs)
    model_file = resolve("shapes") / "unet" / "config.json"
    refused(capsys, ["run", script, "-q", "-o", model_file, "--overwrite"], "it is inside the model folder", inputs + [model_file])
    refused(capsys, ["run", script, "-q", "--source-out", photo], "--source-out", inputs)


def test_an_existing_file_steer_did_not_write_needs_overwrite(tmp_path, capsys):
    script = write(tmp_path, "s.edit", SCENE)
    mine = tmp_path / "mine.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(mine)
    err = refused(capsys, ["run", script, "-q", "-o", mine], "the file exists and steer did not write it", [script, mine])
    assert "hint: pass --overwrite" in err
    assert steer(capsys, "run", script, "-q", "-o", mine, "--overwrite")[0] == 0
    with Image.open(mine) as im:
        assert "steer:program" in im.text
    assert steer(capsys, "run", script, "-q", "-o", mine)[0] == 0, "steer's own result may be replaced"
    assert steer(capsys, "run", script, "-q", "-o", tmp_path / "a.png", "--source-out", tmp_path / "a.png")[0] == 2


def test_the_default_output_skips_an_input(tmp_path, capsys):
    script = write(tmp_path, "photo.edit", SCENE + 'source "photo.png"\n')
    assert steer(capsys, "run", write(tmp_path, "make.edit", SCENE), "-q", "-o", tmp_path / "photo.png")[0] == 0  # steer's PNG
    before = digest([tmp_path / "photo.png"])
    status, out, _ = steer(capsys, "run", script, "-q")
    assert status == 0 and out.strip() == f"wrote {tmp_path / 'photo-2.png'} (DDIM, 3 steps)"
    assert digest([tmp_path / "photo.png"]) == before


def test_the_repl_never_writes_over_its_script(tmp_path, capsys, monkeypatch):
    script = write(tmp_path, "r.edit", SCENE)
    Image.new("RGB", (4, 4)).save(tmp_path / "mine-1.png")  # where run 1 would go with :out mine.png
    before = digest([script, tmp_path / "mine-1.png"])
    monkeypatch.setattr("sys.stdin", io.StringIO(f":out {script}\n:out {tmp_path / 'mine.png'}\n:out {tmp_path / 'r.png'}\n"))
    assert main(["repl", str(script)]) == 0
    err = capsys.readouterr().err
    assert f"steer: error: :out {script}: run k writes r-k.png, so :out names a .png" in err and "Traceback" not in err
    assert f":out {tmp_path / 'mine-1.png'}: the file exists and steer did not write it\nhint: choose another name with :out PATH" in err
    assert digest([script, tmp_path / "mine-1.png"]) == before


# -- 3. pickle never loaded ----------------------------------------------------------------------

def test_a_model_folder_with_only_pickle_weights_is_refused(tmp_path, capsys, monkeypatch, no_sampling):
    from tiny import tiny_sd_pipeline

    folder = tmp_path / "pickled"
    tiny_sd_pipeline(tmp_path / "build").save_pretrained(folder, safe_serialization=False)
    assert list(folder.glob("unet/*.bin")), "the tiny pipeline was saved with pickle weights"
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    script = write(tmp_path, "s.edit", SCENE)
    weights = sorted(folder.rglob("*.bin"))
    for command in (["run", script, "-q", "--model", folder], ["check", script, "--model", folder]):
        err = refused(capsys, command, f"steer: error: model folder {str(folder)!r} has weights only as pickle files (.bin) in unet, vae",
                      [script, *weights])
        assert "hint: convert it once" in err and "safe_serialization=True" in err


def test_every_pretrained_load_asks_for_safetensors(monkeypatch):
    """The ViT and CLIP loads pass use_safetensors=True even when a caller asks otherwise."""
    from types import SimpleNamespace

    from sampler import feature_models as FM

    asked = []

    def from_pretrained(model_id, **kw):
        asked.append(kw.get("use_safetensors"))
        raise OSError("stop here")

    fake = SimpleNamespace(from_pretrained=from_pretrained)
    monkeypatch.setattr("transformers.AutoConfig", SimpleNamespace(from_pretrained=lambda *a, **k: SimpleNamespace(model_type="vit")))
    monkeypatch.setattr("transformers.ViTModel", fake)
    monkeypatch.setattr("transformers.CLIPModel", fake)
    with pytest.raises(OSError):
        FM._load_dino("some/dino", use_safetensors=False)
    with pytest.raises(OSError):
        FM.ClipScorer.from_pretrained("some/clip", use_safetensors=False)
    assert asked == [True, True]


# -- 4. no traceback where an exit-2 error was promised -------------------------------------------

def test_model_and_device_mistakes_are_usage_errors(tmp_path, capsys, no_sampling):
    script = write(tmp_path, "s.edit", SCENE)
    refused(capsys, ["run", script, "-q", "--model", "no-such/model-anywhere"], "steer: error: cannot find the model 'no-such/model-anywhere'", [script])
    refused(capsys, ["run", script, "-q", "--model", tmp_path / "missing"], f"steer: error: model folder {str(tmp_path / 'missing')!r} does not exist", [script])
    named = write(tmp_path, "m.edit", SCENE + 'model "no-such/model-anywhere"\n')
    for command in (["run", named, "-q"], ["check", named]):
        refused(capsys, command, "cannot find the model", [named], at=f"{named}:4:7")
    if not torch.cuda.is_available():
        refused(capsys, ["run", script, "-q", "--device", "cuda"], "steer: error: --device cuda: this machine (or this torch build) has no CUDA device", [script])
    refused(capsys, ["run", script, "-q", "--device", "toaster"], "steer: error: --device 'toaster' is not a device name", [script])


@pytest.mark.parametrize("flags, message", [
    (["--steps", "-1"], "--steps -1: steps must be between 1 and 1000"),
    (["--steps", "5000"], "--steps 5000: steps must be between 1 and 1000"),
    (["--seed", str(10**30)], f"--seed {10**30}: seed must be between 0 and 2^63 - 1"),
])
def test_numbers_are_checked_before_anything_runs(tmp_path, capsys, no_sampling, flags, message):
    script = write(tmp_path, "s.edit", SCENE)
    refused(capsys, ["run", script, "-q", *flags], "steer: error: " + message, [script])


def test_output_paths_are_checked_before_sampling(tmp_path, capsys, no_sampling):
    script = write(tmp_path, "s.edit", SCENE)
    refused(capsys, ["run", script, "-q", "-o", tmp_path / "missing" / "x.png"], f"the folder {tmp_path / 'missing'} does not exist", [script])
    assert not (tmp_path / "missing").exists()
    refused(capsys, ["run", script, "-q", "-o", tmp_path], f"-o {tmp_path}: is a folder", [script])
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):
        refused(capsys, ["run", script, "-q", "-o", locked / "x.png"], f"cannot write in the folder {locked}", [script])


def test_an_enormous_source_or_style_image_is_refused_at_its_statement(tmp_path, capsys, no_sampling):
    bomb = bomb_png(tmp_path / "huge.png")
    source = write(tmp_path, "src.edit", SCENE + 'source "huge.png"\n')
    refused(capsys, ["run", source, "-q"], "source image", [source, bomb], at=f"{source}:4:8")
    style = write(tmp_path, "sty.edit", SCENE + 'style image "huge.png"\n')
    err = refused(capsys, ["run", style, "-q"], "is too large to read safely (20000 x 20000 pixels)", [style, bomb], at=f"{style}:4:1")
    assert "hint: scale it down" in err
    refused(capsys, ["check", style], "too large", [style, bomb], at=f"{style}:4:1")


def test_one_malformed_direction_is_listed_as_unreadable_and_the_rest_go_on(tmp_path, capsys, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setenv("STEER_DIRECTIONS", str(tmp_path / "user"))
    (tmp_path / "directions").mkdir()
    bad = tmp_path / "directions" / "bad.safetensors"
    save_file({"delta_h": torch.zeros(2)}, str(bad), metadata={"steer": json.dumps({"format": 1, "kind": "hspace", "train_steps": "many"})})
    odd = tmp_path / "directions" / "odd.safetensors"
    save_file({"embedding": torch.zeros(2)}, str(odd), metadata={"steer": json.dumps({"format": 1, "kind": "noise", "index": 2})})
    script = write(tmp_path, "s.edit", SCENE)
    status, out, err = steer(capsys, "directions", script)
    assert status == 0 and "Traceback" not in err
    lines = {line.split()[0]: line for line in out.splitlines()[1:3]}
    assert "unreadable" in lines["bad"] and "'train_steps' should be a whole number" in lines["bad"]
    assert "direction 2 of ?" in lines["odd"]
    assert "circle_to_square" in out, "the folders after the bad file are listed"


def test_repl_on_a_folder_or_a_non_utf8_file(tmp_path, capsys):
    latin = tmp_path / "latin.edit"
    latin.write_bytes('prompt "caf\xe9"\n'.encode("latin-1"))
    refused(capsys, ["repl", tmp_path], f"steer: error: cannot read {tmp_path}: it is a folder", [latin])
    refused(capsys, ["repl", latin], f"steer: error: cannot read {latin}: it is not UTF-8 text", [latin])
    refused(capsys, ["run", latin], "it is not UTF-8 text", [latin])


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`steer directions | head -1`: the reader goes away (here before the first line, which
    start-up leaves ample time for); no traceback, no message."""
    proc = subprocess.Popen([sys.executable, "-m", "dsl", "directions"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and "Traceback" not in err and err == ""


# -- 5. silently wrong ---------------------------------------------------------------------------

def test_steps_0_and_a_negative_seed_are_refused_as_the_language_refuses_them(tmp_path, capsys, no_sampling):
    script = write(tmp_path, "s.edit", SCENE)
    refused(capsys, ["run", script, "-q", "--steps", "0"], "steer: error: --steps 0: steps must be between 1 and 1000", [script])
    refused(capsys, ["run", script, "-q", "--seed", "-5"], "steer: error: --seed -5: seed must be between 0 and 2^63 - 1", [script])
    in_script = write(tmp_path, "t.edit", SCENE.replace("seed 1", "seed -5"))
    refused(capsys, ["run", in_script, "-q"], "seed must be between 0 and 2^63 - 1, got -5", [in_script], at=f"{in_script}:2:6")


def test_a_python_program_with_steps_0_is_refused(shapes_editor):
    from energies.builder import centroid, token
    from energies.program import Program, Settings

    program = Program(settings=Settings(prompt="a red circle and a blue square", steps=0)) + centroid(token("circle")).to(0.7, 0.5)
    with pytest.raises(SteerCompileError, match="steps must be between 1 and 1000, got 0"):
        shapes_editor.run(program, progress=False)


def test_high_bit_depth_images_load_at_their_brightness(tmp_path):
    from sampler.images import load_image

    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(tmp_path / "grey16.png")
    Image.fromarray(np.full((8, 8), 0.5, np.float32), "F").save(tmp_path / "grey.tif")
    for name in ("grey16.png", "grey.tif"):
        assert np.allclose(load_image(tmp_path / name, (4, 4)), 0.5, atol=1 / 255), name


def test_a_corrupt_inversion_is_redone_and_a_read_only_cache_is_used_read_only(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("STEER_CACHE", str(cache))
    Image.new("RGB", (32, 32), (200, 40, 40)).save(tmp_path / "photo.png")
    script = write(tmp_path, "s.edit", SCENE + 'source "photo.png"\ncentroid(token "circle") -> (0.7, 0.5)\n')
    inputs = [script, tmp_path / "photo.png"]
    assert steer(capsys, "run", script, "-q")[0] == 0
    (entry,) = (cache / "inversions").iterdir()
    good = entry.read_bytes()
    entry.write_bytes(good[:100])  # a copy cut short
    before = digest(inputs)
    status, _, err = steer(capsys, "run", script, "-q")
    assert status == 0 and "steer: warning: the cached inversion" in err and "damaged" in err and "Traceback" not in err
    assert entry.read_bytes() == good, "the entry was redone"
    # The flat photo has neither object, which the source's maps show: the move's warning is the one word said.
    err = steer(capsys, "run", script, "-q")[2]
    assert err.count("warning:") == 1 and "fall on one place" in err and "cache" not in err, "and is used again without a word"
    assert digest(inputs) == before
    entry.unlink()
    with read_only(cache / "inversions"):
        status, _, err = steer(capsys, "run", script, "-q")
    assert status == 0 and "steer: warning: cannot write the inversion cache" in err and "read-only" in err


# -- 6. the REPL ---------------------------------------------------------------------------------

def test_ctrl_c_at_the_prompt_clears_the_line_and_keeps_the_program(tmp_path, monkeypatch, capsys):
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    from dsl.repl import Repl

    repl = Repl(out=str(tmp_path / "r.png"), history=str(tmp_path / "history"))
    with create_pipe_input() as keys:  # the terminal's prompt (prompt_toolkit), fed keys; \x03 is Ctrl-C, \x04 Ctrl-D
        keys.send_text(':auto off\rprompt "a red circle"\rkeep layout\rcentroid(tok\x03:list\r\x04')
        assert repl.loop(repl.session(input=keys, output=DummyOutput())) == 0
    assert "[1] keep layout" in capsys.readouterr().out
    assert [t.kind for t in repl.program.terms] == ["keep_shape"]


def test_repl_values_are_checked_by_the_language_and_save_always_parses(tmp_path, monkeypatch, capsys):
    import dsl

    saved = tmp_path / "saved.edit"
    typed = [":auto off", 'prompt "a red circle and a blue square"', 'centroid(token "dog") -> (0.7, 0.5)',
             'centroid(token "circle") -> (0.7, 0.5)', ":weight 1 nan", ":window 1 0.9 0.1", f":save {saved}"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(typed) + "\n"))
    assert main(["repl"]) == 0
    err = capsys.readouterr().err
    assert '<repl>:3:10: error: token "dog" is not in the prompt\n  centroid(token "dog") -> (0.7, 0.5)\n           ^~~~~~~~~~~' in err
    assert "<repl>:5:11: error: expected a number, got 'nan'\n  :weight 1 nan\n            ^~~" in err
    assert "<repl>:6:11: error: window 0.9..0.1 is not inside 0..1 with start < end\n  :window 1 0.9 0.1\n            ^~~~~~~" in err
    assert "Traceback" not in err
    program = dsl.load(saved)  # parses and compiles
    assert [t.kind for t in program.terms] == ["move"] and program.terms[0].weight == 1.0 and program.terms[0].window is None


def test_repl_checks_a_direction_as_it_is_added(tmp_path, monkeypatch, capsys):
    from dsl.repl import Repl

    copy_direction("circle_to_square", tmp_path, "small", lambda t: t.update(delta_h=torch.zeros(7, 3, 3)))
    repl = Repl(str(write(tmp_path, "r.edit", SCENE)), out=str(tmp_path / "r.png"))
    repl.handle(":auto off")
    with pytest.raises(SteerCompileError) as e:
        repl.handle("direction small")
    assert "does not fit this model" in e.value.message and repl.program.terms == ()


# -- 7. check rejects what run rejects -----------------------------------------------------------

@pytest.mark.parametrize("kind, change, message", [
    ("circle_to_square", lambda t: t.update(delta_h=torch.zeros(64, 4, 4)), "its delta-h is 64x4x4 but this UNet's mid block gives"),
    ("smaller", lambda t: t.update(embedding=torch.zeros(768)), "its token embedding has 768 dimensions"),
    ("red_to_green", lambda t: t.update(delta=torch.zeros(7, 32)), "its edit direction is 7x32"),
])
def test_check_refuses_the_directions_run_refuses(tmp_path, capsys, kind, change, message):
    wrong = copy_direction(kind, tmp_path, "wrong", change)
    script = write(tmp_path, "w.edit", SCENE + "direction wrong\n")
    run_err = refused(capsys, ["run", script, "-q"], message, [script, wrong], at=f"{script}:4:1")
    check_err = refused(capsys, ["check", script], message, [script, wrong], at=f"{script}:4:1")
    assert check_err == run_err

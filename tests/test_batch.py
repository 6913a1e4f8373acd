"""Batches (`steer run --seeds / --sources / --sweep`): the items, the files, resume, the grid,
the mistakes refused before the model loads, and two processes under accelerate on the CPU."""

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import dsl
from dsl import batch as B
from dsl.cli import main
from energies.errors import SteerUsageError
from sampler.pictures import LABEL_HEIGHT, TILE_SIDE, labelled_grid

MOVE = 'prompt "a red circle and a blue square"\nsteps 4\ncentroid(token "circle") -> (0.75, 0.5)\nkeep appearance\n'


def script(tmp_path, text=MOVE, name="move.edit"):
    p = tmp_path / name
    p.write_text(text)
    return p


def png_text(path) -> dict:
    with Image.open(path) as im:
        return dict(im.text)


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture
def counted(monkeypatch):
    """How often the model was loaded, a source pass sampled and an edit run, in this process."""
    import sampler.editor as E
    import sampler.source as S

    counts = {"loads": 0, "source passes": 0, "edits": 0}

    def counting(name, f):
        def wrapped(*a, **k):
            counts[name] += 1
            return f(*a, **k)
        return wrapped

    monkeypatch.setattr(E, "load_backbone", counting("loads", E.load_backbone))
    monkeypatch.setattr(S, "sample_ddim", counting("source passes", S.sample_ddim))
    monkeypatch.setattr(E.Editor, "run", counting("edits", E.Editor.run))
    return counts


# ------------------------------------------------------------------------------------------------
# The flags, without a model


def test_seeds_are_ranges_and_lists_each_seed_once():
    assert B.parse_seeds("0-3") == [0, 1, 2, 3]
    assert B.parse_seeds("0,3,7") == [0, 3, 7]
    assert B.parse_seeds("0-3,9") == [0, 1, 2, 3, 9]
    for bad, says in (("3-1", "runs backwards"), ("0-3,2", "seed 2 is listed twice"), ("a-3", "is not a seed"), ("-3", "is not a seed"),
                      ("1,,2", "is not a seed"), (f"{2**63}", "seed must be between")):
        with pytest.raises(SteerUsageError, match=says):
            B.parse_seeds(bad)


def test_sweep_values_are_the_languages_weights():
    assert B.parse_sweep("2=0,0.5,-1", terms=2) == [(2, 0.0), (2, 0.5), (2, -1.0)]
    assert B.parse_sweep("1=0:1:4", terms=1) == [(1, 0.0), (1, 0.333333333333), (1, 0.666666666667), (1, 1.0)]
    for bad, says in (("3=1,2", "no term 3 \\(2 terms\\)"), ("0=1", "no term 0"), ("2=1e999", "not a finite number"),
                      ("2=x", "expected a number, got 'x'"), ("2", "expected TERM=VALUES"), ("2=0:1:1", "COUNT of 2 or more"),
                      ("2=0:1", "FROM:TO:COUNT")):
        with pytest.raises(SteerUsageError, match=says):
            B.parse_sweep(bad, terms=2)


def test_the_grid_is_tiles_of_exact_size_with_blank_fill():
    image = np.zeros((32, 32, 3), np.float32)
    image[:16] = 1  # top half white: it must come out enlarged without blur
    grid = labelled_grid([(image, "a"), (image, "a label far too long to fit above one small tile")] * 2 + [(image, "e")], columns=2)
    k = math.ceil(TILE_SIDE / 32)
    assert grid.shape == (3 * (LABEL_HEIGHT + 32 * k), 2 * 32 * k, 3)
    first = grid[LABEL_HEIGHT:LABEL_HEIGHT + 32 * k, :32 * k]
    assert (first[:16 * k] == 1).all() and (first[16 * k:] == 0).all()
    assert (grid[-32 * k:, 32 * k:] == 1).all()  # the fifth tile's neighbour is blank white


# ------------------------------------------------------------------------------------------------
# Mistakes: exit 2, one line, before the model loads


@pytest.mark.parametrize("flags, says", [
    (["--seeds", "5-2"], "--seeds 5-2: the range 5-2 runs backwards"),
    (["--sweep", "3=0,1"], "--sweep 3=0,1: the script has no term 3 (2 terms)"),
    (["--sweep", "1=0,1", "--sweep", "1=2"], "term 1 is swept twice"),
    (["--seeds", "0-1", "--seed", "4"], "--seed is for one image"),
    (["--seeds", "0-1", "--sheet"], "--sheet is for one image"),
])
def test_flag_mistakes_are_usage_errors_before_the_model_loads(tmp_path, capsys, counted, flags, says):
    p = script(tmp_path)
    assert main(["run", str(p), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("steer: error: ") and says in err and "Traceback" not in err
    assert counted["loads"] == 0


def test_photo_folder_mistakes(tmp_path, capsys, counted):
    p = script(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a photo")
    assert main(["run", str(p), "--sources", str(empty)]) == 2
    assert f"--sources {empty}: no photos in the folder" in capsys.readouterr().err
    assert main(["run", str(p), "--sources", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"\x89PNG not really")
    assert main(["run", str(p), "--sources", str(broken)]) == 2
    assert "cannot read source photo" in capsys.readouterr().err
    assert main(["run", str(p), "--sources", str(broken), "--seeds", "0-1"]) == 2
    assert "--seeds and --sources do not combine" in capsys.readouterr().err
    photos = photo_folder(tmp_path)
    assert main(["run", str(p), "--sources", str(photos), "-o", str(photos)]) == 2  # where the next batch would read the edits
    assert f"it is the photos' folder {photos}" in capsys.readouterr().err
    assert sorted(f.name for f in photos.iterdir()) == ["README.txt", "a.jpg", "b.png", "c.webp"] and counted["loads"] == 0
    named_grid = tmp_path / "named_grid"
    named_grid.mkdir()
    Image.new("RGB", (8, 8)).save(named_grid / "grid.png")  # its edit would be the batch's grid.png
    assert main(["run", str(p), "--sources", str(named_grid)]) == 2
    assert "writes there too" in capsys.readouterr().err
    assert not (tmp_path / "move-batch").exists()  # a refused batch leaves no empty folder behind
    (photos / "a.jpg").unlink()
    (tmp_path / "a.jpg").symlink_to(photos / "b.png")  # a photo is an input under any name
    assert main(["run", str(p), "--sources", str(photos), "-o", str(tmp_path / "a.jpg")]) == 2
    assert "it is a source photo" in capsys.readouterr().err


def test_a_users_file_in_the_folder_is_never_overwritten(tmp_path, capsys, counted):
    p = script(tmp_path)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "seed-1.png").write_bytes(b"my own picture")
    assert main(["run", str(p), "--seeds", "0-1", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'seed-1.png'}: the file exists and steer did not write it" in err and "--overwrite" in err
    assert (out / "seed-1.png").read_bytes() == b"my own picture" and counted["loads"] == 0


# ------------------------------------------------------------------------------------------------
# Runs on the shipped model


def test_seeds_by_sweep_one_model_one_source_pass_per_seed_and_resume(tmp_path, shapes_path, capsys, counted):
    p = script(tmp_path)
    flags = ["--seeds", "0-1", "--sweep", "1=0,2", "--model", shapes_path, "-q"]
    assert main(["run", str(p), *flags]) == 0
    folder = tmp_path / "move-batch"
    assert f"wrote 4 items into {folder}" in capsys.readouterr().out
    names = ["seed-0_t1=0", "seed-0_t1=2", "seed-1_t1=0", "seed-1_t1=2"]
    assert sorted(f.name for f in folder.iterdir()) == sorted([f"{n}.png" for n in names] + ["seed-0-source.png", "seed-1-source.png", "grid.png"])
    assert counted == {"loads": 1, "source passes": 2, "edits": 4}  # the weights of one seed share its source pass

    ran = dsl.compile(dsl.parse(png_text(folder / "seed-1_t1=2.png")["steer:program"]))
    assert ran.settings.seed == 1 and ran.terms[0].weight == 2 and ran.terms[1].weight == 1  # term 2 as the script wrote it
    assert png_text(folder / "seed-1-source.png")["steer:image"] == "source"
    assert not np.array_equal(pixels(folder / "seed-0_t1=0.png"), pixels(folder / "seed-1_t1=0.png"))
    assert not np.array_equal(pixels(folder / "seed-0_t1=0.png"), pixels(folder / "seed-0_t1=2.png"))

    # the grid: a row per seed, its source and then a column per weight, each tile as written
    grid, edit = pixels(folder / "grid.png"), pixels(folder / "seed-1_t1=2.png")
    k = math.ceil(TILE_SIDE / edit.shape[0])
    tile_h, tile_w = LABEL_HEIGHT + edit.shape[0] * k, edit.shape[1] * k
    assert grid.shape == (2 * tile_h, 3 * tile_w, 3)
    assert np.array_equal(grid[tile_h + LABEL_HEIGHT:, 2 * tile_w:], edit.repeat(k, 0).repeat(k, 1))
    assert np.array_equal(grid[LABEL_HEIGHT:tile_h, :tile_w], pixels(folder / "seed-0-source.png").repeat(k, 0).repeat(k, 1))

    # resume: a third seed runs only its own two items, after one more source pass
    before = (folder / "seed-0_t1=0.png").stat().st_mtime_ns
    assert main(["run", str(p), *flags[:1], "0-2", *flags[2:]]) == 0
    out = capsys.readouterr().out
    assert "4 of 6 items already done" in out and "wrote 2 items" in out
    assert counted == {"loads": 2, "source passes": 3, "edits": 6}
    assert (folder / "seed-0_t1=0.png").stat().st_mtime_ns == before
    assert pixels(folder / "grid.png").shape == (3 * tile_h, 3 * tile_w, 3)

    # the same items with other steps are other programs: run again, over steer's own files
    assert main(["run", str(p), "--seeds", "0", "--steps", "3", "--model", shapes_path, "-q"]) == 0
    assert "already done" not in capsys.readouterr().out
    assert "steps 3" in png_text(folder / "seed-0.png")["steer:program"]


def photo_folder(tmp_path) -> Path:
    """Three little pictures of the shapes world (and a note, which is not a photo)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, (x, y) in (("b.png", (8, 10)), ("a.jpg", (30, 34)), ("c.webp", (20, 12))):
        im = Image.new("RGB", (64, 64), (20, 20, 25))
        draw = ImageDraw.Draw(im)
        draw.ellipse((x, y, x + 18, y + 18), fill=(220, 40, 40))
        draw.rectangle((64 - y - 18, 64 - x - 18, 64 - y, 64 - x), fill=(40, 40, 220))
        im.save(folder / name)
    (folder / "README.txt").write_text("where the photos come from")
    return folder


def test_a_folder_of_photos_each_the_source_and_resume(tmp_path, shapes_path, capsys, counted, monkeypatch):
    monkeypatch.setenv("STEER_CACHE", str(tmp_path / "cache"))
    photos = photo_folder(tmp_path)
    (photos / "c.webp").rename(tmp_path / "c.webp")  # added later
    p = script(tmp_path, 'source "elsewhere.png"\n' + MOVE)  # each photo replaces the script's own source
    flags = ["--sources", str(photos), "--model", shapes_path, "-q"]
    assert main(["run", str(p), *flags]) == 0
    folder = tmp_path / "move-batch"
    assert sorted(f.name for f in folder.iterdir()) == ["a-source.png", "a.png", "b-source.png", "b.png", "grid.png"]
    assert 'source "photos/a.jpg"' in png_text(folder / "a.png")["steer:program"]
    # the source pass of a photo is its inversion: each row's source image is its own photo, roughly
    def distance(source, photo):
        made = pixels(folder / source).astype(np.float32)
        return np.abs(made - np.asarray(Image.open(photos / photo).convert("RGB").resize(made.shape[:2][::-1]), np.float32)).mean()

    assert distance("a-source.png", "a.jpg") < distance("a-source.png", "b.png")
    assert distance("b-source.png", "b.png") < distance("b-source.png", "a.jpg")
    assert counted["loads"] == 1 and counted["edits"] == 2
    capsys.readouterr()

    assert main(["run", str(p), *flags]) == 0  # all done: nothing runs, not even the model's loading
    out = capsys.readouterr().out
    assert "2 of 2 items already done" in out and f"nothing left to run; wrote the grid {folder / 'grid.png'}" in out
    assert counted["loads"] == 1 and counted["edits"] == 2

    (tmp_path / "c.webp").rename(photos / "c.webp")
    assert main(["run", str(p), *flags]) == 0
    assert "2 of 3 items already done" in capsys.readouterr().out
    assert counted["edits"] == 3 and (folder / "c.png").exists()
    k = math.ceil(TILE_SIDE / pixels(folder / "c.png").shape[0])
    assert pixels(folder / "grid.png").shape[1] == 2 * 2 * pixels(folder / "c.png").shape[1] * k  # 3 pairs wrap two to a row


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_under_accelerate_split_the_items(tmp_path, shapes_path):
    """accelerate launch's torchrun starts two CPU processes (on a machine without CUDA, steer's
    processes meet over gloo): each writes its own items, once, and the main one the grid."""
    p = script(tmp_path)
    launcher = Path(sys.executable).with_name("accelerate")
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "dsl", "run", str(p), "--seeds", "0-3", "--model", shapes_path, "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "move-batch"
    assert proc.stdout.count("wrote 4 items") == 1  # the main process speaks
    made_by = {f"seed-{s}": png_text(folder / f"seed-{s}.png")["steer:process"] for s in range(4)}
    assert made_by == {"seed-0": "1 of 2", "seed-1": "1 of 2", "seed-2": "2 of 2", "seed-3": "2 of 2"}
    assert (folder / "grid.png").exists() and all((folder / f"seed-{s}-source.png").exists() for s in range(4))

"""`steer bench --quick` as CI's smoke test: the files are written and well-formed (not the figures)."""

import json

import pytest
from PIL import Image

from sampler.bench import run_bench


@pytest.mark.slow  # about 100 s on 1 thread: the cost classes load the model in 16 fresh processes (CPU peak memory)
def test_quick_bench_writes_well_formed_results(tmp_path, shapes_path):
    results = run_bench(shapes_path, seeds=1, quick=True, out=tmp_path, steps=4, progress=False)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["meta"]["quick"] is True and data["meta"]["seeds"] == 1
    tasks = set(data["tasks"])
    assert {"move", "shift", "resize x2", "keep", "shape swap", "appearance swap", "combined", "drag", "drag via latent",
            "drag within a box"} <= tasks
    drags = [r for r in data["runs"] if r["task"] == "drag"]
    assert drags and all(r["script"].startswith("drag (") and 'within token "circle"' in r["script"] for r in drags)
    free = [r for r in data["runs"] if r["task"] in ("shift to free space", "drag to free space")]
    assert len(free) == 2 and all(r["script"] is None or "+= (" in r["script"] or "drag (" in r["script"] for r in free)
    boxed = [r for r in data["runs"] if r["task"] == "drag within a box"]
    assert boxed and all(r["script"].startswith("drag (") and "within (" in r["script"] for r in boxed)
    assert all(r["task"] in tasks and "seconds" in r for r in data["runs"])
    for name in ("attention", "attention + appearance", "drag (copy, then bottleneck)", "drag (bottleneck optimisation)"):
        c = data["cost"][name]
        assert c["time_ratio"] > 0 and c["plain_seconds_per_image"] > 0 and c["model_mb"] > 0
    assert data["cost"]["repl_rerun"]["time_ratio"] > 0
    for kind in ("generated", "world"):
        assert data["inversion"][kind]["n"] == 1 and data["inversion"][kind]["mean_psnr"] > 10
    md = (tmp_path / "results.md").read_text()
    assert md.startswith("# steer bench") and "| move |" in md and "REPL re-run" in md and "| world | 1 |" in md
    with Image.open(tmp_path / "contact_sheet.png") as im:
        assert im.width > 256 and im.height > 128
    assert results["tasks"] == data["tasks"]


def test_bench_runs_only_the_tasks_asked_and_names_the_known_ones(tmp_path, shapes_path, capsys):
    from dsl.cli import main

    assert main(["bench", "--model", shapes_path, "--quick", "--seeds", "1", "--out", str(tmp_path), "--task", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'nope'" in err and "move" in err and "Traceback" not in err
    data = run_bench(shapes_path, seeds=1, quick=True, out=tmp_path, steps=2, progress=False, tasks=["shift"], cost=False)
    assert set(data["tasks"]) == {"shift"} and data["cost"] == {} and data["inversion"] == {}


def test_one_cost_class_is_measured_in_fresh_processes(shapes_editor, shapes_path):
    """The cost of one class: ratios from this process, the CPU peaks from two fresh ones."""
    from sampler.bench.cost import measure_cost

    cost = measure_cost(shapes_editor, 2, [0], "cpu", shapes_path, names=["attention"])
    assert set(cost) == {"attention", "repl_rerun"}
    c = cost["attention"]
    assert c["time_ratio"] > 0 and c["plain_seconds_per_image"] > 0 and c["model_mb"] > 0 and c["total_memory_ratio"] > 0
    assert cost["repl_rerun"]["time_ratio"] > 0


def test_free_vector_keeps_the_moved_circle_inside_and_clear_of_the_square():
    import numpy as np

    from sampler.bench.tasks import free_vector
    from sampler.shapes import world as W

    def obj(colour, x0, y0, n=6):
        m = np.zeros((32, 32), bool)
        m[y0:y0 + n, x0:x0 + n] = True
        return W.make_object("circle" if colour == "red" else "square", colour, m)

    # The square sits right of the circle: +x is blocked, so seed 0 (which tries +x first) gets -x.
    src = [obj("red", 12, 13), obj("blue", 21, 13)]
    assert free_vector(src, 0) == (-0.25, 0.0)
    assert free_vector(src, 2) == (0.0, 0.25)  # seed 2 tries +y first, and it is free
    # Too big to move 0.15 of the image any way and stay inside: no place.
    big = [obj("red", 4, 4, 24), obj("blue", 29, 29, 3)]
    assert free_vector(big, 0) is None
    assert free_vector([obj("blue", 0, 0)], 0) is None  # no circle

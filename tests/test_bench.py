"""The bench: its splits and cases cover the world, its targets are free, its criteria judge
hand-made detections right, a statement the language lacks is reported as not run, the report
(results.json, results.md, the docs' Status lines) is well-formed. `steer bench --quick` with
every task and the cost classes is marked slow."""

import dataclasses
import json
import math
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from sampler.bench import checks as K
from sampler.bench import targets as T
from sampler.bench.scene import CYCLE, SPLITS, Item, Obj, item, seed_range
from sampler.bench.tasks import BY_NAME, TASKS, Case, Outcome, Posed, Task, cases_of, judge, plan, select
from sampler.shapes import world as W
from sampler.shapes.evaluate import one_object_captions, two_object_captions

# ----------------------------------------------------------------------------------------------
# Splits and cases


def test_the_cycle_walks_every_two_object_caption_with_either_object_edited():
    items = [item(q) for q in range(CYCLE)]
    assert len(set(items)) == CYCLE == 216
    assert Counter(i.caption for i in items) == {c: 2 for c in two_object_captions()}
    assert {(i.caption, i.index) for i in items} == {(c, k) for c in two_object_captions() for k in (0, 1)}
    assert {item(q, objects=1).caption for q in range(12)} == set(one_object_captions())


def test_the_report_split_covers_every_colour_and_shape_in_both_orders_and_is_balanced():
    cases = cases_of(BY_NAME["move"], "report", 48)
    subjects = Counter((c.item.subject.colour, c.item.position) for c in cases)
    assert subjects == {(col, pos): 6 for col in W.COLOURS for pos in ("first", "second")}
    assert Counter((c.item.subject.shape, c.item.position) for c in cases) == {(s, p): 8 for s in W.SHAPES for p in ("first", "second")}
    # Every colour and shape stands first in some prompt and second in another; the other object turns too.
    for k in (0, 1):
        assert {c.item.objects[k].colour for c in cases} == set(W.COLOURS)
        assert {c.item.objects[k].shape for c in cases} == set(W.SHAPES)
    assert Counter(c.item.other.colour for c in cases) == {col: 12 for col in W.COLOURS}
    assert len({c.item.caption for c in cases}) >= 40


def test_the_splits_draw_disjoint_seeds():
    (t0, t1), (r0, r1) = seed_range("tune"), seed_range("report")
    assert t1 < r0 or r1 < t0
    for task in TASKS:
        tune = {c.seed for c in cases_of(task, "tune", 48)}
        report = {c.seed for c in cases_of(task, "report", 48)}
        assert len(tune) == len(report) == 48 and not tune & report
        assert all(t0 <= s <= t1 for s in tune) and all(r0 <= s <= r1 for s in report)
    with pytest.raises(ValueError, match="unknown split"):
        cases_of(TASKS[0], "test", 1)


def test_tasks_take_only_the_items_that_fit_them_and_share_sources():
    swap = cases_of(BY_NAME["shape swap"], "report", 48)
    assert all(c.item.subject.shape != c.item.other.shape for c in swap)
    c2s = cases_of(BY_NAME["direction circle_to_square within the object"], "report", 48)
    assert all(c.item.subject.shape == "circle" for c in c2s) and {c.item.subject.colour for c in c2s} == set(W.COLOURS)
    assert {c.item.position for c in c2s} == {"first", "second"}
    green = cases_of(BY_NAME["direction green within the object"], "report", 48)
    assert all(c.item.subject.colour != "green" for c in green)
    # The same position q is the same prompt and seed for every task: one source pass serves them all.
    cases = plan([BY_NAME["move"], BY_NAME["resize x2"]], "report", 4)
    assert [(c.q, c.task.name) for c in cases[:2]] == [(0, "move"), (0, "resize x2")]
    assert cases[0].seed == cases[1].seed and cases[0].item == cases[1].item


def test_a_token_names_the_second_of_two_like_shapes():
    it = Item((Obj("red", "circle"), Obj("blue", "circle")), 1)
    assert it.token() == 'token "circle"#2' and it.other_token() == 'token "circle"'
    it = Item((Obj("red", "circle"), Obj("blue", "square")), 1)
    assert it.token() == 'token "square"' and it.recaption("green") == "a red circle and a green square"


def test_the_flags_know_the_splits():
    from sampler.bench.flags import SPLIT_NAMES, parser

    assert set(SPLIT_NAMES) == set(SPLITS)
    args = parser().parse_args(["--split", "tune", "--per-task", "5", "--quick"])
    assert args.split == "tune" and args.per_task == 5 and args.quick
    assert parser().parse_args([]).split == "report"


def test_unknown_tasks_are_named():
    with pytest.raises(ValueError, match="unknown task 'nope'.*move"):
        select(["nope"])


# ----------------------------------------------------------------------------------------------
# Targets


def _placed(subject, v, other, size):
    px, py = round(v[0] * size), round(v[1] * size)
    ys, xs = np.nonzero(subject.mask)
    mx, my = xs + px, ys + py
    inside = mx.min() >= 0 and my.min() >= 0 and mx.max() < size and my.max() < size
    clear = inside and not W._dilate(other.mask, T.gap(size))[my, mx].any()
    return inside, clear


@pytest.mark.parametrize("size", [32, 64])
def test_targets_are_inside_and_clear_of_the_other_object(size):
    posed = 0
    for k in range(40):
        scene = W.make_scene(k, size, n_objects=2)
        s, o = scene.objects[k % 2], scene.objects[1 - k % 2]
        rng = np.random.default_rng(k)
        v = T.pick_shift(scene.objects, s, rng)
        if v is not None:
            posed += 1
            assert _placed(s, v, o, size) == (True, True)
            assert math.hypot(*v) >= 0.12
        t = T.pick_target(scene.objects, s, rng)
        if t is not None:
            assert _placed(s, (t[0] - s.centroid[0], t[1] - s.centroid[1]), o, size) == (True, True)
        d = T.pick_beside(scene.objects, s, o, rng)
        if d is not None:
            assert d[0] == 0.0 or d[1] == 0.0 or abs(d[0]) == abs(d[1])  # beside, above, below, or diagonally
            v = (o.centroid[0] + d[0] - s.centroid[0], o.centroid[1] + d[1] - s.centroid[1])
            assert _placed(s, v, o, size) == (True, True)
    assert posed >= 35  # a free place almost always exists


def _obj(shape, colour, x0, y0, n=8, size=32):
    m = W.rasterize(shape, x0 + n / 2, y0 + n / 2, n, n, size)
    return W.make_object(shape, colour, m)


def test_no_target_where_the_object_cannot_move():
    big = _obj("square", "red", 2, 2, 28)
    assert T.pick_shift([big], big, np.random.default_rng(0)) is None
    # Grown 1.5x, a target must also leave room for the bigger object.
    s, o = _obj("square", "red", 2, 12, 8), _obj("square", "blue", 13, 2, 17)
    for k in range(10):
        t = T.pick_target([s, o], s, np.random.default_rng(k), grow=1.5)
        if t is not None:
            assert abs(t[0] - s.centroid[0]) + abs(t[1] - s.centroid[1]) > 0.1


def test_beside_goes_above_or_below_where_neither_side_has_room():
    s, o = _obj("square", "red", 0, 22, 8), _obj("square", "blue", 9, 0, 14)  # o wide, mid-image, at the top
    for k in range(4):
        d = T.pick_beside([s, o], s, o, np.random.default_rng(k))
        assert d is not None and d[0] == 0.0 and d[1] > 0  # below it: above is outside the image
        v = (o.centroid[0] - s.centroid[0], o.centroid[1] + d[1] - s.centroid[1])
        assert _placed(s, v, o, 32) == (True, True)


# ----------------------------------------------------------------------------------------------
# Criteria, on hand-made detections

RC = Item((Obj("red", "circle"), Obj("blue", "square")), 0)  # "a red circle and a blue square", the circle edited


def _scene(circle_at=(4, 12), square_at=(20, 12), circle=("circle", "red"), n=8):
    return [_obj(circle[0], circle[1], *circle_at, n), _obj("square", "blue", *square_at)]


def _judge(name, src, out, it=RC, **asked):
    task = BY_NAME[name]
    figures = task.check(src, out, it, **asked)
    return judge(task, figures), figures


def test_a_moved_object_passes_and_an_unmoved_one_fails():
    src = _scene()
    target = (0.5, 0.8)
    moved = _scene(circle_at=(12, 21))  # centre (16, 25) px = (0.5, 0.78)
    ok, f = _judge("move", src, moved, target=target)
    assert ok and f["within_0_1"] and f["other_kept"] and f["kept_shape"] and f["moved_toward"] > 0.9
    ok, f = _judge("move", src, src, target=target)
    assert not ok and not f["within_0_1"] and f["unguided_error"] > 0.1
    # Moved, but the square pushed aside, or the circle drawn as a square: failures.
    assert not _judge("move", src, _scene(circle_at=(12, 21), square_at=(22, 2)), target=target)[0]
    assert not _judge("move", src, _scene(circle_at=(12, 21), circle=("square", "red")), target=target)[0]
    # A shift is measured from the source's detected centroid.
    ok, _ = _judge("shift", src, moved, delta=(moved[0].centroid[0] - src[0].centroid[0], moved[0].centroid[1] - src[0].centroid[1]))
    assert ok


def test_relative_moves_and_sizes_read_the_other_object():
    src = _scene(circle_at=(4, 22))
    beside = _scene(circle_at=(6, 12))  # level with the square, left of it
    dx = beside[0].centroid[0] - src[1].centroid[0]
    assert _judge("move beside the other", src, beside, offset=(dx, 0.0))[0]
    assert not _judge("move beside the other", src, src, offset=(dx, 0.0))[0]
    big = [_obj("circle", "red", 2, 12, 9), src[1]]  # 69 px, the square 64
    assert _judge("resize to the other's size", src, big)[0]
    small = [_obj("circle", "red", 4, 22, 6), src[1]]
    ok, f = _judge("resize to the other's size", small, small)
    assert not ok and not f["unguided_ok"]


def test_resize_counts_the_area_ratio_within_20_percent():
    src = [_obj("circle", "red", 4, 4, 10), _obj("square", "blue", 20, 20)]
    bigger = [_obj("circle", "red", 4, 4, 14), src[1]]  # area about 1.96x
    ok, f = _judge("resize x2", src, bigger, k=2.0)
    assert ok and 1.6 <= f["ratio"] <= 2.4
    assert not _judge("resize x2", src, src, k=2.0)[0]
    assert not _judge("resize x0.5", src, bigger, k=0.5)[0]
    area = bigger[0].area
    assert _judge("resize to an area", src, bigger, area=round(area, 3))[0]


def test_a_swapped_colour_counts_and_an_unchanged_one_does_not():
    src = _scene()
    swapped = [_obj("circle", "blue", 4, 12), src[1]]  # the circle took the square's colour, in place
    ok, f = _judge("appearance swap", src, swapped)
    assert ok and f["took_colour"] and f["stayed_0_05"]
    assert not _judge("appearance swap", src, src)[0]
    # Blue, but far from where the circle was: not in place.
    assert not _judge("appearance swap", src, [_obj("circle", "blue", 4, 22), src[1]])[0]


def test_recolour_to_a_word_needs_the_colour_the_place_and_the_other_kept():
    src = _scene()
    green = [_obj("circle", "green", 4, 12), src[1]]
    assert _judge("recolour to a word", src, green, colour="green")[0]
    assert not _judge("recolour to a word", src, green, colour="yellow")[0]
    assert not _judge("recolour to a word", src, [green[0], _obj("square", "blue", 20, 2)], colour="green")[0]
    # The CLIP recolour has two bars: colour taken and position kept, each its own criterion.
    ok, f = _judge("clip recolour", src, green, colour="green")
    assert ok and set(BY_NAME["clip recolour"].bars) == {"took_colour", "stayed_0_05"}


def test_shape_swap_takes_the_other_shape_in_place():
    src = _scene()
    assert _judge("shape swap", src, [_obj("square", "red", 4, 12), src[1]])[0]
    assert not _judge("shape swap", src, src)[0]


def test_keep_beside_a_move_judges_the_untouched_object():
    src = _scene()
    kept_it = Item(RC.objects, 0)  # the circle is kept; the square moves
    moved_square = [src[0], _obj("square", "blue", 20, 22)]
    ok, f = _judge("keep layout beside a move", src, moved_square, kept_it, target=moved_square[1].centroid)
    assert ok and f["kept_iou"] == 1.0 and f["kept_colour"] and f["moved_within_0_1"]
    # The square drawn over the circle's place: the circle lost its place and its colour.
    over = [_obj("square", "blue", 4, 12), _obj("circle", "red", 4, 2, 4)]
    ok, f = _judge("keep layout beside a move", src, over, kept_it, target=(0.25, 0.5))
    assert not ok and not f["kept_colour"] and not f["kept_iou_0_9"]


def test_keep_beside_a_move_is_posed_where_the_source_lacks_the_moved_object():
    """The script is the user's, written from the prompt: with the square missing from the source,
    its move has a target clear of the kept circle for an object of the circle's size."""
    circle = _scene()[0]
    kept_it = Item(RC.objects, 0)
    for k in range(8):
        posed = BY_NAME["keep layout beside a move"].pose(kept_it, [circle], np.random.default_rng(k))
        assert isinstance(posed, Posed) and posed.script.startswith('centroid(token "square") -> (')
        tx, ty = posed.asked["target"]
        px, py = round((tx - circle.centroid[0]) * 32), round((ty - circle.centroid[1]) * 32)
        assert T.fits(circle.mask, T.blocked_by([circle], None, 32), px, py)  # inside the image, off the circle
    assert BY_NAME["keep appearance beside a move"].pose(kept_it, [_scene()[1]], np.random.default_rng(0)) == \
        "the source lacks the object to keep"


def test_remove_needs_the_object_gone_and_nothing_new():
    src = _scene()
    ok, f = _judge("remove", src, [src[1]])
    assert ok and f["gone"] and f["nothing_new"] and f["other_kept"]
    assert not _judge("remove", src, src)[0]
    ok, f = _judge("remove", src, [src[1], _obj("triangle", "yellow", 4, 12)])
    assert not ok and f["gone"] and not f["nothing_new"]
    one = Item((Obj("red", "circle"),), 0)
    assert _judge("remove (one object)", [src[0]], [], one)[0]


def test_directions_and_the_combined_edit():
    src = _scene()
    assert _judge("direction green within the object", src, [_obj("circle", "green", 4, 12), src[1]])[0]
    assert not _judge("direction green within the object", src, [_obj("circle", "green", 4, 24), src[1]])[0]
    assert _judge("direction circle_to_square within the object", src, [_obj("square", "red", 4, 12), src[1]])[0]
    grown = [_obj("circle", "yellow", 4, 20, 10), src[1]]  # moved down, 1.5x the area, yellow
    target = grown[0].centroid
    ok, f = _judge("move + resize + recolour", src, grown, target=target, k=1.5, colour="yellow")
    assert ok, f
    assert not _judge("move + resize + recolour", src, grown, target=target, k=1.5, colour="green")[0]


def test_a_source_is_right_when_it_drew_the_named_object():
    src = _scene()
    assert K.source_right(src, RC)
    assert not K.source_right(_scene(circle=("triangle", "red")), RC)
    assert not K.source_right([src[1]], RC)
    # A source without the object: the case fails, it is not skipped.
    ok, f = _judge("move", [src[1]], src, target=(0.5, 0.5))
    assert not ok and f["found"] is False


# ----------------------------------------------------------------------------------------------
# The report


def _outcome(task, k, it, success, right, figures=None, image=None):
    case = Case(task, "report", k, k, it, SPLITS["report"] + k)
    return Outcome(case, "script", {"posed": True, **(figures or {})}, success, right, 1.0, image, image)


def _synthetic_results():
    from sampler.bench.report import summarise, summarise_curves

    move, remove = BY_NAME["move"], BY_NAME["remove"]
    outs = []
    for k in range(10):
        it = item(k)
        ok = k < 8
        outs.append(_outcome(move, k, it, ok, right=k != 9, figures={"within_0_1": ok, "other_kept": True, "kept_shape": True,
                                                                          "error": 0.05}))
    curve = [Outcome(Case(move, "report", 0, 0, item(0), 1), "s", {"moved_toward": w / 2, "posed": True}, w > 0, True, 1.0, weight=w)
             for w in (0.0, 1.0, 2.0)]
    rows = summarise([move, remove], outs, {"remove": "unknown statement 'remove'"})
    meta = {"model": "shapes", "steps": 25, "cfg": 3.0, "image_size": 32, "split": "report", "per_task": 10, "quick": False,
            "seeds": {"range": [1_000_000, 1_999_999], "first": 1_000_000, "last": 1_000_009, "sources": 10},
            "curve_cases": 1, "weights": [0, 1, 2], "seconds": 12.0, "command": "steer bench", "machine": "test"}
    curves = {"move": {"task": "move", "figure": "moved_toward", "label": "moved", "weights": [0, 1, 2],
                       **summarise_curves(curve, (0.0, 1.0, 2.0), "moved_toward")},
              "recolour": {"task": "recolour to a word", "figure": "took_colour", "label": "colour", "weights": [0, 1],
                           "not_run": "appearance takes another object's appearance", "rows": [], "runs": []}}
    return {"meta": meta, "tasks": rows, "curves": curves, "cost": {}, "inversion": {}, "runs": [o.record() for o in outs]}


def test_a_row_counts_all_sources_and_right_sources_per_shape_and_colour_against_its_bar():
    rows = _synthetic_results()["tasks"]
    m = rows["move"]
    assert m["n"] == 10 and m["n_right"] == 9 and m["sources_wrong"] == 1
    assert m["success"]["all"] == pytest.approx(0.8) and m["success"]["right"] == pytest.approx(8 / 9)
    assert m["met"] is False and m["bar"][0]["miss"] == pytest.approx(0.1)
    assert sum(g["n"] for g in m["by_shape"].values()) == 10 and set(m["by_colour"]) == set(W.COLOURS)
    assert m["by_position"]["first"]["n"] + m["by_position"]["second"]["n"] == 10
    assert rows["remove"]["status"] == "not run: unknown statement 'remove'" and rows["remove"]["n"] == 0


def test_a_statement_the_model_refuses_is_not_run_even_where_a_case_could_not_be_posed():
    """The flow model's drag row read "0% (0/1)": 47 cases refused at compile time (no bottleneck),
    one whose source lacked the object counted as a failure. No case reached the model."""
    from sampler.bench.report import summarise

    drag = BY_NAME["drag within the object"]
    refused = "drag cannot run on a rectified-flow transformer"
    outs = [_outcome(drag, 0, item(0), False, right=False, figures={"posed": False})]
    outs += [Outcome(Case(drag, "report", k, k, item(k), SPLITS["report"] + k), "s", {}, None, True, 1.0, not_run=refused)
             for k in range(1, 5)]
    row = summarise([drag], outs)["drag within the object"]
    assert row["status"] == f"not run: {refused}" and row["n"] == 0
    outs[0] = _outcome(drag, 0, item(0), False, right=True)  # posed and run: a partly run row, as before
    row = summarise([drag], outs)["drag within the object"]
    assert row["status"].startswith("partly run: 4 of 5") and row["n"] == 1


def test_results_md_opens_with_the_summary_then_shapes_colours_curves():
    from sampler.bench.report import markdown

    md = markdown(_synthetic_results())
    order = [md.index(h) for h in ("## Summary", "## Per shape", "## Per colour", "## Weight curves")]
    assert order == sorted(order)
    assert "| move | `centroid(token \"S\") -> (x, y); keep appearance` | 10 | 80% (8) | 89% (8/9) | 1 | 90% | no: 10 points short |" in md
    assert "not run: unknown statement 'remove'" in md and "Split `report`" in md and "command `steer bench`" in md
    assert "recolour (`recolour to a word`): not run" in md


def test_a_shortfall_under_one_point_is_not_written_as_zero():
    from sampler.bench.report import points

    assert points(0.9 - 43 / 48) == "0.4" and points(0.10) == "10" and points(0.0249) == "2"


def test_status_lines_and_the_results_page_render_from_results_json_of_the_report_split_only():
    from sampler.bench.docs import STATUS_END, STATUS_START, bench_results_page, replace_status, status_lines

    results = json.loads(json.dumps(_synthetic_results(), default=float))  # as read back from results.json
    lines = status_lines(results)
    text = "\n".join(lines)
    assert "- move (`centroid(token \"S\") -> (x, y); keep appearance`): 8 of 10 (80%); 89% of the 9" in text
    assert "bar 90% missed by 10 points" in text and "not run: unknown statement 'remove'" in text
    assert "Bars met: 0 of the 1 rows run (1 not run)" in text and "Weight curve, move" in text
    page = bench_results_page(results)
    assert page.startswith("# steer bench results (report split)") and "## Summary" in page
    readme = f"# x\n\n## Status\n\n{STATUS_START}\nold\n{STATUS_END}\n\nBuilt: ...\n"
    new = replace_status(readme, lines)
    assert "old" not in new and lines[0] in new and new.endswith(f"{STATUS_END}\n\nBuilt: ...\n")
    with pytest.raises(ValueError, match="no .* block"):
        replace_status("# x\n", lines)
    for bad in ({"split": "tune"}, {"quick": True}):
        with pytest.raises(ValueError):
            status_lines({**results, "meta": {**results["meta"], **bad}})


def test_a_rerun_of_some_rows_replaces_them_and_says_so():
    from sampler.bench.docs import bench_results_page, merge, status_lines

    results = json.loads(json.dumps(_synthetic_results(), default=float))
    rerun = json.loads(json.dumps(results))
    rerun["meta"]["command"] = "steer bench --split report --task move"
    rerun["tasks"] = {"move": {**rerun["tasks"]["move"], "success": {**rerun["tasks"]["move"]["success"], "k_all": 9, "all": 0.9}}}
    merged = merge(results, rerun)
    assert merged["tasks"]["move"]["success"]["k_all"] == 9 and set(merged["tasks"]) == set(results["tasks"])
    assert results["tasks"]["move"]["success"]["k_all"] == 8, "the full run's rows are left as they were"
    text = "\n".join(status_lines(merged))
    assert "9 of 10 (90%)" in text and "Rows re-run since: move (`steer bench --split report --task move`)" in text
    assert "Rows re-run since: move" in bench_results_page(merged)
    newer = {**rerun, "tasks": {"new task": {**rerun["tasks"]["move"], "script": "direction x"}}}
    added = merge(results, newer)  # a task the base run did not have is added, not dropped
    assert list(added["tasks"])[-1] == "new task" and set(added["tasks"]) == set(results["tasks"]) | {"new task"}
    assert merge(results, {**rerun, "curves": {}})["curves"] == results["curves"], "a rerun without curves leaves the base's"
    curve = next(iter(results["curves"]))
    redrawn = {curve: {**results["curves"][curve], "rows": [{**r, "effect": 0.5} for r in results["curves"][curve]["rows"]]}}
    with_curve = merge(results, {**rerun, "curves": redrawn})
    assert with_curve["curves"][curve]["rows"][0]["effect"] == 0.5, "a rerun's own curve replaces the base's"
    with pytest.raises(ValueError, match="same split"):
        merge(results, {**rerun, "meta": {**rerun["meta"], "steps": 10}})
    with pytest.raises(ValueError):
        merge(results, {**rerun, "meta": {**rerun["meta"], "split": "tune"}})


def test_the_merged_results_are_kept_as_the_base_of_the_next_rerun(tmp_path):
    from sampler.bench.docs import main

    results = json.loads(json.dumps(_synthetic_results(), default=float))
    rerun = json.loads(json.dumps(results))
    rerun["meta"]["command"] = "steer bench --split report --task move"
    rerun["tasks"] = {"move": {**rerun["tasks"]["move"], "success": {**rerun["tasks"]["move"]["success"], "k_all": 9, "all": 0.9}}}
    (tmp_path / "full.json").write_text(json.dumps(results))
    (tmp_path / "rerun.json").write_text(json.dumps(rerun))
    kept = tmp_path / "bench-results.json"
    assert main([str(tmp_path / "full.json"), "--rerun", str(tmp_path / "rerun.json"), "--keep", str(kept), "--page", str(tmp_path / "p.md")]) == 0
    base = json.loads(kept.read_text())
    assert base["tasks"]["move"]["success"]["k_all"] == 9 and base["meta"]["reruns"][0]["tasks"] == ["move"]
    assert main([str(kept), "--keep", str(kept)]) == 0, "the kept file is a base in its own right"
    assert json.loads(kept.read_text()) == base
    # the same row run once more: the line names only the run the row now comes from
    rerun["meta"]["command"] = "steer bench --split report --task move --out again"
    (tmp_path / "rerun.json").write_text(json.dumps(rerun))
    assert main([str(kept), "--rerun", str(tmp_path / "rerun.json"), "--keep", str(kept), "--page", str(tmp_path / "p.md")]) == 0
    assert json.loads(kept.read_text())["meta"]["reruns"] == [{"tasks": ["move"], "command": rerun["meta"]["command"]}]


def test_the_weight_curve_png_is_skipped_without_matplotlib(tmp_path, monkeypatch):
    import sys

    from sampler.bench.report import curve_plot

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert curve_plot(_synthetic_results()["curves"], tmp_path / "c.png") is False
    assert not (tmp_path / "c.png").exists()


def test_the_contact_sheet_takes_the_images_own_size(tmp_path):
    from sampler.bench.report import contact_sheet

    im = np.zeros((64, 64, 3), np.float32)
    outs = [_outcome(BY_NAME["move"], k, item(k), k % 2 == 0, True, image=im) for k in range(3)]
    contact_sheet(outs, tmp_path / "s.png", 4, order=["move"])
    with Image.open(tmp_path / "s.png") as sheet:
        assert sheet.height >= 128 and sheet.width >= 3 * 2 * 128


# ----------------------------------------------------------------------------------------------
# Runs on the model (few steps, one case per task)


def _never_compiles(it, src, rng):
    return Posed(f"frobnicate {it.token()}")


def _never_binds(it, src, rng):
    return Posed('centroid(token "dog") -> (0.5, 0.5)')


def _binds_only_when_probed():
    calls = []

    def pose(it, src, rng):  # the probe's made-up source binds; the real source's script does not
        calls.append(1)
        return Posed("centroid(token \"circle\") -> (0.5, 0.5)") if len(calls) == 1 else _never_binds(it, src, rng)

    return pose


def test_a_row_that_does_not_compile_or_bind_is_reported_as_not_run(tmp_path, shapes_editor, shapes_path):
    from sampler.bench.run import run_bench

    broken = Task("broken", "none", "frobnicate", _never_compiles, K.move, ("within_0_1",), {"success": 0.9})
    unbound = Task("unbound", "none", "dog", _never_binds, K.move, ("within_0_1",), {"success": 0.9})
    late = Task("late", "none", "dog", _binds_only_when_probed(), K.move, ("within_0_1",), {"success": 0.9},
                fits=lambda it: it.subject.shape == "circle")
    data = run_bench(shapes_path, per_task=1, out=tmp_path, steps=2, progress=False, task_list=[broken, unbound, late], cost=False,
                     curves=False, editor=shapes_editor)
    b, u, l = data["tasks"]["broken"], data["tasks"]["unbound"], data["tasks"]["late"]
    assert b["status"].startswith("not run: ") and "frobnicate" in b["status"] and b["n"] == 0
    assert u["status"].startswith("not run: ") and "dog" in u["status"]
    # Found by binding before any sampling; a script that fails to bind only on its real source is caught when run.
    assert l["status"].startswith("not run: ") and "dog" in l["status"]
    assert [r["task"] for r in data["runs"]] == ["late"] and data["runs"][0]["not_run"]
    md = (tmp_path / "results.md").read_text()
    assert "| broken |" in md and "not run" in md


def test_a_quick_run_writes_well_formed_results(tmp_path, shapes_editor, shapes_path):
    from sampler.bench.run import run_bench

    names = ["move", "resize x1.5", "recolour to a word"]
    results = run_bench(shapes_path, quick=True, out=tmp_path, steps=8, per_task=2, progress=False, tasks=names, cost=False,
                        editor=shapes_editor)
    data = json.loads((tmp_path / "results.json").read_text())
    meta = data["meta"]
    assert meta["split"] == "report" and meta["quick"] is True and meta["per_task"] == 2 and meta["image_size"] == 64
    assert meta["seeds"]["first"] >= SPLITS["report"] and meta["weights"] == [0.0, 1.0]
    assert list(data["tasks"]) == names
    for name in ("move", "resize x1.5"):
        row = data["tasks"][name]
        assert row["n"] == 2 and row["status"] == "run" and row["n_right"] + row["sources_wrong"] == 2
        assert set(row["by_shape"]) == set(W.SHAPES) and set(row["by_colour"]) == set(W.COLOURS)
        assert 0 <= row["success"]["all"] <= 1 and row["bar"][0]["bar"] == BY_NAME[name].bars["success"]
    runs = [r for r in data["runs"] if r["task"] == "move"]
    assert len(runs) == 2 and len({r["caption"] for r in runs}) == 2
    assert all(r["script"].startswith("centroid(token") and r["edited"]["colour"] in r["caption"] for r in runs)
    assert data["curves"]["move"]["weights"] == [0.0, 1.0] and len(data["curves"]["move"]["rows"]) == 2
    assert set(data["curves"]) == {"move", "resize", "recolour"}
    md = (tmp_path / "results.md").read_text()
    assert md.startswith("# steer bench: report split") and "## Summary" in md and "## Weight curves" in md
    with Image.open(tmp_path / "contact_sheet.png") as im:
        assert im.width > 256 and im.height > 128
    assert results["tasks"] == json.loads(json.dumps(results["tasks"], default=float))


def test_bench_runs_only_the_tasks_asked_and_names_the_known_ones(tmp_path, shapes_path, capsys):
    from dsl.cli import main

    assert main(["bench", "--model", shapes_path, "--quick", "--seeds", "1", "--out", str(tmp_path), "--task", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'nope'" in err and "move" in err and "Traceback" not in err


@pytest.mark.slow  # every task, the curves and the cost classes (16 model loads in fresh processes)
def test_quick_bench_writes_well_formed_results(tmp_path, shapes_path):
    from sampler.bench import run_bench

    results = run_bench(shapes_path, quick=True, out=tmp_path, steps=4, progress=False)
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data["tasks"]) == {t.name for t in TASKS}
    for name in ("attention", "attention + appearance", "drag (copy, then bottleneck)", "drag (bottleneck optimisation)"):
        c = data["cost"][name]
        assert c["time_ratio"] > 0 and c["plain_seconds_per_image"] > 0 and c["model_mb"] > 0
    for kind in ("generated", "world"):
        assert data["inversion"][kind]["n"] == 2 and data["inversion"][kind]["mean_psnr"] > 10
    md = (tmp_path / "results.md").read_text()
    assert "REPL re-run" in md and "| world | 2 |" in md
    assert results["meta"] == data["meta"]


def test_one_cost_class_is_measured_in_fresh_processes(shapes_editor, shapes_path):
    """The cost of one class: ratios from this process, the CPU peaks from two fresh ones."""
    from sampler.bench.cost import measure_cost

    cost = measure_cost(shapes_editor, 2, [0], "cpu", shapes_path, names=["attention"])
    assert set(cost) == {"attention", "repl_rerun"}
    c = cost["attention"]
    # the ratios are the ratios of the measured times (no timing is asserted, only the arithmetic)
    assert c["time_ratio"] == pytest.approx(c["guided_seconds_per_image"] / c["plain_seconds_per_image"])
    assert c["time_ratio_with_source"] > c["time_ratio"], "the source pass adds to the first run"
    assert c["model_mb"] > 1 and c["total_memory_ratio"] > 0.99, "a guided edit does not need less memory than plain"
    r = cost["repl_rerun"]
    assert r["time_ratio"] == pytest.approx(r["rerun_seconds"] / r["first_seconds"])


# ----------------------------------------------------------------------------------------------
# DiffusionCLIP's fine-tuned directions and the return step (issue 20)

FT_TASKS = ["fine-tuned recolour", "fine-tuned colour + shape", "fine-tuned transition", "unseen-domain translation"]


def test_the_fine_tuned_tasks_pose_their_directions_on_red_objects_beside_no_green_one():
    from sampler.bench.tasks import synthetic_source

    for name in FT_TASKS[:3]:
        cases = cases_of(BY_NAME[name], "report", 24)
        assert all(c.item.subject.colour == "red" and c.item.other.colour != "green" for c in cases)
        assert {c.item.position for c in cases} == {"first", "second"}
    assert {c.item.subject.shape for c in cases_of(BY_NAME["fine-tuned recolour"], "report", 24)} == set(W.SHAPES)
    assert all(c.item.subject.shape == "circle" for c in cases_of(BY_NAME["fine-tuned colour + shape"], "report", 8))
    it = Item((Obj("blue", "square"), Obj("red", "circle")), 1)
    src = synthetic_source(it)
    rng = np.random.default_rng(0)
    assert BY_NAME["fine-tuned recolour"].pose(it, src, rng).script == "direction red_to_green_ft"
    assert BY_NAME["fine-tuned colour + shape"].pose(it, src, rng).script == "direction circle_to_square_ft * 1.5\ndirection red_to_green_beside_ft"
    alone = BY_NAME["fine-tuned colour + shape, shape learned alone"]
    assert alone.pose(it, src, rng).script == "direction red_to_green_ft\ndirection circle_to_square_ft * 1.5" and alone.bars == {}
    assert BY_NAME["fine-tuned transition"].sweep == (0.0, 0.25, 0.5, 0.75, 1.0)
    posed = BY_NAME["unseen-domain translation"].pose(it, src, rng)
    (name, how), = posed.degraded
    assert posed.script == f'source "{name}"\ninvert noise\nreturn 0.5' and posed.asked == {"degraded": how}
    hows = {BY_NAME["unseen-domain translation"].pose(it, src, np.random.default_rng(k)).asked["degraded"] for k in range(20)}
    assert hows == {"noise", "blur"}


def test_the_fine_tuned_recolour_and_the_combination_on_hand_made_detections():
    src = _scene()
    green = [_obj("circle", "green", 4, 12), src[1]]
    ok, f = _judge("fine-tuned recolour", src, green)
    assert ok and f["took_colour"] and f["stayed_0_05"] and f["other_kept"]
    assert not _judge("fine-tuned recolour", src, src)[0]
    # The square redrawn elsewhere: the other object is not kept (IoU < 0.85).
    assert not _judge("fine-tuned recolour", src, [green[0], _obj("square", "blue", 20, 16)])[0]
    ok, f = _judge("fine-tuned colour + shape", src, [_obj("square", "green", 4, 12), src[1]])
    assert ok and f["took_colour"] and f["took_shape"]
    ok, f = _judge("fine-tuned colour + shape", src, green)  # the colour alone is not both edits
    assert not ok and f["took_colour"] and not f["took_shape"]
    split = BY_NAME["fine-tuned colour + shape, split in time"]  # the time-split variant: judged alike, no bar
    assert split.bars == {} and split.criteria == BY_NAME["fine-tuned colour + shape"].criteria
    assert split.pose(RC, src, None).script == "direction red_to_green_ft @ 0.3..1\ndirection circle_to_square_ft * 2 @ 0.6..1"


def test_a_transition_is_monotone_when_the_hue_distance_falls_within_2_degrees():
    assert K.falls([120, 115, 102, 59, 22])
    assert K.falls([120, 121.5, 100, 100, 30])  # a rise of 1.5 degrees is noise
    assert not K.falls([120, 125, 100, 60, 20])  # a rise of 5 is not
    assert not K.falls([120, 120, 120, 120, 120])  # flat: it never fell
    assert not K.falls([22, 59, 102, 115, 120])

    def tinted(hue_deg):  # the red circle's place painted one hue, full saturation
        import colorsys

        im = W.render(src)
        im[src[0].mask] = colorsys.hsv_to_rgb(hue_deg / 360, 1, 1)
        return im

    src = _scene()
    assert K.hue_distance(tinted(0), src[0].mask, "green") == pytest.approx(120)
    assert K.hue_distance(tinted(90), src[0].mask, "green") == pytest.approx(30)
    green = [_obj("circle", "green", 4, 12), src[1]]
    gammas = BY_NAME["fine-tuned transition"].sweep
    ok, f = _judge("fine-tuned transition", src, green, images=[tinted(h) for h in (0, 10, 40, 80, 120)])
    assert ok and f["hue_g0"] == pytest.approx(120) and f["hue_g1"] == pytest.approx(0) and f["took_colour"]
    assert set(f) >= {f"hue_g{g:g}" for g in gammas}
    ok, f = _judge("fine-tuned transition", src, green, images=[tinted(h) for h in (0, 60, 30, 80, 120)])
    assert not ok and not f["monotone"]


def test_a_degraded_world_source_is_written_and_judged_not_clean(tmp_path):
    from sampler.bench.scene import degrade, world_scene, write_degraded

    it = Item((Obj("yellow", "triangle"), Obj("red", "circle")), 1)
    scene = world_scene(it, 7, 32)
    assert [(o.colour, o.shape) for o in scene.objects] == [("yellow", "triangle"), ("red", "circle")]
    assert np.array_equal(world_scene(it, 7, 32).image, scene.image) and not np.array_equal(world_scene(it, 8, 32).image, scene.image)
    assert world_scene(it, 7, 64).image.shape == (64, 64, 3)
    found = W.detect(scene.image)
    ok, f = _judge("unseen-domain translation", scene.objects, found, it, images=[scene.image], degraded="noise")
    assert ok and f["same_objects"] and f["clean"] and f["halftones"] == 0
    for how in ("noise", "blur"):
        written = write_degraded(tmp_path / f"{how}.png", scene.image, how, 7)
        with Image.open(tmp_path / f"{how}.png") as im:
            back = np.asarray(im.convert("RGB"), np.float32) / 255
        assert back.shape == (32, 32, 3) and np.abs(back - degrade(scene.image, how, 7)).max() <= 1 / 255
        assert np.array_equal(written, back)
        ok, f = _judge("unseen-domain translation", scene.objects, W.detect(back), it, images=[back], degraded=how)
        assert not ok and not f["clean"], how  # the degraded input itself has not come back
    assert np.array_equal(degrade(scene.image, "noise", 7), degrade(scene.image, "noise", 7))
    # An object lost is not the same objects, however clean.
    ok, f = _judge("unseen-domain translation", scene.objects, found[:1], it, images=[W.render(found[:1])], degraded="blur")
    assert not ok and f["clean"] and not f["same_objects"]


def _renamed(pose):
    """A task's pose with its fine-tuned directions renamed to ones no folder has."""

    def posed(*a, **k):
        p = pose(*a, **k)
        return dataclasses.replace(p, script=p.script.replace("_ft", "_ft_missing")) if isinstance(p, Posed) else p

    return posed


def _tiny_fine_tunes(folder, shapes_path, work):
    """Both fine-tuned directions the tasks name, learned at the smallest settings (seconds)."""
    from sampler.learn import main as learn

    for name, to in (("red_to_green_ft", "a green circle"), ("circle_to_square_ft", "a red square")):
        assert learn(["clip", name, "--from", "a red circle", "--to", to, "--n-images", "1", "--iters", "1", "--s-for", "1",
                      "--s-gen", "1", "--views", "0", "--rank", "1", "--model", shapes_path, "--out", str(folder),
                      "--work", str(work / name), "--device", "cpu"]) == 0
    return folder


def test_the_fine_tuned_tasks_run_with_a_directions_folder_and_are_not_run_without(tmp_path, shapes_editor, shapes_path,
                                                                                   monkeypatch):
    from sampler.bench.run import run_bench

    monkeypatch.setenv("STEER_DIRECTIONS", str(tmp_path / "no-user-directions"))
    folder = _tiny_fine_tunes(tmp_path / "ft", shapes_path, tmp_path / "work")
    tasks = [BY_NAME[n] for n in FT_TASKS]
    data = run_bench(shapes_path, per_task=1, out=tmp_path / "with", steps=4, progress=False, task_list=tasks, cost=False,
                     curves=False, editor=shapes_editor, split="tune", directions=folder)
    assert sorted(data["meta"]["directions"]) == ["circle_to_square_ft", "red_to_green_ft"]
    assert sorted(p.name for p in (tmp_path / "with" / "directions").iterdir()) == ["circle_to_square_ft.safetensors",
                                                                                  "red_to_green_ft.safetensors"]
    for name in FT_TASKS:
        row = data["tasks"][name]
        assert row["status"] == "run" and row["n"] == 1, (name, row["status"])
    runs = {r["task"]: r for r in data["runs"]}
    sweep = runs["fine-tuned transition"]
    assert all(sweep[f"hue_g{g:g}"] is not None for g in (0, 0.25, 0.5, 0.75, 1)) and isinstance(sweep["monotone"], bool)
    assert sweep["script"].startswith("direction red_to_green_ft * gamma")
    unseen = runs["unseen-domain translation"]
    assert unseen["source_right"] and unseen["degraded"] in ("noise", "blur") and 0 <= unseen["halftones"] <= 1
    written = unseen["script"].split('"')[1]
    assert (tmp_path / "with" / written).is_file() and written.endswith(f"_{unseen['degraded']}.png")
    md = (tmp_path / "with" / "results.md").read_text()
    assert "fine-tuned colour + shape" in md and "## Per-case sweeps" in md
    assert "| weight | 0 | 0.25 | 0.5 | 0.75 | 1 |" in md and f"| hue distance | {sweep['hue_g0']:.0f} |" in md
    # Without a folder naming them, a direction the model does not have leaves its rows not run (found
    # before sampling), while the return step's runs. (The shipped model now ships both fine-tuned
    # directions, so the rows are renamed to ones it lacks.)
    missing = [dataclasses.replace(t, name=t.name + " (missing)", script=t.script.replace("_ft", "_ft_missing"),
                                   pose=_renamed(t.pose)) for t in tasks if t.name in FT_TASKS[:3]]
    data = run_bench(shapes_path, per_task=1, out=tmp_path / "without", steps=4, progress=False,
                     task_list=missing + [t for t in tasks if t.name == "unseen-domain translation"], cost=False,
                     curves=False, editor=shapes_editor, split="tune")
    for t in missing:  # the first direction its script names is the one reported
        first = t.script.split()[1]
        assert first.endswith("_ft_missing")
        assert data["tasks"][t.name]["status"].startswith(f"not run: unknown direction '{first}'"), data["tasks"][t.name]
    assert data["tasks"]["unseen-domain translation"]["status"] == "run"
    assert [r["task"] for r in data["runs"]] == ["unseen-domain translation"]


def test_bench_refuses_a_directions_folder_without_direction_files(tmp_path, shapes_path, capsys):
    from dsl.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["bench", "--model", shapes_path, "--quick", "--out", str(tmp_path / "o"), "--task", "fine-tuned recolour",
                 "--directions", str(tmp_path / "empty")]) == 2
    assert "no direction files" in capsys.readouterr().err


def test_two_runs_side_by_side_and_runs_that_do_not_compare_refused(tmp_path, capsys):
    from sampler.bench import compare

    a = json.loads(json.dumps(_synthetic_results(), default=float))
    b = json.loads(json.dumps(a))
    b["meta"]["model"] = "shapes-flow"
    b["tasks"]["move"]["success"].update({"all": 0.5, "k_all": 5})
    for name, r in (("a", a), ("b", b)):
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
    out = tmp_path / "side.md"
    assert compare.main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--names", "UNet", "flow", "--out", str(out)]) == 0
    text = out.read_text()
    move = next(line for line in text.splitlines() if line.startswith("| move |"))
    assert "| 80% (8/10); right sources 89% (8/9) | 50% (5/10);" in move and "within 0.1 80%" in move
    assert "| remove | not run: unknown statement 'remove' |" in text
    b["meta"]["split"] = "tune"
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert compare.main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 2
    assert "differ in split" in capsys.readouterr().err

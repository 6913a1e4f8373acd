"""Re-shipping directions for a new shapes model: the recipes re-pointed, the promises scored."""

from pathlib import Path

from sampler.shapes import reship
from sampler.shapes import world as W

SHIPPED = Path(reship.__file__).parent / "weights"


def test_every_shipped_direction_records_a_recipe_that_reship_can_re_point():
    metas = reship.shipped(SHIPPED)
    assert {"circle_to_square", "green", "smaller", "red_to_green", "circle_to_square_p2p"} <= set(metas)
    for name, meta in metas.items():
        command = reship.relearn_command(meta["recipe"], Path("new-model"), Path("work") / name)
        assert command[-4:] == ["--model", "new-model", "--out", str(Path("work") / name)]
        assert command.count("--out") == 1 and command.count("--model") == 1
        assert command[0] in ("hspace", "noiseclr", "prompt", "clip")
    assert all(metas[n].get("method") == "noiseclr" for n in reship.PROMISES)  # the names chosen by measurement


def test_the_promises_rank_what_a_direction_did():
    scenes = (W.make_scene(seed, 32, n_objects=2) for seed in range(100))
    src = W.detect(next(s for s in scenes if all(o.colour != "green" for o in s.objects)).image)
    assert len(src) == 2
    turned = [W.WorldObject(o.shape, "green", o.mask, o.centroid, o.area) for o in src]
    shrunk = [W.WorldObject(o.shape, o.colour, o.mask, o.centroid, o.area / 2) for o in src]
    assert reship.PROMISES["green"](src, turned) == 1.0 and reship.PROMISES["green"](src, src) == 0.0
    assert reship.PROMISES["smaller"](src, shrunk) > reship.PROMISES["smaller"](src, src)
    assert reship.PROMISES["smaller"](src, []) <= reship.PROMISES["smaller"](src, src), "erasing is not shrinking"


def test_the_new_fine_tuned_directions_are_learned_for_a_new_model_from_their_recipes(tmp_path):
    from sampler.learn.cli import build_parser

    (tmp_path / "directions").mkdir()
    metas = reship.to_learn(tmp_path)  # a model that ships nothing yet
    assert set(metas) == set(reship.NEW) == {"red_to_green_ft", "circle_to_square_ft", "red_to_green_beside_ft"}
    assert reship.beside_last(metas)[-1] == "red_to_green_beside_ft"
    for name, meta in metas.items():
        command = reship.relearn_command(meta["recipe"], Path("new-model"), Path("work") / name)
        args = build_parser().parse_args(command)
        assert args.method == "clip" and args.name == name and args.model == "new-model"
    c2s = build_parser().parse_args(reship.relearn_command(metas["circle_to_square_ft"]["recipe"], Path("m"), Path("o")))
    assert (c2s.src, c2s.dst, c2s.t0) == (["a red circle"], ["a red square"], 0.8)  # --from and --to take one or more sentences
    # A shipped file's own recipe wins over NEW's, and --only picks among both.
    assert set(reship.to_learn(SHIPPED)) == set(reship.shipped(SHIPPED)) | set(reship.NEW)
    assert set(reship.to_learn(SHIPPED, ["red_to_green_ft", "green"])) == {"red_to_green_ft", "green"}


def test_a_direction_learned_beside_another_is_learned_after_it_and_pointed_at_the_new_file():
    metas = {"b_shape": {"recipe": "steer learn clip b_shape --from x --to y --beside shapes/directions/a_colour.safetensors"},
             "a_colour": {"recipe": "steer learn clip a_colour --from x --to y"}, "c": {"recipe": "steer learn clip c --from x --to y"}}
    assert reship.beside_last(metas)[-1] == "b_shape"
    command = reship.relearn_command(metas["b_shape"]["recipe"], Path("m"), Path("o"), {"a_colour": Path("work/a_colour/a_colour.safetensors")})
    assert command[command.index("--beside") + 1] == str(Path("work/a_colour/a_colour.safetensors"))
    kept = reship.relearn_command(metas["b_shape"]["recipe"], Path("m"), Path("o"), {})
    assert kept[kept.index("--beside") + 1] == "shapes/directions/a_colour.safetensors"


def test_choose_runs_each_candidate_where_scripts_find_it(shapes_editor, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(reship, "PROMPTS", ["a red circle"])
    monkeypatch.setattr(reship, "SEEDS", (0,))
    folder = tmp_path / "noiseclr" / "directions"  # as main writes NoiseCLR's candidates
    folder.mkdir(parents=True)
    candidate = folder / "noiseclr_07.safetensors"  # a name no other folder on the search path has
    shutil.copyfile(SHIPPED / "directions" / "green.safetensors", candidate)
    best, scores = reship.choose(shapes_editor, [candidate], "green")
    assert best == candidate and set(scores) == {"noiseclr_07"} and 0 <= scores["noiseclr_07"] <= 1

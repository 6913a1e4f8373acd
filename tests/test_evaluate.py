"""The model card's evaluation: caption grids cover the world, fidelity counts per shape and colour."""

import numpy as np

from sampler.shapes import evaluate as E
from sampler.shapes import world as W


def test_caption_grids_cover_every_coloured_shape_and_both_orders():
    ones, twos = E.one_object_captions(), E.two_object_captions()
    assert len(ones) == 12 and len(twos) == 108 and len(set(twos)) == 108
    assert "a red circle and a blue square" in twos and "a blue square and a red circle" in twos
    named = {(c, s) for cap in twos for c, s in W.parse_caption(cap)}
    assert named == {(c, s) for c in W.COLOURS for s in W.SHAPES}
    caps, seeds = E.caption_grid(twos, 3, "report")
    assert len(caps) == 324 and len(set(seeds)) == 324 and min(seeds) >= E.SPLITS["report"]
    _, tune = E.caption_grid(twos, 3, "tune")
    assert not set(tune) & set(seeds), "the tuning and report splits share no seed"


def test_fidelity_counts_each_object_by_shape_and_colour():
    scenes = [W.make_scene(100 + i, 64, n_objects=2) for i in range(6)]
    images = np.stack([s.image for s in scenes])
    right = E.fidelity(images, [s.caption for s in scenes])
    assert right["all_right"] == 1.0 and right["colours_right"] == 1.0
    per = right["per_object"]
    assert sum(per[s]["n"] for s in W.SHAPES) == 12 and sum(per[c]["n"] for c in W.COLOURS) == 12
    assert all(v["right"] == 1.0 for v in per.values())
    # the same images under captions whose first object is another shape of the same colour
    def other_shape(cap):
        (c1, s1), (c2, s2) = W.parse_caption(cap)
        s1 = W.SHAPES[(W.SHAPES.index(s1) + 1) % 3]
        return f"a {c1} {s1} and a {c2} {s2}"

    wrong = E.fidelity(images, [other_shape(s.caption) for s in scenes])
    assert wrong["all_right"] == 0.0 and wrong["colours_right"] == 1.0
    shapes = [wrong["per_object"][k] for k in W.SHAPES if k in wrong["per_object"]]
    assert sum(v["right"] * v["n"] for v in shapes) / sum(v["n"] for v in shapes) == 0.5, "the first object of each is missed"
    assert right["failures"] == []
    listed = E.fidelity(images, [other_shape(s.caption) for s in scenes], seeds=list(range(6)))["failures"]
    assert [f["seed"] for f in listed] == list(range(6))
    assert listed[0]["found"] == sorted(o.phrase for o in W.detect(images[0])) or set(listed[0]["found"]) == {o.phrase for o in scenes[0].objects}


def test_the_detector_reads_world_images_at_64_pixels():
    for i in range(20):
        s = W.make_scene(300 + i, 64)
        assert W.matches_caption(W.detect(s.image), s.caption) == (True, True)


def test_the_card_lists_stages_notes_and_what_was_tried(monkeypatch):
    """The model card reads the training record: per-stage batch and machine, notes, and the
    ablation rows (what was tried, what it measured, what it bought)."""
    from types import SimpleNamespace

    from sampler.shapes.card import model_card

    record = {"commands": ["python -m sampler.shapes.train unet"], "seed": 0, "unet_steps": 10, "unet_minutes": 1.0, "unet_batch": 64,
              "unet_machine": "CPU", "notes": ["a note"],
              "ablation": [{"change": "Min-SNR 5", "measured": "loss curve", "bought": "faster convergence"}]}
    b = SimpleNamespace(model=SimpleNamespace(card={"training": record}))
    import sampler.shapes.card as C

    monkeypatch.setattr(C, "describe", lambda b: "DESCRIPTION")
    text = model_card({"seconds": 1, "steps": 25, "split": "report", "fidelity": {}}, b, "cmd")
    assert "UNet + text encoder: 10 steps at batch 64 in 1.0 min (CPU)" in text and "- a note" in text
    assert "| Min-SNR 5 | loss curve | faster convergence |" in text
    # a card written before its inversion was measured says so, rather than leaving the section out
    assert "Not measured on this model yet" in text and "--only inversion" in text
    row = {"n": 2, "steps": 25, "mean_psnr": 40.0, "min_psnr": 35.0, "share_at_least_30db": 1.0, "share_under_25db": 0.0}
    inversion = {"generated": row, "world": row}
    with_inversion = model_card({"seconds": 1, "steps": 25, "split": "report", "fidelity": {}, "inversion": inversion}, b, "cmd")
    assert "Not measured on this model yet" not in with_inversion and "| generated samples (n=2) | 25 | 40.0 dB" in with_inversion


def test_only_localisation_measures_the_maps_and_samples_nothing(tmp_path, shapes_path, capsys):
    import json

    from sampler.shapes import evaluate

    evaluate.main(["--model", str(shapes_path), "--only", "localisation", "--out", str(tmp_path / "loc.json")])
    report = json.loads((tmp_path / "loc.json").read_text())
    assert report["fidelity"] == {} and "inversion" not in report
    rows = report["localisation"]
    for key in ("shape word, first object", "colour word, second object", "shape word, triangle"):
        assert set(rows[key]) == {"100", "300", "500", "700", "900"}
        assert all(0 <= r["own_object"] <= 1 and r["n"] > 0 for r in rows[key].values())


def test_only_inversion_measures_it_again_into_the_existing_card(tmp_path, shapes_path, monkeypatch):
    import json

    from sampler.shapes import evaluate

    monkeypatch.setattr(evaluate, "INVERSION_IMAGES", 3)
    out = tmp_path / "card.json"
    out.write_text(json.dumps({"model": "shapes", "split": "report", "steps": 4, "seconds": 9, "fidelity": {},
                               "command": "python -m sampler.shapes.evaluate --split report"}))
    evaluate.main(["--model", str(shapes_path), "--only", "inversion", "--steps", "4", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["command"] == "python -m sampler.shapes.evaluate --split report", "the card's own command stays"
    inv = report["inversion"]
    assert inv["generated"]["n"] == 3 and inv["world"]["n"] == 1 and "--only inversion" in inv["command"]
    assert 0 < inv["generated"]["from_noise_alone"]["mean_psnr"] <= 100
    assert inv["generated"]["mean_psnr"] > 25, "through source, an edit with nothing to do gives the image back"
    card = out.with_suffix(".md").read_text()
    assert "Measured again with `python -m sampler.shapes.evaluate" in card and "Reproduce with `python -m sampler.shapes.evaluate --split report`" in card

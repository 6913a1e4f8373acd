"""End to end on the shipped shapes model, at few steps: a weaker version of the move figure
(the full one, 16 seeds at the default steps, is `steer bench`; see the README)."""

import math

import numpy as np

import dsl
from sampler.shapes import world as W

TARGET = (0.75, 0.5)


def test_move_with_keep_appearance_moves_the_circle_and_keeps_the_square(shapes_editor):
    guided, unguided, ious = [], [], []
    for seed in range(4):
        r = shapes_editor.run(dsl.compile(
            f'prompt "a red circle and a blue square"\nseed {seed}\nsteps 12\n'
            'centroid(token "circle") -> (0.75, 0.5)\nkeep appearance'), progress=False)
        src, out = W.detect(r.source_image), W.detect(r.image)
        s, o = W.find(src, "red"), W.find(out, "red")
        assert s is not None and o is not None, f"seed {seed}: no red object"
        unguided.append(math.dist(s.centroid, TARGET))
        guided.append(math.dist(o.centroid, TARGET))
        sq_s, sq_o = W.find(src, "blue"), W.find(out, "blue")
        ious.append(W.mask_iou(sq_s.mask, sq_o.mask) if sq_s is not None and sq_o is not None else 0.0)
    assert np.mean(guided) < np.mean(unguided) - 0.1, (guided, unguided)
    assert sum(g <= 0.15 for g in guided) >= 2, guided
    assert np.mean(ious) >= 0.5, ious


def test_every_example_script_compiles_against_the_shipped_model(shapes_path):
    from pathlib import Path

    from dsl.cli import main

    scripts = sorted(str(p) for p in (Path(__file__).parent.parent / "examples").glob("*.edit"))
    assert len(scripts) >= 5
    assert main(["check", *scripts, "--model", shapes_path]) == 0

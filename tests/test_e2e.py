"""End to end on the shipped shapes model, at few steps: a weaker version of the move figure
(the full one, 16 seeds at the default steps, is `steer bench`; see the README)."""

import numpy as np

import dsl

def test_move_guidance_lowers_its_energy_against_the_unguided_trajectory(shapes_editor):
    """On the shipped model, the move term pushes its own energy below the unguided trajectory's
    (measured at the same steps with a vanishing weight), and a negative weight pushes it above.
    Whether the object then lands within 0.1 of the target is `steer bench`'s question."""
    def curve(seed, weight):
        r = shapes_editor.run(dsl.compile(
            f'prompt "a red circle and a blue square"\nseed {seed}\nsteps 12\n'
            f'centroid(token "circle") -> (0.75, 0.5) * {weight}'), progress=False)
        (c,) = r.energies.values()
        return np.array([e for _, e in c]) / float(weight)

    for seed in range(2):
        unguided, guided, against = curve(seed, 1e-6), curve(seed, 1), curve(seed, -1)
        assert guided[1:].mean() < unguided[1:].mean() < against[1:].mean(), (guided, unguided, against)


def test_every_example_script_compiles_against_the_shipped_model(shapes_path):
    from pathlib import Path

    from dsl.cli import main

    scripts = sorted(str(p) for p in (Path(__file__).parent.parent / "examples").glob("*.edit"))
    assert len(scripts) >= 5
    assert main(["check", *scripts, "--model", shapes_path]) == 0

"""What the shipped directions do to "a red circle and a blue square", over 16 seeds (docs/language.md).

    python docs/measure_directions.py [--seeds 16]

For each seed whose source drew a red circle, the world's detector reads the edit: did the red
object become what the direction promises (green for the colour directions, a square for the
shape ones), and did it stay within 0.05 of where it stood.
"""

import argparse
import math

import dsl
from sampler.editor import Editor
from sampler.shapes import world as W

# name -> (the statements, what the red circle should become: (colour, shape))
CASES = {
    "red_to_green + keep attention": ("direction red_to_green\nkeep attention", ("green", "circle")),
    "circle_to_square_p2p + keep attention": ("direction circle_to_square_p2p\nkeep attention", ("red", "square")),
    "circle_to_square (h-space)": ("direction circle_to_square", ("red", "square")),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=16)
    args = p.parse_args()
    editor = Editor("shapes")
    for name, (statements, (colour, shape)) in CASES.items():
        became = stayed = n = 0
        for seed in range(args.seeds):
            r = editor.run(dsl.compile(f'prompt "a red circle and a blue square"\nseed {seed}\n{statements}'), progress=False)
            was = W.find(W.detect(r.source_image), "red", "circle")
            if was is None:
                continue  # the source has no red circle: nothing to edit
            n += 1
            out = W.detect(r.image)
            now = min(out, key=lambda o: math.dist(o.centroid, was.centroid), default=None)
            ok = now is not None and (now.colour, now.shape) == (colour, shape)
            became += ok
            stayed += ok and math.dist(now.centroid, was.centroid) < 0.05
        print(f"{name}: {colour} {shape} on {became} of {n} sources with a red circle, within 0.05 of its place on {stayed}", flush=True)


if __name__ == "__main__":
    main()

"""Two of the prompt's objects whose source maps fall on one place: the statements about them are
warned (the source likely lacks one), on hand-made masks and on the shipped model's own sources."""

from types import SimpleNamespace

import torch

import dsl
from sampler.one_place import objects_in_one_place, overlap

PROMPT = "a red circle and a blue square"


def _mask(x0, y0, x1, y1):
    m = torch.zeros(16, 16)
    m[y0:y1, x0:x1] = 1
    return m


class _Source:
    """object_mask(head positions) -> the mask given for that head (circle at 3, square at 7)."""

    def __init__(self, circle, square):
        self.masks = {3: circle, 7: square}

    def object_mask(self, token, hw):
        return self.masks[token[0]]


def _warnings(shapes_editor, script, circle, square, kind="shapes"):
    backbone = SimpleNamespace(kind=kind, tokenizer=shapes_editor.backbone.tokenizer, latent_shape=lambda: (4, 16, 16))
    bound = shapes_editor.bind(dsl.compile(f'prompt "{PROMPT}"\n{script}'))
    return objects_in_one_place(backbone, bound, _Source(circle, square), PROMPT)


def test_overlap_is_the_share_of_the_smaller_mask():
    assert overlap(_mask(0, 0, 4, 4), _mask(2, 0, 6, 4)) == 0.5
    assert overlap(_mask(0, 0, 8, 8), _mask(0, 0, 2, 2)) == 1.0  # the small one lies inside the big one
    assert overlap(_mask(0, 0, 4, 4), torch.zeros(16, 16)) == 0.0


def test_statements_about_objects_drawn_in_one_place_are_warned_once_each(shapes_editor):
    apart = (_mask(1, 1, 5, 5), _mask(10, 10, 14, 14))
    one_place = (_mask(1, 1, 5, 5), _mask(2, 1, 6, 5))  # 75% of the smaller
    script = 'centroid(token "square") -> (0.7, 0.3)\nappearance(token "circle") -> "green"\nkeep layout'
    assert _warnings(shapes_editor, script, *apart) == []
    found = _warnings(shapes_editor, script, *one_place)
    assert [(w.span.line, w.span.col) for w in found] == [(2, 1), (3, 1)]  # the move, the recolour (not its hold)
    assert "'blue square' and 'red circle' fall on one place (75% of the smaller)" in found[0].message
    assert "'red circle' and 'blue square'" in found[1].message
    # A statement acting on no object, and a model family where it was never measured: no warning.
    assert _warnings(shapes_editor, "keep layout", *one_place) == []
    assert _warnings(shapes_editor, script, *one_place, kind="sd") == []


def test_the_shipped_model_warns_where_its_source_lacks_an_object(shapes_editor):
    """Seed 27 of "a yellow circle and a green circle" draws the yellow circle alone (the world's
    detector finds one object); seed 0 of the red circle and blue square draws both."""
    lacking = shapes_editor.run(dsl.compile('prompt "a yellow circle and a green circle"\nseed 27\nsteps 25\n'
                                            'centroid(token "circle"#2) -> (0.35, 0.26)\nkeep layout'), progress=False)
    assert [w.span.line for w in lacking.warnings if "fall on one place" in w.message] == [4]
    both = shapes_editor.run(dsl.compile(f'prompt "{PROMPT}"\nseed 0\nsteps 25\ncentroid(token "square") -> (0.7, 0.3)\nkeep layout'),
                             progress=False)
    assert not [w for w in both.warnings if "fall on one place" in w.message]

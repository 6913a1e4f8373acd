"""Relocation (energies/relocate.py): the latent copy that moves an object before its energy holds it."""

import pytest
import torch

from energies import attention as A
from energies import relocate as R
from energies.program import Move, Resize, Shift, TokenRef


def square_mask(x0, y0, x1, y1, n=16):
    m = torch.zeros(n, n)
    m[y0:y1, x0:x1] = 1
    return m


def test_transform_carries_values_without_blending():
    x = torch.randn(3, 16, 16)
    moved = R.transform(x, shift=(4 / 16, -2 / 16))
    # pixel (y, x) of the result holds the input at (y + 2, x - 4): a pure copy, no interpolation
    assert torch.equal(moved[:, 0:14, 4:16], x[:, 2:16, 0:12])
    assert (moved[:, 14:, :] == 0).all() and (moved[:, :, :4] == 0).all()


def test_transform_scales_about_a_point():
    m = square_mask(6, 6, 10, 10)
    bigger = R.transform(m[None], scale=2.0, about=(0.5, 0.5))[0]
    assert bigger.sum() == pytest.approx(4 * m.sum())
    assert A.centroid(bigger).tolist() == pytest.approx([0.5, 0.5], abs=1e-6)


def test_relocate_moves_the_object_and_fills_the_hole_with_background():
    a_t = torch.tensor(0.64)
    x0 = -torch.ones(3, 16, 16)  # black background
    x0[0, 2:6, 2:6] = 1.0  # a red object at the top left
    eps = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(0))
    z_src = a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps
    mask = square_mask(2, 2, 6, 6)
    z = torch.randn(3, 16, 16)  # the edit's own latent: kept wherever nothing moves
    out = R.relocate(z, z_src, x0, a_t, mask, shift=(8 / 16, 8 / 16))
    assert torch.equal(out[:, 10:14, 10:14], z_src[:, 2:6, 2:6])  # the object arrived
    hole = (out[:, 2:6, 2:6] - (1 - a_t).sqrt() * eps[:, 2:6, 2:6]) / a_t.sqrt()
    assert torch.allclose(hole, -torch.ones_like(hole), atol=1e-5)  # what it left is background
    untouched = torch.ones(16, 16, dtype=torch.bool)
    untouched[2:6, 2:6] = untouched[10:14, 10:14] = False
    assert torch.equal(out[:, untouched], z[:, untouched])


def test_object_mask_thresholds_the_late_maps():
    blob = square_mask(4, 4, 8, 8) * 0.9 + 0.05
    mask = R.object_mask([blob, blob * 2], (32, 32))
    assert mask.shape == (32, 32) and set(mask.unique().tolist()) == {0.0, 1.0}
    assert A.centroid(mask).tolist() == pytest.approx([6 / 16, 6 / 16], abs=0.02)


def test_each_layout_term_asks_its_own_motion():
    from energies.program import MoveTo, Remove, SizeLike
    from energies.terms import BoundTerm
    from sampler.regions import moved_by

    mask = square_mask(2, 2, 6, 6)  # centroid (0.25, 0.25)
    tok, other = TokenRef(word="circle"), TokenRef(word="square")

    def bound(term, **kw):
        return BoundTerm(term=term, label="", weight=1.0, window=(0, 1), placement="eps", **kw)

    assert moved_by(bound(Move(token=tok, to=(0.75, 0.5))), mask) == (pytest.approx((0.5, 0.25)), 1.0)
    assert moved_by(bound(Shift(token=tok, by=(0.1, -0.2))), mask) == ((0.1, -0.2), 1.0)
    assert moved_by(bound(Resize(token=tok, factor=4.0)), mask) == ((0.0, 0.0), 2.0)
    assert moved_by(bound(MoveTo(token=tok, other=other), target=(0.5, 0.75)), mask) == (pytest.approx((0.25, 0.5)), 1.0)
    assert moved_by(bound(SizeLike(token=tok, other=other), factor=0.25), mask) == ((0.0, 0.0), 0.5)
    (dx, dy), k = moved_by(bound(Remove(token=tok)), mask)
    assert k == 1.0 and dx > 1 and dy > 1, "a removed object is carried out of the image"


def test_a_removed_object_leaves_only_background():
    z_src = torch.randn(4, 16, 16)
    x0 = torch.zeros(4, 16, 16)
    x0[:, 4:8, 4:8] = 3.0  # the object, on a background of 0
    mask = square_mask(4, 4, 8, 8)
    a = torch.tensor(0.5)
    out = R.relocate(z_src.clone(), z_src, x0, a, mask, shift=(R.GONE, R.GONE))
    eps = (z_src - a.sqrt() * x0) / (1 - a).sqrt()
    hole = (1 - a).sqrt() * eps  # the background (0) at the source's noise
    assert torch.allclose(out[:, 4:8, 4:8], hole[:, 4:8, 4:8], atol=1e-6)
    assert torch.equal(out[:, 9:, 9:], z_src[:, 9:, 9:]), "nothing else changed"


def test_a_mask_that_reaches_into_a_protected_neighbour_carries_none_of_it():
    """A generous copy mask (a low threshold on a map that leaks into the other object) moves
    only the unprotected part: the neighbour is neither copied to the target nor holed."""
    a_t = torch.tensor(0.5)
    x0 = torch.zeros(4, 16, 16)
    x0[:, 2:6, 2:6] = 1.0  # the moved object
    x0[:, 2:6, 7:10] = -1.0  # its neighbour, which the edit keeps
    z_src = a_t.sqrt() * x0 + (1 - a_t).sqrt() * torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(1))
    mask = square_mask(2, 2, 6, 9)  # reaches two columns into the neighbour
    protect = square_mask(2, 7, 6, 10)
    out = R.relocate(z_src.clone(), z_src, x0, a_t, mask, shift=(0, 8 / 16), protect=protect)
    assert torch.equal(out[:, 10:14, 2:6], z_src[:, 2:6, 2:6])  # the object arrived
    assert torch.equal(out[:, 10:14, 7:9], z_src[:, 10:14, 7:9])  # none of the neighbour came with it
    assert torch.equal(out[:, 2:6, 7:10], z_src[:, 2:6, 7:10])  # and the neighbour is whole


def pooled_codec(f=4):
    """A stand-in autoencoder: a latent cell is the mean of f x f pixels (decode repeats it), so an
    object a few cells wide can only be scaled finely in pixels, as on the shapes model."""
    decode = lambda z: ((z[:3] + 1) / 2).repeat_interleave(f, -1).repeat_interleave(f, -2)  # noqa: E731
    encode = lambda im: torch.nn.functional.avg_pool2d(im[None] * 2 - 1, f)[0]  # noqa: E731
    return decode, encode


def object_pixels(z, f=4):
    """The red object's area in pixels, partly covered cells counted by their coverage."""
    return pooled_codec(f)[0](z)[0].clamp(0, 1).sum().item()


@pytest.mark.parametrize("scale", [0.7, 1.25, 1.5])
def test_a_resize_with_a_codec_scales_the_whole_object_in_pixels(scale):
    """Nearest scaling of a 4-cell object by 1.2 changes nothing; through the codec the object's
    pixel area follows scale^2, and a shrunk object leaves no rim behind (the region scaled is the
    mask and a cell around it, since a map's mask covers an object's core only)."""
    a_t = torch.tensor(1.0 - 1e-6)  # all signal: the pasted x0 is what the test sees
    x0 = -torch.ones(3, 16, 16)
    x0[0, 6:10, 6:10] = 1.0  # a red square, 4 x 4 cells = 16 x 16 pixels
    z_src = x0.clone()
    core = square_mask(7, 7, 9, 9)  # the map's core: half the object's side
    plain = R.relocate(z_src.clone(), z_src, x0, a_t, core, scale=scale)
    through = R.relocate(z_src.clone(), z_src, x0, a_t, core, scale=scale, codec=pooled_codec())
    area = object_pixels(x0)
    assert object_pixels(through) == pytest.approx(area * scale**2, rel=0.2)
    assert abs(object_pixels(plain) - area * scale**2) > abs(object_pixels(through) - area * scale**2)


def test_object_area_counts_the_pixels_that_differ_from_the_surrounding_background():
    image = torch.zeros(3, 64, 64)
    image[1, 20:42, 10:32] = 1.0  # a green square, 22 x 22 pixels
    core = square_mask(3, 5, 7, 10)  # a map's mask over part of it (latent cells of 4 pixels)
    assert R.object_area(image, core) == pytest.approx(22 * 22 / 64**2, rel=0.05)
    assert R.object_area(torch.zeros(3, 64, 64), core) == pytest.approx(core.mean().item())  # nothing stands out


def test_settle_measures_how_far_and_how_much_smaller_the_object_came_out():
    """A restyled object drawn 4 pixels right, 6 down and at 0.56 the area of the source's (in
    another colour): settle says to move it back by (-4, -6) pixels and scale it by 16 / 12,
    measured on the pixels that stand out from the background; a shape transfer (scale_too False)
    is moved only."""
    source, image = torch.zeros(3, 64, 64), torch.zeros(3, 64, 64)
    source[0, 16:32, 16:32] = 1.0  # a red square, 16 x 16, centred at pixel (24, 24)
    image[1, 24:36, 22:34] = 1.0  # a green one, 12 x 12, centred at (28, 30)
    region = square_mask(2, 2, 11, 11)  # latent cells around both
    shift, scale, pixels = R.settle(image, source, region)
    assert shift[0] * 64 == pytest.approx(-4, abs=0.01) and shift[1] * 64 == pytest.approx(-6, abs=0.01)
    assert scale == pytest.approx(16 / 12, rel=0.001)
    assert pixels.sum() == 12 * 12
    assert R.settle(image, source, region, scale_too=False)[1] == 1.0
    assert R.settle(torch.zeros(3, 64, 64), source, region) is None, "the edit shows nothing there: nothing to settle"


def test_moved_in_pixels_puts_the_object_where_settle_asked():
    """The object's pixels moved and scaled about their centre: settled, it has the source's centre
    and area, and its old place is painted with the background around it."""
    source, image = torch.zeros(3, 64, 64), torch.zeros(3, 64, 64)
    source[0, 16:32, 16:32] = 1.0
    image[1, 30:42, 34:46] = 1.0  # 12 x 12, off by (10, 8) pixels of centre
    region = square_mask(2, 2, 12, 12)
    shift, scale, pixels = R.settle(image, source, region)
    moved, touched = R.moved_in_pixels(image, pixels, shift, scale)
    again = R.settle(moved, source, region)
    assert max(abs(again[0][0]), abs(again[0][1])) * 64 < 0.75 and again[1] == pytest.approx(1.0, abs=0.05)
    assert moved[1, 40, 44] == 0, "the old place is background"
    assert touched[40, 44] == 1 and touched[20, 20] == 1 and touched[60, 5] == 0


def test_a_restyled_object_is_copied_from_the_edits_own_latent():
    """A move of an object the script also recolours copies what the edit pass drew there (the new
    colour), noised as the source is; an object only moved is copied from the source."""
    from types import SimpleNamespace

    from sampler.regions import relocating

    hw = (8, 8)
    mask = torch.zeros(hw)
    mask[2:4, 2:4] = 1
    a = torch.tensor(0.5)
    x0_src = torch.zeros(1, 1, *hw)
    x0_src[..., 2:4, 2:4] = 1.0  # the source's object: value 1
    eps = torch.full((1, 1, *hw), 0.3)  # uniform, so that the noise carried along with the copy is the same
    z_src = a.sqrt() * x0_src + (1 - a).sqrt() * eps
    z_edit = z_src + a.sqrt() * 2.0 * (x0_src > 0)  # the edit's object: value 3, same noise
    src = SimpleNamespace(latents=[z_src], x0s=[x0_src])
    alphas = {500: a}
    for own, value in ((False, 1.0), (True, 3.0)):
        plan = {0: [(mask, (0.5, 0.0), 1.0, None, own)]}
        g = relocating(None, plan, src, alphas)(0, 500, z_edit)
        moved = z_edit - g.latent
        x0_moved = (moved - (1 - a).sqrt() * eps) / a.sqrt()
        assert x0_moved[0, 0, 2:4, 6:8] == pytest.approx(torch.full((2, 2), value), abs=1e-5)  # the copy, 4 cells right
        assert x0_moved[0, 0, 2:4, 2:4].abs().max() < 1e-5  # the hole: background


def test_target_pixels_are_the_source_object_where_and_as_large_as_the_copy_puts_it():
    source = torch.zeros(3, 64, 64)
    source[0, 16:32, 16:32] = 1.0  # a red square of 16 x 16 pixels, cells 4..8 of a 16 x 16 latent
    mask = square_mask(4, 4, 8, 8)
    want, look = R.target_pixels(source, mask, shift=(0.25, 0.0), scale=0.5**0.5)
    assert want.sum().item() == pytest.approx(16 * 16 * 0.5, rel=0.15)  # 11.3 pixels a side, whole pixels: 12
    assert A.centroid(want).tolist() == pytest.approx([24 / 64 + 0.25, 24 / 64], abs=0.01)
    assert (look * want).sum() == want.sum(), "where to look covers where it should be"
    assert look[24, 24] == 0, "and not where it was"
    assert R.target_pixels(torch.zeros(3, 64, 64), mask, (0.0, 0.0), 0.7) is None


@pytest.mark.parametrize("regrowth", [1.0, 1.3, 0.8])
def test_a_resize_is_calibrated_on_its_own_first_prediction(regrowth):
    """A model that takes back part of a resize (its prediction from the copy shows the object
    `regrowth` times the area the copy gave it) gets a copy scaled by sqrt(1 / regrowth) more; one
    that draws what it was given gets none (within the tolerance, no second copy)."""
    from sampler.regions import calibrated_scale

    codec = pooled_codec(1)  # a latent cell per pixel: areas measured finely enough to see 1.3
    decode, encode = codec
    a_t = torch.tensor(1.0 - 1e-6)
    x0 = -torch.ones(3, 48, 48)
    x0[0, 12:36, 12:36] = 1.0  # a red square, 24 x 24 pixels
    mask = square_mask(12, 12, 36, 36, n=48)
    copy = R.relocate(x0.clone(), x0, x0, a_t, mask, scale=0.5**0.5, codec=codec)
    centre = tuple(A.centroid(mask).tolist())

    def denoise(z):  # the prediction: the copy's object regrown about its centre
        grown = encode(R.transform(decode(z), scale=regrowth**0.5, about=centre, mode="bilinear").clamp(0, 1))
        return (z - a_t.sqrt() * grown) / (1 - a_t).sqrt()

    k = calibrated_scale(copy, x0, mask, (0.0, 0.0), 0.5**0.5, torch.zeros(48, 48), a_t, codec, denoise)
    assert k == pytest.approx(regrowth**-0.5, rel=0.06) if regrowth != 1.0 else k == 1.0


def test_a_relocation_happens_at_the_first_step_inside_the_layout_window():
    """Step i is at progress i / steps; a move's window starts at RELOCATE_AT, so its relocation must
    be at a step at or past it, whatever the step count (nearest-step rounding put it at progress
    0.25 for 4, 8, 24 steps, before the window, and the move was never relocated)."""
    from energies import defaults as D
    from sampler.regions import first_step_from

    for steps in range(2, 101):
        at = first_step_from(D.RELOCATE_AT, steps)
        assert at / steps >= D.RELOCATE_AT - 1e-12 and (at == 0 or (at - 1) / steps < D.RELOCATE_AT)
        assert D.LAYOUT_WINDOW[0] <= at / steps < D.LAYOUT_WINDOW[1] or steps < 4
    assert first_step_from(0.3, 25) == 8 and first_step_from(0.3, 10) == 3 and first_step_from(0.3, 4) == 2


@pytest.mark.parametrize("steps", [8, 24])
def test_a_move_lands_at_step_counts_where_rounding_skipped_it(shapes_editor, steps):
    import dsl
    from sampler.shapes import world as W

    r = shapes_editor.run(dsl.compile(f'prompt "a red circle and a blue square"\nsteps {steps}\n'
                                      'centroid(token "circle") -> (0.75, 0.5)\nkeep appearance\n'), progress=False)
    before = [o for o in W.detect(r.source_image) if o.colour == "red"]
    after = [o for o in W.detect(r.image) if o.colour == "red"]
    assert len(before) == 1 and len(after) == 1
    far = lambda o: abs(o.centroid[0] - 0.75) + abs(o.centroid[1] - 0.5)
    assert far(after[0]) < 0.1 < far(before[0])


def test_whole_cells_tells_grid_shifts_from_shifts_between_cells():
    assert R.whole_cells((4 / 16, -2 / 16), (16, 16))
    assert not R.whole_cells((0.3, 0.0), (16, 16))  # 4.8 cells
    assert R.whole_cells((R.GONE, R.GONE), (16, 16))  # carried out of the image: nothing lands


def test_object_centre_is_measured_to_a_pixel_where_the_mask_gives_a_cell():
    """A disk centred between latent cells: its map's mask centroid sits on the cell grid, its
    pixels' centroid on the disk's centre; another object in a protected cell is not counted."""
    image = torch.zeros(3, 64, 64)
    yy, xx = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    disk = ((xx - 23.0) ** 2 + (yy - 30.0) ** 2) < 7**2
    image[0][disk] = 1.0  # a red disk centred at (23, 30) pixels = (0.359, 0.469)
    image[2, 30:40, 36:44] = 1.0  # a blue object in the cells beside it
    mask = square_mask(5, 7, 6, 9)  # the map's core: two cells of the disk
    protect = square_mask(9, 7, 11, 10)
    want = torch.tensor([23.0 / 64, 30.0 / 64])
    got = R.object_centre(image, mask, protect)
    assert (got - want).abs().max() < 0.01
    assert (A.centroid(mask) - want).abs().max() > 0.02  # what the cells alone would say
    assert R.object_centre(torch.zeros(3, 64, 64), mask).tolist() == pytest.approx(A.centroid(mask).tolist())


def test_a_shift_between_cells_is_made_in_pixels_with_a_codec():
    """A shift of 2.5 cells: a copy of latent cells lands a half cell off (nearest cells), the
    codec's copy lands on the target to a pixel."""
    a_t = torch.tensor(1.0 - 1e-6)
    x0 = -torch.ones(3, 16, 16)
    x0[0, 6:10, 3:7] = 1.0  # a red square, centre (5, 8) cells
    mask = square_mask(3, 6, 7, 10)
    shift = (2.5 / 16, 0.0)
    want = (5 + 2.5) / 16
    decode = pooled_codec()[0]

    def centre_x(z):
        red = decode(z)[0].clamp(0, 1)
        return A.centroid(red)[0].item()

    plain = R.relocate(x0.clone(), x0.clone(), x0, a_t, mask, shift=shift)
    through = R.relocate(x0.clone(), x0.clone(), x0, a_t, mask, shift=shift, codec=pooled_codec())
    assert abs(centre_x(through) - want) < 0.01
    assert abs(centre_x(plain) - want) > 0.02

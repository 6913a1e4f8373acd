import numpy as np
import pytest

from sampler.shapes import world as W


def test_same_seed_same_scene():
    a, b = W.make_scene(123), W.make_scene(123)
    assert np.array_equal(a.image, b.image) and a.caption == b.caption
    assert not np.array_equal(W.make_scene(124).image, a.image)


def test_batches_are_deterministic_and_vary():
    a, b = W.scene_batch(0, 5, 4), W.scene_batch(0, 5, 4)
    assert [s.caption for s in a] == [s.caption for s in b]
    assert len({s.image.tobytes() for s in a}) == 4


@pytest.mark.parametrize("seed", range(40))
def test_ground_truth_matches_the_image(seed):
    s = W.make_scene(seed)
    assert s.image.shape == (32, 32, 3) and s.image.dtype == np.float32
    assert 1 <= len(s.objects) <= 2
    colours = [o.colour for o in s.objects]
    assert len(set(colours)) == len(colours), "each colour at most once"
    if len(s.objects) == 2:
        assert not (s.objects[0].mask & s.objects[1].mask).any(), "objects do not overlap"
    for o in s.objects:
        assert np.allclose(s.image[o.mask], W.COLOURS[o.colour])
        ys, xs = np.nonzero(o.mask)
        assert o.area == pytest.approx(o.mask.sum() / 1024)
        assert o.centroid == pytest.approx(((xs.mean() + 0.5) / 32, (ys.mean() + 0.5) / 32))
    background = ~np.any([o.mask for o in s.objects], axis=0)
    assert (s.image[background] == 0).all()
    assert W.parse_caption(s.caption) == [(o.colour, o.shape) for o in s.objects]


def test_forced_object_count_and_both_counts_occur():
    assert len(W.make_scene(1, n_objects=2).objects) == 2
    counts = {len(W.make_scene(i).objects) for i in range(30)}
    assert counts == {1, 2}


def test_detector_agrees_with_ground_truth():
    n, right, iou = 300, 0, []
    for seed in range(n):
        s = W.make_scene(seed)
        found = W.detect(s.image)
        right += W.matches_caption(found, s.caption)[1]
        for o in s.objects:
            f = W.find(found, o.colour)
            iou.append(W.mask_iou(f.mask, o.mask))
            assert f.centroid == pytest.approx(o.centroid, abs=1e-6)
    assert right / n >= 0.97
    assert np.mean(iou) == 1.0


def test_detector_tolerates_noise_and_reads_uint8():
    s = W.make_scene(7, n_objects=2)
    rng = np.random.default_rng(0)
    noisy = np.clip(s.image + rng.normal(0, 0.08, s.image.shape), 0, 1)
    found = W.detect((noisy * 255).astype(np.uint8))
    assert sorted(o.colour for o in found) == sorted(o.colour for o in s.objects)


def test_detector_reports_extra_objects():
    a = W.make_object("circle", "red", W.rasterize("circle", 8, 8, 10, 10, 32))
    b = W.make_object("circle", "red", W.rasterize("circle", 24, 24, 10, 10, 32))
    found = W.detect(W.render([a, b]))
    assert len(found) == 2
    assert W.matches_caption(found, "a red circle") == (False, False)


@pytest.mark.parametrize("shape", W.SHAPES)
def test_shape_classifier_on_clean_silhouettes(shape):
    for extent in (8, 11, 15):
        assert W.classify_shape(W.rasterize(shape, 16, 16, extent, extent, 32)) == shape


def test_bad_caption_is_rejected():
    with pytest.raises(ValueError):
        W.parse_caption("a purple circle")


def test_same_colour_pairs_are_drawn_only_when_asked():
    """p_same 0 is the world as it always was (every old seed, the same scene); p_same 1 gives every
    two-object scene one colour, captioned so and found so by the detector."""
    for seed in range(40):
        a, b = W.make_scene(seed, 64, p_one=0.3), W.make_scene(seed, 64, p_one=0.3, p_same=0.0)
        assert a.caption == b.caption and (a.image == b.image).all()
    same = [W.make_scene(seed, 64, n_objects=2, p_same=1.0) for seed in range(20)]
    assert all(s.objects[0].colour == s.objects[1].colour for s in same)
    assert all(W.matches_caption(W.detect(s.image), s.caption)[1] for s in same)
    assert all(len({o.colour for o in W.make_scene(seed, 64, n_objects=2).objects}) == 2 for seed in range(20))

"""Drag (DragNoise): the loss and the tracking on tensors, the bottleneck substitution on a tiny
UNet, the language, and end to end on the shapes model and on a latent SD pipeline from configs."""

import numpy as np
import pytest
import torch

import dsl
from energies import builder as B
from energies import drag as G


def blob(x: float, y: float, size=(16, 16), channels=4, sigma=1.5) -> torch.Tensor:
    """(C, H, W) features with a Gaussian blob at (x, y) pixels, a different weight per channel."""
    H, W = size
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    g = torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return torch.stack([g * (c + 1) for c in range(channels)])


# ---------------------------------------------------------------------------------------------- tensors


def test_patch_at_an_integer_centre_is_the_slice_and_zero_outside():
    f = torch.randn(3, 10, 12)
    p = G.patch(f, torch.tensor([5.0, 4.0]), 1)
    assert torch.allclose(p, f[:, 3:6, 4:7], atol=1e-5)
    corner = G.patch(f, torch.tensor([0.0, 0.0]), 1)
    assert corner[:, 0, :].abs().max() < 1e-5 and corner[:, :, 0].abs().max() < 1e-5
    assert torch.allclose(corner[:, 1:, 1:], f[:, :2, :2], atol=1e-5)


def test_image_units_and_pixels_round_trip():
    for pt in [(0.0, 0.0), (0.3, 0.7), (1.0, 1.0)]:
        back = G.to_units(G.to_pixels(pt, (32, 16)), (32, 16))
        assert back == pytest.approx(pt)
    assert G.to_pixels((0.5, 0.5), (32, 32)).tolist() == [15.5, 15.5]


def test_unit_steps_point_at_the_target_and_vanish_on_it():
    h = torch.tensor([[1.0, 1.0], [5.0, 5.0]])
    t = torch.tensor([[4.0, 5.0], [5.0, 5.0]])
    d = G.unit_steps(h, t)
    assert torch.allclose(d[0], torch.tensor([0.6, 0.8])) and torch.all(d[1] == 0)


def test_the_alignment_loss_pulls_the_handles_content_one_step_towards_the_target():
    feat = blob(6, 8).requires_grad_(True)
    handles, targets = torch.tensor([[6.0, 8.0]]), torch.tensor([[12.0, 8.0]])
    loss = G.alignment_loss(feat, handles, targets, r_m=1)
    assert loss > 0
    (grad,) = torch.autograd.grad(loss, feat)
    step = -grad  # what gradient descent adds to the features
    ahead, behind = step[:, 8, 7].sum(), step[:, 8, 5].sum()
    assert ahead > 0 and ahead > behind  # the blob grows on the target's side of the handle
    assert grad[:, :, 11:].abs().sum() == 0  # nothing far from the handle is touched


def test_the_alignment_loss_skips_handles_that_arrived_and_weights_each_drag():
    feat = blob(6, 8)
    h, t = torch.tensor([[6.0, 8.0], [3.0, 3.0]]), torch.tensor([[12.0, 8.0], [3.5, 3.0]])
    both = G.alignment_loss(feat, h, t, done_within=1.0)
    first = G.alignment_loss(feat, h[:1], t[:1])
    assert both == pytest.approx(float(first))
    assert G.alignment_loss(feat, h[:1], t[:1], weights=[2.0]) == pytest.approx(2 * float(first))


@pytest.mark.parametrize("r_t", [0, 2])
def test_tracking_follows_a_moved_blob_within_its_radius(r_t):
    before, after = blob(6, 8), blob(8, 9)
    f0 = G.features_at(before, torch.tensor([[6.0, 8.0]]), r_t)
    assert G.track(f0, after, torch.tensor([[6.0, 8.0]]), r_p=3).tolist() == [[8.0, 9.0]]
    # a radius too small to see it: the handle goes only as far as the window reaches
    assert G.track(f0, after, torch.tensor([[6.0, 8.0]]), r_p=1).tolist() == [[7.0, 9.0]]


def test_reached_box_and_region():
    assert G.reached(torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 2.0]]), 1.5)
    assert not G.reached(torch.tensor([[1.0, 1.0], [0.0, 0.0]]), torch.tensor([[2.0, 2.0], [3.0, 0.0]]), 1.5)
    m = G.box_mask((0.0, 0.5, 0.5, 1.0), (4, 4))
    assert m.tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
    a, b = torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
    assert G.region_loss(b, a, m) == 12  # only the 12 cells outside the box count


# ---------------------------------------------------------------------------------------------- language


def test_drag_parses_formats_and_round_trips():
    text = ('prompt "a red circle and a blue square"\n\n'
            'drag (0.3, 0.4) -> (0.55, 0.4) within token "circle" * 2 @ 0.2..0.9\n'
            'drag (0.1, 0.1) -> (0.2, 0.3) within (0, 0, 0.5, 0.5) via latent\n'
            'drag (0.6, 0.6) -> (0.7, 0.6)\n')
    p = dsl.compile(text)
    a, b, c = p.terms
    assert (a.handle, a.target, a.token.word, a.weight, a.window.start) == ((0.3, 0.4), (0.55, 0.4), "circle", 2.0, 0.2)
    assert b.box == (0.0, 0.0, 0.5, 0.5) and b.placement == "latent" and c.token is None and c.box is None
    assert dsl.format(p) == text
    assert dsl.compile(dsl.format(p)) == p
    built = B.settings(prompt="a red circle and a blue square") + B.drag((0.3, 0.4), (0.55, 0.4), within="circle").at(0.2, 0.9) * 2 \
        + B.drag((0.1, 0.1), (0.2, 0.3), box=(0, 0, 0.5, 0.5)).via("latent") + B.drag((0.6, 0.6), (0.7, 0.6))
    assert built == p


@pytest.mark.parametrize("line, message", [
    ("drag (0.1, 0.1) += (0.2, 0.2)", "written with ->"),
    ("drag (0.1, 0.1) -> (0.1, 0.1)", "nothing would move"),
    ("drag (0.1, 0.1) -> (1.2, 0.2)", "outside [0, 1]"),
    ("drag (0.1, 0.1) -> (0.2, 0.2) via eps", "bottleneck (DragNoise) or latent"),
    ("drag (0.1, 0.1) -> (0.2, 0.2) within (0.5, 0, 0.2, 1)", "a box is"),
    ("drag (0.1, 0.1) -> 0.2", "unexpected"),
])
def test_bad_drags_are_the_languages_own_errors(line, message):
    with pytest.raises(dsl.SteerError) as e:
        dsl.compile(f'prompt "a red circle"\n{line}')
    assert message in str(e.value) and ":2:" in str(e.value)


# ---------------------------------------------------------------------------------------------- sampler


def test_substituting_replaces_the_mid_block_output_and_is_removed(shapes_editor):
    from sampler.drag import substituting
    from sampler.probes import ProbeStore, probing

    b = shapes_editor.backbone
    z, c = torch.randn(1, *b.latent_shape()), b.encode_prompt("a red circle").cond
    with torch.no_grad():
        mid, seen = ProbeStore(b.latent_shape()[1:]), ProbeStore(b.latent_shape()[1:])
        with probing(b.unet, mid, (), ["mid_block"]):
            plain = b.eps(z, 500, c)
        s = torch.zeros_like(mid.features["mid_block"])
        with substituting(b.unet, s), probing(b.unet, seen, (), ["mid_block"]):
            swapped = b.eps(z, 500, c)
        assert torch.all(seen.features["mid_block"] == 0) and not torch.allclose(plain, swapped)
        with pytest.raises(ValueError, match="bottleneck"):
            with substituting(b.unet, s[:, :, :2]):
                b.eps(z, 500, c)
        assert torch.equal(b.eps(z, 500, c), plain)  # both hooks are gone


SCRIPT = 'prompt "a red circle and a blue square"\nseed 3\nsteps 10\n'


def _circle_drag(editor, script):
    from sampler.shapes import world as W

    src = editor.run(dsl.compile(script), progress=False)
    circle, square = W.find(W.detect(src.image), "red"), W.find(W.detect(src.image), "blue")
    assert circle is not None and square is not None
    x, y = circle.centroid
    tx = x + 0.25 if x < 0.6 else x - 0.25
    return src, circle, square, f"drag ({x:.3f}, {y:.3f}) -> ({tx:.3f}, {y:.3f})", (tx, y)


def test_drag_within_a_box_optimises_the_bottleneck_and_weight_zero_is_the_source(shapes_editor):
    src, circle, _, drag, _ = _circle_drag(shapes_editor, SCRIPT)
    box = "within (0.05, 0.05, 0.95, 0.95)"  # a box: DragNoise alone, no copy
    r = shapes_editor.run(dsl.compile(f"{SCRIPT}{drag} {box}"), progress=False)
    assert r.drag is not None and r.drag.step == 3 and r.drag.iterations > 0 and r.drag.distances
    assert r.drag.distances[0] == pytest.approx(0.25, abs=0.05)  # the first distance is the drag's own length
    assert np.isfinite(r.image).all() and np.abs(r.image - r.source_image).max() > 0.05
    zero = shapes_editor.run(dsl.compile(f"{SCRIPT}{drag} {box} * 0"), progress=False)
    assert zero.drag is None and np.array_equal(zero.image, src.image)


def test_drag_within_a_token_copies_the_object_then_refines(shapes_editor):
    """The object's region is copied along the drag first; a rigid drag is then already met (no
    iteration), and the detected object lands at the target, the other object where it was: on two
    of three seeds, as a copied circle is redrawn at 10 steps and sometimes comes out another shape
    (a triangle at seed 3 on the grounded model; `steer bench --task drag` measures the rate)."""
    from sampler.shapes import world as W

    landed, circles = [], []
    for seed in (3, 4, 5):
        script = SCRIPT.replace("seed 3", f"seed {seed}")
        _, circle, square, drag, target = _circle_drag(shapes_editor, script)
        circles.append(circle)
        r = shapes_editor.run(dsl.compile(f'{script}{drag} within token "circle"'), progress=False)
        assert r.drag.iterations == 0 and r.drag.handles[0] == pytest.approx(target, abs=0.05)
        found = W.detect(r.image)
        moved, kept = W.find(found, "red"), W.find(found, "blue")
        landed.append(moved is not None and moved.shape == "circle" and np.hypot(*np.subtract(moved.centroid, target)) < 0.1)
        assert kept is not None and (kept.mask & square.mask).sum() / (kept.mask | square.mask).sum() > 0.7, seed
    assert sum(landed) >= 2, landed
    circle = circles[0]  # SCRIPT's own seed, for the two drags below
    # Two drags that pull the circle apart: the copy takes their mean, the optimisation the rest.
    x, y = circle.centroid
    two = (f'drag ({x:.3f}, {y:.3f}) -> ({x:.3f}, {y - 0.1:.3f}) within token "circle"\n'
           f'drag ({x:.3f}, {y:.3f}) -> ({x:.3f}, {y + 0.1:.3f}) within token "circle"')
    r = shapes_editor.run(dsl.compile(SCRIPT + two), progress=False)
    assert r.drag.iterations > 0 and r.drag.distances[0] == pytest.approx(0.1, abs=0.03)


def test_a_latent_drag_composes_with_other_terms_and_moves_the_latent(shapes_editor):
    r = shapes_editor.run(dsl.compile(SCRIPT + 'drag (0.3, 0.4) -> (0.6, 0.4) via latent\nkeep appearance'), progress=False)
    assert r.drag.iterations > 0 and np.isfinite(r.image).all()
    assert any(label.startswith("keep appearance") for label in r.energies) and r.energies["keep appearance"]


def test_drags_must_share_their_step_and_their_tensor(shapes_editor):
    for extra, message in [("drag (0.3, 0.4) -> (0.6, 0.4)\ndrag (0.5, 0.5) -> (0.6, 0.6) @ 0.5..1", "same step"),
                           ("drag (0.3, 0.4) -> (0.6, 0.4)\ndrag (0.5, 0.5) -> (0.6, 0.6) via latent", "same tensor")]:
        with pytest.raises(dsl.SteerError, match=message):
            shapes_editor.run(dsl.compile(SCRIPT + extra), progress=False)


def test_drag_runs_on_a_real_image_through_inversion(shapes_editor, tmp_path, monkeypatch):
    from sampler.images import to_pil
    from sampler.shapes import world as W

    monkeypatch.setenv("STEER_CACHE", str(tmp_path / "cache"))
    scene = W.make_scene(12345, shapes_editor.backbone.image_size()[0], n_objects=2)
    to_pil(scene.image).save(tmp_path / "photo.png")
    o = scene.objects[0]
    text = (f'source "photo.png"\nprompt "{scene.caption}"\nsteps 8\n'
            f'drag ({o.centroid[0]:.3f}, {o.centroid[1]:.3f}) -> (0.5, 0.5) within token "{o.shape}"')
    r = shapes_editor.run(dsl.compile(text), progress=False, script_dir=tmp_path)
    assert r.drag is not None and np.isfinite(r.image).all()
    assert np.abs(r.source_image - scene.image).mean() < 0.05  # the source is the photo, regenerated


@pytest.mark.parametrize("via", ["", " via latent", ' within token "dog"'])
def test_drag_runs_on_a_latent_sd_pipeline_from_configs(tmp_path, via):
    """The layers are found and the shapes line up: decoder features of up_blocks[2] upsampled to
    half the image, the bottleneck substituted through the VAE-latent UNet."""
    from sampler.backbones import load_backbone
    from sampler.editor import Editor
    from tiny import tiny_sd_pipeline

    pipe = tiny_sd_pipeline(tmp_path / "build")
    pipe.save_pretrained(tmp_path / "sd", safe_serialization=True)
    ed = Editor(load_backbone(str(tmp_path / "sd")))
    r = ed.run(dsl.compile('prompt "a photo of a dog"\nsteps 4\n'
                           f'drag (0.3, 0.5) -> (0.6, 0.5){via}'), progress=False)
    assert r.image.shape == (32, 32, 3) and np.isfinite(r.image).all() and r.drag.step == 1
    assert r.drag.iterations > 0 or "token" in via  # a copy may already meet the target

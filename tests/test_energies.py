import pytest
import torch

from energies import attention as A


def blob(cx, cy, r=0.12, n=16):
    xs, ys = A.grid(n, n)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.exp(-((gx - cx) ** 2 + (gy - cy) ** 2) / (2 * r**2))


def test_centroid_finds_a_blob():
    c = A.centroid(blob(0.25, 0.7))
    assert c.tolist() == pytest.approx([0.25, 0.7], abs=0.03)


def test_centroid_is_batched():
    maps = torch.stack([blob(0.2, 0.2), blob(0.8, 0.5)])
    assert A.centroid(maps).shape == (2, 2)
    assert A.centroid(maps)[1].tolist() == pytest.approx([0.8, 0.5], abs=0.03)


def test_size_grows_with_the_blob():
    assert A.size(blob(0.5, 0.5, r=0.2)) > A.size(blob(0.5, 0.5, r=0.08)) * 2


def test_masks():
    m = A.hard_mask(blob(0.5, 0.5))
    assert set(m.unique().tolist()) == {0.0, 1.0}
    s = A.soft_mask(blob(0.5, 0.5))
    assert s.min() >= 0 and s.max() <= 1 and s.max() > 0.99


def test_warp_shifts_and_scales():
    m = blob(0.3, 0.5)
    moved = A.warp(m, shift=torch.tensor([0.4, 0.0]))
    assert A.centroid(moved).tolist() == pytest.approx([0.7, 0.5], abs=0.03)
    bigger = A.warp(A.hard_mask(m), scale=1.5, about=(0.3, 0.5))
    assert bigger.sum() / A.hard_mask(m).sum() == pytest.approx(1.5**2, rel=0.25)


def test_move_energy_prefers_the_object_at_the_target_only():
    src = blob(0.25, 0.5)
    target = (0.75, 0.5)
    stayed = A.move_energy(src, src, target)
    moved = A.move_energy(blob(0.75, 0.5), src, target)
    duplicated = A.move_energy(blob(0.25, 0.5) + blob(0.75, 0.5), src, target)
    assert moved < duplicated < stayed
    assert moved < 0.05


def test_move_energy_gradient_pushes_towards_the_target():
    src = blob(0.25, 0.5)
    a = blob(0.4, 0.5).requires_grad_(True)
    (g,) = torch.autograd.grad(A.move_energy(a, src, (0.75, 0.5)), a)
    stepped = (a - 0.5 * g / g.abs().max()).detach().clamp(min=0)
    assert A.centroid(stepped)[0] > A.centroid(a.detach())[0]


def test_resize_energy_prefers_the_scaled_object():
    src = blob(0.5, 0.5, r=0.1)
    assert A.resize_energy(blob(0.5, 0.5, r=0.14), src, 2.0) < A.resize_energy(src, src, 2.0)


def test_size_energy():
    a = blob(0.5, 0.5, r=0.1)
    assert A.size_energy(a, float(A.size(a))) == pytest.approx(0.0, abs=1e-6)
    assert A.size_energy(a, 0.9) > 0.3


def test_shape_from_energy_is_zero_for_the_other_silhouette_in_place():
    me_src = blob(0.3, 0.3)
    other_src = blob(0.7, 0.7, r=0.16)
    target = A.warp(A.hard_mask(other_src), shift=A.centroid(me_src) - A.centroid(other_src))
    assert A.shape_energy(target * 5, target) < A.shape_from_energy(me_src, me_src, other_src)


def test_appearance_pools_features_under_the_mask():
    feats = torch.zeros(3, 8, 8)
    feats[0, :4] = 1.0  # channel 0 lights up the top half
    top = torch.zeros(16, 16)
    top[:8] = 1.0
    assert A.appearance(feats, top).tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-3)
    bottom = 1 - top
    e_same = A.appearance_energy(feats, top, feats, top)
    e_diff = A.appearance_energy(feats, top, feats, bottom)
    assert e_same == pytest.approx(0.0, abs=1e-6) and e_diff > 0.3


def test_appearance_gradient_fades_at_the_target_and_is_l1s_beyond_it():
    """A kept object that already looks as it did is not pushed by float rounding (L1's gradient
    would have full size at a difference of 1e-7); a real difference gets L1's gradient."""
    target = torch.rand(8, 6, 6) + 0.5
    mask = torch.zeros(16, 16)
    mask[:8] = 1.0

    def grad_at(offset):
        feats = (target + offset).requires_grad_(True)
        (g,) = torch.autograd.grad(A.appearance_energy(feats, mask, target, mask), feats)
        return g.abs().sum().item()

    full = grad_at(1.0)  # far outside the deadband: L1's sign gradient
    assert grad_at(1e-7) < 1e-4 * full
    assert grad_at(0.5) == pytest.approx(full, rel=1e-4)


def test_attention_keep_energy_is_zero_at_the_source_and_has_gradient():
    ref = [torch.rand(4, 8, 8), torch.rand(4, 4, 4)]
    assert A.attention_keep_energy(ref, ref) == 0
    cur = [r.clone().requires_grad_(True) for r in ref]
    e = A.attention_keep_energy([cur[0] + 0.1, cur[1]], ref)
    assert e.item() == pytest.approx(0.01 * 4 * 64, rel=1e-4)
    (g,) = torch.autograd.grad(e, cur[0])
    assert g.abs().sum() > 0


def test_every_kind_is_an_energy_or_gradient_free():
    """`every k` is refused on the gradient-free kinds; the rest must be energies (terms.ENERGIES)."""
    from energies import program as P
    from energies.terms import ENERGIES

    kinds = {cls.model_fields["kind"].default for cls in P.TermBase.__subclasses__()}
    assert set(ENERGIES) | set(P.GRADIENT_FREE) == kinds and not set(ENERGIES) & set(P.GRADIENT_FREE)

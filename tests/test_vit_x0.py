"""DiffuseIT ViT-key energies (energies/vit.py) and predicted-x0 energies (energies/x0.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from energies import vit as V
from energies import x0 as X
from sampler import feature_models as FM


@pytest.fixture(scope="module")
def shapes(shapes_path):
    from sampler.shapes import model as M

    return M.load(shapes_path)


@pytest.fixture(scope="module")
def tiny_vit():
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8)
    return ViTModel(cfg, add_pooling_layer=False).eval()


@pytest.fixture(scope="module")
def tiny_dinov2():
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, image_size=32, patch_size=8)
    return Dinov2Model(cfg).eval()


def world_image(scene) -> torch.Tensor:
    return torch.from_numpy(scene.image).permute(2, 0, 1)[None] * 2 - 1


def one_object_scenes(n=16, start=5000):
    from sampler.shapes import world as W

    from sampler.shapes import model as M

    return [W.make_scene(start + i, M.IMAGE_SIZE, n_objects=1) for i in range(n)]


# ----------------------------------------------------------------------------------------------
# Pure energies


def test_self_similarity_is_cosine_and_scale_invariant():
    k = torch.randn(2, 10, 16)
    s = V.self_similarity(k)
    assert s.shape == (2, 10, 10)
    assert torch.allclose(s.diagonal(dim1=-2, dim2=-1), torch.ones(2, 10), atol=1e-5)
    assert torch.allclose(s, s.transpose(-1, -2), atol=1e-6)
    assert torch.allclose(s[0, 3, 7], F.cosine_similarity(k[0, 3], k[0, 7], dim=0), atol=1e-6)
    scale = torch.rand(2, 10, 1) * 5 + 0.1  # any positive per-token scale
    assert torch.allclose(V.self_similarity(k * scale), s, atol=1e-5)


def test_structure_energy_zero_on_same_positive_on_permuted():
    k = torch.randn(17, 24)
    assert V.structure_energy(k, k).item() == pytest.approx(0.0, abs=1e-10)
    perm = torch.randperm(17)
    assert V.structure_energy(k[perm], k).item() > 1e-3
    src = k.clone().requires_grad_(True)
    cur = (k + 0.1 * torch.randn_like(k)).requires_grad_(True)
    V.structure_energy(cur, src).backward()
    assert cur.grad.abs().sum() > 0 and src.grad is None  # the source is a constant


def patch_loss_reference(q, k, tau=0.07):
    """DiffuseIT's PatchLoss, token by token."""
    total = 0.0
    for i in range(q.shape[0]):
        logits = [F.cosine_similarity(q[i], k[i], dim=0)]
        logits += [torch.tensor(-10.0) if j == i else F.cosine_similarity(q[i], k[j], dim=0) for j in range(q.shape[0])]
        logits = torch.stack(logits) / tau
        total = total - logits.log_softmax(0)[0]
    return total / q.shape[0]


def test_contrastive_key_energy_matches_patch_loss_and_prefers_aligned_tokens():
    torch.manual_seed(1)
    q, k = torch.randn(9, 12), torch.randn(9, 12)
    assert V.contrastive_key_energy(q, k).item() == pytest.approx(patch_loss_reference(q, k).item(), rel=1e-5)
    batched = V.contrastive_key_energy(torch.stack([q, k]), torch.stack([k, q]))
    both = (patch_loss_reference(q, k) + patch_loss_reference(k, q)) / 2
    assert batched.item() == pytest.approx(both.item(), rel=1e-5)
    assert V.contrastive_key_energy(k, k) < V.contrastive_key_energy(k[torch.randperm(9)], k)


def test_style_and_divergence_energies():
    a, b = torch.randn(3, 8), torch.randn(3, 8)
    assert V.style_energy(a, a).item() == 0.0
    assert V.style_energy(a, b).item() == pytest.approx(F.mse_loss(a, b).item())
    assert V.divergence_energy(a, b).item() == pytest.approx(-F.mse_loss(a, b).item())


def test_directional_clip_energy_prefers_the_text_direction():
    torch.manual_seed(2)
    src_img, src_txt, txt = torch.randn(16), torch.randn(16), torch.randn(16)
    d = F.normalize(txt, dim=0) - F.normalize(src_txt, dim=0)
    base = F.normalize(src_img, dim=0)
    along, against = base + 0.3 * d, base - 0.3 * d
    e_along = X.directional_clip_energy(along, src_img, txt, src_txt)
    e_against = X.directional_clip_energy(against, src_img, txt, src_txt)
    # near -log(1) = 0 along (renormalising the image feature bends dI a little), large against
    assert e_along.item() < 0.1 and e_against.item() > 3.0
    batched = X.directional_clip_energy(torch.stack([along, along]), torch.stack([src_img, src_img]), txt, src_txt)
    assert batched.item() == pytest.approx(e_along.item(), abs=1e-5)
    img = along.clone().requires_grad_(True)
    X.directional_clip_energy(img - 0.5 * d, src_img, txt, src_txt).backward()
    assert (img.grad @ d).item() < 0  # descending the energy moves along the text direction


def test_keep_pixels_energy_respects_masks():
    torch.manual_seed(3)
    src = torch.rand(1, 3, 16, 16) * 2 - 1
    assert X.keep_pixels_energy(src, src).item() == 0.0
    mask = torch.zeros(8, 8)
    mask[:, :4] = 1  # left half, given at half resolution
    changed = src.clone()
    changed[..., 10:] += 0.5  # only the right part changes
    assert X.keep_pixels_energy(changed, src, mask, inside=True).item() == pytest.approx(0.0, abs=1e-7)
    outside = X.keep_pixels_energy(changed, src, mask, inside=False).item()
    assert outside > 0.3 and X.keep_pixels_energy(changed, src).item() == pytest.approx(0.5 * 6 / 16, rel=1e-5)


def test_preprocess_matches_each_training_convention():
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(V.preprocess(x, 32, V.SHAPES_MEAN, V.SHAPES_STD), x, atol=1e-6)  # shapes CLIP: x as is
    black = V.preprocess(-torch.ones(1, 3, 8, 8), (24, 16), V.DINO_MEAN, V.DINO_STD)
    assert black.shape == (1, 3, 24, 16)
    want = -torch.tensor(V.DINO_MEAN) / torch.tensor(V.DINO_STD)
    assert torch.allclose(black[0, :, 5, 5], want, atol=1e-5)
    x.requires_grad_(True)
    V.preprocess(x, 48, V.DINO_MEAN, V.DINO_STD).sum().backward()
    assert x.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------
# ViTKeys on the shapes CLIP and on tiny random DINO-family models


def check_extractor(vk: FM.ViTKeys, x: torch.Tensor, tokens: int, hidden: int, last_norm, key_proj):
    """Shapes, gradients, no leftover hook, and keys = the LAST layer's key projection."""
    x = x.clone().requires_grad_(True)
    keys, cls = vk(x)
    assert keys.shape == (x.shape[0], tokens, hidden) and cls.shape == (x.shape[0], hidden)
    (V.structure_energy(keys, keys.detach() + 0.1) + cls.pow(2).mean()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert len(vk.key_module._forward_hooks) == 0
    with torch.no_grad():
        pixels = V.preprocess(x, vk.size, vk.mean, vk.std)
        out = vk.tower(pixel_values=pixels, output_hidden_states=True, **({"interpolate_pos_encoding": True} if vk._interpolate and vk._resized(pixels) else {}))
        assert torch.allclose(keys, key_proj(last_norm(out.hidden_states[-2])), atol=1e-5)
        assert torch.allclose(cls, out.hidden_states[-1][:, 0], atol=1e-5)


def test_vit_keys_on_shapes_clip(shapes):
    vk = FM.load_vit("shapes", shapes)
    assert vk.size == shapes.clip.config.vision_config.image_size == 64 and vk.mean == V.SHAPES_MEAN
    layer = vk.tower.encoder.layers[-1]
    x = torch.cat([world_image(s) for s in one_object_scenes(2)])
    check_extractor(vk, x, 1 + 8 * 8, 96, layer.layer_norm1, layer.self_attn.k_proj)
    assert vk.key_module is layer.self_attn.k_proj
    assert FM.ViTKeys(shapes.clip.vision_model).key_module is layer.self_attn.k_proj  # the tower alone too


def test_vit_keys_on_tiny_vit_and_dinov2(tiny_vit, tiny_dinov2):
    x = torch.rand(2, 3, 40, 40) * 2 - 1
    vit_last = tiny_vit.layers[-1] if hasattr(tiny_vit, "layers") else tiny_vit.encoder.layer[-1]
    vk = FM.ViTKeys(tiny_vit)  # config size 32: the 40 px input is resized to 32
    check_extractor(vk, x, 1 + 16, 32, vit_last.layernorm_before, vk.key_module)
    vk48 = FM.ViTKeys(tiny_vit, size=48)  # 48 px: position embeddings are interpolated
    check_extractor(vk48, x, 1 + 36, 32, vit_last.layernorm_before, vk48.key_module)
    dk = FM.load_vit("sd", tiny_dinov2)  # DiffuseIT's 224 px with ImageNet stats
    assert dk.size == V.DINO_SIZE and dk.mean == V.DINO_MEAN
    dk.size = 40
    check_extractor(dk, x, 1 + 25, 32, tiny_dinov2.encoder.layer[-1].norm1, dk.key_module)
    for m in (tiny_vit, tiny_dinov2):  # the key module is the last layer's, not the first's
        names = [n for n, mod in m.named_modules() if mod is FM.key_projection(m)]
        assert names and "1" in names[0].split(".")


def test_hook_is_removed_when_the_forward_fails(tiny_vit):
    vk = FM.ViTKeys(tiny_vit, mean=(0.5, 0.5), std=(0.5, 0.5))
    with pytest.raises(Exception):
        vk(torch.zeros(1, 2, 32, 32))  # two channels: the patch embedding raises inside the call
    assert len(vk.key_module._forward_hooks) == 0


def test_load_vit_errors(tmp_path):
    with pytest.raises(OSError, match="facebook/dino-vitb8.*HF_HUB_OFFLINE"):
        FM.load_vit("sd", local_files_only=True, cache_dir=tmp_path)  # never reaches the network
    with pytest.raises(ValueError, match="backbone kind"):
        FM.load_vit("flux")


# ----------------------------------------------------------------------------------------------
# The shapes CLIP through ClipScorer


def test_clip_scorer_features_are_the_training_ones(shapes):
    from sampler.shapes import model as M

    sc = FM.ClipScorer.for_shapes(shapes)
    x = torch.cat([world_image(s) for s in one_object_scenes(4)])
    with torch.no_grad():  # the way sampler/shapes/evaluate.py (and training) feeds the CLIP
        direct = FM.projected_features(shapes.clip.get_image_features(pixel_values=x))
        ids = shapes.tokenizer(["a red circle"], padding="max_length", max_length=M.MAX_LENGTH, return_tensors="pt").input_ids
        direct_text = FM.projected_features(shapes.clip.get_text_features(input_ids=ids))
    assert torch.allclose(sc.image(x), F.normalize(direct, dim=-1), atol=1e-5)
    assert torch.allclose(sc.text("a red circle")[0], F.normalize(direct_text[0], dim=-1), atol=1e-5)
    x.requires_grad_(True)
    sc.image(x).sum().backward()
    assert x.grad.abs().sum() > 0


def test_one_tower_pass_gives_the_vit_and_clip_features_of_two(shapes):
    """The shapes ViT is its CLIP's tower: the structure energy's keys and the CLIP term's image
    features come from one forward (sampler/guidance.py), equal to the two separate calls, with
    gradients that reach the image; a ViT that is not the CLIP's tower does not share."""
    sc, vk = FM.ClipScorer.for_shapes(shapes), FM.load_vit("shapes", shapes)
    assert sc.shares_tower(vk)
    x = torch.cat([world_image(s) for s in one_object_scenes(2)]).requires_grad_(True)
    keys, cls, pooled = vk.with_pooled(x)
    assert torch.allclose(keys, vk(x)[0], atol=1e-6) and torch.allclose(cls, vk(x)[1], atol=1e-6)
    assert torch.allclose(sc.from_pooled(pooled), sc.image(x), atol=1e-6)
    sc.from_pooled(pooled).sum().backward()
    assert x.grad.abs().sum() > 0
    other = FM.ViTKeys(shapes.clip, size=32, mean=V.SHAPES_MEAN, std=V.SHAPES_STD)  # same tower, other pixels
    assert not sc.shares_tower(other)


def test_clip_scorer_text_cache_and_templates(shapes):
    sc = FM.ClipScorer.for_shapes(shapes)
    a = sc.text(["a red circle", "a blue square", "a red circle"])
    assert a.shape[0] == 3 and torch.equal(a[0], a[2]) and len(sc._cache) == 2
    assert torch.allclose(a.norm(dim=-1), torch.ones(3), atol=1e-5)
    t = sc.text("red circle", templates=["a {}", "a {} and a blue square"])
    assert len(sc._cache) == 3 and not torch.allclose(t, sc.text("red circle"))


def test_shapes_clip_prefers_the_true_colour(shapes):
    from sampler.shapes import world as W

    sc = FM.ClipScorer.for_shapes(shapes)
    scenes = one_object_scenes(16)
    with torch.no_grad():
        img = sc.image(torch.cat([world_image(s) for s in scenes]))
    colours = list(W.COLOURS)
    right = 0
    for i, s in enumerate(scenes):
        o = s.objects[0]
        wrong = colours[(colours.index(o.colour) + 1) % len(colours)]
        t = sc.text([s.caption, f"a {wrong} {o.shape}"])
        right += int(img[i] @ t[0] > img[i] @ t[1])
    assert right >= 14


def test_direction_energy_on_recoloured_world_images(shapes):
    """A red object recoloured blue (swap R and B) is the edit "red -> blue"; recoloured green is not."""
    sc = FM.ClipScorer.for_shapes(shapes)
    from sampler.shapes import world as W

    reds = [s for s in (W.make_scene(7000 + i, 64, n_objects=1) for i in range(60)) if s.objects[0].colour == "red"][:6]
    assert len(reds) >= 4
    wins = 0
    for s in reds:
        src = world_image(s)
        blue, green = src[:, [2, 1, 0]], src[:, [1, 0, 2]]
        shape = s.objects[0].shape
        with torch.no_grad():
            e_blue = sc.direction_energy(blue, src, f"a blue {shape}", f"a red {shape}")
            e_green = sc.direction_energy(green, src, f"a blue {shape}", f"a red {shape}")
        wins += int(e_blue < e_green)
    assert wins == len(reds)

import pytest
import torch

from sampler.probes import AttentionProbe, ProbeStore, cross_attention_layers, probing


@pytest.fixture(scope="module")
def unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    u = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=24, attention_head_dim=2, norm_num_groups=8,
    ).eval()
    return u.requires_grad_(False)


def test_layers_are_found_by_prefix(unet):
    all_layers = cross_attention_layers(unet)
    assert all_layers and all(n.endswith("attn2") for n in all_layers)
    assert cross_attention_layers(unet, ("up_blocks",)) == [n for n in all_layers if n.startswith("up_blocks")]


def test_probe_output_equals_the_default_processor(unet):
    z, ctx = torch.randn(2, 4, 16, 16), torch.randn(2, 7, 24)
    plain = unet(z, 10, ctx).sample
    store = ProbeStore((16, 16))
    with probing(unet, store, cross_attention_layers(unet)):
        probed = unet(z, 10, ctx).sample
    assert torch.allclose(plain, probed, atol=1e-5)


def test_maps_are_head_averaged_conditional_half_and_normalised_over_tokens(unet):
    z, ctx = torch.randn(2, 4, 16, 16), torch.randn(2, 7, 24)
    store = ProbeStore((16, 16), cond=slice(1, 2))
    layers = cross_attention_layers(unet)
    with probing(unet, store, layers, ["up_blocks.1"]):
        unet(z, 10, ctx)
    assert set(store.attn) == set(layers)
    for a in store.attn.values():
        assert a.shape[:2] == (1, 7)
        assert torch.allclose(a.sum(1), torch.ones_like(a.sum(1)), atol=1e-5)  # softmax over tokens
    assert store.token_maps(8).shape == (1, 7, 8, 8)
    assert store.features["up_blocks.1"].shape[0] == 1


def test_processors_are_restored_even_when_the_forward_fails(unet):
    before = dict(unet.attn_processors)
    with pytest.raises(RuntimeError):
        with probing(unet, ProbeStore((16, 16)), cross_attention_layers(unet), ["mid_block"]):
            assert any(isinstance(p, AttentionProbe) for p in unet.attn_processors.values())
            raise RuntimeError("boom")
    assert {k: type(v) for k, v in unet.attn_processors.items()} == {k: type(v) for k, v in before.items()}
    assert not unet.mid_block._forward_hooks


def test_gradient_reaches_the_latent_with_frozen_weights(unet):
    z = torch.randn(1, 4, 16, 16, requires_grad=True)
    store = ProbeStore((16, 16))
    with probing(unet, store, cross_attention_layers(unet)):
        unet(z, 10, torch.randn(1, 7, 24))
    energy = store.token_maps(8)[0, 3].max()
    (g,) = torch.autograd.grad(energy, z)
    assert g.abs().sum() > 0
    assert all(p.grad is None for p in unet.parameters())


def test_probe_tolerates_gradient_checkpoint_recomputation(unet):
    unet.enable_gradient_checkpointing()
    unet.train()  # diffusers only checkpoints in training mode on some blocks; eval is also covered below
    try:
        z = torch.randn(1, 4, 16, 16, requires_grad=True)
        store = ProbeStore((16, 16))
        with probing(unet, store, cross_attention_layers(unet)):
            unet(z, 10, torch.randn(1, 7, 24))
            n_layers = len(store.attn)
            (g,) = torch.autograd.grad(store.token_maps(8)[0, 2].sum(), z)
        assert len(store.attn) == n_layers, "recomputation overwrites entries instead of adding"
        assert torch.isfinite(g).all()
    finally:
        unet.disable_gradient_checkpointing()
        unet.eval()

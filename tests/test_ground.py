"""The grounding fine-tune: word masks in caption order, TokenCompose's token loss, a seeded resumable run."""

import json

import numpy as np
import pytest
import torch

from sampler import training as T
from sampler.shapes import ground, train, world
from sampler.shapes import model as M


def test_each_colour_and_shape_word_gets_its_own_objects_mask():
    scenes = [world.make_scene(i, M.IMAGE_SIZE, n_objects=n) for i, n in ((1, 2), (2, 1), (3, 2))]
    captions = [scenes[0].caption, scenes[1].caption, ""]  # the third caption was dropped (CFG)
    masks, grounded = ground.word_masks(scenes, captions)
    tok = M.build_tokenizer()
    words = tok.convert_ids_to_tokens(tok(captions[0]).input_ids)
    first, second = scenes[0].objects
    # the positions are the words: "<bos> a red circle and a blue square <eos>"
    assert (words[2], words[3], words[6], words[7]) == (first.colour, first.shape, second.colour, second.shape)
    assert np.array_equal(masks[0, 2].bool().numpy(), first.mask) and np.array_equal(masks[0, 7].bool().numpy(), second.mask)
    assert grounded[0].nonzero().flatten().tolist() == [2, 3, 6, 7]
    assert grounded[1].nonzero().flatten().tolist() == [2, 3]  # one object: its two words
    assert not grounded[2].any() and not masks[2].any()  # an empty caption grounds nothing


def test_the_token_loss_is_zero_inside_the_mask_and_large_outside():
    masks = torch.zeros(1, 4, 16, 16)
    masks[0, 1, :4, :4] = 1
    grounded = torch.tensor([[False, True, False, False]])
    inside = torch.zeros(1, 4, 8, 8)
    inside[0, 1, :2, :2] = 0.25  # all of the word's mass in its object's cells (at the layer's grid)
    outside = torch.zeros(1, 4, 8, 8)
    outside[0, 1, 6:, 6:] = 0.25
    uniform = torch.full((1, 4, 8, 8), 1 / 64)
    assert ground.token_loss({"a": inside}, masks, grounded).item() == pytest.approx(0.0)
    assert ground.token_loss({"a": outside}, masks, grounded).item() == pytest.approx(1.0)
    assert ground.token_loss({"a": uniform}, masks, grounded).item() == pytest.approx((1 - 1 / 16) ** 2)
    # averaged over layers, whatever their grids
    assert ground.token_loss({"a": inside, "b": torch.full((1, 4, 4, 4), 1 / 16)}, masks, grounded).item() == pytest.approx((1 - 1 / 16) ** 2 / 2)


def test_the_token_loss_moves_a_words_attention_into_its_object():
    """A few steps on the loss alone move a tiny UNet's maps for the grounded words into their masks."""
    from sampler.probes import ProbeStore, cross_attention_layers, probing

    torch.manual_seed(0)
    unet = M.build_unet()
    layers = cross_attention_layers(unet, ground.GROUNDED)
    scenes = [world.make_scene(i, M.IMAGE_SIZE, n_objects=2) for i in range(4)]
    masks, grounded = ground.word_masks(scenes, [s.caption for s in scenes])
    x, cond = torch.randn(4, 4, M.LATENT_SIZE, M.LATENT_SIZE), torch.randn(4, M.MAX_LENGTH, M.TEXT_WIDTH)
    opt = torch.optim.Adam(unet.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        store = ProbeStore((M.LATENT_SIZE, M.LATENT_SIZE))
        with probing(unet, store, layers):
            unet(x, torch.full((4,), 500), cond)
        loss = ground.token_loss(store.attn, masks, grounded)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert len(store.attn) == len(layers) == 6  # every cross-attention layer of the down and up blocks
    assert losses[-1] < 0.8 * losses[0]


def test_the_pixel_loss_asks_each_objects_pixels_to_read_its_own_words():
    n = 16  # <bos> a red circle and a blue square <eos>: object 0's words at 2, 3; object 1's at 6, 7
    masks = torch.zeros(1, n, 8, 8)
    masks[0, 2:4, :4, :4] = 1  # object 0 in the top-left quarter
    masks[0, 6:8, 4:, 4:] = 1  # object 1 in the bottom-right
    grounded = torch.zeros(1, n, dtype=torch.bool)
    grounded[0, [2, 3, 6, 7]] = True

    def attention(read_own: float) -> torch.Tensor:
        """Each pixel of an object puts `read_own` on its two words, the rest on <eos>; the
        background reads <eos> alone (every pixel's attention sums to 1 over the tokens)."""
        a = torch.zeros(1, n, 8, 8)
        a[0, 8] = 1.0
        for (w0, w1), (ys, xs) in (((2, 3), (slice(0, 4), slice(0, 4))), ((6, 7), (slice(4, 8), slice(4, 8)))):
            a[0, w0, ys, xs] = a[0, w1, ys, xs] = read_own / 2
            a[0, 8, ys, xs] = 1 - read_own
        return a

    losses = [ground.pixel_loss({"l": attention(r)}, masks, grounded).item() for r in (0.04, 0.5, 0.99)]
    assert losses[0] > losses[1] > losses[2] and losses[2] < 0.1
    assert ground.word_share({"l": attention(0.04)}, masks, grounded) == pytest.approx(0.04)
    assert ground.word_share({"l": attention(0.5)}, masks, grounded) == pytest.approx(0.5)
    nothing = torch.zeros(1, n, dtype=torch.bool)  # an empty (CFG) caption grounds nothing
    assert ground.pixel_loss({"l": attention(0.5)}, masks, nothing).item() == 0.0


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    work = tmp_path_factory.mktemp("base")
    train.main(["vae", "--work", str(work), "--vae-steps", "1", "--vae-batch", "2", "--ckpt-every", "1"])
    train.main(["unet", "--work", str(work), "--steps", "1", "--batch", "2", "--warmup", "1", "--ckpt-every", "1", "--clip-steps", "0"])
    return work / "model"


def finetune(model, work, steps, *extra):
    ground.main(["--init-from", str(model), "--work", str(work), "--steps", str(steps), "--batch", "2", "--warmup", "1",
                 "--cooldown", "1", "--ckpt-every", "1", *extra])


def test_the_finetune_resumes_exactly_and_keeps_the_text_encoder(base_model, tmp_path):
    straight, resumed = tmp_path / "a", tmp_path / "b"
    finetune(base_model, straight, 3)
    finetune(base_model, resumed, 2)
    finetune(base_model, resumed, 3)
    a, _ = T.load_checkpoint(straight / "ground.ckpt.safetensors")
    b, state = T.load_checkpoint(resumed / "ground.ckpt.safetensors")
    assert state["step"] == 3
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("model.unet."))
    before = M.load(base_model, with_clip=False)
    after = M.load(resumed / "ema", with_clip=False)  # the EMA folder loads as a shapes model
    assert all(torch.equal(p, q) for p, q in zip(before.text_encoder.parameters(), after.text_encoder.parameters()))
    assert any(not torch.equal(p, q) for p, q in zip(before.unet.parameters(), after.unet.parameters()))
    # the finished run writes a model folder whose card carries the base's record and the fine-tune's
    card = M.load(resumed / "model", with_clip=False).card["training"]
    assert card["ground_steps"] == 3 and card["unet_steps"] == 1 and card["commands"][-1].startswith("python -m sampler.shapes.ground")


def test_batches_drawn_ahead_in_worker_processes_train_the_same_weights(base_model, tmp_path):
    # --workers is how a GPU run keeps its step fed; it must not change what is trained
    inline, ahead = tmp_path / "a", tmp_path / "b"
    finetune(base_model, inline, 3)
    finetune(base_model, ahead, 3, "--workers", "2")
    a, _ = T.load_checkpoint(inline / "ground.ckpt.safetensors")
    b, _ = T.load_checkpoint(ahead / "ground.ckpt.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(("model.unet.", "ema.unet.")))


def test_the_finetune_refuses_to_continue_another_recipe(base_model, tmp_path):
    finetune(base_model, tmp_path, 1)
    with pytest.raises(T.SettingsChanged, match="weight"):
        finetune(base_model, tmp_path, 2, "--weight", "1.0")
    with pytest.raises(T.SettingsChanged, match="pixel_weight"):
        finetune(base_model, tmp_path, 2, "--pixel-weight", "0.1")


def test_the_pixel_loss_trains_and_its_share_is_recorded(base_model, tmp_path):
    finetune(base_model, tmp_path, 2, "--pixel-weight", "0.1")
    record = json.loads((tmp_path / "record.json").read_text())
    assert 0 <= record["ground_final_word_share"] <= 1
    stage = M.load(tmp_path / "model", with_clip=False).card["training"]["ground_stages"][-1]
    assert "--pixel-weight 0.1" in stage["command"] and stage["final_word_share"] == record["ground_final_word_share"]


def test_a_second_grounding_stage_keeps_the_firsts_time_and_machine(base_model, tmp_path):
    """The card must give every stage's training time and machine: a fine-tune of a fine-tuned model
    lists both stages, oldest first, and the card writes a line for each."""
    from sampler.shapes.card import training_section

    first, second = tmp_path / "first", tmp_path / "second"
    finetune(base_model, first, 2)
    finetune(first / "model", second, 1)
    training = M.load(second / "model", with_clip=False).card["training"]
    stages = training["ground_stages"]
    assert [s["steps"] for s in stages] == [2, 1]
    assert all(s["machine"].endswith("CPU") and s["batch"] == 2 and s["minutes"] >= 0 for s in stages)
    assert str(first) in stages[0]["command"] and str(second) in stages[1]["command"]
    assert sum(c.startswith("python -m sampler.shapes.ground") for c in training["commands"]) == 2

    lines = training_section(training)
    assert sum(line.startswith("- grounding stage") for line in lines) == 2

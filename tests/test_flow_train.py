"""The shapes flow model's trainer (sampler/shapes/flow_train.py) at tiny size: it trains, keeps a
checkpoint it resumes from, refuses to resume with another architecture, and what it writes
loads offline as a backbone that edits."""

import json

import numpy as np
import pytest
import torch

import dsl
from sampler.backbones import ShapesFlowBackbone, load_backbone, load_tokenizer
from sampler.editor import Editor
from sampler.shapes import flow_model as FM
from sampler.shapes import flow_train
from sampler.training import SettingsChanged

TINY = ["--layers", "1", "--heads", "2", "--head-dim", "8", "--batch", "2", "--threads", "1", "--no-progress", "--ckpt-every", "2"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("flow") / "run"
    flow_train.main(["--work", str(work), "--steps", "2", *TINY])
    return work


def test_the_trainer_writes_a_checkpoint_a_record_and_a_model_folder(work):
    record = json.loads((work / "record.json").read_text())
    assert record["flow_steps"] == 2 and record["final_loss"] > 0
    assert (work / "flow.ckpt.safetensors").is_file() and FM.is_flow_folder(work / "ema")
    assert (work / "ema" / "clip").is_dir()  # the shapes CLIP, for the x0 terms


def test_it_resumes_from_its_checkpoint_and_refuses_another_architecture(work, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(work, run)
    flow_train.main(["--work", str(run), "--steps", "3", *TINY, "--out", str(tmp_path / "model")])
    assert "resumed from" in capsys.readouterr().out
    assert json.loads((run / "record.json").read_text())["flow_steps"] == 3
    assert FM.is_flow_folder(tmp_path / "model")
    with pytest.raises(SettingsChanged, match="layers"):
        flow_train.main(["--work", str(run), "--steps", "4", *TINY[:-2], "--layers", "2"])


def test_the_loss_is_the_velocity_error_at_logit_normal_times():
    """A transformer that predicts exactly eps - x0 has zero loss; one that predicts zero has the
    mean of (eps - x0)^2."""
    class Oracle(torch.nn.Module):
        def __init__(self, target):
            super().__init__()
            self.target = target

        def forward(self, hidden_states, **kw):
            return type("Out", (), {"sample": self.target})()

    x0 = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    torch.randn(3, generator=g())
    gen = g()
    torch.randn(3, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    assert flow_train.flow_matching_loss(Oracle(noise - x0), x0, None, None, g()).item() == pytest.approx(0.0, abs=1e-10)
    assert flow_train.flow_matching_loss(Oracle(torch.zeros_like(x0)), x0, None, None, g()).item() == pytest.approx(
        (noise - x0).pow(2).mean().item(), rel=1e-5)


def test_the_model_folder_loads_offline_as_a_backbone_that_edits(work):
    editor = Editor(load_backbone(str(work / "ema"), device="cpu"))
    b = editor.backbone
    assert type(b) is ShapesFlowBackbone and b.kind == "shapes-flow" and b.latent_shape() == (4, 16, 16)
    assert load_tokenizer(str(work / "ema")).model_max_length == b.tokenizer.model_max_length
    program = dsl.compile(dsl.parse('prompt "a red circle and a blue square"\nsteps 2\ncentroid(token "circle") -> (0.7, 0.5)\n'))
    result = editor.run(program, progress=False)
    assert result.image.shape == (64, 64, 3) and abs(result.image - result.source_image).mean() > 1e-4


def test_the_block_measurement_scores_each_joint_block(work):
    import numpy as np

    from sampler.shapes import flow_blocks, world

    b = ShapesFlowBackbone(work / "ema")
    result = flow_blocks.measure(b, scenes=1, at=[0.5])
    assert result["blocks"] == ["transformer_blocks.0.attn"] and result["objects"] == 2
    assert 0 <= result["iou"][0][0] <= 1 and result["best"] == "transformer_blocks.0.attn"
    mask = world.make_scene(0, size=64, n_objects=1).objects[0].mask
    perfect = torch.nn.functional.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=(16, 16), mode="area")[0, 0]
    assert flow_blocks.map_iou(perfect, mask) == 1.0 and flow_blocks.map_iou(1 - perfect, mask) == 0.0


def test_a_resumed_run_keeps_the_text_encoder_it_started_with(work, tmp_path):
    """The text encoder is frozen and read from --init-from at the start; a later --init-from
    (a newer snapshot of the UNet model) must not swap it under a half-trained transformer."""
    import shutil

    from safetensors.torch import load_file

    run = tmp_path / "run"
    shutil.copytree(work, run)
    before = load_file(run / "ema" / "text_encoder" / "model.safetensors")
    other = tmp_path / "other"
    shutil.copytree(run / "ema", other)
    weights = load_file(other / "text_encoder" / "model.safetensors")
    from safetensors.torch import save_file

    save_file({k: v + 1 for k, v in weights.items()}, other / "text_encoder" / "model.safetensors")
    flow_train.main(["--work", str(run), "--steps", "3", *TINY, "--init-from", str(other)])
    after = load_file(run / "ema" / "text_encoder" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_evaluation_samples_the_flow_model_for_caption_fidelity(work, capsys):
    """`python -m sampler.shapes.evaluate --model FLOW --only fidelity`: the flow model's pooled
    embeddings reach it; anything but fidelity is refused with the tool that measures it."""
    from sampler.shapes import evaluate as E

    b = ShapesFlowBackbone(str(work / "ema"))
    images = E.sample(b, ["a red circle", "a blue square and a green triangle"], [0, 1], 2, 3.0)
    assert images.shape == (2, *b.image_size(), 3) and np.isfinite(images).all()
    with pytest.raises(SystemExit):
        E.main(["--model", str(work / "ema")])
    assert "flow_blocks" in capsys.readouterr().err


def test_the_grounding_fine_tune_resumes_and_ships_a_loadable_model(work, tmp_path):
    """sampler/shapes/flow_ground.py: the token loss on every joint block's maps beside the flow
    loss; a run stopped at its checkpoint resumes to the same weights as one that never stopped,
    and the finished run writes a model folder that loads as a backbone."""
    from sampler.shapes import flow_ground

    args = ["--init-from", str(work / "ema"), "--batch", "2", "--warmup", "1", "--cooldown", "1", "--ckpt-every", "1",
            "--threads", "1", "--no-bf16"]
    flow_ground.main([*args, "--work", str(tmp_path / "once"), "--steps", "2", "--out", str(tmp_path / "shipped")])
    flow_ground.main([*args, "--work", str(tmp_path / "twice"), "--steps", "2", "--max-minutes", "1e-9"])  # stops after step 1
    assert json.loads((tmp_path / "twice" / "record.json").read_text())["ground_steps"] == 1
    flow_ground.main([*args, "--work", str(tmp_path / "twice"), "--steps", "2"])
    record = json.loads((tmp_path / "once" / "record.json").read_text())
    assert record["ground_steps"] == 2 and 0 < record["ground_final_token_loss"] <= 1
    once, twice = FM.load(tmp_path / "once" / "ema"), FM.load(tmp_path / "twice" / "ema")
    for (name, a), (_, b) in zip(once.transformer.state_dict().items(), twice.transformer.state_dict().items()):
        assert torch.equal(a, b), name
    shipped = FM.load(tmp_path / "shipped")
    assert shipped.card["training"]["ground_steps"] == 2 and sum("flow_ground" in c for c in shipped.card["commands"]) == 1
    b = ShapesFlowBackbone(tmp_path / "shipped")
    assert b.latent_shape() == ShapesFlowBackbone(work / "ema").latent_shape()


def test_named_joint_blocks_are_probed_as_named_and_the_family_default_is_the_middle_third():
    from sampler.probes import joint_attention_layers

    t = FM.build_transformer(num_layers=12, num_attention_heads=2, attention_head_dim=8)
    assert joint_attention_layers(t) == [f"transformer_blocks.{i}.attn" for i in range(4, 8)]
    named = ("transformer_blocks.1", "transformer_blocks.10")  # ".1" is block 1, not 10 and 11 too
    assert joint_attention_layers(t, named) == ["transformer_blocks.1.attn", "transformer_blocks.10.attn"]
    shallow = FM.build_transformer(num_layers=3, num_attention_heads=2, attention_head_dim=8)
    assert joint_attention_layers(shallow, ("transformer_blocks.4", "transformer_blocks.5")) == ["transformer_blocks.1.attn"]

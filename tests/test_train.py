"""The training script is seeded and resumable: 2 steps + resume to 3 equals 3 steps straight."""

import json

import pytest
import torch
from safetensors.torch import load_file

from sampler.shapes import train


def vae_stage(work, steps=2):
    train.main(["vae", "--work", str(work), "--vae-steps", str(steps), "--vae-batch", "2", "--ckpt-every", "1"])


def run(work, steps):
    if not (work / "vae").is_dir():
        vae_stage(work)
    train.main(["unet", "--work", str(work), "--out", str(work / "out"), "--steps", str(steps), "--batch", "2",
                "--warmup", "1", "--cooldown", "1", "--ckpt-every", "1", "--clip-steps", "0"])


def test_vae_stage_measures_its_latents(tmp_path):
    vae_stage(tmp_path, 3)
    vae = train.load_vae(tmp_path)
    from sampler.shapes import model as M
    from sampler.shapes import world

    x = train.images_to_tensor([world.make_scene(i, M.IMAGE_SIZE) for i in range(8)])
    z = M.vae_encode(vae, x)
    assert z.shape == (8, 4, M.LATENT_SIZE, M.LATENT_SIZE)
    # the shift and scale were measured on world images: latents come out centred, of unit spread
    assert abs(z.mean().item()) < 0.5 and 0.5 < z.std().item() < 2.0
    assert M.vae_decode(vae, z).shape == x.shape


def test_the_unet_stage_needs_an_autoencoder(tmp_path):
    with pytest.raises(SystemExit, match="vae stage"):
        train.main(["unet", "--work", str(tmp_path), "--steps", "1", "--batch", "2"])


def test_training_never_writes_the_shipped_model_unasked(tmp_path):
    vae_stage(tmp_path)
    train.main(["unet", "--work", str(tmp_path), "--steps", "1", "--batch", "2", "--warmup", "1", "--ckpt-every", "1"])
    assert (tmp_path / "model" / "steer_shapes.json").is_file()


def test_wsd_schedule_holds_then_decays():
    lr = [train.lr_at(s, 100, 1.0, 10, "wsd", 20) for s in range(100)]
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)
    assert all(v == 1.0 for v in lr[10:80]) and lr[99] == pytest.approx(0.1 + 0.9 / 20) and lr[90] < lr[85] < 1.0


def test_resume_continues_exactly(tmp_path):
    straight, resumed = tmp_path / "a", tmp_path / "b"
    run(straight, 3)
    run(resumed, 2)
    run(resumed, 3)
    a = load_file(str(straight / "unet.ckpt.safetensors"))
    b = load_file(str(resumed / "unet.ckpt.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the exported model folder loads
    from sampler.shapes import model as M

    assert M.load(straight / "out", with_clip=False).unet is not None


def test_freeze_text_trains_the_unet_alone(tmp_path):
    vae_stage(tmp_path)
    train.main(["unet", "--work", str(tmp_path), "--out", str(tmp_path / "out"), "--steps", "2", "--batch", "2",
                "--warmup", "1", "--ckpt-every", "1", "--clip-steps", "0", "--freeze-text", "--restart"])
    first = load_file(str(tmp_path / "unet.ckpt.safetensors"))
    torch.manual_seed(0)  # what train_unet builds before its first step: the same seed, the same initial weights
    from transformers import CLIPTextModel

    from sampler.shapes import model as M

    tok = M.build_tokenizer()
    init_text = CLIPTextModel(M.text_config(tok)).state_dict()
    init_unet = M.build_unet().state_dict()
    text = {k[len("model.text_encoder."):]: v for k, v in first.items() if k.startswith("model.text_encoder.")}
    unet = {k[len("model.unet."):]: v for k, v in first.items() if k.startswith("model.unet.")}
    assert all(torch.equal(text[k], init_text[k]) for k in init_text), "the frozen text encoder moved"
    assert any(not torch.equal(unet[k], init_unet[k]) for k in init_unet), "the UNet did not train"
    assert any(k.startswith("opt.unet.") for k in first) and not any(k.startswith("opt.text_encoder.") for k in first)


def _tiny_run():
    """Two small modules (one with an integer buffer, which the EMA copies) and AdamW after a step."""
    torch.manual_seed(0)
    modules = {"unet": torch.nn.Linear(3, 2), "text_encoder": torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))}
    opt = torch.optim.AdamW([p for m in modules.values() for p in m.parameters()], lr=1e-2)
    for m in modules.values():
        m(torch.randn(4, m[0].in_features if isinstance(m, torch.nn.Sequential) else 3)).pow(2).sum().backward()
    opt.step()
    return modules, opt


def test_a_checkpoint_in_the_running_format_loads_and_continues(tmp_path):
    """The layout runs/shapes2 was written in (before sampler/training.py) still loads, bit for bit:
    model.{module}.{key}, ema.{module}.{key}, opt.{module}.{param}.exp_avg / .exp_avg_sq, and the
    metadata "state" = JSON {"step", "elapsed", "opt_step": {"module.param": step}}."""
    import json

    from safetensors.torch import save_file

    from sampler import training as T

    modules, opt = _tiny_run()
    ema = {f"{k}.{n}": v.detach().clone() + (0.5 if v.is_floating_point() else 3)
           for k, m in modules.items() for n, v in m.state_dict().items()}
    names = {p: f"{prefix}.{n}" for prefix, m in modules.items() for n, p in m.named_parameters()}
    tensors = {f"model.{prefix}.{k}": v.detach().contiguous() for prefix, m in modules.items() for k, v in m.state_dict().items()}
    tensors.update({f"ema.{k}": v.contiguous() for k, v in ema.items()})
    for p, s in opt.state.items():
        for key in ("exp_avg", "exp_avg_sq"):
            tensors[f"opt.{names[p]}.{key}"] = s[key].contiguous()
    state = {"step": 7, "elapsed": 12.5, "opt_step": {names[p]: float(s["step"]) for p, s in opt.state.items()}}
    path = tmp_path / "unet.ckpt.safetensors"
    save_file(tensors, str(path), metadata={"state": json.dumps(state)})

    torch.manual_seed(1)  # other weights: everything must come from the file
    fresh = {"unet": torch.nn.Linear(3, 2), "text_encoder": torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))}
    fresh_opt = torch.optim.AdamW([p for m in fresh.values() for p in m.parameters()], lr=1e-2)
    fresh_ema = T.ema_of(fresh)
    loaded, got = T.resume(path)
    T.restore_models(loaded, got, fresh, fresh_ema, fresh_opt)
    assert got["step"] == 7 and got["elapsed"] == 12.5
    for k, m in modules.items():
        assert all(torch.equal(v, fresh[k].state_dict()[n]) for n, v in m.state_dict().items())
    assert all(torch.equal(ema[k], fresh_ema[k]) for k in ema)

    # the next step is the same from the original and from the loaded state
    x = torch.randn(4, 3)
    for ms, o in ((modules, opt), (fresh, fresh_opt)):
        o.zero_grad()
        ms["unet"](x).pow(2).sum().backward()
        o.step()
    assert torch.equal(modules["unet"].weight, fresh["unet"].weight)

    # and the harness writes that same layout back
    T.save_models(tmp_path / "again.safetensors", fresh, fresh_ema, fresh_opt, {"step": 8, "elapsed": 13.0})
    again, again_state = T.load_checkpoint(tmp_path / "again.safetensors")
    assert again.keys() == tensors.keys() and list(again_state) == ["step", "elapsed", "opt_step"]
    assert again_state["opt_step"].keys() == state["opt_step"].keys()


def test_all_stages_make_a_loadable_latent_model(tmp_path):
    """One command makes the whole model: autoencoder, UNet + text encoder, CLIP, assembled."""
    train.main(["all", "--work", str(tmp_path), "--vae-steps", "2", "--vae-batch", "2", "--steps", "2", "--batch", "2",
                "--warmup", "1", "--cooldown", "1", "--clip-steps", "2", "--clip-batch", "4", "--no-evaluate"])
    from sampler.shapes import model as M

    m = M.load(tmp_path / "model")
    assert m.vae is not None and m.clip is not None
    assert m.card["training"]["unet_steps"] == 2 and m.card["training"]["vae_steps"] == 2
    assert m.clip.config.vision_config.image_size == M.IMAGE_SIZE


def test_a_stopped_unet_stage_resumes_instead_of_assembling(tmp_path, capsys):
    vae_stage(tmp_path)
    train.main(["all", "--work", str(tmp_path), "--steps", "3", "--batch", "2", "--warmup", "1", "--max-minutes", "1e-9",
                "--no-evaluate"])
    assert "step 1 of 3" in capsys.readouterr().out and not (tmp_path / "model").exists()


def test_a_later_session_continues_from_a_committed_snapshot(tmp_path):
    """Without the work folder's checkpoints, --init-from a model folder brings its autoencoder
    and its weights: how a run continues when only a snapshot was kept."""
    first = tmp_path / "first"
    train.main(["all", "--work", str(first), "--vae-steps", "2", "--vae-batch", "2", "--steps", "2", "--batch", "2",
                "--warmup", "1", "--cooldown", "1", "--clip-steps", "1", "--clip-batch", "4", "--no-evaluate"])
    later = tmp_path / "later"
    train.main(["unet", "--work", str(later), "--init-from", str(first / "model"), "--steps", "1", "--batch", "2",
                "--warmup", "1", "--cooldown", "1"])
    assert (later / "vae").is_dir() and (later / "model" / "steer_shapes.json").is_file()


def test_a_latent_pool_is_built_once_resumes_and_feeds_the_unet(tmp_path):
    from sampler.shapes import latent_pool
    from sampler.shapes import model as M

    vae_stage(tmp_path)
    vae = train.load_vae(tmp_path)
    path = tmp_path / "pool.safetensors"
    whole = latent_pool.build(path, vae, 0, 6, M.IMAGE_SIZE, 0.3, chunk=2, progress=False)
    assert len(whole) == 6 and whole.mean.shape[1:] == (4, M.LATENT_SIZE, M.LATENT_SIZE)
    again = latent_pool.build(path, vae, 0, 6, M.IMAGE_SIZE, 0.3, progress=False)  # loaded, not rebuilt
    assert torch.equal(again.mean, whole.mean) and again.captions == whole.captions
    drawn_apart = latent_pool.build(tmp_path / "pool2.safetensors", vae, 0, 6, M.IMAGE_SIZE, 0.3, chunk=4, progress=False,
                                    workers=2)  # scenes drawn in two processes: the same pool
    assert torch.equal(drawn_apart.mean, whole.mean) and drawn_apart.captions == whole.captions
    a = whole.draw(vae, 0, 3, 4, torch.Generator().manual_seed(1))
    b = whole.draw(vae, 0, 3, 4, torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and all(" " in c for c in a[1])
    with pytest.raises(SystemExit, match="another recipe"):
        latent_pool.build(path, vae, 1, 6, M.IMAGE_SIZE, 0.3, progress=False)
    train.main(["unet", "--work", str(tmp_path), "--steps", "2", "--batch", "2", "--warmup", "1", "--cooldown", "1",
                "--latent-pool", "4"])
    assert (tmp_path / "latent-pool-0-4.safetensors").is_file() and (tmp_path / "model" / "steer_shapes.json").is_file()
    train.main(["assemble", "--work", str(tmp_path)])  # a later command with other defaults
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["unet_batch"] == 2 and "CPU" in record["unet_machine"] and "batch" not in record  # kept per stage


def test_bf16_autocast_follows_the_flag_else_the_hardware(monkeypatch):
    from sampler import training as T

    assert T.bf16_autocast(True) is True and T.bf16_autocast(False, "cpu") is False
    # Unset: a CPU that would emulate bf16 trains in fp32 (10x faster there), one with bf16 units in bf16.
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert T.bf16_autocast(None, "cpu") is False
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert T.bf16_autocast(None, torch.device("cpu")) is True

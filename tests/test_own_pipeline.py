"""Editor(pipe) for a diffusers pipeline the user already loaded, single-file .safetensors
checkpoints, and --device auto. The pipelines are tests/tiny.py's, random weights from configs."""

import pytest
import torch

import dsl
from energies.errors import SteerUsageError
from sampler.backbones import StableDiffusionBackbone, StableDiffusionXLBackbone
from sampler.backbones import load as L
from sampler.editor import Editor


@pytest.fixture(scope="module")
def sd_pipe(tmp_path_factory):
    from tiny import tiny_sd_pipeline

    return tiny_sd_pipeline(tmp_path_factory.mktemp("sd"))


def test_editor_takes_a_stable_diffusion_pipeline(sd_pipe):
    editor = Editor(sd_pipe)
    assert type(editor.backbone) is StableDiffusionBackbone and editor.backbone.pipe is sd_pipe
    program = dsl.compile(dsl.parse('prompt "a (red:1.3) circle"\nsteps 2\ncentroid(token "circle") -> (0.7, 0.5)\n'))
    result = editor.run(program, progress=False)
    assert result.image.shape[:2] == editor.backbone.image_size()


def test_editor_takes_an_sdxl_pipeline(tmp_path):
    from tiny import tiny_sdxl_pipeline

    assert type(Editor(tiny_sdxl_pipeline(tmp_path)).backbone) is StableDiffusionXLBackbone


def test_a_subclass_of_a_supported_pipeline_is_wrapped_as_its_base(sd_pipe):
    from diffusers import StableDiffusionPipeline

    class MyPipeline(StableDiffusionPipeline):
        pass

    mine = MyPipeline(**sd_pipe.components, requires_safety_checker=False)
    assert type(Editor(mine).backbone) is StableDiffusionBackbone


def test_an_unsupported_pipeline_is_a_usage_error_naming_its_class(sd_pipe):
    from diffusers import DDIMPipeline

    with pytest.raises(SteerUsageError, match="DDIMPipeline"):
        Editor(DDIMPipeline(unet=sd_pipe.unet, scheduler=sd_pipe.scheduler))
    with pytest.raises(SteerUsageError, match="dict"):
        Editor({"unet": sd_pipe.unet})


# --- single-file checkpoints ---------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".ckpt", ".bin", ".pt"])
def test_a_pickled_single_file_is_refused_unread(tmp_path, suffix):
    f = tmp_path / f"model{suffix}"
    f.write_bytes(b"not to be unpickled")
    with pytest.raises(SteerUsageError, match="safetensors only"):
        L.load_backbone(str(f), device="cpu")


def test_a_missing_or_broken_safetensors_file_is_a_usage_error(tmp_path):
    with pytest.raises(SteerUsageError, match="does not exist"):
        L.load_backbone(str(tmp_path / "gone.safetensors"), device="cpu")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(SteerUsageError, match="cannot read the checkpoint"):
        L.load_backbone(str(tmp_path / "broken.safetensors"), device="cpu")


def _checkpoint(path, prefix):
    from safetensors.torch import save_file

    save_file({f"{prefix}.weight": torch.zeros(8, 4, 3, 3)}, str(path))  # the shape of SD's conv_in
    return str(path)


@pytest.mark.parametrize("prefix,pipeline,backbone", [
    ("model.diffusion_model.input_blocks.0.0", "StableDiffusionPipeline", StableDiffusionBackbone),
    ("conditioner.embedders.1.model.ln_final", "StableDiffusionXLPipeline", StableDiffusionXLBackbone),
])
def test_a_safetensors_checkpoint_goes_through_from_single_file(tmp_path, monkeypatch, sd_pipe, prefix, pipeline, backbone):
    """The dispatch: SD or SDXL from the checkpoint's keys, diffusers' from_single_file with a local
    config folder when one is given. (The loading itself is diffusers'; see the report below.)"""
    import diffusers

    calls = []

    def fake(cls, path, **kwargs):
        calls.append((cls.__name__, path, kwargs))
        return sd_pipe

    monkeypatch.setattr(getattr(diffusers, pipeline), "from_single_file", classmethod(fake))
    monkeypatch.setattr(backbone, "__init__", lambda self, pipe, name, low_memory=False: setattr(self, "name", name))
    f = _checkpoint(tmp_path / "fine-tune.safetensors", prefix)
    b = L.load_single_file(f, "cpu", torch.float32, config=str(tmp_path / "config"))
    assert type(b) is backbone and b.name == f
    assert calls == [(pipeline, f, {"torch_dtype": torch.float32, "config": str(tmp_path / "config")})]


def test_a_single_file_without_its_configs_offline_is_a_clean_error(tmp_path, monkeypatch):
    """Offline, with no config folder and nothing in the cache, diffusers cannot know the layout:
    the error names the file and says what is missing, without a traceback."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    f = _checkpoint(tmp_path / "fine-tune.safetensors", "model.diffusion_model.input_blocks.0.0")
    with pytest.raises(SteerUsageError, match="fine-tune.safetensors"):
        L.load_backbone(f, device="cpu")


# --- --device auto ------------------------------------------------------------------------


def test_auto_picks_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert L.resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert L.resolve_device("auto") == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert L.resolve_device("auto") == "cuda"
    assert L.resolve_device("cpu") == "cpu"  # a named device is kept, for check_device to judge


def test_auto_is_the_command_line_default_and_a_missing_device_is_still_refused():
    from dsl.cli import build_parser

    assert build_parser().parse_args(["run", "x.edit"]).device == "auto"
    L.check_device("auto")
    if not torch.cuda.is_available():
        with pytest.raises(SteerUsageError, match="no CUDA device"):
            L.check_device("cuda")

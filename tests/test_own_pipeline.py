"""Editor(pipe) for a diffusers pipeline the user already loaded, single-file .safetensors
checkpoints, and --device auto. The pipelines are tests/tiny.py's, random weights from configs."""

import re

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


# --- a real single-file round trip, offline -------------------------------------------------
# diffusers can read an original (LDM) checkpoint but not write one, so the test writes it: the
# inverse of diffusers' convert_ldm_*_checkpoint for tests/tiny.py's layout (any blocks and
# layers per block). Loading it back through from_single_file with the tiny pipeline's folder as
# `config` must give the same weights.

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_key(k: str, layers: int, attended_up: set) -> str:
    """A diffusers UNet2DConditionModel key -> its name in an LDM checkpoint's model.diffusion_model
    (`attended_up`: the up blocks with attention, whose upsampler comes third in its LDM block)."""
    top = {"conv_in.": "input_blocks.0.0.", "time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
           "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    for a, b in top.items():
        if k.startswith(a):
            return b + k[len(a):]

    def resnet(rest):
        for a, b in RESNET.items():
            if rest.startswith(a + "."):
                return b + rest[len(a):]
        raise KeyError(k)

    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", k):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        n = (layers + 1) * i + j + 1
        return f"input_blocks.{n}.0.{resnet(rest)}" if kind == "resnets" else f"input_blocks.{n}.1.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", k):
        return f"input_blocks.{(layers + 1) * (int(m[1]) + 1)}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", k):
        return f"middle_block.{2 * int(m[1])}.{resnet(m[2])}"
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", k):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", k):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        n = (layers + 1) * i + j
        return f"output_blocks.{n}.0.{resnet(rest)}" if kind == "resnets" else f"output_blocks.{n}.1.{rest}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", k):
        i = int(m[1])
        return f"output_blocks.{(layers + 1) * i + layers}.{2 if i in attended_up else 1}.{m[2]}"
    raise KeyError(k)


def _vae_key(k: str, blocks: int) -> tuple[str, bool]:
    """A diffusers AutoencoderKL key -> (its LDM name, whether it is an attention projection that
    LDM keeps as a 1x1 convolution)."""
    for part in ("encoder", "decoder"):
        if not k.startswith(part + "."):
            continue
        rest = k[len(part) + 1:]
        if m := re.match(r"(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", rest):
            i = int(m[2]) if m[1] == "down" else blocks - 1 - int(m[2])  # LDM numbers the decoder's blocks bottom up
            return f"{part}.{m[1]}.{i}.block.{m[3]}.{m[4].replace('conv_shortcut', 'nin_shortcut')}", False
        if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", rest):
            return f"{part}.down.{m[1]}.downsample.conv.{m[2]}", False
        if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", rest):
            return f"{part}.up.{blocks - 1 - int(m[1])}.upsample.conv.{m[2]}", False
        if m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", rest):
            return f"{part}.mid.block_{int(m[1]) + 1}.{m[2]}", False
        if m := re.match(r"mid_block\.attentions\.0\.(.*)\.(weight|bias)", rest):
            return f"{part}.mid.attn_1.{VAE_ATTN[m[1]]}.{m[2]}", m[1] != "group_norm"
        return f"{part}.{rest}", False  # conv_in, conv_norm_out -> norm_out below, conv_out
    return k, False


def write_ldm_checkpoint(pipe, path):
    """The tiny pipeline as one original-format .safetensors file (UNet, VAE, CLIP text encoder)."""
    from safetensors.torch import save_file

    out = {}
    layers = pipe.unet.config.layers_per_block
    attended_up = {i for i, kind in enumerate(pipe.unet.config.up_block_types) if "CrossAttn" in kind}
    for k, v in pipe.unet.state_dict().items():
        out["model.diffusion_model." + _unet_key(k, layers, attended_up)] = v
    vae_blocks = len(pipe.vae.config.block_out_channels)
    for k, v in pipe.vae.state_dict().items():
        name, conv = _vae_key(k, vae_blocks)
        name = name.replace("conv_norm_out", "norm_out")
        out["first_stage_model." + name] = v[..., None, None] if conv and v.dim() == 2 else v
    for k, v in pipe.text_encoder.state_dict().items():
        text_model = "" if k.startswith("text_model.") else "text_model."  # transformers >= 5.6 flattened CLIPTextModel
        out["cond_stage_model.transformer." + text_model + k] = v
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    return str(path)


def test_a_single_file_checkpoint_loads_offline_with_a_local_config(tmp_path, sd_pipe):
    sd_pipe.save_pretrained(tmp_path / "config", safe_serialization=True)
    f = write_ldm_checkpoint(sd_pipe, tmp_path / "fine-tune.safetensors")
    b = L.load_backbone(f, device="cpu", config=str(tmp_path / "config"))
    assert type(b) is StableDiffusionBackbone and b.name == f
    for mine, theirs in ((b.unet, sd_pipe.unet), (b.vae, sd_pipe.vae), (b.text_encoder, sd_pipe.text_encoder)):
        got, want = mine.state_dict(), theirs.state_dict()
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), [k for k in want if not torch.equal(got[k], want[k])][:5]
    result = Editor(b).run(dsl.compile(dsl.parse('prompt "a red circle"\nsteps 2\n')), progress=False)
    assert result.image.shape[:2] == b.image_size()

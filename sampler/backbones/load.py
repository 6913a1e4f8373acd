"""Loading a backbone by name: "shapes", "shapes-flow", a shapes model folder, or a Stable Diffusion
(1.x, 2.x, XL, 3.x) or FLUX.1 model id or folder; safetensors only. What cannot be loaded is a usage error that says why."""

from __future__ import annotations

from pathlib import Path

import torch

from energies.errors import SteerUsageError

from .base import Backbone
from .flow import FluxBackbone, ShapesFlowBackbone, StableDiffusion3Backbone
from .shapes import ShapesBackbone
from .stable_diffusion import StableDiffusionBackbone, StableDiffusionXLBackbone


def quiet_loading():
    """Loading a few-MB model should not print progress bars and advice about accelerate."""
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_backbone(model=None, device: str = "auto", dtype: str = "fp32", low_memory: bool = False,
                  config: str | None = None) -> Backbone:
    """"shapes" (default), a shapes model folder, a Stable Diffusion model id / folder, a
    single-file .safetensors checkpoint, or a diffusers pipeline object already loaded.
    `dtype` applies to Stable Diffusion (the shapes model always runs in fp32); `low_memory`
    (the Editor recomputes the guided backward's activations) to every model, and Stable
    Diffusion also slices its attention.
    `config` is a local diffusers folder of a single-file checkpoint's architecture (offline use).
    A model that cannot be found or read, or a device that is not there, is a SteerUsageError."""
    from ..shapes import flow_model
    from ..shapes import model as shapes_model

    if not isinstance(model, (str, Path, type(None))):
        return backbone_for_pipeline(model, device, low_memory)
    device = resolve_device(device)
    check_device(device)
    quiet_loading()
    model = str(model or "shapes")
    if is_single_file(model):
        return load_single_file(model, device, DTYPES[dtype], low_memory, config)
    path = shapes_model.resolve(model)
    if model == "shapes" or shapes_model.is_shapes_folder(Path(path)):
        return ShapesBackbone(model, device=device)
    if model == "shapes-flow" or flow_model.is_flow_folder(flow_model.resolve(model)):
        if not flow_model.is_flow_folder(flow_model.resolve(model)):
            raise SteerUsageError("the shapes flow model is not trained yet (sampler/shapes/flow has no model)",
                                  hint="train it: python -m sampler.shapes.flow_train --work runs/shapes-flow --out sampler/shapes/flow")
        return ShapesFlowBackbone(flow_model.resolve(model), device=device)
    cls = backbone_class(pipeline_class(model))
    refuse_pickle_only(model)
    try:
        return cls.from_pretrained(model, device=device, dtype=DTYPES[dtype], low_memory=low_memory)
    except OSError as e:  # a hub id whose safetensors are missing, a folder with a part missing
        raise SteerUsageError(f"cannot load the model {model!r}: {_first_line(e)}", hint=MODEL_HINT) from None


MODEL_HINT = ('--model takes "shapes", "shapes-flow", a shapes model folder, a Stable Diffusion or FLUX folder (with '
              "model_index.json) or a Hugging Face id already in the local cache")


def backbone_class(pipeline: str) -> type:
    """The Backbone of a pipeline class name (model_index.json's _class_name)."""
    if pipeline.startswith("StableDiffusion3"):
        return StableDiffusion3Backbone
    if pipeline.startswith("Flux"):
        return FluxBackbone
    return StableDiffusionXLBackbone if "XL" in pipeline else StableDiffusionBackbone


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def flow_kind(model: str | None) -> str | None:
    """"sd3", "flux" or "shapes-flow" for a rectified-flow model, read from its folder or cached
    hub id without loading weights; None for any other model."""
    from ..shapes import flow_model
    from ..shapes import model as shapes_model

    model = str(model or "shapes")
    if model == "shapes" or shapes_model.is_shapes_folder(Path(shapes_model.resolve(model))) or is_single_file(model):
        return None
    if model == "shapes-flow" or flow_model.is_flow_folder(flow_model.resolve(model)):
        return ShapesFlowBackbone.kind
    cls = backbone_class(pipeline_class(model))
    return cls.kind if cls in (StableDiffusion3Backbone, FluxBackbone) else None


def pipeline_class(model: str) -> str:
    """The pipeline class a Stable Diffusion folder or hub id names (its model_index.json)."""
    from diffusers import DiffusionPipeline

    if _looks_like_a_path(model) and not Path(model).is_dir():
        raise SteerUsageError(f"model folder {model!r} does not exist", hint=MODEL_HINT)
    try:
        return DiffusionPipeline.load_config(model).get("_class_name", "")  # model_index.json, local or hub
    except (OSError, ValueError):
        raise SteerUsageError(f"cannot find the model {model!r}: it is not a shapes model, a Stable Diffusion folder "
                              "or a Hugging Face id in the local cache", hint=MODEL_HINT) from None


def _looks_like_a_path(model: str) -> bool:
    """A hub id is "owner/name"; anything else with a slash, or that starts like a path, is a folder."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model or Path(model).exists()


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def pickle_only_parts(folder: Path) -> list[str]:
    """The parts (unet, vae, text_encoder, ...) of a pipeline folder whose weights are only in
    pickle files: loading those would run whatever code the file holds."""
    parts = []
    for sub in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        files = [f.name for f in sub.iterdir() if f.is_file()]
        if any(f.endswith(PICKLE_SUFFIXES) for f in files) and not any(f.endswith(".safetensors") for f in files):
            parts.append(sub.name)
    return parts


def refuse_pickle_only(model: str):
    """steer reads weights from safetensors only: a local folder with pickle-only parts is refused,
    with how to convert it, before diffusers is asked (it would fall back to torch.load)."""
    if not Path(model).is_dir():
        return  # a hub id: from_pretrained(use_safetensors=True) refuses pickles itself
    parts = pickle_only_parts(Path(model))
    if parts:
        raise SteerUsageError(
            f"model folder {model!r} has weights only as pickle files (.bin) in {', '.join(parts)}; steer loads safetensors only",
            hint="convert it once, if you trust the files (this unpickles them): python -c \"from diffusers import DiffusionPipeline; "
                 f"DiffusionPipeline.from_pretrained('{model}').save_pretrained('{model}-safetensors', safe_serialization=True)\"")


def resolve_device(device: str | None) -> str:
    """"auto" (the default) is the fastest device here: cuda, then mps, then cpu. Any other name
    is kept as given, for check_device to refuse if it is not there."""
    if device not in (None, "auto"):
        return device
    if torch.cuda.is_available():
        return "cuda"
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def check_device(device: str):
    """A device name torch knows and this machine has: auto, cpu, cuda, cuda:N, mps."""
    device = resolve_device(device)
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise SteerUsageError(f"--device {device!r} is not a device name", hint="auto, cpu, cuda, cuda:1, mps ...") from None
    if d.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SteerUsageError(f"--device {device}: this machine (or this torch build) has no CUDA device", hint="use --device cpu")
        if d.index is not None and d.index >= count:
            raise SteerUsageError(f"--device {device}: there are only {count} CUDA device(s)", hint=f"use cuda:0 to cuda:{count - 1}")
    elif d.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise SteerUsageError(f"--device {device}: MPS is not available here", hint="use --device cpu")
    elif d.type not in ("cpu", "cuda", "mps"):
        raise SteerUsageError(f"--device {device}: steer runs on cpu, cuda or mps", hint="use --device cpu")


def direction_folders(script_dir, model: str | None) -> list[Path]:
    """The folders `direction NAME` is looked up in, for a script in `script_dir` run on `model`
    (its shipped directions when it is a shapes model folder), without loading the model."""
    from energies import directions

    from ..shapes import model as shapes_model

    return directions.search_path(script_dir, shapes_model.resolve(model or "shapes"))


def load_tokenizer(model: str | None = None):
    """Just the tokenizer of a model, for `steer check` (no weights are loaded)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from ..shapes import flow_model
    from ..shapes import model as shapes_model

    model = model or "shapes"
    path = shapes_model.resolve(model)
    if model == "shapes" or shapes_model.is_shapes_folder(Path(path)):
        return PreTrainedTokenizerFast.from_pretrained(Path(path) / "tokenizer")
    if model == "shapes-flow" or flow_model.is_flow_folder(flow_model.resolve(model)):
        return PreTrainedTokenizerFast.from_pretrained(flow_model.resolve(model) / "tokenizer")
    if is_single_file(model):  # the tokenizer is inside the checkpoint's pipeline: load it whole
        return load_single_file(model, "cpu", torch.float32).tokenizer
    cls = backbone_class(pipeline_class(model))  # (a clean error for a model that is not there)
    try:
        t5 = _t5_part(model, cls)
        if t5 is not None:  # token maps are per T5 position (backbones/flow.py)
            from .flow import t5_tokenizer

            tok = AutoTokenizer.from_pretrained(model, subfolder=t5[0])
            return t5_tokenizer(tok, min(t5[1], tok.model_max_length))
        return AutoTokenizer.from_pretrained(model, subfolder="tokenizer")
    except (OSError, ValueError) as e:
        raise SteerUsageError(f"cannot load the tokenizer of {model!r}: {_first_line(e)}", hint=MODEL_HINT) from None


def _t5_part(model: str, cls: type) -> tuple[str, int] | None:
    """(tokenizer subfolder, sequence length) of a flow pipeline's T5; None for a model without one
    (SD3 may be saved without text_encoder_3: its maps are over CLIP's tokens)."""
    from diffusers import DiffusionPipeline

    if cls is FluxBackbone:
        return "tokenizer_2", 512
    if cls is StableDiffusion3Backbone and (DiffusionPipeline.load_config(model).get("text_encoder_3") or [None])[0]:
        return "tokenizer_3", StableDiffusion3Backbone.t5_length
    return None


def flow_prompt_shape(model: str) -> tuple[int, int]:
    """(T, D) of a flow model's text sequence, what a prompt direction must fit, from its config
    files and tokenizers (no weights); agrees with the loaded backbone's (tests/test_flow_backbones.py)."""
    import json

    from diffusers import SD3Transformer2DModel
    from transformers import AutoTokenizer

    from ..shapes import flow_model

    kind = flow_kind(model)
    if kind == "shapes-flow":
        folder = flow_model.resolve(model)
        width = json.loads((folder / "transformer" / "config.json").read_text())["joint_attention_dim"]
        return load_tokenizer(model).model_max_length, int(width)
    width = int(SD3Transformer2DModel.load_config(model, subfolder="transformer")["joint_attention_dim"])  # FLUX's config has it too
    if kind == "flux":
        return load_tokenizer(model).model_max_length, width
    clip = AutoTokenizer.from_pretrained(model, subfolder="tokenizer").model_max_length
    t5 = load_tokenizer(model).model_max_length if _t5_part(model, StableDiffusion3Backbone) else StableDiffusion3Backbone.t5_length
    return clip + t5, width


# ---------------------------------------------------------------------------------------------
# A pipeline the user already loaded: Editor(pipe).

def backbone_for_pipeline(pipe, device: str | None = "auto", low_memory: bool = False) -> Backbone:
    """The Backbone that wraps a diffusers pipeline object (subclasses included). The pipeline
    stays on the device it is on unless a device is named. Any other object is a usage error
    naming its class, not a TypeError from deep inside."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = type(pipe).__name__
    if isinstance(pipe, StableDiffusion3Pipeline):
        backbone = StableDiffusion3Backbone
    elif isinstance(pipe, FluxPipeline):
        backbone = FluxBackbone
    elif isinstance(pipe, StableDiffusionXLPipeline):  # first: neither class derives from the other, but be explicit
        backbone = StableDiffusionXLBackbone
    elif isinstance(pipe, StableDiffusionPipeline):
        backbone = StableDiffusionBackbone
    else:
        raise SteerUsageError(f"steer cannot edit with a {cls}: it supports StableDiffusionPipeline, StableDiffusionXLPipeline, "
                              "StableDiffusion3Pipeline and FluxPipeline (and their subclasses)", hint=MODEL_HINT)
    if device not in (None, "auto"):
        check_device(device)
        pipe = pipe.to(device)
    name = pipe.config.get("_name_or_path") or cls
    return backbone(pipe, name=str(name), low_memory=low_memory)


# ---------------------------------------------------------------------------------------------
# A single-file checkpoint (a fine-tuned model in one file, as A1111 and civitai share them).

SINGLE_FILE_SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES


def is_single_file(model: str) -> bool:
    return Path(model).suffix.lower() in SINGLE_FILE_SUFFIXES and not Path(model).is_dir()


def load_single_file(path: str, device: str, dtype: torch.dtype, low_memory: bool = False, config: str | None = None) -> Backbone:
    """A .safetensors checkpoint through diffusers' from_single_file. Pickled checkpoints (.ckpt,
    .bin, ...) are refused: reading them runs whatever code they hold. `config` is a local
    diffusers folder of the same architecture; without it diffusers fetches the configs for the
    inferred model type from the hub (or its cache)."""
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    p = Path(path)
    if p.suffix.lower() != ".safetensors":
        raise SteerUsageError(f"{path!r} is a pickled checkpoint ({p.suffix}); steer loads safetensors only",
                              hint="convert it once, if you trust the file (this unpickles it), to .safetensors, "
                                   "or use the model's safetensors release")
    if not p.is_file():
        raise SteerUsageError(f"checkpoint {path!r} does not exist", hint=MODEL_HINT)
    cls = StableDiffusionXLBackbone if is_sdxl_checkpoint(p) else StableDiffusionBackbone
    pipeline = single_file_pipeline_class(cls)
    kwargs = {"config": config} if config else {}
    try:
        pipe = pipeline.from_single_file(str(p), torch_dtype=dtype, **kwargs)
    except (OSError, ValueError, SingleFileComponentError) as e:  # no config offline; keys of another architecture or a part missing
        raise SteerUsageError(f"cannot load the checkpoint {path!r}: {_first_line(e)}",
                              hint="diffusers needs the configs of the checkpoint's architecture: online once (they are "
                                   "cached), or offline load_backbone(path, config=<a local diffusers folder of the same "
                                   "architecture>) and Editor(that backbone)") from None
    return cls(pipe.to(device), name=str(path), low_memory=low_memory)


def is_sdxl_checkpoint(path: Path) -> bool:
    """SDXL's original checkpoints hold its two text encoders under conditioner.embedders; SD 1.x/2.x's do not."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return any(k.startswith("conditioner.embedders.") for k in f.keys())
    except (SafetensorError, OSError) as e:
        raise SteerUsageError(f"cannot read the checkpoint {str(path)!r}: {_first_line(e)}", hint="is it a complete .safetensors file?") from None


def single_file_pipeline_class(backbone: type):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if backbone is StableDiffusionXLBackbone else StableDiffusionPipeline

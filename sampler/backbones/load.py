"""Loading a backbone by name: "shapes", a shapes model folder, or a Stable Diffusion model id or
folder; safetensors only. What cannot be loaded is a usage error that says why."""

from __future__ import annotations

from pathlib import Path

import torch

from energies.errors import SteerUsageError

from .base import Backbone
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


def load_backbone(model: str | None = None, device: str = "cpu", dtype: str = "fp32", low_memory: bool = False) -> Backbone:
    """"shapes" (default), a shapes model folder, or a Stable Diffusion model id / folder.
    `dtype` and `low_memory` apply to Stable Diffusion; the shapes model always runs in fp32.
    A model that cannot be found or read, or a device that is not there, is a SteerUsageError."""
    from ..shapes import model as shapes_model

    check_device(device)
    quiet_loading()
    model = model or "shapes"
    path = shapes_model.resolve(model)
    if model == "shapes" or shapes_model.is_shapes_folder(Path(path)):
        return ShapesBackbone(model, device=device)
    cls = StableDiffusionXLBackbone if "XL" in pipeline_class(model) else StableDiffusionBackbone
    refuse_pickle_only(model)
    try:
        return cls.from_pretrained(model, device=device, dtype=DTYPES[dtype], low_memory=low_memory)
    except OSError as e:  # a hub id whose safetensors are missing, a folder with a part missing
        raise SteerUsageError(f"cannot load the model {model!r}: {_first_line(e)}", hint=MODEL_HINT) from None


MODEL_HINT = ('--model takes "shapes", a shapes model folder, a Stable Diffusion folder (with model_index.json) '
              "or a Hugging Face id already in the local cache")


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


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


def check_device(device: str):
    """A device name torch knows and this machine has: cpu, cuda, cuda:N, mps."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise SteerUsageError(f"--device {device!r} is not a device name", hint="cpu, cuda, cuda:1, mps ...") from None
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

    from ..shapes import model as shapes_model

    model = model or "shapes"
    path = shapes_model.resolve(model)
    if model == "shapes" or shapes_model.is_shapes_folder(Path(path)):
        return PreTrainedTokenizerFast.from_pretrained(Path(path) / "tokenizer")
    pipeline_class(model)  # a clean error for a model that is not there
    try:
        return AutoTokenizer.from_pretrained(model, subfolder="tokenizer")
    except (OSError, ValueError) as e:
        raise SteerUsageError(f"cannot load the tokenizer of {model!r}: {_first_line(e)}", hint=MODEL_HINT) from None

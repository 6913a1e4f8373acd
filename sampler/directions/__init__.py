"""Learned directions in an edit: one plug-in per kind, behind one interface (base.py).

    hspace  Asyrp: delta-h added to the mid block's output, the asymmetric reverse step
    noise   NoiseCLR: a learned token's noise difference added to epsilon
    prompt  Pix2Pix-Zero: the prompt's embedding shifted by delta_c
    finetune  DiffusionCLIP: a fine-tuned UNet (a LoRA), its noise mixed with the original's

A direction file (energies/directions.py) names its kind; the editor asks the kind to prepare
its state, to condition each step and to guide it.
"""

from __future__ import annotations

import torch

from energies import directions as files
from energies.errors import SteerCompileError, SteerUsageError

from .base import DirectionKind, ModelShapes, Step
from .finetune import FineTuned
from .hspace import HSpace, mid_block_shape
from .noise import Noise
from .noise import width as token_width
from .prompt import Prompt, prompt_shape

KINDS: dict[str, DirectionKind] = {k.name: k for k in (HSpace(), Noise(), Prompt(), FineTuned())}


def shapes_of(backbone) -> ModelShapes:
    """The shapes a direction must fit, read off a loaded backbone. A flow transformer has no mid
    block: (0, 0, 0), which no h-space direction fits (sampler/flow.py refuses them first)."""
    mid = mid_block_shape(backbone.unet) if "block_out_channels" in backbone.unet.config else (0, 0, 0)
    return ModelShapes(backbone.kind, backbone.name, mid, token_width(backbone), prompt_shape(backbone))


def model_shapes(model: str | None) -> ModelShapes:
    """The shapes a direction must fit, from the model's config files and tokenizer only (no
    weights): what `steer check` compares directions with. Agrees with shapes_of on the loaded
    model (tests/test_directions_learn.py)."""
    from pathlib import Path

    from ..backbones import load_tokenizer, pipeline_class
    from ..shapes import model as shapes_model

    model = model or "shapes"
    folder = shapes_model.resolve(model)
    tokens = int(load_tokenizer(model).model_max_length)
    if model == "shapes" or shapes_model.is_shapes_folder(Path(folder)):
        unet, encoders = _json(folder / "unet" / "config.json"), [_json(folder / "text_encoder" / "config.json")]
        return ModelShapes("shapes", str(model), mid_block_shape(unet), encoders[0]["hidden_size"], (tokens, encoders[0]["hidden_size"]))
    kind = "sdxl" if "XL" in pipeline_class(model) else "sd"
    unet = _config(model, "unet")
    encoders = [_config(model, "text_encoder")] + ([_config(model, "text_encoder_2")] if kind == "sdxl" else [])
    width = sum(int(e["hidden_size"]) for e in encoders)  # SDXL: both encoders' rows, and states, concatenated
    return ModelShapes(kind, str(model), mid_block_shape(unet), width, (tokens, width))


def _json(path) -> dict:
    import json

    return json.loads(path.read_text())


def _config(model: str, part: str) -> dict:
    """config.json of one part (unet, text_encoder, ...) of a Stable Diffusion folder or cached hub id."""
    from diffusers import UNet2DConditionModel
    from transformers import AutoConfig

    try:
        if part == "unet":
            return dict(UNet2DConditionModel.load_config(model, subfolder=part))
        return AutoConfig.from_pretrained(model, subfolder=part).to_dict()
    except (OSError, ValueError) as e:
        raise SteerUsageError(f"cannot read {part}/config.json of the model {model!r}: {str(e).splitlines()[0]}") from None


def check(d: files.Direction, model, span=None) -> files.Direction:
    """`d` if its numbers are finite and it fits `model` (a loaded Backbone, or the ModelShapes of
    one that is not loaded: family and tensor shapes), else a SteerCompileError naming the file,
    or both models."""
    refuse_nonfinite(d, span)
    shapes = model if isinstance(model, ModelShapes) else shapes_of(model)
    learned = str(d.meta.get("backbone", "?"))
    here = f"{shapes.kind}:{shapes.name}"

    def mismatch(why: str):
        where = f"does not fit this model {here}" if learned == here else f"was learned on {learned}, not on this model {here}"
        return SteerCompileError(
            f"direction {d.name!r} {where}: {why}", span,
            hint=f"learn it again on this model: steer learn {files.LEARN[d.kind]} ... --model {shapes.name}",
        )

    learned_kind = learned.split(":", 1)[0]
    if learned_kind != shapes.kind:
        raise mismatch(f"a {learned_kind!r} backbone, this is a {shapes.kind!r} one")
    why = KINDS[d.kind].mismatch(d, shapes)
    if why is not None:
        raise mismatch(why)
    if d.kind == "hspace" and d.tensors["delta_h"].dim() == 4 and "timesteps" not in d.tensors:
        raise SteerCompileError(f"direction {d.name!r} has one delta-h per timestep but no 'timesteps' tensor", span)
    return d


def refuse_nonfinite(d: files.Direction, span=None):
    """A direction with a NaN or an infinity would shift every step it acts on to NaN (a black
    image): it is refused when it is loaded, naming the file and the tensor."""
    for name, tensor in d.tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise SteerCompileError(f"direction file {str(d.path or d.name)!r} has {bad} value(s) in {name!r} that are not finite numbers",
                                    span, hint=f"learn it again: steer learn {files.LEARN[d.kind]} ...")


def load(path, backbone, span=None) -> files.Direction:
    """Read a direction file (energies/directions.py) and check that it fits `backbone`."""
    return check(files.read_direction(path, span), backbone, span)


__all__ = ["KINDS", "DirectionKind", "ModelShapes", "Step", "check", "load", "model_shapes", "shapes_of"]

"""The shapes flow model: an SD3-style MMDiT on the shapes world, and how to load it offline.

The same world, autoencoder (64x64x3 <-> 16x16x4) and text encoder as the second-generation
shapes UNet model (model.py), with a diffusers SD3Transformer2DModel in place of the UNet, trained
by flow matching (flow_train.py). Patch size 1, so the joint attention's image tokens are the
latent's 16 x 16 positions, the resolution of the UNet model's maps. No T5: the world's captions
are a few words of a closed vocabulary, which the shapes CLIP text encoder already separates; its
last hidden state is the text sequence, its pooled output the pooled embedding.

On disk: transformer/, vae/, text_encoder/, tokenizer/, scheduler/ (FlowMatchEulerDiscreteScheduler),
clip/ when the folder it was trained from has one (the shapes CLIP the x0 terms read), and
steer_shapes_flow.json (the card: sampling defaults, training record).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from . import model as M

SHIPPED = Path(__file__).parent / "flow"  # the flow model steer ships once trained, loaded by the name "shapes-flow"
CARD = "steer_shapes_flow.json"
DEFAULTS = {"steps": 20, "cfg": 2.0}  # tune split, step 5,000: two objects right 50 / 47 / 44 / 43% at cfg 2 / 3 / 4 / 6

TRANSFORMER = dict(  # ~4 M parameters: six joint blocks of width 128 over 256 image tokens and 16 text tokens
    sample_size=16, patch_size=1, in_channels=4, out_channels=4, num_layers=6, attention_head_dim=32, num_attention_heads=4,
    joint_attention_dim=M.TEXT_WIDTH, caption_projection_dim=128, pooled_projection_dim=M.TEXT_WIDTH,
    pos_embed_max_size=16, qk_norm="rms_norm",
)
SCHEDULER = dict(shift=1.0)  # SD3's shift 3 is for 1024 px images; a 16x16 latent needs none


def build_transformer(**overrides):
    from diffusers import SD3Transformer2DModel

    cfg = {**TRANSFORMER, **overrides}
    cfg["caption_projection_dim"] = cfg["attention_head_dim"] * cfg["num_attention_heads"]
    return SD3Transformer2DModel(**cfg)


def build_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**SCHEDULER)


@dataclass
class ShapesFlowModel:
    tokenizer: object
    text_encoder: torch.nn.Module
    transformer: torch.nn.Module
    vae: torch.nn.Module
    scheduler: object
    clip: torch.nn.Module | None
    path: Path
    card: dict


def resolve(name_or_path) -> Path:
    return SHIPPED if str(name_or_path) == "shapes-flow" else Path(name_or_path)


def is_flow_folder(path) -> bool:
    return (Path(path) / CARD).is_file()


def load(name_or_path="shapes-flow", device="cpu") -> ShapesFlowModel:
    """Load a folder written by `save` (safetensors only), offline."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    path = resolve(name_or_path)
    if not is_flow_folder(path):
        raise FileNotFoundError(f"{path} is not a shapes flow model folder (no {CARD}); train one with "
                                "`python -m sampler.shapes.flow_train`")
    tokenizer, text_encoder, vae, clip, card = M.load_parts(path, CARD, device)
    transformer = SD3Transformer2DModel.from_pretrained(path / "transformer", use_safetensors=True).to(device, torch.float32).eval().requires_grad_(False)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path / "scheduler")
    return ShapesFlowModel(tokenizer, text_encoder, transformer, vae, scheduler, clip, path, card)


def save(path, tokenizer, text_encoder, transformer, vae, scheduler, clip=None, card: dict | None = None, dtype=torch.float32):
    """Write a shapes flow model folder (safetensors weights, JSON configs): the transformer, text
    encoder and CLIP in `dtype` (fp16 for the shipped folder, loaded back as fp32), the autoencoder
    in fp32."""
    path = Path(path)
    M.save_parts(path, tokenizer, text_encoder, clip, None, dtype)
    vae.to(torch.float32).save_pretrained(path / "vae", safe_serialization=True)
    transformer.to(dtype).save_pretrained(path / "transformer", safe_serialization=True)
    scheduler.save_pretrained(path / "scheduler")
    (path / CARD).write_text(json.dumps({"defaults": DEFAULTS, **(card or {})}, indent=2) + "\n")

"""The shapes model: Stable Diffusion's classes at shapes-world size, and how to load it offline.

Second generation (what `build_*` make): latent diffusion, as Stable Diffusion is. A diffusers
AutoencoderKL maps a 64x64 world image to a 4x16x16 latent (factor 4); a transformers
CLIPTextModel with a word-level tokenizer encodes the caption; a diffusers UNet2DConditionModel
with cross-attention at 16x16, 8x8 and in the 4x4 mid block denoises the latent; diffusers' DDIM
samples. The same layout on disk as a diffusers pipeline folder: vae/, unet/, text_encoder/,
tokenizer/, scheduler/, plus clip/ for the shapes CLIP that the ViT and CLIP energies read.

A folder without vae/ is a first-generation pixel-space model (32x32, the "latent" is the image in
[-1, 1]); `load` reads either, from the configs on disk.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from energies.files import atomic_write

from . import world

SHIPPED = Path(__file__).parent / "weights"  # the model steer ships, loaded by the name "shapes"
MAX_LENGTH = 16  # tokens per caption, BOS and EOS included (SD uses 77)
SPECIAL = ("<pad>", "<unk>", "<bos>", "<eos>")


def build_tokenizer():
    """A word-level tokenizer over the world's words, as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate((*SPECIAL, *world.WORDS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=MAX_LENGTH,
    )


IMAGE_SIZE = 64  # world images, in pixels
TEXT_WIDTH = 128


def text_config(tokenizer):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=4 * TEXT_WIDTH,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=TEXT_WIDTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


# The autoencoder: 64x64x3 <-> 16x16x4. Three encoder blocks, two of them downsampling (factor 4),
# as Stable Diffusion's four blocks give factor 8. Its scaling and shift factors are measured on
# world images after training (vae.config.scaling_factor, shift_factor), so latents have unit
# variance around zero: z = (vae_latent - shift) * scale.
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=16,
    sample_size=IMAGE_SIZE,
)
LATENT_SIZE = IMAGE_SIZE // 4

# Cross-attention (and self-attention) at 16x16 and 8x8, and in the 4x4 mid block; the deepest
# down block is a plain ResNet block. Diffusers' up blocks mirror the down blocks.
UNET_CONFIG = dict(
    sample_size=LATENT_SIZE,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(64, 128, 128),
    layers_per_block=1,
    cross_attention_dim=TEXT_WIDTH,
    attention_head_dim=8,  # diffusers' name for the number of heads in this UNet class
    norm_num_groups=16,
)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",  # cosine: the usual choice for small pixel-space models
    clip_sample=False,
    set_alpha_to_one=True,
    # Cosine on the latent too: alpha_bar(999) = 2e-9, so the last training step is pure noise
    # (zero terminal SNR in all but name) and the model learns to draw the layout from nothing.
    # Not "trailing": the cosine schedule has alpha_bar(999) = 2e-9, where x0 = (z - eps) / 5e-5
    # magnifies any error in eps 20,000 times and DDIM inversion cannot come back (4 dB PSNR).
    # "leading" with offset 1 starts at t = 961 (25 steps) or 981 (50 steps), as SD does.
    timestep_spacing="leading",
    steps_offset=1,
    prediction_type="epsilon",
)

# Default sampling settings of the shapes model, chosen on the tune split (the model card): for the
# grounded model cfg 2 draws two-object captions right 76.5% of the time, cfg 3 73.8% (324 images
# each); higher cfg draws more duplicated objects.
DEFAULTS = dict(steps=25, cfg=2.0)


def clip_config(tokenizer):
    from transformers import CLIPConfig

    t = text_config(tokenizer).to_dict()
    vision = dict(
        hidden_size=96,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=8,
        num_channels=3,
    )
    return CLIPConfig(text_config=t, vision_config=vision, projection_dim=64)


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG)


def vae_encode(vae, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images in [-1, 1] -> the diffusion model's latents (the posterior mean, or a sample of it
    when a generator is given, as Stable Diffusion trains)."""
    d = vae.encode(x).latent_dist
    z = d.mean if generator is None else d.mean + d.std * torch.randn(d.mean.shape, generator=generator).to(d.mean)
    return (z - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor


def vae_decode(vae, z: torch.Tensor) -> torch.Tensor:
    """The diffusion model's latents -> images in [-1, 1] (not clamped)."""
    return vae.decode(z / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)).sample


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIG)


def build_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_CONFIG)


@dataclass
class ShapesModel:
    tokenizer: object
    text_encoder: torch.nn.Module
    unet: torch.nn.Module
    scheduler: object
    clip: torch.nn.Module | None
    path: Path
    card: dict
    vae: torch.nn.Module | None = None  # None: a first-generation pixel-space model


def resolve(name_or_path: str | Path) -> Path:
    if str(name_or_path) == "shapes":
        return SHIPPED
    return Path(name_or_path)


def is_shipped(name_or_path: str | Path) -> bool:
    """Whether a name or folder is the shipped model, however it is spelled ("shapes", a path)."""
    return resolve(name_or_path).resolve() == SHIPPED.resolve()


def write_folder(out: Path, fill):
    """Write a model folder atomically: `fill(tmp)` writes the weights; learned directions
    already beside the old weights (out/directions) are carried over."""
    def write(tmp):
        fill(tmp)
        if (out / "directions").is_dir():
            shutil.copytree(out / "directions", tmp / "directions")

    atomic_write(out, write)


def is_shapes_folder(path: Path) -> bool:
    return (path / "steer_shapes.json").is_file()


def load_parts(path: Path, card_file: str, device, with_clip: bool = True):
    """What every shapes model folder holds besides its denoiser and scheduler (the UNet's and the
    flow model's alike): (tokenizer, text encoder, autoencoder or None, CLIP or None, card), frozen,
    in eval mode, on `device`; safetensors only."""
    from diffusers import AutoencoderKL
    from transformers import CLIPModel, CLIPTextModel, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(path / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", use_safetensors=True)
    vae = AutoencoderKL.from_pretrained(path / "vae", use_safetensors=True) if (path / "vae").is_dir() else None
    clip = CLIPModel.from_pretrained(path / "clip", use_safetensors=True) if with_clip and (path / "clip").is_dir() else None
    for m in (text_encoder, vae, clip):
        if m is not None:  # fp32 whatever was stored (a snapshot keeps fp16 to stay small)
            m.to(device, torch.float32).eval().requires_grad_(False)
    return tokenizer, text_encoder, vae, clip, json.loads((path / card_file).read_text())


def save_parts(path: Path, tokenizer, text_encoder, clip=None, vae=None, dtype=torch.float32):
    """The shared half of `save` (see load_parts)."""
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(path / "tokenizer")
    text_encoder.to(dtype).save_pretrained(path / "text_encoder", safe_serialization=True)
    if clip is not None:
        clip.to(dtype).save_pretrained(path / "clip", safe_serialization=True)
    if vae is not None:
        vae.to(dtype).save_pretrained(path / "vae", safe_serialization=True)


def load(name_or_path: str | Path = "shapes", device: str | torch.device = "cpu", with_clip: bool = True) -> ShapesModel:
    """Load the shapes model offline from a folder written by `save` (safetensors only)."""
    path = resolve(name_or_path)
    if not is_shapes_folder(path):
        raise FileNotFoundError(
            f"{path} is not a shapes model folder (no steer_shapes.json); "
            "train one with `python -m sampler.shapes.train`"
        )
    from diffusers import DDIMScheduler, UNet2DConditionModel

    tokenizer, text_encoder, vae, clip, card = load_parts(path, "steer_shapes.json", device, with_clip)
    unet = UNet2DConditionModel.from_pretrained(path / "unet", use_safetensors=True).to(device, torch.float32).eval().requires_grad_(False)
    scheduler = DDIMScheduler.from_pretrained(path / "scheduler")
    return ShapesModel(tokenizer, text_encoder, unet, scheduler, clip, path, card, vae)


def save(path: Path, tokenizer, text_encoder, unet, scheduler, clip=None, card: dict | None = None, dtype=torch.float32, vae=None):
    """Write a shapes model folder (safetensors weights, JSON configs)."""
    path = Path(path)
    save_parts(path, tokenizer, text_encoder, clip, vae, dtype)
    unet.to(dtype).save_pretrained(path / "unet", safe_serialization=True)
    scheduler.save_pretrained(path / "scheduler")
    (path / "steer_shapes.json").write_text(json.dumps({"defaults": DEFAULTS, **(card or {})}, indent=2) + "\n")

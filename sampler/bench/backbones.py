"""Time plain vs guided steps on the full-size SD 1.5 and SDXL UNet architectures (random weights).

    python -m sampler.bench.backbones [--arch sd15 sdxl] [--res 512 1024] [--device cuda] [--dtype fp16]
    python -m sampler.bench.backbones --smoke        # CI: tiny widths, tiny resolution, CPU

No weights are downloaded: the UNets, the VAE and the DINO ViT-B/8 are built from their
published configs with random weights, which time exactly like the trained ones. Per step:

- plain: one classifier-free-guided forward (batch 2, no grad);
- guided_attention: a conditional forward with attention probes and a backward pass to the latent,
  plus the unconditional half (`centroid -> ... ; keep appearance`);
- guided_x0: the plain forward, then the predicted x0 decoded by the VAE and read by DINO
  ViT-B/8 at 224 px with a backward pass to x0 (through ViT and VAE decoder, not the UNet), plus
  the source's x0 decoded and read once (`keep structure`, the first run; a REPL re-run skips it);
- direction_hspace: the plain forward plus an h-shifted one (Asyrp: mid-block delta), batch 2;
- direction_noise: the plain forward plus a batch-2 forward, the direction's prompt and what it is
  compared with (NoiseCLR's "<d>" and ""; within a token, the prompt with and without the
  direction in the object's words), as sampler/directions/noise.py runs them: neither half is
  taken from the plain forward.

Peak memory is the CUDA allocator's peak on a GPU, and the resident-set growth on CPU.
"""

from __future__ import annotations

import argparse
import json

import torch

from energies import attention as A
from energies.defaults import BACKBONES

from ..feature_models import ViTKeys
from ..probes import ProbeStore, cross_attention_layers, probing
from .cost import time_and_peak

SD15 = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8,
)
SDXL = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
ARCHS = {"sd15": (SD15, "sd", 768, 77), "sdxl": (SDXL, "sdxl", 2048, 77)}
# The SD / SDXL VAE (same layout; SDXL's differs only in its weights and scaling factor).
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)
DINO_VITB8 = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, image_size=224,
                  patch_size=8)  # facebook/dino-vitb8, DiffuseIT's ViT


def smoke_config(cfg: dict) -> dict:
    """The same block layout at 1/20 of the widths, for a CI smoke run."""
    small = dict(cfg)
    small["block_out_channels"] = tuple(max(16, c // 20 // 8 * 8) for c in cfg["block_out_channels"])
    small["attention_head_dim"] = 2 if isinstance(cfg["attention_head_dim"], int) else tuple(2 for _ in cfg["attention_head_dim"])
    small["norm_num_groups"] = 8
    if "transformer_layers_per_block" in cfg:
        small["transformer_layers_per_block"] = (1, 1, 2)
    if cfg.get("addition_embed_type") == "text_time":
        small["addition_time_embed_dim"] = 8
        small["projection_class_embeddings_input_dim"] = 8 * 6 + 32  # 6 time ids x 8, a 32-wide pooled embedding
    return small


def smoke_vae() -> dict:
    return dict(VAE, block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8)


def smoke_vit() -> dict:
    return dict(DINO_VITB8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32)


def measure(arch: str, res: int, device: str, dtype: torch.dtype, steps: int, smoke: bool, only=None) -> dict:
    from diffusers import UNet2DConditionModel

    cfg, kind, ctx_dim, n_tok = ARCHS[arch]
    cfg = smoke_config(cfg) if smoke else cfg
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**cfg).to(device, dtype).eval().requires_grad_(False)
    lat = res // 8
    z = torch.randn(1, 4, lat, lat, device=device, dtype=dtype)
    ctx = torch.randn(2, n_tok, ctx_dim, device=device, dtype=dtype)
    added = None
    if cfg.get("addition_embed_type") == "text_time":
        pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
        added = {"text_embeds": torch.randn(2, pooled, device=device, dtype=dtype),
                 "time_ids": torch.tensor([[res, res, 0, 0, res, res]] * 2, device=device, dtype=dtype)}
    half = (lambda d: {k: v[1:] for k, v in d.items()}) if added else (lambda d: None)
    layers = cross_attention_layers(unet, BACKBONES[kind].attn_layers)
    feature = BACKBONES[kind].appearance_features
    scale = 1000.0 if dtype == torch.float16 else 1.0  # fp16: scale the energy so its gradient does not underflow

    @torch.no_grad()
    def plain():
        unet(torch.cat([z, z]), 500, encoder_hidden_states=ctx, added_cond_kwargs=added)

    def guided():
        store = ProbeStore((lat, lat))
        with torch.enable_grad():
            z_ = z.detach().requires_grad_(True)
            with probing(unet, store, layers, [feature]):
                unet(z_, 500, encoder_hidden_states=ctx[1:], added_cond_kwargs=half(added) if added else None)
            maps = store.token_maps(BACKBONES[kind].map_res)[0].float()
            e = A.move_energy(maps[5], maps[5].detach(), (0.75, 0.5)) + A.appearance_energy(
                store.features[feature][0].float(), maps[5], store.features[feature][0].float().detach(), maps[5].detach())
            (g,) = torch.autograd.grad(e * scale, z_)
        with torch.no_grad():
            unet(z, 500, encoder_hidden_states=ctx[:1], added_cond_kwargs=half(added) if added else None)  # the uncond half
        return g / scale

    from diffusers import AutoencoderKL
    from transformers import ViTConfig, ViTModel

    from energies import vit as V

    from ..directions.hspace import shifting

    vae = AutoencoderKL(**(smoke_vae() if smoke else VAE)).to(device, dtype).eval().requires_grad_(False)
    vit_cfg = smoke_vit() if smoke else DINO_VITB8
    vit = ViTKeys(ViTModel(ViTConfig(**vit_cfg), add_pooling_layer=False).to(device, dtype).eval().requires_grad_(False))
    a_t = torch.tensor(0.5, device=device, dtype=dtype)

    def decode(x0):
        return (vae.decode(x0 / 0.18215).sample.float() + 1) / 2 * 2 - 1

    def guided_x0():
        with torch.no_grad():
            eps_u, eps_c = unet(torch.cat([z, z]), 500, encoder_hidden_states=ctx, added_cond_kwargs=added).sample.chunk(2)
            src_keys = vit(decode(z))[0]  # the source's x0 at this step, read once (first run)
        with torch.enable_grad():
            x0 = ((z - (1 - a_t).sqrt() * eps_c) / a_t.sqrt()).detach().requires_grad_(True)
            e = V.structure_energy(vit(decode(x0))[0], src_keys)
            (g,) = torch.autograd.grad(e * scale, x0)
        return g / scale

    delta = torch.randn(unet.config.block_out_channels[-1], lat // 2 ** (len(unet.config.block_out_channels) - 1),
                        lat // 2 ** (len(unet.config.block_out_channels) - 1), device=device, dtype=dtype) * 0.1

    @torch.no_grad()
    def direction_hspace():
        plain()
        with shifting(unet, delta):
            unet(torch.cat([z, z]), 500, encoder_hidden_states=ctx, added_cond_kwargs=added)

    @torch.no_grad()
    def direction_noise():
        plain()
        unet(torch.cat([z, z]), 500, encoder_hidden_states=ctx, added_cond_kwargs=added)  # noise_direction_eps's one batch

    out = {"arch": arch, "resolution": res, "device": device, "dtype": str(dtype).replace("torch.", ""), "smoke": smoke,
           "params_M": round(sum(p.numel() for p in unet.parameters()) / 1e6, 1), "attention_layers": len(layers)}
    runs = (("plain", plain), ("guided_attention", guided), ("guided_x0", guided_x0), ("direction_hspace", direction_hspace),
            ("direction_noise", direction_noise))
    for name, fn in runs:
        if only and name not in only:
            continue
        out[f"{name}_s_per_step"], out[f"{name}_peak_mb"] = time_and_peak(fn, steps, device)
    for name, _ in runs[1:]:
        if f"{name}_s_per_step" in out and "plain_s_per_step" in out:
            out[f"{name}_time_ratio"] = out[f"{name}_s_per_step"] / out["plain_s_per_step"]
    return out


RUNS = ("plain", "guided_attention", "guided_x0", "direction_hspace", "direction_noise")


def measure_cpu(arch: str, res: int, dtype: str, steps: int) -> dict:
    """CPU: times from one process (all runs in turn: the ratio is taken in one process), peak
    memory from one fresh process per run (the resident-set peak only grows within a process)."""
    import subprocess
    import sys

    out = measure(arch, res, "cpu", {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype], steps, False)
    for name in RUNS:
        cmd = [sys.executable, "-m", "sampler.bench.backbones", "--arch", arch, "--res", str(res), "--device", "cpu",
               "--dtype", dtype, "--steps", "1", "--only", name]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[f"{name}_peak_mb"] = json.loads(proc.stdout.strip().splitlines()[-1])[f"{name}_peak_mb"]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m sampler.bench.backbones", description=__doc__.split("\n")[0])
    p.add_argument("--arch", nargs="+", default=["sd15", "sdxl"], choices=list(ARCHS))
    p.add_argument("--res", nargs="+", type=int, default=None, help="image side per arch (default: 512 for sd15, 1024 for sdxl)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp16", "bf16", "fp32"])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="tiny widths and 64 px: checks the script runs (CI)")
    p.add_argument("--only", nargs="+", choices=RUNS, help="measure only these runs")
    args = p.parse_args(argv)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    results = []
    for k, arch in enumerate(args.arch):
        res = 64 if args.smoke else (args.res[k] if args.res else {"sd15": 512, "sdxl": 1024}[arch])
        if args.device == "cpu" and not args.smoke and not args.only:
            r = measure_cpu(arch, res, args.dtype, args.steps)
        else:
            r = measure(arch, res, args.device, dtype, 1 if args.smoke else args.steps, args.smoke, args.only)
        print(json.dumps(r), flush=True)
        results.append(r)
    return results


if __name__ == "__main__":
    main()

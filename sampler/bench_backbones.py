"""Time plain vs guided steps on the full-size SD 1.5 and SDXL UNet architectures (random weights).

    python -m sampler.bench_backbones [--arch sd15 sdxl] [--res 512 1024] [--device cuda] [--dtype fp16]
    python -m sampler.bench_backbones --smoke        # CI: tiny widths, tiny resolution, CPU

No weights are downloaded: the UNets are built from their published configs with random
weights, which time exactly like the trained ones. A plain step is one classifier-free-guided
forward (batch 2, no grad); a guided attention step adds one conditional forward with attention
probes and a backward pass to the latent (the edit pass of `centroid -> ... ; keep appearance`).
Peak memory is the CUDA allocator's peak on a GPU, and the resident-set growth on CPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from energies import attention as A
from energies.defaults import BACKBONES

from .probes import ProbeStore, cross_attention_layers, probing

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


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(arch: str, res: int, device: str, dtype: torch.dtype, steps: int, smoke: bool) -> dict:
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

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

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

    out = {"arch": arch, "resolution": res, "device": device, "dtype": str(dtype).replace("torch.", ""), "smoke": smoke,
           "params_M": round(sum(p.numel() for p in unet.parameters()) / 1e6, 1), "attention_layers": len(layers)}
    for name, fn in (("plain", plain), ("guided_attention", guided)):
        fn()  # warm-up
        sync()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = _rss()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        sync()
        out[f"{name}_s_per_step"] = (time.perf_counter() - t0) / steps
        peak = (torch.cuda.max_memory_allocated() - base) if device.startswith("cuda") else max(0, _rss() - base)
        out[f"{name}_peak_mb"] = peak / 2**20
    out["time_ratio"] = out["guided_attention_s_per_step"] / out["plain_s_per_step"]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m sampler.bench_backbones", description=__doc__.split("\n")[0])
    p.add_argument("--arch", nargs="+", default=["sd15", "sdxl"], choices=list(ARCHS))
    p.add_argument("--res", nargs="+", type=int, default=None, help="image side per arch (default: 512 for sd15, 1024 for sdxl)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp16", "bf16", "fp32"])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="tiny widths and 64 px: checks the script runs (CI)")
    args = p.parse_args(argv)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    results = []
    for k, arch in enumerate(args.arch):
        res = 64 if args.smoke else (args.res[k] if args.res else {"sd15": 512, "sdxl": 1024}[arch])
        r = measure(arch, res, args.device, dtype, 1 if args.smoke else args.steps, args.smoke)
        print(json.dumps(r), flush=True)
        results.append(r)
    return results


if __name__ == "__main__":
    main()

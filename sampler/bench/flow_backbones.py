"""Time plain vs attention-guided steps on the full-size SD3.5-medium and FLUX.1-dev transformers
(random weights), as sampler/bench/backbones.py does for the UNets.

    python -m sampler.bench.flow_backbones [--arch sd35m fluxdev] [--device cuda] [--dtype bf16] [--steps 3]
    python -m sampler.bench.flow_backbones --smoke        # CI: tiny widths, 64 px, CPU

No weights are downloaded: the transformers are built from their published configs with random
weights, which time like the trained ones; text states are random tensors of the families' shapes.
At 1024 px (a 128 x 128 latent), per step:

- plain: what a plain step costs: SD3.5 one classifier-free-guided forward (batch 2, no grad),
  FLUX.1-dev one forward with its distilled guidance (cfg 1, batch 1);
- guided_attention: the conditional forward with the joint-attention probes on the default blocks
  (probes.joint_attention_layers) and the last joint block's image stream, a move + appearance
  energy and its backward pass to the latent; plus SD3.5's unconditional half.

Peak memory is the CUDA allocator's peak above what the model holds, on a GPU, and the
resident-set growth on CPU.
"""

from __future__ import annotations

import argparse
import json

import torch

from energies import attention as A
from energies.defaults import BACKBONES

from ..backbones.flow import flux_velocity, sd3_velocity
from ..probes import ProbeStore, joint_attention_layers, probing, resolve_module
from .cost import time_and_peak

SD35_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
                   joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
                   pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
                joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
# arch -> (config, family kind, text tokens (SD3: CLIP's 77 + T5's 256), the mapped ones, pooled width)
ARCHS = {"sd35m": (SD35_MEDIUM, "sd3", 77 + 256, slice(77, 333), 2048), "fluxdev": (FLUX_DEV, "flux", 512, slice(0, 512), 768)}


def smoke_config(arch: str) -> dict:
    """The same kind of blocks at tiny widths and depths, for a CI smoke run."""
    if arch == "fluxdev":
        return dict(FLUX_DEV, num_layers=3, num_single_layers=2, attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                    pooled_projection_dim=32, axes_dims_rope=(2, 2, 4))
    return dict(SD35_MEDIUM, num_layers=4, attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                pooled_projection_dim=32, pos_embed_max_size=32, dual_attention_layers=(0, 1))


def measure(arch: str, res: int, device: str, dtype: torch.dtype, steps: int, smoke: bool) -> dict:
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    cfg, kind, n_tok, mapped, _ = ARCHS[arch]
    cfg = smoke_config(arch) if smoke else cfg
    flux = kind == "flux"
    torch.manual_seed(0)
    model = (FluxTransformer2DModel if flux else SD3Transformer2DModel)(**cfg).to(device).eval().requires_grad_(False)
    if dtype != torch.float32:
        model.to(dtype)
    model.steer_map_tokens = mapped  # what a backbone sets (backbones/flow.py): the maps are over the T5 tokens
    lat = res // 8
    z = torch.randn(1, 16, lat, lat, device=device, dtype=dtype)
    ctx = torch.randn(2, n_tok, cfg["joint_attention_dim"], device=device, dtype=dtype)
    pooled = torch.randn(2, cfg["pooled_projection_dim"], device=device, dtype=dtype)
    layers = joint_attention_layers(model, BACKBONES[kind].attn_layers)
    feature = resolve_module(model, BACKBONES[kind].appearance_features)
    scale = 1000.0 if dtype == torch.float16 else 1.0  # fp16: scale the energy so its gradient does not underflow

    def velocity(x, c, p):
        return flux_velocity(model, x, 0.5, c, p, 3.5) if flux else sd3_velocity(model, x, 0.5, c, p)

    @torch.no_grad()
    def plain():
        if flux:
            velocity(z, ctx[1:], pooled[1:])  # FLUX.1-dev: the distilled guidance, one forward
        else:
            velocity(torch.cat([z, z]), ctx, pooled)

    def guided():
        store = ProbeStore((lat, lat))
        with torch.enable_grad():
            z_ = z.detach().requires_grad_(True)
            with probing(model, store, layers, [feature]):
                velocity(z_, ctx[1:], pooled[1:])
            maps = store.token_maps(BACKBONES[kind].map_res)[0].float()
            k = min(5, maps.shape[0] - 1)
            f = store.features[feature][0].float()
            e = A.move_energy(maps[k], maps[k].detach(), (0.75, 0.5)) + A.appearance_energy(f, maps[k], f.detach(), maps[k].detach())
            (g,) = torch.autograd.grad(e * scale, z_)
        if not flux:
            with torch.no_grad():
                velocity(z, ctx[:1], pooled[:1])  # the unconditional half
        return g / scale

    out = {"arch": arch, "resolution": res, "device": device, "dtype": str(dtype).replace("torch.", ""), "smoke": smoke,
           "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1), "attention_layers": len(layers)}
    for name, fn in (("plain", plain), ("guided_attention", guided)):
        out[f"{name}_s_per_step"], out[f"{name}_peak_mb"] = time_and_peak(fn, steps, device)
    out["guided_attention_time_ratio"] = out["guided_attention_s_per_step"] / out["plain_s_per_step"]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m sampler.bench.flow_backbones", description=__doc__.split("\n")[0])
    p.add_argument("--arch", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--res", type=int, default=1024, help="image side in pixels (the latent is 1/8 of it)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bf16", choices=["fp16", "bf16", "fp32"])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="tiny widths and 64 px on the CPU: checks the script runs (CI)")
    args = p.parse_args(argv)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    results = []
    for arch in args.arch:
        r = measure(arch, 64 if args.smoke else args.res, "cpu" if args.smoke else args.device,
                    torch.float32 if args.smoke else dtype, 1 if args.smoke else args.steps, args.smoke)
        print(json.dumps(r), flush=True)
        results.append(r)
    return results


if __name__ == "__main__":
    main()

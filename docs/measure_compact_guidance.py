"""Does a compactness energy on the grounded words' maps cut duplicated objects? A sampling-time
experiment for the shapes model card (tune split, two-object captions, cfg 2, 25 DDIM steps): the
spatial variance of each colour and shape word's decoder cross-attention map, its gradient added
to eps (Self-Guidance's sign and scale: eps + s * sqrt(1 - alpha_bar) * grad) over the first
UNTIL of the steps. Scale 0 is plain sampling on the same seeds.

    python docs/measure_compact_guidance.py MODEL SCALE UNTIL PER_CAPTION [OUT.json]
    python docs/measure_compact_guidance.py sampler/shapes/weights 0 0.4 1
    python docs/measure_compact_guidance.py sampler/shapes/weights 20 0.4 1

LIMIT=n in the environment samples the first n captions only; DBG=1 prints the shift's size."""
import json, sys, time
import numpy as np, torch
from sampler.backbones.shapes import ShapesBackbone
from sampler.guided import classifier_free, sample_ddim, Guidance
from sampler.probes import ProbeStore, probing, cross_attention_layers
from sampler.shapes import evaluate as E
import torch.nn.functional as F

torch.set_num_threads(1)
model, scale, until, per = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
b = ShapesBackbone(model)
caps, seeds = E.caption_grid(E.two_object_captions(), per, "tune")
import os; L = int(os.environ.get("LIMIT", "0")) or len(caps); caps, seeds = caps[:L], seeds[:L]
steps, cfg = 25, 2.0
layers = cross_attention_layers(b.unet, ("up_blocks",))
ts = b.timesteps(steps); alphas, final = b.schedule()
C, Hs = b.latent_shape()[0], b.latent_shape()[1]
out = []
t0 = time.time()
for k in range(0, len(caps), 16):
    cs, sd = caps[k:k+16], seeds[k:k+16]
    conds = [b.encode_prompt(c) for c in cs]
    cu = torch.cat([c.uncond for c in conds]); cc = torch.cat([c.cond for c in conds])
    z = torch.cat([torch.randn((1, *b.latent_shape()), generator=torch.Generator().manual_seed(s)) for s in sd])
    words = [2, 3, 6, 7]
    def denoise(i, t, z, eps_cond=None, eps_uncond=None):
        eu, ec = b.eps(torch.cat([z, z]), t, torch.cat([cu, cc])).chunk(2)
        return classifier_free(eu, ec, cfg)
    def guide(i, t, z):
        if scale == 0 or i >= until * len(ts):
            return Guidance()
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            store = ProbeStore((Hs, Hs))
            with probing(b.unet, store, layers):
                b.eps(zz, t, cc)
            maps = torch.stack([F.interpolate(a[:, words], size=(16, 16), mode="bilinear") for a in store.attn.values()]).mean(0)
            A = maps / maps.sum((2, 3), keepdim=True).clamp(min=1e-8)
            g = torch.linspace(0, 1, 16)
            yy, xx = torch.meshgrid(g, g, indexing="ij")
            mx = (A * xx).sum((2, 3), keepdim=True); my = (A * yy).sum((2, 3), keepdim=True)
            var = (A * ((xx - mx) ** 2 + (yy - my) ** 2)).sum((2, 3))
            energy = var.sum()
            grad = torch.autograd.grad(energy, zz)[0]
        a_t = alphas[t]
        if os.environ.get("DBG"): print(i, float((scale * (1 - a_t).sqrt() * grad).norm() / grad.numel() ** 0.5), float(energy))
        return Guidance(eps=scale * (1 - a_t).sqrt() * grad)
    with torch.no_grad():
        zf = sample_ddim(denoise, z, ts, alphas, final, guide=guide, disable=True, clip=b.clip_x0)
        out.append(b.decode(zf).permute(0, 2, 3, 1).numpy())
    print(k, time.time() - t0, flush=True)
imgs = np.concatenate(out)
f = E.fidelity(imgs, caps, seeds)
dup = sum(len(x["found"]) > 2 for x in f["failures"])
res = {"model": model, "scale": scale, "until": until, "n": f["n"], "two_right": f["all_right"], "dup": dup,
       "missing": sum(len(x["found"]) < 2 for x in f["failures"]), "per_object": {k: v["right"] for k, v in f["per_object"].items()}, "s": time.time() - t0}
print(json.dumps(res))
if len(sys.argv) > 5:
    json.dump(res, open(sys.argv[5], "w"))

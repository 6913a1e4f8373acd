"""Where a duplicated object comes from: each pixel's attention over the prompt's tokens (decoder
cross-attention, conditional half, head-averaged, at steps 6, 12 and 18 of 25), averaged over each
object the detector finds in the final image, for the objects the caption asked for and for the
extra copies. Tune split, the first N two-object captions at one seed each, cfg 2.

    python docs/measure_duplicates.py sampler/shapes/weights 108

Writes /tmp/dupdiag.json (every object's row with its top tokens) and prints the means."""
import sys, json
import numpy as np, torch, torch.nn.functional as F
from sampler.backbones.shapes import ShapesBackbone
from sampler.guided import classifier_free, sample_ddim
from sampler.probes import ProbeStore, probing, cross_attention_layers
from sampler.shapes import evaluate as E, world as W
torch.set_num_threads(1)
b = ShapesBackbone(sys.argv[1]); n = int(sys.argv[2])
caps, seeds = E.caption_grid(E.two_object_captions(), 1, "tune")
caps, seeds = caps[:n], seeds[:n]
ts = b.timesteps(25); alphas, final = b.schedule()
layers = cross_attention_layers(b.unet, ("up_blocks",))
Hs = b.latent_shape()[1]
names = lambda cap: ["<bos>"] + cap.split() + ["<eos>"]
rows = {"true": [], "dup": []}
for cap, s in zip(caps, seeds):
    c = b.encode_prompt(cap)
    z = torch.randn((1, *b.latent_shape()), generator=torch.Generator().manual_seed(s))
    maps = {}
    def denoise(i, t, z, *_):
        store = ProbeStore((Hs, Hs), cond=slice(1, 2))
        with probing(b.unet, store, layers):
            eu, ec = b.eps(torch.cat([z, z]), t, torch.cat([c.uncond, c.cond])).chunk(2)
        if i in (6, 12, 18):
            maps[i] = torch.stack([F.interpolate(a, size=(64, 64), mode="bilinear") for a in store.attn.values()]).mean(0)[0]
        return classifier_free(eu, ec, 2.0)
    with torch.no_grad():
        zf = sample_ddim(denoise, z, ts, alphas, final, disable=True, clip=b.clip_x0)
        im = b.decode(zf).permute(0, 2, 3, 1).numpy()[0]
    found = W.detect(im)
    want = W.parse_caption(cap)
    if len(found) <= 2:
        continue
    # the extra: a found object beyond the first match of each named (colour, shape), smallest first
    used, extra = set(), []
    for o in found:
        key = (o.colour, o.shape)
        if key in want and key not in used:
            used.add(key); kind = "true"
        else:
            kind = "dup"
        m = torch.from_numpy(o.mask)
        for i, A in maps.items():
            dist = (A[:, m].mean(1)).numpy()  # (T,) mean token share over the object's pixels
            toks = names(cap)
            top = sorted([(float(dist[j]), toks[j] if j < len(toks) else f"pad{j}") for j in range(len(dist))], reverse=True)[:4]
            grp = {"words": float(sum(dist[j] for j in (2, 3, 6, 7))), "eos+pad": float(dist[len(toks) - 1:].sum()), "bos": float(dist[0]),
                   "a/and": float(sum(dist[j] for j in (1, 4, 5)))}
            rows[kind].append({"cap": cap, "seed": s, "obj": o.phrase, "i": i, **grp, "top": top})
    print(cap, s, [o.phrase for o in found], flush=True)
for kind in rows:
    for i in (6, 12, 18):
        r = [x for x in rows[kind] if x["i"] == i]
        if r:
            print(kind, i, len(r), {k: round(float(np.mean([x[k] for x in r])), 3) for k in ("words", "eos+pad", "bos", "a/and")})
json.dump(rows, open("/tmp/dupdiag.json", "w"))

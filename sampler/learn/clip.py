"""`steer learn clip NAME --from A --to B`: DiffusionCLIP's fine-tuned model (docs/methods.md, section 6b).

DiffusionCLIP (Kim, Kwon, Ye, CVPR 2022, arXiv 2110.02711, Algorithm 1 and its GPU-efficient
variant) fine-tunes the diffusion model itself so that the images it regenerates from a return
step t0 move along the text direction A -> B:

  1. a handful of images x_0 (samples of --from on this model, or --images DIR), each DDIM-inverted
     with the original model to t0 in S_for steps (--s-for): z_t0;
  2. for each image, regenerate from z_t0 in S_gen steps (--s-gen) through the fine-tuned UNet; at
     each step the predicted image x0_t is scored by
        L = clip_w * L_direction(x0_t, x_0; A -> B) + id_w * |x0_t - x_0|_1
     (the directional CLIP loss with the model's own CLIP, sampler/feature_models.py, and the
     identity L1), one Adam step is taken, and the regeneration moves on from the detached z
     (the GPU-efficient variant: one UNet backward per step instead of through the whole chain).

What is learned is a LoRA of the UNet's attention and convolution projections (peft), or with
--full every weight of the UNet. The direction file holds the LoRA (peft's state-dict names) or
the changed weights, with the recipe and the return step in its metadata (energies/directions.py);
`direction NAME * gamma` then mixes its noise with the original model's (directions/finetune.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from energies import directions as D
from energies.errors import warn
from energies.x0 import directional_clip_energy

from .. import training as T
from ..directions import finetune as FT
from ..directions.hspace import mid_block_shape
from ..guided import classifier_free, clip_x0, ddim_step, pred_x0, sample_ddim, step_alphas
from ..inversion import invert_ddim, returning
from .common import UsageError, check_name, command, start
from .hspace import ClipFeatures

# DiffusionCLIP fine-tunes all weights with Adam at lr 8e-6 (its configs' lr_clip_finetune) on
# 256 px ADM models. A LoRA's B starts at 0 and needs a far larger step: 1e-3 (peft's and the
# diffusers LoRA scripts' usual 1e-4 .. 1e-3, the top for a few hundred steps).
LR = {"lora": 1e-3, "full": 1e-4}
RANK = 4
AUGMENT_NOISE = 0.3  # the most noise the shapes CLIP saw in training (sampler/shapes/train.py, augment)


def diffusionclip_loss(img_feat, src_img_feat, txt_trg, txt_src, x0, x_orig, clip_w: float, id_w: float, seen=None):
    """(L, L_direction, L_id): DiffusionCLIP's fine-tuning loss on a predicted image x0 and the
    image x_orig it was regenerated from. L_direction is energies.x0's directional CLIP loss
    (-log((1 + cos(dI, dT)) / 2)), L_id the mean L1 |seen(x0) - seen(x_orig)| (`seen` is the
    identity: x0 itself unless given, see `value_of`). A hold pair (the target text is the source
    text: an image the fine-tune must leave as it is) has no text direction, so its L_direction is
    0 and only the identity counts."""
    if torch.equal(txt_trg, txt_src):
        direction = x0.new_zeros(())
    else:
        direction = directional_clip_energy(img_feat, src_img_feat, txt_trg, txt_src)
    seen = seen or (lambda x: x)
    identity = (seen(x0) - seen(x_orig.detach())).abs().mean()
    return clip_w * direction + id_w * identity, direction, identity


def value_of(b):
    """x0 -> the decoded image's brightest channel at each pixel (HSV's value, in [0, 1]): the
    identity `--identity value` holds. A recolour between full colours leaves it as it is (red,
    green, blue and yellow all have value 1), so an L1 on it keeps every edge and shape of the
    image it is judged against and does not pull the hue back, as the L1 on x0 does. The backbone's
    own decode keeps the graph (through the VAE, or the pixels themselves on a pixel-space model)."""
    return lambda x0: b.decode(x0).amax(1)


def views(x0: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """n noisy copies of x0 (Gaussian noise of a random strength up to AUGMENT_NOISE) for the CLIP
    to read: a CLIP's gradient on one clean image finds pixel patterns it scores as the target (a
    green fringe, speckle) sooner than the object's colour; averaged over noisy views only what
    survives noise counts. n = 0: x0 itself."""
    if n == 0:
        return x0
    sigma = torch.rand((n, 1, 1, 1), generator=g) * AUGMENT_NOISE
    return x0 + sigma.to(x0) * torch.randn((n, *x0.shape[1:]), generator=g).to(x0)


def cfg_eps(b, z, t, cond, cfg: float) -> torch.Tensor:
    """Classifier-free-guided epsilon of whatever UNet the backbone holds now (with its LoRA)."""
    if cfg == 1:
        return b.eps(z, t, cond.cond, cond.added)
    return classifier_free(*b.eps_both(z, t, cond), cfg)


@torch.no_grad()
def sample(b, cond, cfg: float, steps: int, seed: int) -> torch.Tensor:
    """A plain classifier-free-guided DDIM sample of the prompt: a source image (latent)."""
    z = torch.randn((1, *b.latent_shape()), generator=torch.Generator().manual_seed(seed)).to(b.device)
    return sample_ddim(lambda i, t, z, *_: cfg_eps(b, z, t, cond, cfg), z, b.timesteps(steps), *b.schedule(), disable=True,
                       clip=b.clip_x0)


def source_latents(b, args, conds, cfg: float) -> list[torch.Tensor]:
    """The x_0 to fine-tune on: --images, encoded, or samples of --from (image k of sentence k mod
    the number of sentences, `conds` their encodings)."""
    if args.images:
        from ..images import load_image
        from .noiseclr import IMAGE_SUFFIXES

        folder = Path(args.images)
        if not folder.is_dir():
            raise UsageError(f"--images {folder}: no such folder")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[: args.n_images]
        if not files:
            raise UsageError(f"--images {folder}: no PNG, JPEG or WebP image in it")
        with torch.no_grad():
            return [b.encode(torch.from_numpy(load_image(p, b.image_size())).permute(2, 0, 1)[None]).float() for p in files]
    steps = int(b.sampling_defaults.get("steps", 50))
    return [sample(b, conds[k % len(conds)], cfg, steps, args.seed * 10_000 + k)
            for k in tqdm(range(args.n_images), desc="source images", leave=False)]


def _pairs(src: list[str], dst: list[str]) -> list[tuple[str, str]]:
    """(--from, --to) sentence pairs: as many targets as sources."""
    if len(src) != len(dst):
        raise UsageError(f"--from has {len(src)} sentences and --to {len(dst)}: give one target per source")
    return list(zip(src, dst))


def _mean_clip(losses) -> float | None:
    """The mean directional CLIP loss of (clip, identity) records, holds (clip None) left out."""
    changing = [c for c, _ in losses if c is not None]
    return float(np.mean(changing)) if changing else None


# A fine-tune either breaks through or stalls: on the shapes model the directional CLIP loss of a
# run that learned the colour fell from about 0.5 to 0.03, and of one that learned nothing only to
# 0.3-0.35 (the same recipe, another --seed: docs/methods.md 6b). Half of the first pass's loss is
# between the two.
STALLED = 0.5


def learned_little(first: float | None, last: float | None) -> str | None:
    """What to tell the user when the last pass's directional CLIP loss is still above STALLED x the
    first's, else None."""
    if first is None or last is None or last <= STALLED * first:
        return None
    return (f"the directional CLIP loss only fell from {first:.3f} to {last:.3f} (a fine-tune that takes its "
            f"edit ends well under half its start): this direction has probably learned little. Try a higher --lr "
            f"(e.g. 3e-3), another --seed, more --iters or a lower --id-loss-w, and check it with `steer bench --directions`")


def add_lora(unet, rank: int, targets=FT.TARGETS) -> list[torch.nn.Parameter]:
    """A LoRA (peft) of the UNet's projections named in `targets`; B starts at 0, so the model starts
    as the original. Only its parameters train."""
    from peft import LoraConfig, inject_adapter_in_model

    present = [t for t in targets if any(n == t or n.endswith("." + t) for n, _ in unet.named_modules())]
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=present, init_lora_weights=True)
    unet.requires_grad_(False)
    inject_adapter_in_model(config, unet, adapter_name="clip")
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params


def lora_tensors(unet) -> dict[str, torch.Tensor]:
    """The LoRA's tensors under peft's names (`<module>.lora_A.weight`), what the file stores."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().float().cpu() for k, v in get_peft_model_state_dict(unet, adapter_name="clip").items()}


def load_lora(unet, tensors: dict):
    """Put saved LoRA tensors back (a resumed run)."""
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(unet, {k: v for k, v in tensors.items() if ".lora_" in k}, adapter_name="clip")


def beside_direction(b, path):
    """The fine-tuned direction `--beside` names (a file), read for this UNet before the LoRA is added."""
    from ..directions.finetune import fine_tune_of

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--beside {path}: no such direction file")
    d = D.read_direction(path)
    if d.kind != "finetune":
        raise UsageError(f"--beside {path}: a {d.kind} direction; only a fine-tuned one (steer learn clip) can be learned beside")
    try:
        return fine_tune_of(d, b.unet)
    except ValueError as e:
        raise UsageError(f"--beside {path}: does not fit this model: {e}") from None


def under_lora(ft, unet):
    """The FineTune with its parameter names as they are once peft wrapped the adapted modules
    (`<module>.base_layer.weight`)."""
    params = dict(unet.named_parameters())
    parts = {}
    for name, part in ft.parts.items():
        wrapped = name[: -len(".weight")] + ".base_layer.weight"
        parts[name if name in params else wrapped] = part
    return dataclasses.replace(ft, parts=parts)


@contextlib.contextmanager
def lora_off(unet):
    """The UNet without the LoRA being learned, inside the block (the original model)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield unet
    finally:
        for m in layers:
            m.enable_adapters(True)


def learn_clip(args, argv) -> int:
    from ..backbones import load_backbone

    check_name(args.name)
    if not 0 < args.t0 <= 1:
        raise UsageError(f"--t0 must be a fraction of the schedule in (0, 1], not {args.t0}")
    if args.n_images < 1 or args.iters < 1 or args.s_for < 1 or args.s_gen < 1:
        raise UsageError("--n-images, --iters, --s-for and --s-gen must be at least 1")
    pairs = _pairs(args.src, args.dst)
    if all(src == dst for src, dst in pairs):
        raise UsageError("every --to sentence is its --from: nothing to learn (a pair whose target is its source only holds its images)")
    if args.beside and args.full:
        raise UsageError("--beside learns a LoRA beside another fine-tune; it does not go with --full")
    torch.manual_seed(args.seed)
    b = load_backbone(args.model, device=args.device, dtype=args.dtype)
    beside = beside_direction(b, args.beside) if args.beside else None  # read before the LoRA wraps the UNet
    adapter = "full" if args.full else "lora"
    lr = args.lr if args.lr is not None else LR[adapter]
    cfg = args.cfg if args.cfg is not None else (1.0 if args.images else float(b.sampling_defaults.get("cfg", 7.5)))
    clip = ClipFeatures(b, args.clip)
    # Several pairs (e.g. the red circle beside each other object): image k is sampled from, inverted
    # with and regenerated under pair k mod P's source sentence, and its CLIP loss reads that pair.
    # One pair is DiffusionCLIP's own recipe; more pairs show the fine-tune what it must leave alone:
    # a hold pair ("a yellow square" to itself) is an image it learns to keep, by the identity loss
    # alone. Without them a red -> green fine-tune turned yellow objects green too (docs/methods.md 6b).
    conds = [b.encode_prompt(src) for src, _ in pairs] if not args.prompt else [b.encode_prompt(args.prompt)]
    texts = [(clip.text([src]), clip.text([dst])) for src, dst in pairs]
    alphas, final = b.schedule()

    recipe = {k: getattr(args, k) for k in ("name", "src", "dst", "model", "images", "n_images", "t0", "s_for", "s_gen",
                                            "rank", "targets", "views", "clip_loss_w", "id_loss_w", "identity", "seed", "full", "beside",
                                            "beside_share", "prompt")}
    recipe.update(lr=lr, cfg=cfg)
    work = args.work or Path("runs/learn") / f"clip-{args.name}"
    ckpt = work / "clip.ckpt.safetensors"
    resumed = start(ckpt, args.resume, recipe)  # a checkpoint of another recipe is refused before any sampling
    began = time.time()
    train = returning(b.timesteps(args.s_gen), args.t0)
    a = step_alphas(alphas, train, final)
    with torch.no_grad():  # step 1, before any weight changes (a resumed run's too): the images, inverted to t0
        x_0 = source_latents(b, args, conds, cfg)
        inverted = returning(b.timesteps(args.s_for), args.t0)
        z_t0 = [invert_ddim(lambda z, t, c=conds[k % len(conds)]: b.eps(z, t, c.cond, c.added), x, inverted, alphas, final, disable=True)[0]
                for k, x in enumerate(x_0)]
        feats = [clip.image(x) for x in x_0]

    originals = {n: p.detach().clone() for n, p in b.unet.named_parameters()} if args.full else None
    if args.full:
        b.unet.requires_grad_(True)
        params = list(b.unet.parameters())
        names = {p: f"unet.{n}" for n, p in b.unet.named_parameters()}
    else:
        params = add_lora(b.unet, args.rank, tuple(args.targets.split(",")))
        names = {p: n for n, p in b.unet.named_parameters() if "lora_" in n}
    if beside is not None:
        beside = under_lora(beside, b.unet)

    def regen_eps(z, t, cond):
        eps = cfg_eps(b, z, t, cond, cfg)
        if beside is not None and t <= beside.t0 * len(alphas):
            # Learned beside another fine-tune: regenerate as `direction BESIDE; direction NAME`
            # will sample, both at a whole share, eps = eps_NAME + (eps_BESIDE - eps_orig) where
            # BESIDE acts (from its own return step on); only eps_NAME carries a gradient.
            with torch.no_grad(), lora_off(b.unet):
                eps_orig = cfg_eps(b, z, t, cond, cfg)
                with FT.finetuned(b.unet, beside):
                    eps_beside = cfg_eps(b, z, t, cond, cfg)
            eps = eps + args.beside_share * (eps_beside - eps_orig)
        return eps

    if beside is not None:
        # The images the new fine-tune is judged against (CLIP's image direction and the identity)
        # are the other one's edits: each image regenerated from t0 with the new LoRA still zero,
        # so BESIDE alone, half way to the target. Judged against the untouched images instead,
        # the identity loss pulls the other edit back too, and the new LoRA learned no shape
        # (docs/methods.md 6b). Without a graph: the new LoRA's parameters require grad, and each
        # reference would otherwise keep its whole regeneration's graph for the rest of the run.
        with torch.no_grad():
            x_0 = [sample_ddim(lambda i, t, z, *_, c=conds[k % len(conds)]: regen_eps(z, t, c), z, train, alphas, final,
                               disable=True, clip=b.clip_x0) for k, z in enumerate(z_t0)]
            feats = [clip.image(x) for x in x_0]

    seen = value_of(b) if args.identity == "value" else None
    opt = torch.optim.Adam(params, lr=lr)
    start_step, elapsed = 0, 0.0
    if resumed is not None:
        tensors, state = resumed
        with torch.no_grad():
            for p, n in names.items():
                p.copy_(tensors[n])
        T.restore_optimizer(opt, names, tensors, state["opt_step"])
        start_step, elapsed = state["step"], state["elapsed"]


    n = len(x_0)
    total = args.iters * n  # one step = one image regenerated from t0
    bar = T.progress(start_step, total, f"clip {args.name}")
    losses = []
    b.unet.train(False)
    for s in bar:
        k = s % n
        z, cond, (txt_src, txt_trg) = z_t0[k], conds[k % len(conds)], texts[k % len(texts)]
        noise = torch.Generator().manual_seed(args.seed * 1_000_003 + s)  # the views of step s: a resumed run repeats them
        for i, t in enumerate(train):  # step 2: regenerate through the fine-tuned UNet, one Adam step per timestep
            eps = regen_eps(z, t, cond)
            x0 = pred_x0(z, eps, a[i])
            loss, loss_clip, loss_id = diffusionclip_loss(clip.image(views(x0, args.views, noise)), feats[k], txt_trg, txt_src, x0, x_0[k],
                                                          args.clip_loss_w, args.id_loss_w, seen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                x0, eps = x0.detach(), eps.detach()
                if b.clip_x0 is not None:
                    x0, eps = clip_x0(z, x0, a[i], b.clip_x0)
                z = ddim_step(x0, eps, a[i + 1])
            losses.append((None if pairs[k % len(pairs)][0] == pairs[k % len(pairs)][1] else loss_clip.item(), loss_id.item()))
        recent = losses[-len(train) * n:]
        bar.set_postfix(clip=f"{_mean_clip(recent) or 0:.3f}", id=f"{np.mean([l for _, l in recent]):.3f}")
        if (s + 1) % args.ckpt_every == 0 or s + 1 == total:
            moments, steps = T.optimizer_tensors(opt, names)
            T.save_checkpoint(ckpt, {**{n_: p for p, n_ in names.items()}, **moments},
                              {"step": s + 1, "elapsed": elapsed + time.time() - began, "opt_step": steps, "recipe": recipe})
    bar.close()

    if args.full:
        tensors = {n: p.detach() for n, p in b.unet.named_parameters() if not torch.equal(p.detach(), originals[n])}
        tensors["scale"] = torch.tensor(1.0)
    else:
        tensors = {**lora_tensors(b.unet), "scale": torch.tensor(1.0)}  # lora_alpha = r: W' = W + B A
    last = losses[-len(train) * n:]
    seconds = elapsed + time.time() - began
    out = D.save_direction(Path(args.out) / f"{args.name}.safetensors", tensors, "finetune", D.backbone_id(b), {
        "resolution": list(b.image_size()),
        "recipe": command(argv),
        "method": "diffusionclip",
        "adapter": adapter,
        "from": args.src[0] if len(pairs) == 1 else args.src, "to": args.dst[0] if len(pairs) == 1 else args.dst,
        "return": args.t0, "s_for": args.s_for, "s_gen": args.s_gen,
        "rank": args.rank if not args.full else None,
        "cfg": cfg, "lr": lr, "iters": args.iters, "n_images": n, "seed": args.seed,
        "clip_loss_w": args.clip_loss_w, "id_loss_w": args.id_loss_w, "identity": args.identity,
        **({"beside": Path(args.beside).stem, "beside_share": args.beside_share} if args.beside else {}),
        **({"prompt": args.prompt} if args.prompt else {}),
        "mid_block": list(mid_block_shape(b.unet)),
        "seconds": round(seconds, 1),
        "final_clip_loss": _mean_clip(last) if last else None,  # over the pairs that change, not the holds
        "final_id_loss": float(np.mean([l for _, l in last])) if last else None,
    })
    size = out.stat().st_size
    print(f"wrote fine-tuned direction {args.name!r} ({adapter}, {size / 1e6:.2f} MB) to {out} ({seconds:.0f} s)")
    stalled = learned_little(_mean_clip(losses[:len(train) * n]), _mean_clip(last))
    if stalled:
        warn(stalled)
    return 0

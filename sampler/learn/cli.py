"""Learn directions: `steer learn hspace NAME --from A --to B`, `steer learn noiseclr --images DIR --k K`,
`steer learn prompt NAME --from A... --to B...` and `steer learn clip NAME --from A --to B`: the command
line. Its first line is --help's description; the learners are hspace.py, noiseclr.py, prompt.py and clip.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dsl.errors import SteerError
from energies.x0 import CLIP_MODEL_ID

from ..directions.finetune import TARGETS as FT_TARGETS
from ..directions.hspace import EDIT_WINDOW
from .clip import learn_clip
from .common import UsageError
from .hspace import learn_hspace
from .noiseclr import learn_noiseclr
from .prompt import learn_prompt


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="steer learn", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="method", required=True, metavar="{hspace,noiseclr,prompt,clip}")

    def model_and_out(q):
        q.add_argument("--model", default="shapes", help="shapes (default), a shapes folder, or a Stable Diffusion id / folder")
        q.add_argument("--out", type=Path, default=Path("directions"), help="where the direction files are written (default ./directions)")
        q.add_argument("--device", default="auto")
        q.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="Stable Diffusion weights (shapes: always fp32)")

    def common(q, work_default):  # the trained kinds: checkpoints and a seed too
        model_and_out(q)
        q.add_argument("--work", type=Path, default=None, help=f"checkpoints (default {work_default})")
        q.add_argument("--ckpt-every", type=int, default=10, help="checkpoint every N steps")
        q.add_argument("--resume", action="store_true", help="continue from the checkpoint in --work")
        q.add_argument("--seed", type=int, default=0)

    h = sub.add_parser("hspace", help="Asyrp: a global delta-h from a text direction (--from -> --to)",
                       description="Learn an Asyrp h-space direction (a global delta-h) that moves --from images towards --to.")
    h.add_argument("name", help="the direction's name (the file NAME.safetensors)")
    h.add_argument("--from", dest="src", required=True, help='source text, e.g. "a red circle"')
    h.add_argument("--to", dest="dst", required=True, help='target text, e.g. "a blue circle"')
    h.add_argument("--steps", type=int, default=20, help="DDIM steps of the source and training trajectories")
    h.add_argument("--iters", type=int, default=5, help="passes over the images (Asyrp n_iter 5)")
    h.add_argument("--n-images", type=int, default=8, help="source images, samples of --from")
    h.add_argument("--cfg", type=float, default=None, help="guidance scale of the source samples (default: the model's)")
    h.add_argument("--lr", type=float, default=None, help="SGD learning rate (default: 200 on shapes models, Asyrp's 0.5 otherwise)")
    h.add_argument("--lr-step", type=int, default=3, help="StepLR: multiply the lr by --lr-gamma every N passes")
    h.add_argument("--lr-gamma", type=float, default=0.1)
    h.add_argument("--clip-loss-w", type=float, default=1.0)
    h.add_argument("--l1-loss-w", type=float, default=3.0)
    h.add_argument("--init-std", type=float, default=0.0, help="delta-h starts as N(0, init_std^2) (Asyrp: 0.2; 0 here, see HSPACE_LR)")
    h.add_argument("--edit-until", type=float, default=EDIT_WINDOW[1], help="train on progress [0, x) (Asyrp t_edit 500/1000)")
    h.add_argument("--clip", default=CLIP_MODEL_ID, help="CLIP id or folder for non-shapes models (Asyrp: ViT-B/16)")
    h.set_defaults(func=learn_hspace)
    common(h, "runs/learn/hspace-NAME")

    c = sub.add_parser("noiseclr", help="NoiseCLR: K unsupervised directions from a folder of images",
                       description="Learn K NoiseCLR directions (token embeddings) contrastively from a folder of images.")
    c.add_argument("--images", required=True, help="folder of PNG / JPEG / WebP images (at least 2)")
    c.add_argument("--k", type=int, required=True, help="number of directions to learn")
    c.add_argument("--iters", type=int, default=200, help="optimizer steps (NoiseCLR: 1000)")
    c.add_argument("--batch", type=int, default=4, help="images per step (NoiseCLR: 6)")
    c.add_argument("--negatives", type=int, default=20, help="other directions compared per step (NoiseCLR tokens_per_iter 20; at most K-1)")
    c.add_argument("--lr", type=float, default=4e-3, help="AdamW lr (NoiseCLR: 1e-3 x 4 gradient-accumulation steps)")
    c.add_argument("--weight-decay", type=float, default=1e-2)
    c.add_argument("--tau", type=float, default=0.5, help="temperature")
    c.set_defaults(func=learn_noiseclr)
    common(c, "runs/learn/noiseclr-FOLDER")

    q = sub.add_parser("prompt", help="Pix2Pix-Zero: an edit direction in the prompt's embedding (--from -> --to sentences)",
                       description="Make a Pix2Pix-Zero edit direction: the mean embedding of the target sentences minus that "
                                   "of the source sentences. Use many sentences that differ in the edited word; on a small "
                                   "causal text encoder (the shapes model's) put the word where your prompts have it, since "
                                   "the direction is positional.")
    q.add_argument("name", help="the direction's name (the file NAME.safetensors)")
    q.add_argument("--from", dest="src", nargs="+", metavar="SENTENCE", help='source sentences, e.g. "a red circle" "a red square"')
    q.add_argument("--to", dest="dst", nargs="+", metavar="SENTENCE", help="target sentences (as many as you like)")
    q.add_argument("--from-file", dest="src_file", type=Path, help="more source sentences, one per line")
    q.add_argument("--to-file", dest="dst_file", type=Path, help="more target sentences, one per line")
    q.add_argument("--swap", nargs=2, metavar=("OLD", "NEW"), help="make the targets from the sources by replacing the word OLD with NEW")
    model_and_out(q)
    q.set_defaults(func=learn_prompt)

    f = sub.add_parser("clip", help="DiffusionCLIP: a fine-tuned model (a LoRA of the UNet) from a text direction (--from -> --to)",
                       description="Fine-tune the model DiffusionCLIP's way (directional CLIP loss + L1 identity, images inverted "
                                   "to the return step --t0 and regenerated), as a LoRA of the UNet (or every weight with --full). "
                                   "Use it with `direction NAME * gamma` (gamma 1: the fine-tuned model, between: a transition).")
    f.add_argument("name", help="the direction's name (the file NAME.safetensors)")
    f.add_argument("--from", dest="src", required=True, nargs="+", metavar="SENTENCE",
                   help='source text, e.g. "a red circle" (also the prompt the images are sampled from); several sentences '
                        '(with as many --to) share the images out among them, each image with its own pair')
    f.add_argument("--to", dest="dst", required=True, nargs="+", metavar="SENTENCE", help='target text, e.g. "a green circle"')
    f.add_argument("--images", default=None, help="fine-tune on these images (a folder) instead of samples of --from")
    f.add_argument("--n-images", type=int, default=8, help="images to fine-tune on (DiffusionCLIP: a handful to a few dozen)")
    f.add_argument("--t0", type=float, default=0.5, help="the return step, a fraction of the schedule (DiffusionCLIP's t_0 500 of 1000)")
    f.add_argument("--s-for", type=int, default=20, help="DDIM steps of the inversion from 0 to t0 (DiffusionCLIP's n_inv_step: 40)")
    f.add_argument("--s-gen", type=int, default=6, help="DDIM steps of the regeneration from t0 (DiffusionCLIP's n_train_step: 6)")
    f.add_argument("--iters", type=int, default=5, help="passes over the images (DiffusionCLIP's n_iter: 5)")
    f.add_argument("--full", action="store_true", help="fine-tune every weight of the UNet instead of a LoRA (a bigger file)")
    f.add_argument("--rank", type=int, default=4, help="the LoRA's rank")
    f.add_argument("--targets", default=",".join(FT_TARGETS), help=f"the UNet's modules the LoRA adapts, by name (default {','.join(FT_TARGETS)})")
    f.add_argument("--lr", type=float, default=None, help="Adam's lr (default 1e-3 for a LoRA, 1e-4 with --full)")
    f.add_argument("--cfg", type=float, default=None, help="guidance scale of the regeneration (default: 1 with --images, else the model's)")
    f.add_argument("--views", type=int, default=4, help="noisy copies of each predicted image the CLIP reads (0: the image alone)")
    f.add_argument("--clip-loss-w", type=float, default=3.0, help="weight of the directional CLIP loss (DiffusionCLIP: 3)")
    f.add_argument("--id-loss-w", type=float, default=1.0, help="weight of the L1 identity loss (DiffusionCLIP's README: 1)")
    f.add_argument("--identity", choices=("image", "value"), default="image",
                   help="what the identity loss compares: the predicted image as the model makes it (DiffusionCLIP), or "
                        "`value`, each pixel's brightest channel, which keeps shapes and lets hues change (for recolours)")
    f.add_argument("--beside", default=None, metavar="FILE",
                   help="learn beside this fine-tuned direction (a file) for `direction BESIDE; direction NAME`: regenerate as "
                        "the two sample together, each at a whole share, and judge against BESIDE's own edits of the images, "
                        "so that the new one completes the other's edit instead of pulling it back")
    f.add_argument("--beside-share", type=float, default=1.0, help="the --beside direction's share while learning (default 1)")
    f.add_argument("--prompt", default=None,
                   help="the text the images are sampled from and regenerated under (default: each pair's --from); with "
                        '--beside, e.g. --prompt "a red circle" --from "a green circle" --to "a green square"')
    f.add_argument("--clip", default=CLIP_MODEL_ID, help="CLIP id or folder for non-shapes models (DiffusionCLIP: ViT-B/16)")
    f.set_defaults(func=learn_clip)
    common(f, "runs/learn/clip-NAME")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, argv)
    except UsageError as e:
        print(f"steer learn: error: {e}", file=sys.stderr)
        return 2
    except SteerError as e:
        print(e.render(), file=sys.stderr)
        return 2

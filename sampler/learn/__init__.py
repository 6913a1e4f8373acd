"""Learn directions: `steer learn hspace NAME --from A --to B`, `steer learn noiseclr --images DIR --k K`
and `steer learn prompt NAME --from A... --to B...`. One learner per file:

hspace.py    Asyrp (docs/methods.md, section 4): one global delta-h (C, h, w), trained with
             Asyrp's directional CLIP and L1 losses along the edit window.
noiseclr.py  NoiseCLR (section 5): K token embeddings, learned contrastively on a folder of images.
prompt.py    Pix2Pix-Zero (section 3): the mean text embedding of the --to sentences minus that of
             the --from sentences; nothing is trained, so it takes seconds.
cli.py       the `steer learn` command line (argparse) and main.
common.py    what they share: the usage error, direction names, resuming with the same recipe.

Checkpoints, --resume and the progress bar are sampler/training.py's, as for the shapes trainer:
safetensors with the JSON state in their metadata, never pickle; everything a function of --seed,
so a resumed run ends exactly where an uninterrupted one would. The directions are written with
energies.directions.save_direction.
"""

from .cli import main  # noqa: F401  (dsl/cli.py: `steer learn ...`)

"""Re-learn the shipped directions for a new shapes model, each from the recipe in its own file.

    python -m sampler.shapes.reship [--model sampler/shapes/weights] [--only NAME ...] [--work runs/reship]

Every shipped direction file records the command that made it (its `recipe`). This runs those
commands again against --model, into a work folder, and then copies the results over the model's
directions/. Directions not shipped yet are learned from their recipes in NEW and shipped too. NoiseCLR learns K directions without labels, and their order means nothing, so for
the shipped NoiseCLR names the one that does what the name promises is chosen by measurement on
world prompts, with the world's detector (`choose`): `green` is the direction that turns the most
objects green, `smaller` the one with the lowest area ratio, edit over source.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
from pathlib import Path

import numpy as np

from . import model as M
from . import world as W

# What each shipped NoiseCLR name promises, as a score of (source objects, edited objects) to
# maximise. Objects are the detector's, matched by position.
PROMISES = {
    "green": lambda src, out: float(np.mean([o.colour == "green" for o in out])) if out else 0.0,
    # Smaller, not gone: a direction that erases objects (area ratio 0) keeps no promise at all.
    "smaller": lambda src, out: -_area_ratio(src, out) if len(out) >= len(src) else -1.0,
}
PROMPTS = ["a red circle and a blue square", "a yellow triangle and a red circle", "a blue square and a yellow circle",
           "a red triangle"]
SEEDS = (0, 1)

# Directions a new model ships that the current one does not, with the recipe of each: DiffusionCLIP's
# fine-tuned directions (issue 20; docs/methods.md 6b: a shape is decided earlier than a colour, so
# the shape direction is learned from t0 0.8). `steer bench` measures them.
NEW = {
    # red circles, squares and triangles turn green; yellow, blue and green objects are hold pairs
    # (sentence to itself: identity loss only), which keep the fine-tune off the objects it must
    # leave alone (docs/methods.md 6b)
    "red_to_green_ft": ('steer learn clip red_to_green_ft'
                        ' --from "a red circle" "a red square" "a red triangle" "a yellow triangle" "a yellow square" "a yellow circle" "a blue square" "a green circle"'
                        ' --to "a green circle" "a green square" "a green triangle" "a yellow triangle" "a yellow square" "a yellow circle" "a blue square" "a green circle"'
                        ' --n-images 16 --iters 10 --id-loss-w 2'),
    "circle_to_square_ft": 'steer learn clip circle_to_square_ft --from "a red circle" --to "a red square" --t0 0.8',
    # the colour learned beside the shape, for `direction circle_to_square_ft * 1.5; direction red_to_green_beside_ft`
    # (its --beside is pointed at the circle_to_square_ft this run learns); its identity holds each
    # pixel's brightest channel, so it keeps the square's corners and not its red (docs/methods.md 6b)
    "red_to_green_beside_ft": ('steer learn clip red_to_green_beside_ft --prompt "a red circle" --from "a red square"'
                               ' --to "a green square" --t0 0.8 --beside shapes/directions/circle_to_square_ft.safetensors'
                               ' --beside-share 1.5 --iters 10 --identity value --id-loss-w 5 --lr 3e-3'),
}


def _area_ratio(src, out) -> float:
    a, b = sum(o.area for o in src), sum(o.area for o in out)
    return b / a if a else 1.0


def shipped(model: Path) -> dict[str, dict]:
    """name -> the `steer` metadata of each direction file shipped with the model."""
    from safetensors import safe_open

    out = {}
    for f in sorted((model / "directions").glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            out[f.stem] = json.loads(h.metadata()["steer"])
    return out


def to_learn(model: Path, only=None) -> dict[str, dict]:
    """name -> metadata (with its recipe) of every direction to learn for the model: the shipped
    ones, and the NEW ones it does not ship yet; `only` keeps the names it lists."""
    metas = shipped(model)
    for name, recipe in NEW.items():
        metas.setdefault(name, {"recipe": recipe})
    return {k: v for k, v in metas.items() if not only or k in only}


def relearn_command(recipe: str, model: Path, out: Path, directions: dict[str, Path] | None = None) -> list[str]:
    """The recipe's `steer learn ...` arguments, pointed at `model` and writing into `out`; a
    `--beside FILE` is pointed at the file of that name in `directions` (this run's, where the
    direction was just re-learned)."""
    words = shlex.split(recipe)
    assert words[:2] == ["steer", "learn"], recipe
    args = words[2:]
    for flag in ("--out", "--model"):
        if flag in args:
            i = args.index(flag)
            del args[i : i + 2]
    if "--beside" in args:
        i = args.index("--beside") + 1
        args[i] = str((directions or {}).get(Path(args[i]).stem, args[i]))
    return [*args, "--model", str(model), "--out", str(out)]


def beside_last(metas: dict[str, dict]) -> list[str]:
    """The names in the order to learn them: a direction learned beside another after that one."""
    return sorted(metas, key=lambda k: "--beside" in metas[k].get("recipe", ""))


def world_images(folder: Path, n: int, size: int, seed: int = 0) -> Path:
    """n world scenes as PNGs (NoiseCLR's unlabelled image set), at the model's size."""
    from ..images import write_png

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_png(W.make_scene((seed, 1 << 27, i), size).image, folder / f"world_{i:02d}.png")
    return folder


def choose(editor, candidates: list[Path], promise: str) -> tuple[Path, dict]:
    """The candidate direction that best keeps `promise`, and every candidate's score."""
    import dsl

    scores = {}
    for path in candidates:
        values = []
        for prompt in PROMPTS:
            for seed in SEEDS:
                program = dsl.compile(f'prompt "{prompt}"\nseed {seed}\ndirection {path.stem}')
                r = editor.run(program, progress=False, script_dir=path.parent.parent)  # scripts find directions in SCRIPT_DIR/directions
                values.append(PROMISES[promise](W.detect(r.source_image), W.detect(r.image)))
        scores[path.stem] = float(np.mean(values))
    best = max(scores, key=scores.get)
    return next(p for p in candidates if p.stem == best), scores


def main(argv=None) -> int:
    from ..editor import Editor
    from ..learn import main as learn

    p = argparse.ArgumentParser(prog="python -m sampler.shapes.reship", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=Path(__file__).parent / "weights")
    p.add_argument("--only", nargs="+", metavar="NAME", help="re-learn only these directions (shipped or new)")
    p.add_argument("--work", type=Path, default=Path("runs/reship"))
    args = p.parse_args(argv)
    metas = to_learn(args.model, args.only)
    # The shipped folder is named "shapes" in the recipes the new files record, not by this machine's path.
    named = Path("shapes") if M.is_shipped(args.model) else args.model
    editor = Editor(str(args.model))
    size = editor.backbone.image_size()[0]
    report = {}
    noiseclr = {k: m for k, m in metas.items() if m.get("method") == "noiseclr"}
    directions = {p.stem: p for p in sorted((args.model / "directions").glob("*.safetensors"))}
    for name in beside_last(metas):
        meta = metas[name]
        if name in noiseclr:
            continue
        out = args.work / name
        command = relearn_command(meta["recipe"], named, out, directions)
        directions[name] = out / f"{name}.safetensors"
        if learn(command) != 0:
            raise SystemExit(f"re-learning {name} failed: steer learn {shlex.join(command)}")
        report[name] = {"command": "steer learn " + shlex.join(command)}
    if noiseclr:  # one NoiseCLR run serves every shipped name: they came from one run too
        recipe = next(iter(noiseclr.values()))["recipe"]
        images = world_images(args.work / "world16", 16, size)
        out = args.work / "noiseclr" / "directions"  # where `choose`'s scripts look for the candidates
        command = relearn_command(recipe, named, out)
        command[command.index("--images") + 1] = str(images)
        if learn(command) != 0:
            raise SystemExit(f"NoiseCLR failed: steer learn {shlex.join(command)}")
        candidates = sorted(out.glob("noiseclr_*.safetensors"))
        for name in noiseclr:
            best, scores = choose(editor, candidates, name)
            shutil.copyfile(best, args.work / f"{name}.safetensors")
            report[name] = {"command": "steer learn " + shlex.join(command), "chosen": best.stem, "scores": scores}
    for name in report:  # the shipped files are replaced only once everything was learned
        src = args.work / f"{name}.safetensors"
        if not src.exists():
            src = next((args.work / name).glob("*.safetensors"))
        shutil.copyfile(src, args.model / "directions" / f"{name}.safetensors")
    (args.work / "reship.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The `steer` command line (also `python -m dsl`): run, check, fmt, repl, directions, learn, bench.

A user's mistake prints `file:line:col: error: message`, the line with a caret and a hint, and
exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from energies.errors import SteerError

EXIT_USER_ERROR = 2


class UsageError(Exception):
    """A mistake in the command line itself (a missing file, a bad path)."""


def _read_script(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"cannot read {path}: no such file")
    try:
        return p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None


def _compile_file(path: str):
    import dsl

    text = _read_script(path)
    return dsl.compile(dsl.parse(text, path)), text


NO_PROMPT_HINT = 'add a line like: prompt "a red circle and a blue square"'


def located(e: SteerError, path: str, text: str) -> SteerError:
    """Give an error without a position (a missing prompt) the script's first line."""
    from energies.program import Span

    if e.span is None:
        e.span = Span(line=1, col=1, end_line=1, end_col=2, file=path)
    return e.with_source(text)


def _with_overrides(program, args):
    return program.with_settings(seed=args.seed, steps=args.steps, model=args.model)


def _is_steer_output(path: Path) -> bool:
    try:
        from PIL import Image

        with Image.open(path) as im:
            return "steer:program" in getattr(im, "text", {})
    except Exception:
        return False


def default_output(script: Path) -> Path:
    """<script>.png next to the script; if that name is taken by a file steer did not write,
    <script>-2.png, -3, ... so a user's own image is never overwritten."""
    out = script.with_suffix(".png")
    n = 2
    while out.exists() and not _is_steer_output(out):
        out = script.with_name(f"{script.stem}-{n}.png")
        n += 1
    return out


def cmd_run(args) -> int:
    from sampler.editor import Editor

    program, text = _compile_file(args.script)
    program = _with_overrides(program, args)
    script = Path(args.script)
    out = Path(args.output) if args.output else default_output(script)
    inputs = {script.resolve()}
    for p in (out, Path(args.source_out) if args.source_out else None):
        if p is not None and p.resolve() in inputs:
            raise UsageError(f"refusing to write {p}: it is an input of this run")
    editor = Editor(program.settings.model, device=args.device, dtype=args.dtype, low_memory=args.low_memory)
    try:
        result = editor.run(program, progress=not args.quiet, script_dir=script.parent)
    except SteerError as e:
        raise located(e, args.script, text)
    result.save(out, args.source_out)
    print(f"wrote {out}" + (f" and {args.source_out}" if args.source_out else ""))
    return 0


def cmd_check(args) -> int:
    from .binding import bind
    from sampler.backbones import direction_folders, load_tokenizer

    status = 0
    for path in args.scripts:
        try:
            program, text = _compile_file(path)
            program = program.with_settings(model=args.model)
            if not program.settings.prompt:
                raise located(SteerError("the script has no prompt", hint=NO_PROMPT_HINT), path, text)
            model = program.settings.model or "shapes"
            tokenizer = load_tokenizer(model)
            try:
                bind(program, program.settings.prompt, tokenizer, direction_folders(Path(path).parent, model))
            except SteerError as e:
                raise located(e, path, text)
            print(f"{path}: ok ({len(program.terms)} term{'s' * (len(program.terms) != 1)})")
        except SteerError as e:
            print(e.render(), file=sys.stderr)
            status = EXIT_USER_ERROR
    return status


def cmd_fmt(args) -> int:
    import dsl

    from .printer import format_script

    status = 0
    for path in args.scripts:
        text = _read_script(path)
        try:
            out = format_script(dsl.parse(text, path))
        except SteerError as e:
            print(e.render(), file=sys.stderr)
            status = EXIT_USER_ERROR
            continue
        if args.check:
            if out != text:
                print(f"{path}: would reformat", file=sys.stderr)
                status = status or 1
        elif args.write:
            if out != text:
                _atomic_write_text(Path(path), out)
                print(f"reformatted {path}", file=sys.stderr)
        else:
            sys.stdout.write(out)
    return status


def _atomic_write_text(path: Path, text: str):
    """Rewrite a script in place: through a symlink to the file it names, keeping its mode."""
    import stat

    from energies.files import atomic_write

    target = path.resolve()
    atomic_write(target, lambda tmp: tmp.write_text(text), mode=stat.S_IMODE(target.stat().st_mode))


def cmd_repl(args) -> int:
    from .repl import Repl

    return Repl(args.script, model=args.model, device=args.device, dtype=args.dtype, low_memory=args.low_memory).loop()


def cmd_directions(args) -> int:
    from energies import directions
    from sampler.backbones import direction_folders

    here = Path(args.script).parent if args.script else Path.cwd()
    print("\n".join(directions.listing(direction_folders(here, args.model))))
    return 0


def cmd_bench(args) -> int:
    from sampler.bench import main as bench_main

    return bench_main(args)


def cmd_learn(args) -> int:
    from sampler.learn import main as learn_main

    return learn_main(args.rest)


def _model_flags(p: argparse.ArgumentParser):
    """Which model, where and how: shared by the commands that load one."""
    p.add_argument("--model", help='"shapes" (default), a shapes model folder, or a Stable Diffusion model id / folder')
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ...")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="Stable Diffusion weights (the shapes model is fp32)")
    p.add_argument("--low-memory", action="store_true", help="gradient checkpointing and attention slicing (Stable Diffusion)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="steer", description="steer: a guidance-energy composition language for diffusion image editing")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run an .edit script and write the edited image")
    r.add_argument("script")
    r.add_argument("-o", "--output", help="edited image (default: SCRIPT.png next to the script)")
    r.add_argument("--source-out", help="also write the unedited source image of the same seed")
    r.add_argument("--seed", type=int)
    r.add_argument("--steps", type=int)
    _model_flags(r)
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("check", help="compile scripts against the model's tokenizer; exit 2 on the first mistake in each")
    c.add_argument("scripts", nargs="+")
    c.add_argument("--model")
    c.set_defaults(func=cmd_check)

    f = sub.add_parser("fmt", help="print scripts in canonical form (comments kept)")
    f.add_argument("scripts", nargs="+")
    g = f.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true", help="exit 1 if a script is not in canonical form")
    g.add_argument("-w", "--write", action="store_true", help="rewrite the files in place (atomically)")
    f.set_defaults(func=cmd_fmt)

    rp = sub.add_parser("repl", help="edit interactively; re-runs reuse the model and the source pass")
    rp.add_argument("script", nargs="?")
    _model_flags(rp)
    rp.set_defaults(func=cmd_repl)

    lp = sub.add_parser("learn", help="learn directions: `steer learn hspace ...` (Asyrp), `noiseclr ...` (NoiseCLR) or `prompt ...` (Pix2Pix-Zero)",
                        add_help=False)
    lp.add_argument("rest", nargs=argparse.REMAINDER)
    lp.set_defaults(func=cmd_learn)

    d = sub.add_parser("directions", help="list the learned directions a script can use, and what each is")
    d.add_argument("script", nargs="?", help="look next to this script too (default: the current folder)")
    d.add_argument("--model", help='"shapes" (default) or a shapes model folder: its shipped directions')
    d.set_defaults(func=cmd_directions)

    b = sub.add_parser("bench", help="measure edit quality and cost on the shapes world")
    b.add_argument("--quick", action="store_true", help="a smoke run: few seeds and steps")
    b.add_argument("--seeds", type=int)
    b.add_argument("--out", default="bench-out")
    b.add_argument("--task", action="append", help="run only this task (repeatable), e.g. --task move")
    b.add_argument("--model", default="shapes")
    b.add_argument("--no-cost", action="store_true", help="only the tasks: skip the cost classes and the inversion")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["learn"]:  # its own parser (sampler/learn/cli.py) reads everything after the word
        return _guarded(lambda: cmd_learn(argparse.Namespace(rest=argv[1:])))
    args = build_parser().parse_args(argv)
    return _guarded(lambda: args.func(args))


def _guarded(run) -> int:
    try:
        return run()
    except SteerError as e:
        print(e.render(), file=sys.stderr)
        return EXIT_USER_ERROR
    except (UsageError, FileNotFoundError) as e:
        print(f"steer: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("steer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

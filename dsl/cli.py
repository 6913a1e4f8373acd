"""The `steer` command line (also `python -m dsl`): run, maps, check, fmt, repl, ui, directions, learn, bench.

A user's mistake prints `file:line:col: error: message`, the line with a caret and a hint, and
exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from energies.errors import SteerError, SteerUsageError

EXIT_USER_ERROR = 2


def _read_script(path: str) -> str:
    import dsl

    return dsl.read_script(path)


def _compile_file(path: str):
    import dsl

    text = _read_script(path)
    return dsl.compile(dsl.parse(text, path)), text


NO_PROMPT_HINT = 'add a line like: prompt "a red circle and a blue square"'


def located(e: SteerError, path: str, text: str) -> SteerError:
    """Give an error without a position (a missing prompt) the script's first line. A usage error
    is about the command line or a file, not a line of the script: it keeps its own form."""
    from energies.program import Span

    if isinstance(e, SteerUsageError):
        return e
    if e.span is None:
        e.span = Span(line=1, col=1, end_line=1, end_col=2, file=path)
    return e.with_source(text)


def _with_overrides(program, args):
    """The script's program with --seed, --steps and --model in place of its own, each checked
    by the rule the language checks `seed 5` with (energies/program.py, setting_problem)."""
    from energies.program import setting_problem

    for name in ("seed", "steps"):
        value = getattr(args, name, None)
        problem = setting_problem(name, value)
        if problem:
            raise SteerUsageError(f"--{name} {value}: {problem}")
    return program.with_settings(seed=args.seed, steps=args.steps, model=args.model)


def default_output(script: Path, inputs=None, suffix: str = "") -> Path:
    """<script><suffix>.png next to the script; if that name is taken by a file steer did not
    write, or by an input of the run, <script><suffix>-2.png, -3, ... so a user's own image is
    never overwritten."""
    from sampler.preflight import written_by_steer

    out = script.with_name(f"{script.stem}{suffix}.png")
    n = 2
    while (out.exists() and not written_by_steer(out)) or (inputs is not None and inputs.which(out)):
        out = script.with_name(f"{script.stem}{suffix}-{n}.png")
        n += 1
    return out


def cmd_run(args) -> int:
    from sampler.preflight import check_outputs

    from . import batch

    if batch.is_batch(args):
        return _run_batch(args)
    program, text, inputs = _prepared(args)
    out = Path(args.output) if args.output else default_output(Path(args.script), inputs)
    sheet = _sheet_path(args.sheet, out)
    outputs = {"-o": out, **({"--source-out": Path(args.source_out)} if args.source_out else {}),
               **({"--sheet": sheet} if sheet else {})}
    check_outputs(outputs, inputs, args.overwrite)  # before the model loads: nothing is spent on a run that cannot be written
    result, sampling = _run(program, text, args)
    _save(result, out, args.source_out)
    if sheet:
        _write(lambda: result.sheet(sheet), sheet)
    print(f"wrote {out}" + (f" and {args.source_out}" if args.source_out else "") + (f" and the sheet {sheet}" if sheet else "") + f" ({sampling})")
    return 0


def _run_batch(args) -> int:
    """--seeds, --sources, --sweep: the script over each, on one model (dsl/batch.py)."""
    from . import batch

    program, text, _ = _prepared(args)
    if not program.settings.prompt:  # before the model loads, as every other mistake of a batch
        raise located(SteerError("the script has no prompt", hint=NO_PROMPT_HINT), args.script, text)
    plan = batch.plan(program, Path(args.script), args)

    def make_editor(device: str):
        return _editor(program, argparse.Namespace(**{**vars(args), "device": device}), text)

    try:
        outcome = batch.run(plan, make_editor, args.device, progress=not args.quiet, warn=lambda r: _print_warnings(r.warnings, text))
    except SteerError as e:
        raise located(e, args.script, text)
    except OSError as e:
        raise SteerUsageError(f"cannot write {e.filename or plan.folder}: {e.strerror or e}", hint="check the folder and the free space") from None
    if outcome.main:
        n = len(outcome.pending)
        print(f"wrote {n} item{'s' * (n != 1)} into {plan.folder} and the grid {plan.grid}" if n else f"nothing left to run; wrote the grid {plan.grid}")
    return 0


def _prepared(args):
    """(the script's program with the command line's settings, the script's text, the run's inputs)."""
    from sampler.preflight import run_inputs

    program, text = _compile_file(args.script)
    program = _with_overrides(program, args)
    return program, text, run_inputs(program, Path(args.script), program.settings.model)


def _run(program, text: str, args):
    """Run the program on its model; its mistakes at their lines, its warnings printed; and how
    it was sampled ("DDIM, 25 steps", naming a pipeline scheduler that DDIM replaced)."""
    editor = _editor(program, args, text)
    try:
        result = editor.run(program, progress=not args.quiet, script_dir=Path(args.script).parent)
    except SteerError as e:
        raise located(e, args.script, text)
    _print_warnings(result.warnings, text)
    return result, editor.backbone.sampling_note(result.steps)


def _sheet_path(flag, out: Path) -> Path | None:
    """--sheet alone: <output>-sheet.png next to the edited image; --sheet PATH: there."""
    if flag is None:
        return None
    return Path(flag) if flag else out.with_name(f"{out.stem}-sheet.png")


def cmd_maps(args) -> int:
    """DAAM-style heat maps of the prompt's words over the source and the edit, as one PNG grid."""
    from sampler.preflight import check_outputs

    program, text, inputs = _prepared(args)
    out = Path(args.output) if args.output else default_output(Path(args.script), inputs, "-maps")
    check_outputs({"-o": out}, inputs, args.overwrite)
    _check_fractions(args.at)
    if args.words:  # a word that is not in the prompt is found before minutes of sampling
        _check_words(args.words, program)
    result, sampling = _run(program, text, args)
    _write(lambda: result.save_maps(out, args.words, args.at), out)
    print(f"wrote {out} ({sampling})")
    return 0


def _check_fractions(at):
    for f in at or ():
        if not 0 <= f <= 1:
            raise SteerUsageError(f"--at {f:g}: a sampling fraction is from 0 (the first step) to 1 (the last)")


def _check_words(words: list[str], program):
    """Each word against the prompt, as the language resolves `token "word"`."""
    import dsl
    from sampler.backbones import load_tokenizer

    if not program.settings.prompt:
        raise SteerUsageError("the script has no prompt", hint=NO_PROMPT_HINT)
    tokenizer = load_tokenizer(program.settings.model or "shapes")
    for w in words:
        try:
            dsl.token_indices(w, program.settings.prompt, tokenizer)
        except SteerError as e:
            raise SteerUsageError(f"--words {w}: {e.message}", hint=e.hint) from None


def _print_warnings(warnings: list, text: str):
    """Statements with nothing to do, or in conflict: shown like errors, `warning:`, on stderr."""
    for w in warnings:
        print(w.with_source(text).render(), file=sys.stderr)


def _editor(program, args, text: str):
    """The Editor of the run's model."""
    from sampler.editor import Editor

    try:
        return Editor(program.settings.model, device=args.device, dtype=args.dtype, low_memory=args.low_memory)
    except SteerUsageError as e:
        raise _at_model_line(e, program, args.model, text) from None


def _at_model_line(e: SteerUsageError, program, model_flag, text: str) -> SteerError:
    """A model that cannot be found or loaded: named by the script's `model` line, an error at
    that line; named by --model, a command-line error as it is."""
    from energies.errors import SteerCompileError

    span = program.settings.spans.get("model")
    if model_flag is None and span is not None and "model" in e.message:
        return SteerCompileError(e.message, span, hint=e.hint, source=text)
    return e


def _save(result, out: Path, source_out):
    """Write the images; a disk that fills up or a folder removed meanwhile is a usage error."""
    _write(lambda: result.save(out, source_out), out)


def _write(write, out: Path):
    """write(), with a disk that fills up or a folder removed meanwhile as a usage error."""
    try:
        write()
    except OSError as e:
        raise SteerUsageError(f"cannot write {e.filename or out}: {e.strerror or e}", hint="check the folder and the free space") from None


def cmd_check(args) -> int:
    status = 0
    for path in args.scripts:
        try:
            program = _check_one(path, args.model)
            n = len(program.terms)
            print(f"{path}: ok ({n} term{'s' * (n != 1)}; {_sampler_of(program.settings.model or args.model)})")
        except SteerError as e:
            print(e.render(), file=sys.stderr)
            status = EXIT_USER_ERROR
    return status


def _sampler_of(model) -> str:
    """How `steer run` will sample this model, said by `steer check` without loading it."""
    from sampler.backbones import flow_kind

    return "samples with Euler on the flow's velocity" if flow_kind(model) else "samples with DDIM"


def _check_one(path: str, model_override):
    """What `steer run` would refuse before sampling, without loading the model's weights; and
    what it would warn about."""
    from sampler.preflight import check_without_weights

    program, text = _compile_file(path)
    program = program.with_settings(model=model_override)
    if not program.settings.prompt:
        raise located(SteerError("the script has no prompt", hint=NO_PROMPT_HINT), path, text)
    warnings: list = []
    try:
        check_without_weights(program, Path(path).parent, program.settings.model, warnings)
        _print_warnings(warnings, text)
    except SteerUsageError as e:
        raise _at_model_line(e, program, model_override, text) from None
    except SteerError as e:
        raise located(e, path, text)
    return program


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
    from sampler.backbones import check_device

    from .repl import Repl

    check_device(args.device)  # before the prompt, not at the first :run
    return Repl(args.script, model=args.model, device=args.device, dtype=args.dtype, low_memory=args.low_memory).loop()


def cmd_ui(args) -> int:
    from .ui import serve

    return serve(args.script, model=args.model, host=args.host, port=args.port, device=args.device, dtype=args.dtype,
                 low_memory=args.low_memory)


def cmd_directions(args) -> int:
    from energies import directions
    from sampler.backbones import direction_folders

    here = Path(args.script).parent if args.script else Path.cwd()
    for line in directions.listing(direction_folders(here, args.model)):
        print(line, flush=True)  # line by line: `steer directions | head` reads the first ones and goes
    return 0


def cmd_bench(args) -> int:
    from sampler.bench import main as bench_main

    return bench_main(args)


def cmd_learn(args) -> int:
    from sampler.learn import main as learn_main

    return learn_main(args.rest)


def _model_flags(p: argparse.ArgumentParser):
    """Which model, where and how: shared by the commands that load one."""
    p.add_argument("--model", help='"shapes" (default), a shapes model folder, a Stable Diffusion model id / folder, or a .safetensors checkpoint')
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps ...")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="Stable Diffusion weights (the shapes model is fp32)")
    p.add_argument("--low-memory", action="store_true", help="every guided step recomputes activations in their backward instead of keeping them "
                   "(by default only those whose graph would keep more than 15%% of the denoiser's weights): the same image, "
                   "less memory, more time (Stable Diffusion also slices attention)")


def _run_flags(p: argparse.ArgumentParser):
    """What every command that runs a script takes: its settings, the output rule, the model."""
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output that steer did not write (never an input of the run)")
    _model_flags(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="steer", description="steer: a guidance-energy composition language for diffusion image editing")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run an .edit script and write the edited image")
    r.add_argument("script")
    r.add_argument("-o", "--output", help="edited image (default: SCRIPT.png next to the script); for a batch, its folder (default: SCRIPT-batch/)")
    r.add_argument("--source-out", help="also write the unedited source image of the same seed")
    r.add_argument("--sheet", nargs="?", const="", metavar="SHEET.png",
                   help="also write one picture of the run: source and edit, the named tokens' maps, every statement's "
                        "energy curve (default: OUTPUT-sheet.png; put the flag after the script)")
    batches = r.add_argument_group("batches", "one image per seed, photo or weight, into a folder with a grid.png; done items are "
                             "skipped on a re-run; several processes with `accelerate launch ... -m dsl run ...`")
    batches.add_argument("--seeds", metavar="SEEDS", help="0-15, 0,3,7 or 0-3,9")
    batches.add_argument("--sources", metavar="DIR", help="every photo in DIR as the script's source, one after the other")
    batches.add_argument("--sweep", action="append", metavar="N=VALUES",
                   help="term N's weight (terms counted from 1 as written): 2=0,0.5,1 or 2=0:2:5 (five values 0..2); "
                        "repeat for more terms (every combination); combines with --seeds or --sources")
    _run_flags(r)
    r.set_defaults(func=cmd_run)

    m = sub.add_parser("maps", help="run a script and draw DAAM-style heat maps of its prompt's words over the source and the edit")
    m.add_argument("script")
    m.add_argument("--words", nargs="+", metavar="WORD", help='words of the prompt (default: all but "a", "and" ...); "red#2" for the second')
    m.add_argument("--at", nargs="+", type=float, metavar="F",
                   help="sampling fractions, one column each (0: first step, 1: last; default: averaged over all steps, as DAAM)")
    m.add_argument("-o", "--output", help="the grid (default: SCRIPT-maps.png next to the script)")
    _run_flags(m)
    m.set_defaults(func=cmd_maps)

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

    u = sub.add_parser("ui", help="a web page for live editing: the script, the images, maps, drag points and weight sliders")
    u.add_argument("script", nargs="?")
    u.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1, this machine only)")
    u.add_argument("--port", type=int, help="default: 7860, or the next free port")
    _model_flags(u)
    u.set_defaults(func=cmd_ui)

    lp = sub.add_parser("learn", help="learn directions: `steer learn hspace ...` (Asyrp), `noiseclr ...` (NoiseCLR) or `prompt ...` (Pix2Pix-Zero)",
                        add_help=False)
    lp.add_argument("rest", nargs=argparse.REMAINDER)
    lp.set_defaults(func=cmd_learn)

    d = sub.add_parser("directions", help="list the learned directions a script can use, and what each is")
    d.add_argument("script", nargs="?", help="look next to this script too (default: the current folder)")
    d.add_argument("--model", help='"shapes" (default) or a shapes model folder: its shipped directions')
    d.set_defaults(func=cmd_directions)

    from sampler.bench.flags import add_arguments as bench_arguments  # a light import: argparse only

    b = sub.add_parser("bench", help="measure edit quality and cost across the shapes world (report split by default)")
    bench_arguments(b)
    b.set_defaults(func=cmd_bench)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["learn"]:  # its own parser (sampler/learn/cli.py) reads everything after the word
        return _guarded(lambda: cmd_learn(argparse.Namespace(rest=argv[1:])))
    args = build_parser().parse_args(_sheet_before_script(argv))
    return _guarded(lambda: args.func(args))


def _sheet_before_script(argv: list[str]) -> list[str]:
    """`steer run --sheet x.edit`: --sheet takes an optional value, and argparse would take the
    script for it. A .edit file is never a sheet: there --sheet means the default sheet path."""
    return ["--sheet=" if a == "--sheet" and i + 1 < len(argv) and argv[i + 1].endswith(".edit") else a for i, a in enumerate(argv)]


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a tool whose reader went away


def _guarded(run) -> int:
    try:
        return run()
    except SteerError as e:
        print(e.render(), file=sys.stderr)
        return EXIT_USER_ERROR
    except FileNotFoundError as e:
        print(f"steer: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:
        return _reader_gone()
    except KeyboardInterrupt:
        print("steer: interrupted", file=sys.stderr)
        return 130


def _reader_gone() -> int:
    """The reader of stdout closed it (`steer directions | head`): that is not a mistake, so no
    message; stdout is pointed at /dev/null so that Python's flush at exit does not fail again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is no real file (a test's capture): nothing to flush
        pass
    return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())

"""`steer repl`: add, remove and reweight statements, and re-run without reloading anything.

The model is loaded once and the source pass (the unedited trajectory) is cached by the Editor,
so a re-run after a weight change costs only the edit pass. Lines in the language are added to
the program (settings replace the previous value); lines starting with ':' are commands.

Every run is numbered: run k writes OUT-k.png and OUT-k-source.png (OUT is :out's name without
.png, repl by default) and keeps the program it ran, so variants stay side by side on disk and
`:diff 3 5` shows what changed between two of them (the programs' diff, and OUT-diff-3-5.png:
the two edits and where they differ). `:runs` lists them.

At a terminal the prompt is prompt_toolkit's: the line is highlighted as it is typed (keywords,
strings, numbers, comments, commands), Tab completes commands, keywords, the prompt's words (as
"word") and direction names, and the history persists in ~/.steer_history (STEER_HISTORY, or
the `history` argument, names another file). Read from a pipe, lines are taken as they come.

Every line typed is a line of one virtual file, "<repl>": an error names its line and shows it
with a caret, whether it is found as the line is added (the language, and once there is a
prompt, its names against the model's tokenizer and its directions against the model's shapes)
or at a later :run. A line that would make the program wrong is not added, so :save always
writes a script that runs. Ctrl-C clears the line being typed, or stops a run; Ctrl-D leaves.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from energies.errors import SteerError

HELP = """\
Type statements of the language to add them, e.g.
    centroid(token "circle") -> (0.75, 0.5)
    keep appearance; size(token "square") *= 1.5
Settings (prompt, seed, steps, cfg, negative) replace the current value.
Commands:
    :run               run the program now (also after every change while :auto is on);
                       run k writes OUT-k.png and OUT-k-source.png and prints [k]
    :runs              the runs so far: number, image, settings and statements
    :diff A B          what changed from run A to run B: their programs' diff, and
                       OUT-diff-A-B.png (edit A, edit B, where they differ)
    :list              the program, numbered
    :rm N              remove term N
    :weight N W        set the weight of term N to W
    :window N A B      set the window of term N to A..B
    :clear             remove every term
    :auto on|off       re-run after every change (default on)
    :out PATH          where images go: OUT is PATH without .png (default repl, so repl-1.png, ...)
    :save PATH         write the program as an .edit script (never over an existing file)
    :maps [WORDS]      DAAM-style heat maps of the prompt's words (or WORDS) in the last run (OUT-k-maps.png)
    :curves            the last run's sheet: source and edit, the named tokens' maps, every energy curve (OUT-k-sheet.png)
    :directions        the learned directions `direction NAME` can use, and what each is
    :help              this text
    :quit              leave (also Ctrl-D)
At a terminal: Tab completes, Up and Ctrl-R search the history (~/.steer_history)."""

REPL_FILE = "<repl>"  # the file name of the lines typed, in errors
COMMANDS = (":run", ":runs", ":diff", ":list", ":rm", ":weight", ":window", ":clear", ":auto", ":out", ":save", ":maps", ":curves",
            ":directions", ":help", ":quit")
KEYWORDS = ("prompt", "negative", "seed", "steps", "cfg", "model", "source", "invert", "centroid", "size", "shape", "appearance",
            "keep", "direction", "token", "layout", "attention", "via", "every", "clip", "from", "style", "image", "structure", "pixels",
            "inside", "outside", "drag", "within", "remove")
HISTORY_FILE = Path.home() / ".steer_history"  # STEER_HISTORY overrides it


@dataclass
class Run:
    """One numbered run: what it ran and where its images went."""

    number: int
    program: object  # the energies.Program as run, settings filled in
    image: Path
    source: Path
    edit: np.ndarray  # the edited image (H, W, 3) in [0, 1], kept for :diff's picture


class Repl:
    def __init__(self, script: str | None = None, model: str | None = None, device: str = "auto", out: str = "repl.png",
                 dtype: str = "fp32", low_memory: bool = False, history: str | None = None):
        from energies.program import Program

        self.program = Program()
        self.model = model
        self.device = device
        self.dtype, self.low_memory = dtype, low_memory
        self.out = Path(out)
        self.auto = True
        self.editor = None
        self.result = None  # the last run's EditResult, which :maps and :curves draw
        self.runs: list[Run] = []  # run k is runs[k - 1]
        self.history = Path(history or os.environ.get("STEER_HISTORY") or HISTORY_FILE)
        self.script = Path(script) if script else None
        self.script_dir = Path(script).parent if script else Path.cwd()
        self.lines: list[str] = []  # every line typed: the virtual file "<repl>" errors point into
        if script:
            import dsl

            self.program = dsl.compile(dsl.parse(dsl.read_script(script), script))
        if model:
            self.program = self.program.with_settings(model=model)

    # -- the program ---------------------------------------------------------------------------

    def add(self, text: str):
        """Add a line of the language to the program, if the program stays right with it."""
        import dsl
        from energies.program import Program

        new = dsl.compile(dsl.parse(self._as_typed(text), REPL_FILE))
        candidate = self.program + Program(settings=new.settings, terms=new.terms)
        self._check(candidate)
        self.program = candidate

    def _as_typed(self, text: str) -> str:
        """`text`, on the line of "<repl>" it was typed on (blank lines before it), so that its
        spans give that line number."""
        return "\n" * (len(self.lines) - 1) + text

    def _check(self, program):
        """What a run would refuse, asked without running: once the program has a prompt, its
        names against the model's tokenizer, its directions against the model's shapes."""
        from sampler.preflight import check_without_weights

        if program.settings.prompt:
            try:
                check_without_weights(program, self.script_dir, program.settings.model)
            except SteerError as e:
                raise self._located(e)

    def _located(self, e: SteerError) -> SteerError:
        """An error at a line typed here, with the lines typed so far as its source."""
        if e.span is not None and e.span.file == REPL_FILE:
            e.with_source("\n".join(self.lines))
        return e

    def listing(self) -> str:
        from energies.program import Program

        from .printer import format as fmt, term

        lines = fmt(Program(settings=self.program.settings)).splitlines()  # the settings, as a script writes them
        lines += [f"[{i}] {term(t)}" for i, t in enumerate(self.program.terms, 1)]
        return "\n".join(lines) or "(empty program)"

    def _term_index(self, n: str) -> int:
        i = int(n) - 1
        if not 0 <= i < len(self.program.terms):
            raise ValueError(f"no term {n}; :list shows them")
        return i

    def _replace(self, i: int, **update):
        terms = list(self.program.terms)
        terms[i] = terms[i].model_copy(update=update)
        self.program = self.program.model_copy(update={"terms": tuple(terms)})

    # -- running -------------------------------------------------------------------------------

    def _outputs(self, out: Path, number: int) -> dict[str, Path]:
        """Where run `number` writes, by :out's name: OUT-k.png and OUT-k-source.png."""
        image = out.with_name(f"{out.stem}-{number}.png")
        return {":out": image, ":out (its source image)": image.with_name(f"{image.stem}-source.png")}

    def _check_outputs(self, outputs: dict[str, Path]):
        """The images may go there: not over an input of the run (this script, its photo, its
        directions), nor over a file steer did not write."""
        from sampler.preflight import check_outputs, run_inputs

        check_outputs(outputs, run_inputs(self.program, self.script, self.program.settings.model))

    def _checked_out(self, out: Path) -> Path:
        """`out` as :out's name, if the next run's images may go by it. It names PNGs: another
        suffix (`:out r.edit`, the script) is a slip of the hand, not a name."""
        from energies.errors import SteerUsageError

        if out.suffix not in ("", ".png"):
            raise SteerUsageError(f":out {out}: run k writes {out.stem}-k.png, so :out names a .png",
                                  hint=f"for example :out {out.with_suffix('.png')}")
        self._check_outputs(self._outputs(out, len(self.runs) + 1))
        return out.with_suffix(".png")

    def run(self):
        from sampler.editor import Editor

        number = len(self.runs) + 1
        outputs = self._outputs(self.out, number)
        self._check_outputs(outputs)  # the program may have gained an input since :out was set
        if self.editor is None:
            print("loading the model ...")
            self.editor = Editor(self.program.settings.model, device=self.device, dtype=self.dtype, low_memory=self.low_memory)
        t0 = time.perf_counter()
        try:
            result = self.editor.run(self.program, script_dir=self.script_dir)
        except SteerError as e:
            raise self._located(e)
        image, source = outputs.values()
        result.save(image, source)
        self.result = result
        self.runs.append(Run(number, result.program, image, source, result.image))
        for w in result.warnings:
            print(self._located(w).render(), file=sys.stderr)
        summary = ", ".join(f"{k}: {v[-1][1]:.3g}" for k, v in result.energies.items() if v)
        print(f"[{number}] wrote {image} and {source} in {time.perf_counter() - t0:.1f}s" + (f"  (final energies: {summary})" if summary else ""))

    def run_listing(self) -> str:
        """One line per run: [k], its image, its seed and steps, its statements."""
        from .printer import term

        lines = []
        for r in self.runs:
            s = r.program.settings
            terms = "; ".join(term(t) for t in r.program.terms) or "(no statements)"
            lines.append(f"[{r.number}] {r.image}  seed {s.seed}, steps {s.steps}: {terms}")
        return "\n".join(lines) or "(no runs yet)"

    def _run_numbered(self, n: str) -> Run:
        if not (n.isdigit() and 1 <= int(n) <= len(self.runs)):
            raise ValueError(f"no run {n}; :runs lists them")
        return self.runs[int(n) - 1]

    def diff(self, a: str, b: str):
        """Print what changed from run a to run b, and draw the two edits and where they differ."""
        import dsl
        from sampler.images import write_png

        first, second = self._run_numbered(a), self._run_numbered(b)
        path = self.out.with_name(f"{self.out.stem}-diff-{first.number}-{second.number}.png")
        self._check_outputs({f":diff (writes {path.name})": path})
        print(program_diff(first, second) or f"[{first.number}] and [{second.number}] ran the same program")
        record = {"steer:program": dsl.format(second.program), "steer:diff-from": dsl.format(first.program), "steer:image": "diff"}
        write_png(diff_picture(first, second), path, record)
        print(f"wrote {path}")

    # -- commands ------------------------------------------------------------------------------

    def command(self, line: str) -> bool:
        """Run one ':' command; False means quit."""
        from .compiler import weight_value, window_value
        from .printer import format as fmt

        words = shlex.split(line)
        cmd, rest = words[0], words[1:]
        changed = False
        if cmd in (":quit", ":q", ":exit"):
            return False
        if cmd == ":help":
            print(HELP)
        elif cmd == ":list":
            print(self.listing())
        elif cmd == ":run":
            self.run()
        elif cmd == ":runs":
            print(self.run_listing())
        elif cmd == ":diff" and len(rest) == 2:
            self.diff(*rest)
        elif cmd == ":rm" and len(rest) == 1:
            i = self._term_index(rest[0])
            self.program = self.program.model_copy(update={"terms": self.program.terms[:i] + self.program.terms[i + 1 :]})
            changed = True
        elif cmd == ":weight" and len(rest) == 2:
            i = self._term_index(rest[0])
            self._replace(i, weight=weight_value(self._number(line, 2)))
            changed = True
        elif cmd == ":window" and len(rest) == 3:
            i = self._term_index(rest[0])
            self._replace(i, window=window_value(self._number(line, 2), self._number(line, 3)))
            changed = True
        elif cmd == ":clear":
            self.program = self.program.model_copy(update={"terms": ()})
            changed = True
        elif cmd == ":auto" and rest in (["on"], ["off"]):
            self.auto = rest[0] == "on"
        elif cmd == ":out" and len(rest) == 1:
            self.out = self._checked_out(Path(rest[0]))
        elif cmd == ":save" and len(rest) == 1:
            path = Path(rest[0])
            if path.exists():
                raise ValueError(f"{path} exists; choose another name")
            path.write_text(fmt(self.program))
            print(f"wrote {path}")
        elif cmd == ":maps":
            self._check_words(rest)
            self.picture("maps", lambda path: self.result.save_maps(path, rest or None))
        elif cmd == ":curves" and not rest:
            self.picture("sheet", self.result.sheet if self.result else None)
        elif cmd == ":directions":
            from energies import directions

            print("\n".join(directions.listing(self._direction_paths())))
        else:
            raise ValueError(f"unknown command {line!r}; :help lists them")
        if changed:
            print(self.listing())
            if self.auto and self.program.settings.prompt:
                self.run()
        return True

    def _check_words(self, words: list[str]):
        """Each word against the last run's prompt, as `token "word"` resolves: a typo is one line."""
        import dsl

        for w in words if self.result is not None else ():
            try:
                dsl.token_indices(w, self.result.program.settings.prompt, self.result.tokenizer)
            except SteerError as e:
                raise ValueError(f":maps {w}: {e.message}" + (f" ({e.hint})" if e.hint else "")) from None

    def picture(self, name: str, write):
        """Write a picture of the last run, k, to OUT-k-<name>.png (next to its image), by the
        output rules of its images, and say where."""
        if self.result is None:
            raise ValueError("nothing has run yet; :run first")
        image = self.runs[-1].image
        path = image.with_name(f"{image.stem}-{name}.png")
        self._check_outputs({f":{'curves' if name == 'sheet' else name} (writes {path.name})": path})
        write(path)
        print(f"wrote {path}")

    def _number(self, line: str, k: int):
        """The k-th word (from 0) of a command line as a number of the language, with its
        position on the line, so the language's own checks can point at it."""
        from energies.program import Span

        from .parser import number

        word = list(re.finditer(r"\S+", line))[k]
        n = len(self.lines)
        span = Span(line=n, col=word.start() + 1, end_line=n, end_col=word.end() + 1, file=REPL_FILE)
        try:
            return number(word.group(), span)
        except SteerError as e:
            raise self._located(e)

    def handle(self, line: str) -> bool:
        line = line.strip()
        self.lines.append(line)
        if not line or line.startswith("#"):
            return True
        if line.startswith(":"):
            return self.command(line)
        self.add(line)
        if self.auto and self.program.settings.prompt and self.program.terms:
            self.run()
        return True

    def _direction_paths(self) -> list[Path]:
        from sampler.backbones import direction_folders

        return direction_folders(self.script_dir, self.program.settings.model)

    # -- the loop ------------------------------------------------------------------------------

    def completions(self, prefix: str, line: str = "") -> list[str]:
        """The words Tab offers for `prefix`, the end of `line`: commands, keywords, direction
        names and the prompt's words, quoted as `token "word"` takes them (bare after :maps)."""
        from energies import directions

        from .resolve import prompt_words

        words = list(COMMANDS) + list(KEYWORDS) + list(directions.known(self._direction_paths()))
        if self.program.settings.prompt:
            said = dict.fromkeys(w for w, _, _ in prompt_words(self.program.settings.prompt))
            words += list(said) if line.lstrip().startswith(":maps") else [f'"{w}"' for w in said]
        return [w for w in dict.fromkeys(words) if w.startswith(prefix) and w != prefix]

    def session(self, input=None, output=None):
        """The prompt at a terminal: highlighting, completion, the history file. `input` and
        `output` are prompt_toolkit's (a pipe and a DummyOutput in tests), else the terminal."""
        from prompt_toolkit import PromptSession
        from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
        from prompt_toolkit.styles import Style

        return PromptSession("steer> ", history=_history(self.history), lexer=_lexer(), completer=_completer(self),
                             style=Style.from_dict(STYLE), auto_suggest=AutoSuggestFromHistory(), complete_while_typing=True,
                             input=input, output=output)

    def loop(self, session=None) -> int:
        """Read lines until Ctrl-D, :quit or the end of the input. At a terminal (or given a
        prompt_toolkit `session`) through the prompt; from a pipe, line by line."""
        interactive = session is not None or sys.stdin.isatty()
        if interactive:
            read = (session or self.session()).prompt
            print("steer repl: statements add to the program, :help lists commands, Ctrl-D leaves")
            print(self.listing())
        else:
            read = input
        while True:
            try:
                line = read()
            except EOFError:
                break
            except KeyboardInterrupt:
                if not interactive:
                    raise
                continue  # Ctrl-C at the prompt clears the line, as a shell does; the program stays
            try:
                if not self.handle(line):
                    break
            except SteerError as e:
                print(self._located(e).render(), file=sys.stderr)
            except (ValueError, OSError) as e:
                print(f"error: {e}", file=sys.stderr)
            except KeyboardInterrupt:
                print("interrupted", file=sys.stderr)
        return 0


# ------------------------------------------------------------------------------------------------
# Comparing runs


def program_diff(first: Run, second: Run) -> str:
    """The two runs' programs, as `steer fmt` prints them, as a unified diff with the whole
    program as its context (a script is short, and what stayed matters too); "" if the same."""
    import dsl

    a, b = (dsl.format(r.program).splitlines() for r in (first, second))
    return "\n".join(difflib.unified_diff(a, b, f"[{first.number}]", f"[{second.number}]", n=len(a) + len(b), lineterm=""))


def diff_picture(first: Run, second: Run) -> np.ndarray:
    """(H, W, 3) in [0, 1]: edit A | edit B | |A - B| (the channels' mean, scaled to its largest
    value, which the label gives), each enlarged without blur and labelled."""
    if first.edit.shape != second.edit.shape:
        raise ValueError(f"runs {first.number} and {second.number} made images of different sizes")
    difference = np.abs(first.edit - second.edit).mean(-1)
    largest = float(difference.max())
    scaled = difference / largest if largest > 0 else difference
    tiles = [_labelled(first.edit, f"[{first.number}]"), _labelled(second.edit, f"[{second.number}]"),
             _labelled(np.repeat(scaled[..., None], 3, -1), f"|difference| max {largest:.2g}")]
    return np.concatenate(tiles, axis=1).astype(np.float32) / 255


def _labelled(image: np.ndarray, label: str) -> np.ndarray:
    """The image enlarged (pictures.enlarged) under a white strip with its label, as uint8."""
    from PIL import Image, ImageDraw

    from sampler.pictures import LABEL_HEIGHT, enlarged

    big = (np.clip(enlarged(image), 0, 1) * 255).round().astype(np.uint8)
    strip = Image.new("RGB", (big.shape[1], LABEL_HEIGHT), "white")
    ImageDraw.Draw(strip).text((2, 1), label, fill="black")
    return np.concatenate([np.asarray(strip), big], axis=0)


# ------------------------------------------------------------------------------------------------
# The terminal: highlighting, completion, history (prompt_toolkit)

STYLE = {"keyword": "bold ansiblue", "string": "ansigreen", "number": "ansimagenta", "comment": "italic ansibrightblack",
         "command": "bold ansicyan"}
_NAME_EDGE_BEFORE, _NAME_EDGE_AFTER = r"(?<![\w\-])", r"(?![\w\-])"  # names may hold _ and -, as the grammar's NAME does
TOKENS = re.compile(
    r'(?P<string>"(?:[^"\\]|\\.)*(?:"(?:\#\d+)?|$))'  # a string, its occurrence (`"dog"#2`), or one not closed yet
    r"|(?P<comment>\#.*)"
    r"|(?P<command>^\s*:\w+)"
    rf"|(?P<number>{_NAME_EDGE_BEFORE}[+-]?(?:\d+(?:\.\d+)?|(?<!\.)\.\d+)(?:[eE][+-]?\d+)?{_NAME_EDGE_AFTER})"
    rf"|(?P<keyword>{_NAME_EDGE_BEFORE}(?:{'|'.join(KEYWORDS)}){_NAME_EDGE_AFTER})"
)


def highlight(line: str) -> list[tuple[str, str]]:
    """prompt_toolkit's (style, text) fragments of one line: keywords, strings, numbers,
    comments and :commands get their class; the rest is plain."""
    fragments, at = [], 0
    for m in TOKENS.finditer(line):
        if m.start() > at:
            fragments.append(("", line[at : m.start()]))
        fragments.append((f"class:{m.lastgroup}", m.group()))
        at = m.end()
    if at < len(line):
        fragments.append(("", line[at:]))
    return fragments


def _lexer():
    from prompt_toolkit.lexers import Lexer

    class SteerLexer(Lexer):
        def lex_document(self, document):
            return lambda i: highlight(document.lines[i])

    return SteerLexer()


def _completer(repl: Repl):
    """Tab offers Repl.completions of the word before the cursor; while typing, once it has begun."""
    from prompt_toolkit.completion import Completer, Completion

    class SteerCompleter(Completer):
        def get_completions(self, document, complete_event):
            before = document.text_before_cursor
            prefix = re.search(r'[:"\w\-#]*$', before).group()
            if prefix or complete_event.completion_requested:
                for word in repl.completions(prefix, before):
                    yield Completion(word, start_position=-len(prefix))

    return SteerCompleter()


def _history(path: Path):
    """The history file, appended to as each line is entered; one that cannot be written (a
    read-only home) leaves the session without a saved history rather than stopping it."""
    from prompt_toolkit.history import FileHistory

    class History(FileHistory):
        def store_string(self, string: str) -> None:
            try:
                super().store_string(string)
            except OSError:
                pass

    return History(str(path))

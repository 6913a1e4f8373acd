"""`steer repl`: add, remove and reweight statements, and re-run without reloading anything.

The model is loaded once and the source pass (the unedited trajectory) is cached by the Editor,
so a re-run after a weight change costs only the edit pass. Lines in the language are added to
the program (settings replace the previous value); lines starting with ':' are commands.
History and tab completion of keywords and prompt words use the standard readline module.

Every line typed is a line of one virtual file, "<repl>": an error names its line and shows it
with a caret, whether it is found as the line is added (the language, and once there is a
prompt, its names against the model's tokenizer and its directions against the model's shapes)
or at a later :run. A line that would make the program wrong is not added, so :save always
writes a script that runs. Ctrl-C clears the line being typed, or stops a run; Ctrl-D leaves.
"""

from __future__ import annotations

import re
import shlex
import sys
import time
from pathlib import Path

from energies.errors import SteerError

HELP = """\
Type statements of the language to add them, e.g.
    centroid(token "circle") -> (0.75, 0.5)
    keep appearance; size(token "square") *= 1.5
Settings (prompt, seed, steps, cfg, negative) replace the current value.
Commands:
    :run               run the program now (also after every change while :auto is on)
    :list              the program, numbered
    :rm N              remove term N
    :weight N W        set the weight of term N to W
    :window N A B      set the window of term N to A..B
    :clear             remove every term
    :auto on|off       re-run after every change (default on)
    :out PATH          where images go (default repl.png and repl-source.png)
    :save PATH         write the program as an .edit script (never over an existing file)
    :maps [WORDS]      DAAM-style heat maps of the prompt's words (or WORDS) in the last run (OUT-maps.png)
    :curves            the last run's sheet: source and edit, the named tokens' maps, every energy curve (OUT-sheet.png)
    :directions        the learned directions `direction NAME` can use, and what each is
    :help              this text
    :quit              leave (also Ctrl-D)"""

REPL_FILE = "<repl>"  # the file name of the lines typed, in errors
COMMANDS = (":run", ":list", ":rm", ":weight", ":window", ":clear", ":auto", ":out", ":save", ":maps", ":curves", ":directions", ":help",
            ":quit")
KEYWORDS = ("prompt", "negative", "seed", "steps", "cfg", "centroid", "size", "shape", "appearance", "keep", "direction", "token",
            "layout", "attention", "via", "clip", "from", "style", "image", "structure", "pixels", "inside", "outside",
            "drag", "within")


class Repl:
    def __init__(self, script: str | None = None, model: str | None = None, device: str = "auto", out: str = "repl.png",
                 dtype: str = "fp32", low_memory: bool = False):
        from energies.program import Program

        self.program = Program()
        self.model = model
        self.device = device
        self.dtype, self.low_memory = dtype, low_memory
        self.out = Path(out)
        self.auto = True
        self.editor = None
        self.result = None  # the last run's EditResult, which :maps and :curves draw
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
        from .printer import SETTING_ORDER, setting, term

        s = self.program.settings
        lines = [setting(k, getattr(s, k)) for k in SETTING_ORDER if getattr(s, k) is not None]
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

    def _outputs(self, out: Path) -> dict[str, Path]:
        return {":out": out, ":out (its source image)": out.with_name(out.stem + "-source.png")}

    def _check_outputs(self, out: Path):
        """The images may go to `out`: not over an input of the run (this script, its photo, its
        directions), nor over a file steer did not write."""
        from sampler.preflight import check_outputs, run_inputs

        check_outputs(self._outputs(out), run_inputs(self.program, self.script, self.program.settings.model))

    def run(self):
        from sampler.editor import Editor

        self._check_outputs(self.out)  # the program may have gained an input since :out was set
        if self.editor is None:
            print("loading the model ...")
            self.editor = Editor(self.program.settings.model, device=self.device, dtype=self.dtype, low_memory=self.low_memory)
        t0 = time.perf_counter()
        try:
            result = self.editor.run(self.program, script_dir=self.script_dir)
        except SteerError as e:
            raise self._located(e)
        source_out = self._outputs(self.out)[":out (its source image)"]
        result.save(self.out, source_out)
        self.result = result
        for w in result.warnings:
            print(self._located(w).render(), file=sys.stderr)
        summary = ", ".join(f"{k}: {v[-1][1]:.3g}" for k, v in result.energies.items() if v)
        print(f"wrote {self.out} and {source_out} in {time.perf_counter() - t0:.1f}s" + (f"  (final energies: {summary})" if summary else ""))

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
            self._check_outputs(Path(rest[0]))
            self.out = Path(rest[0])
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
        """Write a picture of the last run to OUT-<name>.png (next to :out), by the output rules
        of its images, and say where."""
        from sampler.preflight import check_outputs, run_inputs

        if self.result is None:
            raise ValueError("nothing has run yet; :run first")
        path = self.out.with_name(f"{self.out.stem}-{name}.png")
        check_outputs({f":{'curves' if name == 'sheet' else name} (writes {path.name})": path},
                      run_inputs(self.program, self.script, self.program.settings.model))
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

    def _completer(self):
        from energies import directions
        from .resolve import prompt_words

        names: list[str] = []  # direction names, read from their folders once per completion

        def complete(text, state):
            if state == 0:  # readline asks for match 0, 1, 2 ... of one completion
                names[:] = directions.known(self._direction_paths())
            words = list(COMMANDS) + list(KEYWORDS) + names
            if self.program.settings.prompt:
                words += [f'"{w}"' for w, _, _ in prompt_words(self.program.settings.prompt)]
            matches = [w for w in words if w.startswith(text)]
            return matches[state] if state < len(matches) else None

        return complete

    def _setup_readline(self):
        try:
            import readline
        except ImportError:  # pragma: no cover - Windows without pyreadline
            return None
        history = Path.home() / ".steer_history"
        try:
            readline.read_history_file(history)
        except OSError:
            pass
        readline.set_completer(self._completer())
        readline.set_completer_delims(" \t()")
        readline.parse_and_bind("tab: complete")
        return lambda: _save_history(readline, history)

    def loop(self) -> int:
        interactive = sys.stdin.isatty()
        save_history = self._setup_readline() if interactive else None
        if interactive:
            print("steer repl: statements add to the program, :help lists commands, Ctrl-D leaves")
            print(self.listing())
        try:
            while True:
                try:
                    line = input("steer> " if interactive else "")
                except EOFError:
                    break
                except KeyboardInterrupt:
                    if not interactive:
                        raise
                    print()  # Ctrl-C at the prompt clears the line, as a shell does; the program stays
                    continue
                try:
                    if not self.handle(line):
                        break
                except SteerError as e:
                    print(self._located(e).render(), file=sys.stderr)
                except (ValueError, OSError) as e:
                    print(f"error: {e}", file=sys.stderr)
                except KeyboardInterrupt:
                    print("interrupted", file=sys.stderr)
        finally:
            if save_history:
                save_history()
        return 0


def _save_history(readline, path: Path):
    try:
        readline.set_history_length(1000)
        readline.write_history_file(path)
    except OSError:
        pass

"""The script as the page edits it: checked as it is typed, and rewritten by sliders and clicks.

The syntax tree is the one truth: a slider's weight or window is put into the statement's term
and that term is printed back (dsl/printer.py) over the statement's span, so the rest of the
text (other statements, comments, blank lines) stays as the user wrote it; a click adds a line
printed from the term it makes. No function here needs a model's weights or a browser.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from energies import program as P
from energies.errors import SteerError, SteerUsageError, source_lines

NO_PROMPT_HINT = 'add a line like: prompt "a red circle and a blue square"'
DECIMALS = 3  # a clicked point, as a fraction of the image: 1/1000 is finer than a pixel of a 512 px image


@dataclass
class TermSlot:
    """What a term's sliders show: its text without modifiers, its weight and window."""

    index: int  # among the program's terms (the n-th statement that is not a setting)
    label: str
    weight: float
    window: tuple[float, float]
    window_set: bool  # False: the window shown is the term's default, not written in the script


@dataclass
class Check:
    """What the page shows about the script as it stands."""

    program: P.Program | None = None
    error: SteerError | None = None  # the first mistake, with the script as its source
    warnings: list[SteerError] = field(default_factory=list)
    slots: list[TermSlot] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def message(self) -> str:
        """The error, or the warnings, as the command line renders them; or a one-line ok."""
        if self.error is not None:
            return self.error.render()
        n = len(self.program.terms)
        lines = [w.render() for w in self.warnings]
        return "\n".join(lines + [f"ok ({n} term{'s' * (n != 1)})"])


def located(e: SteerError, file: str, text: str) -> SteerError:
    """The error with the script as its source; one without a position (a missing prompt) at the
    first line, as `steer check` shows it. A usage error (a model that cannot be found) keeps its
    own form: it is not about a line."""
    if isinstance(e, SteerUsageError):
        return e
    if e.span is None:
        e.span = P.Span(line=1, col=1, end_line=1, end_col=2, file=file)
    return e.with_source(text)


def check(text: str, file: str = "page.edit", script_dir: Path | None = None, model: str | None = None) -> Check:
    """What `steer check` says of `text`: the language, then the names against the model's
    tokenizer and the directions against its shapes (without loading its weights)."""
    from sampler.preflight import check_without_weights

    program = None
    try:
        program = compiled(text, file, model)
        if not program.settings.prompt:
            raise SteerError("the script has no prompt", hint=NO_PROMPT_HINT)
        warnings: list = []
        check_without_weights(program, script_dir or Path.cwd(), program.settings.model, warnings)
    except SteerError as e:
        return Check(program=program, error=located(e, file, text), slots=slots(program) if program else [])
    return Check(program=program, warnings=[located(w, file, text) for w in warnings], slots=slots(program))


def compiled(text: str, file: str = "page.edit", model: str | None = None) -> P.Program:
    """The program of `text` (a SteerError at its line if it has a mistake), --model in place of its own."""
    import dsl

    return dsl.compile(dsl.parse(text, file)).with_settings(model=model)


def slots(program: P.Program) -> list[TermSlot]:
    from energies.defaults import TERMS

    from ..printer import term as term_text

    out = []
    for i, t in enumerate(program.terms):
        default = TERMS[t.kind].window if t.kind in TERMS else (0.0, 1.0)
        window = (t.window.start, t.window.end) if t.window is not None else default
        label = term_text(t.model_copy(update={"weight": 1.0, "window": None, "placement": None}))
        out.append(TermSlot(i, label, t.weight, tuple(window), t.window is not None))
    return out


# ------------------------------------------------------------------------------------------------
# Rewriting


def offset(text: str, line: int, col: int) -> int:
    """The index in `text` of (line, col), both from 1, lines as the parser counts them."""
    lines = text.split("\n")
    return sum(len(s) + 1 for s in lines[: line - 1]) + col - 1


def _term_statements(script) -> list:
    from .. import ast

    return [st for st in script.statements if not isinstance(st, ast.Setting)]


def rewrite_term(text: str, index: int, file: str = "page.edit", **update) -> str:
    """`text` with term `index` changed (weight=, window=): the term printed back over its
    statement, everything else as it was. A script with a mistake is refused (its error)."""
    import dsl

    from ..printer import term as term_text

    script = dsl.parse(text, file)
    program = dsl.compile(script)
    if not 0 <= index < len(program.terms):
        raise SteerUsageError(f"the script has no term {index + 1}", hint="it changed since the sliders were drawn")
    new = program.terms[index].model_copy(update=update)
    span = _term_statements(script)[index].span
    start, end = offset(text, span.line, span.col), offset(text, span.end_line, span.end_col)
    out = text[:start] + term_text(new) + text[end:]
    dsl.compile(dsl.parse(out, file))  # a value the language refuses (a window 0.5..0.5) is refused here, at its line
    return out


def set_weight(text: str, index: int, weight: float, file: str = "page.edit") -> str:
    return rewrite_term(text, index, file, weight=round(float(weight), DECIMALS))


def set_window(text: str, index: int, start: float, end: float, file: str = "page.edit") -> str:
    """The window start..end on term `index`; the language's rule (0 <= start < end <= 1) is
    said in the sliders' words."""
    a, b = round(float(start), DECIMALS), round(float(end), DECIMALS)
    if not 0 <= a < b <= 1:
        raise SteerUsageError(f"window {a:g}..{b:g}: its start must come before its end, both in 0..1",
                              hint="move 'window from' below 'window to'")
    window = P.Window(start=a, end=b)
    return rewrite_term(text, index, file, window=window)


def add_line(text: str, line: str) -> str:
    """`line` as the script's last line."""
    if text and not text.endswith("\n"):
        text += "\n"
    return text + line + "\n"


def fraction(pixel: float, size: int) -> float:
    """A clicked pixel's centre as a fraction of the image side, in [0, 1] (the language's unit)."""
    return round(min(max((pixel + 0.5) / size, 0.0), 1.0), DECIMALS)


def token_ref(word: str) -> P.TokenRef:
    """"red#2" -> the second "red", as `token "red"#2` is written."""
    text, _, n = word.rpartition("#")
    return P.TokenRef(word=text, occurrence=int(n)) if text and n.isdigit() else P.TokenRef(word=word)


def drag_line(handle: tuple[float, float], target: tuple[float, float], within: str | None = None) -> str:
    """`drag (x, y) -> (x, y)` [within token "word"], printed from the term it is."""
    from ..printer import term as term_text

    if tuple(handle) == tuple(target):
        raise SteerUsageError("the target is the handle: nothing would move", hint="click the target somewhere else")
    return term_text(P.Drag(handle=tuple(handle), target=tuple(target), token=token_ref(within) if within else None))


def move_line(word: str, target: tuple[float, float]) -> str:
    """`centroid(token "word") -> (x, y)`, printed from the term it is."""
    from ..printer import term as term_text

    return term_text(P.Move(token=token_ref(word), to=tuple(target)))


def set_setting(text: str, name: str, value, file: str = "page.edit") -> str:
    """`text` with the setting `name` set to `value`: its value replaced where it is written,
    or a new line after the last setting (the first line if there is none)."""
    import dsl

    from .. import ast
    from ..printer import setting

    script = dsl.parse(text, file)
    line = setting(name, value)
    settings = [st for st in script.statements if isinstance(st, ast.Setting)]
    for st in settings:
        if st.name.value == name:
            start, end = offset(text, st.span.line, st.span.col), offset(text, st.span.end_line, st.span.end_col)
            return text[:start] + line + text[end:]
    lines = source_lines(text)
    at = max((st.span.end_line for st in settings), default=0)
    return "\n".join(lines[:at] + [line] + lines[at:]) + "\n"

"""The language's errors: one base, a position, a caret, a hint.

Every user mistake, whether found by the parser, the compiler or name resolution against a
model's tokenizer, is a SteerError. Rendered, it reads like a compiler's:

    edit.edit:2:16: error: token "dog" is not in the prompt
      centroid(token "dog") -> (0.7, 0.5)
                     ^~~~~
    hint: the prompt's words are: a, red, circle, and, blue, square

The structured fields (file, line, col, hint) are there for tools and tests, so nobody has to
parse the message text.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path


def source_lines(text: str) -> list[str]:
    """A script's lines as the parser counts them: broken at \n only, a \r before it being part
    of the break. Not str.splitlines, which also breaks at a lone \r, \f, U+0085, U+2028 and
    others, and so would number lines differently from the parser and show the wrong line."""
    lines = text.split("\n")
    if lines[-1] == "":  # the last line's newline ends it; no empty line follows
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def is_invisible(ch: str) -> bool:
    """A control character or a line/paragraph separator: printed raw it would move the cursor or
    break the line, so error lines show a space instead, and strings and comments refuse it."""
    return ch != "\t" and unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cs")


def _shown(line: str) -> str:
    # one column per character, so the caret below stays under the right one
    return "".join(" " if ch == "\t" or is_invisible(ch) else ch for ch in line)


class SteerError(Exception):
    """A user mistake with a source position (or none, for Python-built programs)."""

    kind = "error"

    def __init__(self, message: str, span=None, hint: str | None = None, source: str | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint
        self.source = source

    @property
    def file(self) -> str:
        return self.span.file if self.span is not None else "<program>"

    @property
    def line(self) -> int | None:
        return self.span.line if self.span is not None else None

    @property
    def col(self) -> int | None:
        return self.span.col if self.span is not None else None

    def with_source(self, source: str) -> "SteerError":
        if self.source is None:
            self.source = source
        return self

    def render(self) -> str:
        if self.span is None:
            head = f"{self.file}: {self.kind}: {self.message}"
            return head + (f"\nhint: {self.hint}" if self.hint else "")
        out = [f"{self.span.file}:{self.span.line}:{self.span.col}: {self.kind}: {self.message}"]
        out += _excerpt(self.span, self.source)
        for span, what in self.notes:
            out.append(f"{span.file}:{span.line}:{span.col}: note: {what}")
            out += _excerpt(span, self.source)
        if self.hint:
            out.append(f"hint: {self.hint}")
        return "\n".join(out)

    notes: tuple = ()  # (span, what): other places the message is about, shown after it

    def __str__(self):
        return self.render()


def _excerpt(span, source: str | None) -> list[str]:
    """The span's line and a caret under it, if the text can be had."""
    text = source
    if text is None and Path(span.file).is_file():
        try:
            text = Path(span.file).read_text()
        except (OSError, UnicodeDecodeError):
            text = None
    if text is None:
        return []
    lines = source_lines(text)
    if not 1 <= span.line <= len(lines):
        return []
    src = _shown(lines[span.line - 1])
    width = span.end_col - span.col if span.end_line == span.line else len(src) - span.col + 1
    return ["  " + src, "  " + " " * (span.col - 1) + "^" + "~" * (max(1, width) - 1)]


class SteerWarning(SteerError):
    """Not a mistake that stops the run: a statement with nothing left to do, or two statements
    that pull against each other. Rendered like an error, with `warning:`, and a note at the other
    statement. Collected, never raised."""

    kind = "warning"

    def __init__(self, message: str, span=None, hint: str | None = None, notes=(), source: str | None = None):
        super().__init__(message, span, hint, source)
        self.notes = tuple(notes)


class SteerSyntaxError(SteerError):
    """The text is not a sentence of the language."""


class SteerCompileError(SteerError):
    """The text parses but does not mean anything: a wrong value, an unknown token or name."""


class SteerRuntimeError(SteerError):
    """Something went wrong while sampling that the script can fix (a non-finite energy)."""


class SteerUsageError(SteerError):
    """A mistake that is not on a script line: a command-line option, a model, a file to read or
    write, the device. Rendered as one line, `steer: error: ...`, and a hint; exit status 2."""

    def render(self) -> str:
        return f"steer: error: {self.message}" + (f"\nhint: {self.hint}" if self.hint else "")


def warn(message: str) -> None:
    """Tell the user something went wrong that the run works around (a cache it cannot write):
    one line on stderr, `steer: warning: ...`, never a Python warning with a source location."""
    import sys

    print(f"steer: warning: {message}", file=sys.stderr)


def did_you_mean(word: str, choices) -> str | None:
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else None

"""Text -> syntax tree (dsl.ast.Script), with Lark errors turned into SteerSyntaxError once, here."""

from __future__ import annotations

import functools
import re
import threading
import unicodedata
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from energies.program import Span
from energies.errors import SteerSyntaxError, did_you_mean, is_invisible, source_lines

from . import ast


KEYWORDS = ("prompt", "negative", "seed", "steps", "cfg", "model", "source", "invert", "return", "centroid", "size", "shape", "appearance", "keep", "direction", "clip", "style", "drag", "remove")

BOM = "\ufeff"  # some Windows editors start a UTF-8 file with one; it is not part of the script
MAX_OCCURRENCE_DIGITS = 9  # no prompt has a billion words; longer would also overflow int()

_comments = threading.local()  # where the lexer callback drops the comments of the current parse


class _TokenMistake(Exception):
    """A lexer callback's complaint about one token; parse() turns it into a SteerSyntaxError,
    which needs the file and text the callback does not have."""

    def __init__(self, message: str, tok: Token, offset: int, width: int, hint: str | None = None):
        super().__init__(message)
        self.message, self.tok, self.offset, self.width, self.hint = message, tok, offset, width, hint


def _refuse_invisible(tok: Token, text: str, what: str) -> None:
    """Strings and comments are one line of printable text (tabs allowed). A \r, \f, U+0085 or
    U+2028 inside one is a line break to some editors and tools and not to steer, so the script
    would not mean what it shows; it is refused rather than kept."""
    for i, ch in enumerate(text):
        if is_invisible(ch):
            raise _TokenMistake(f"{what} cannot hold {_char_name(ch)}", tok, i, 1,
                                hint="strings and comments are printable text on one line; only \\n (or \\r\\n) ends a line")


_CONTROL_NAMES = {"\r": "carriage return", "\n": "line feed", "\f": "form feed", "\v": "vertical tab", "\x00": "NUL",
                  "\x1b": "escape", "\x85": "next line"}


def _char_name(ch: str) -> str:
    name = _CONTROL_NAMES.get(ch) or unicodedata.name(ch, "control character").lower()
    return f"U+{ord(ch):04X} ({name})"


def _keep_comment(tok: Token) -> Token:
    text = str(tok)
    _refuse_invisible(tok, text[:-1] if text.endswith("\r") else text, "a comment")  # that \r belongs to a \r\n
    getattr(_comments, "sink", []).append(tok)
    return tok


def _separator_comments(tok: Token) -> Token:
    """Keep the comments inside a run of separators. Each comment runs to the end of its line, and
    the rest of the run is only ";", blanks and newlines, so the first "#" of a line starts one."""
    for i, part in enumerate(str(tok).split("\n")):
        at = part.find("#")
        if at >= 0:
            line, col = tok.line + i, (tok.column if i == 0 else 1) + at
            _keep_comment(Token("COMMENT", part[at:], line=line, column=col, end_line=line, end_column=col + len(part) - at))
    return tok


def _check_string(tok: Token) -> Token:
    _refuse_invisible(tok, str(tok), "a string")
    if tok.type == "STRING_OCC":
        digits = str(tok).rpartition("#")[2]
        if len(digits.lstrip("0")) > MAX_OCCURRENCE_DIGITS:
            at = len(tok) - len(digits) - 1
            raise _TokenMistake("this occurrence number is too large", tok, at, len(digits) + 1,
                                hint="#n is the n-th time the word appears in the prompt")
    return tok


@functools.lru_cache(maxsize=None)
def _lark() -> Lark:
    return Lark.open(
        str(Path(__file__).with_name("grammar.lark")),
        parser="lalr",
        propagate_positions=True,
        maybe_placeholders=False,
        lexer_callbacks={"COMMENT": _keep_comment, "_SEP": _separator_comments, "STRING": _check_string, "STRING_OCC": _check_string},
    )


def parse(text: str, file: str = "<script>") -> ast.Script:
    """Parse a script into its syntax tree. Raises SteerSyntaxError with a position and a hint."""
    text = text.removeprefix(BOM)
    _comments.sink = comments = []
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as e:
        raise _syntax_error(e, text, file) from None
    except _TokenMistake as e:
        raise _token_error(e, text, file) from None
    finally:
        _comments.sink = []
    statements = tuple(_ToAst(file).transform(tree).children)
    stmt_lines = {s.span.line for s in statements}  # a statement never spans lines: a newline ends it
    kept = tuple(ast.Comment(line=c.line, text=_comment_text(c), trailing=c.line in stmt_lines) for c in comments)
    return ast.Script(statements=statements, comments=kept, file=file, source=text)


def number(text: str, span: Span) -> ast.Number:
    """One number as the language writes it (its NUMBER token), for tools that take numbers
    outside a script (the REPL's `:weight 1 2`); anything else is a SteerSyntaxError at `span`."""
    pattern = _lark().get_terminal("NUMBER").pattern.to_regexp()
    if not re.fullmatch(pattern, text):
        raise SteerSyntaxError(f"expected a number, got {text!r}", span=span, hint="for example 1.5, -2 or 1e-3")
    return ast.Number(value=float(text), text=text, span=span)


def _comment_text(tok: Token) -> str:
    return str(tok).rstrip(" \t\r")


def _token_error(e: _TokenMistake, text: str, file: str) -> SteerSyntaxError:
    col = e.tok.column + e.offset  # strings and comments hold no newline: one line
    span = Span(line=e.tok.line, col=col, end_line=e.tok.line, end_col=col + e.width, file=file)
    return SteerSyntaxError(e.message, span=span, hint=e.hint, source=text)


def _span(file: str, meta_or_token) -> Span:
    m = meta_or_token
    return Span(line=m.line, col=m.column, end_line=m.end_line, end_col=m.end_column, file=file)


def _unquote(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s[1:-1])


@v_args(meta=True)
class _ToAst(Transformer):
    def __init__(self, file: str):
        super().__init__()
        self.file = file

    def _s(self, x):
        return _span(self.file, x)

    def start(self, meta, children):
        return _Children(children)

    def number(self, meta, children):
        (tok,) = children
        return ast.Number(value=float(tok), text=str(tok), span=self._s(tok))

    def point(self, meta, children):
        x, y = children
        return ast.Point(x=x, y=y, span=self._s(meta))

    def tokref(self, meta, children):
        (tok,) = children
        if tok.type == "STRING":
            return ast.TokenRef(word=self._string(tok), span=self._s(meta))
        quoted, _, digits = str(tok).rpartition("#")  # STRING_OCC: "word"#n
        span = Span(line=tok.line, col=tok.column, end_line=tok.line, end_col=tok.column + len(quoted), file=self.file)
        word = ast.String(value=_unquote(quoted), span=span)
        return ast.TokenRef(word=word, occurrence=int(digits), span=self._s(meta))

    def prop(self, meta, children):
        name, tokref = children
        return ast.Prop(name=self._name(name), token=tokref, span=self._s(meta))

    def _name(self, tok):
        return ast.Name(value=str(tok), span=self._s(tok))

    def _string(self, tok):
        return ast.String(value=_unquote(str(tok)), span=self._s(tok))

    def _value(self, v):
        if isinstance(v, Token) and v.type == "STRING":
            return self._string(v)
        return v

    def modifiers(self, meta, children):
        kw = {}
        for kind, v in children:
            kw[kind] = v
        span = self._s(meta) if children else Span(line=1, col=1, end_line=1, end_col=1, file=self.file)
        return ast.Modifiers(span=span, **kw)

    def weight(self, meta, children):
        return ("weight", children[0])

    def window(self, meta, children):
        return ("window", (children[0], children[1]))

    def every(self, meta, children):
        return ("every", children[0])

    def via(self, meta, children):
        return ("via", self._name(children[0]))

    def setting(self, meta, children):
        name, value = children
        if isinstance(value, Token) and value.type == "NAME":
            value = self._name(value)
        return ast.Setting(name=self._name(name), value=self._value(value), span=self._s(meta))

    def edit(self, meta, children):
        target, op, value, mods = children
        return ast.Edit(target=target, op=self._name(op), value=self._value(value), mods=mods, span=self._s(meta))

    def keep(self, meta, children):
        what, *region, mods = children
        what = self._name(what) if isinstance(what, Token) else what
        return ast.Keep(what=what, region=region[0] if region else None, mods=mods, span=self._s(meta))

    def region(self, meta, children):
        side, tokref = children
        return ast.Region(side=self._name(side), token=tokref, span=self._s(meta))

    def clip(self, meta, children):
        target, *source, mods = children
        return ast.ClipStmt(target=self._string(target), source=self._string(source[0]) if source else None, mods=mods,
                            span=self._s(meta))

    def style(self, meta, children):
        path, mods = children
        return ast.StyleStmt(path=self._string(path), mods=mods, span=self._s(meta))

    def drag(self, meta, children):
        handle, op, target, *within, mods = children
        return ast.DragStmt(handle=handle, op=self._name(op), target=target, within=within[0] if within else None, mods=mods,
                            span=self._s(meta))

    def within(self, meta, children):
        return children[0]

    def box(self, meta, children):
        x0, y0, x1, y1 = children
        return ast.Box(x0=x0, y0=y0, x1=x1, y1=y1, span=self._s(meta))

    def relative(self, meta, children):
        base, offset = children
        return ast.Relative(base=base, offset=offset, span=self._s(meta))

    def remove(self, meta, children):
        tokref, mods = children
        return ast.RemoveStmt(token=tokref, mods=mods, span=self._s(meta))

    def direction(self, meta, children):
        name, *within, mods = children
        return ast.DirectionStmt(name=self._name(name), within=within[0] if within else None, mods=mods, span=self._s(meta))


class _Children:
    def __init__(self, children):
        self.children = children


# ----------------------------------------------------------------------------------------------
# Errors

_DESCRIBE = {
    "STRING": "a string",
    "STRING_OCC": "a string",
    "NUMBER": "a number",
    "NAME": "a name",
    "PROP": "centroid, size, shape or appearance",
    "SETTING": "a setting",
    "REGION": "inside or outside",
    "OP": "->, += or *=",
    "$END": "end of input",
}

# Characters that some editor or tool takes for a line break, and steer does not.
_NOT_LINE_BREAKS = {"\r": "a carriage return ends a line only as part of \\r\\n",
                    **{ch: "only \\n (or \\r\\n) ends a line" for ch in "\v\x1c\x1d\x1e\x85\u2028\u2029"}}


def _describe_terminal(name: str) -> str:
    if name in _DESCRIBE:
        return _DESCRIBE[name]
    try:
        pattern = _lark().get_terminal(name).pattern
        if pattern.type == "str":
            return repr(pattern.value)
    except KeyError:
        pass
    return name.lower()


def _describe_expected(names) -> list[str]:
    out = set()
    for name in names:
        if name == "_SEP":  # one terminal for ";" and newlines; the user sees two things
            out |= {"';'", "end of line"}
        elif not name.startswith("_"):
            out.add(_describe_terminal(name))
    return sorted(out)


def _describe_token(tok: Token) -> str:
    if tok.type == "$END":
        return "end of input"
    if tok.type == "_SEP":
        return "';'" if tok.startswith(";") else "end of line"
    return repr(str(tok))


def _syntax_error(e: UnexpectedInput, text: str, file: str) -> SteerSyntaxError:
    line, col = max(getattr(e, "line", 1) or 1, 1), max(getattr(e, "column", 1) or 1, 1)
    width = 1
    hint = None
    if isinstance(e, UnexpectedCharacters):
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
        if ch == '"':
            message = "unterminated string"
            hint = 'a string opens and closes with " on the same line'
            width = len(source_lines(text)[line - 1]) - col + 1
        else:
            message = f"unexpected character {ch!r}"
            if ch == "=":
                hint = "use -> to set a property, += to shift it, *= to scale it"
            elif ch == BOM:
                hint = "a byte order mark is only allowed at the very start of a script"
            else:
                hint = _NOT_LINE_BREAKS.get(ch)
    elif isinstance(e, (UnexpectedToken, UnexpectedEOF)):
        tok = getattr(e, "token", None)
        if tok is None or tok.type == "$END":
            lines = source_lines(text) or [""]
            line, col = len(lines), len(lines[-1]) + 1
            message = "unexpected end of input"
        else:
            if tok.type != "_SEP":
                width = max(1, len(str(tok)))
            message = f"unexpected {_describe_token(tok)}"
        expected = _describe_expected(e.expected)
        if tok is not None and tok.type == "NAME" and "a setting" in expected:
            message = f"unknown statement {str(tok)!r}"
            hint = did_you_mean(str(tok), KEYWORDS) or "statements start with one of: " + ", ".join(KEYWORDS)
        elif "'token'" in expected and tok is not None and tok.type == "STRING":
            hint = f"write token {tok} to name a word of the prompt"
        elif "','" in expected and tok is not None and tok.type == "NUMBER":
            hint = "a point is written (x, y), with a comma"
        elif "->, += or *=" in expected:
            hint = "use -> to set a property, += to shift it, *= to scale it"
        elif expected:
            hint = "expected " + (expected[0] if len(expected) == 1 else "one of: " + ", ".join(expected))
    else:  # pragma: no cover - Lark has no other UnexpectedInput subclasses
        message = str(e)
    span = Span(line=line, col=col, end_line=line, end_col=col + width, file=file)
    return SteerSyntaxError(message, span=span, hint=hint, source=text)

"""Text -> syntax tree (dsl.ast.Script), with Lark errors turned into SteerSyntaxError once, here."""

from __future__ import annotations

import functools
import re
import threading
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from energies.program import Span

from . import ast
from .errors import SteerSyntaxError, did_you_mean

KEYWORDS = ("prompt", "negative", "seed", "steps", "cfg", "model", "source", "invert", "centroid", "size", "shape", "appearance", "keep", "direction", "clip", "style", "drag")


_comments = threading.local()  # where the lexer callback drops the comments of the current parse


def _keep_comment(tok: Token) -> Token:
    getattr(_comments, "sink", []).append(tok)
    return tok


@functools.lru_cache(maxsize=None)
def _lark() -> Lark:
    return Lark.open(
        str(Path(__file__).with_name("grammar.lark")),
        parser="lalr",
        propagate_positions=True,
        maybe_placeholders=False,
        lexer_callbacks={"COMMENT": _keep_comment},
    )


def parse(text: str, file: str = "<script>") -> ast.Script:
    """Parse a script into its syntax tree. Raises SteerSyntaxError with a position and a hint."""
    _comments.sink = comments = []
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as e:
        raise _syntax_error(e, text, file) from None
    finally:
        _comments.sink = []
    statements = tuple(_ToAst(file).transform(tree).children)
    kept = tuple(ast.Comment(line=c.line, text=str(c).rstrip(), trailing=_is_trailing(text, c)) for c in comments)
    return ast.Script(statements=statements, comments=kept, file=file, source=text)


def _is_trailing(text: str, tok: Token) -> bool:
    line = text.splitlines()[tok.line - 1]
    return bool(line[: tok.column - 1].strip())


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
        string = self._string(children[0])
        occurrence = int(str(children[1])[1:]) if len(children) > 1 else 1
        return ast.TokenRef(word=string, occurrence=occurrence, span=self._s(meta))

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
    "NUMBER": "a number",
    "NAME": "a name",
    "OCCURRENCE": "an occurrence like #2",
    "PROP": "centroid, size, shape or appearance",
    "SETTING": "a setting",
    "OP": "->, += or *=",
    "_NL": "end of line",
    "$END": "end of input",
}


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


def _describe_token(tok: Token) -> str:
    if tok.type == "$END":
        return "end of input"
    if tok.type == "_NL":
        return "end of line"
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
            width = len(text.splitlines()[line - 1]) - col + 1
        else:
            message = f"unexpected character {ch!r}"
            if ch == "=":
                hint = "use -> to set a property, += to shift it, *= to scale it"
    elif isinstance(e, (UnexpectedToken, UnexpectedEOF)):
        tok = getattr(e, "token", None)
        if tok is None or tok.type == "$END":
            lines = text.splitlines() or [""]
            line, col = len(lines), len(lines[-1]) + 1
            message = "unexpected end of input"
        else:
            if tok.type != "_NL":
                width = max(1, len(str(tok)))
            message = f"unexpected {_describe_token(tok)}"
        expected = sorted({_describe_terminal(t) for t in e.expected if not t.startswith("_") or t == "_NL"})
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

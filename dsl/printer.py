"""Program -> canonical text. `parse(format(p))` compiles back to a Program equal to `p`.

One small function per term kind (named after the kind, like sqlglot's `add_sql`), so the
printer reads as a table of the language's surface forms.
"""

from __future__ import annotations

from energies import program as P
from energies.errors import source_lines

from . import ast
from .compiler import compile_script


SETTING_ORDER = ("model", "source", "invert", "return", "prompt", "negative", "seed", "steps", "cfg")


def num(x: float) -> str:
    """Shortest text that reads back as the same float: 2.0 -> "2", 0.75 -> "0.75"."""
    s = repr(float(x))
    return s[:-2] if s.endswith(".0") else s


def string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def token(t: P.TokenRef) -> str:
    return f"token {string(t.word)}" + (f"#{t.occurrence}" if t.occurrence != 1 else "")


def point(p) -> str:
    return f"({num(p[0])}, {num(p[1])})"


def move(t: P.Move) -> str:
    return f"centroid({token(t.token)}) -> {point(t.to)}"


def shift(t: P.Shift) -> str:
    return f"centroid({token(t.token)}) += {point(t.by)}"


def move_to(t: P.MoveTo) -> str:
    base = f"centroid({token(t.token)}) -> centroid({token(t.other)})"
    return base if tuple(t.offset) == (0.0, 0.0) else f"{base} + {point(t.offset)}"


def resize(t: P.Resize) -> str:
    return f"size({token(t.token)}) *= {num(t.factor)}"


def size_to(t: P.SizeTo) -> str:
    return f"size({token(t.token)}) -> {num(t.area)}"


def size_like(t: P.SizeLike) -> str:
    return f"size({token(t.token)}) -> size({token(t.other)})"


def recolour(t: P.Recolour) -> str:
    return f"appearance({token(t.token)}) -> {string(t.to)}"


def remove(t: P.Remove) -> str:
    return f"remove {token(t.token)}"


def shape_from(t: P.ShapeFrom) -> str:
    return f"shape({token(t.token)}) -> shape({token(t.other)})"


def appearance_from(t: P.AppearanceFrom) -> str:
    return f"appearance({token(t.token)}) -> appearance({token(t.other)})"


def keep_appearance(t: P.KeepAppearance) -> str:
    return "keep appearance" if t.token is None else f"keep appearance({token(t.token)})"


def keep_shape(t: P.KeepShape) -> str:
    return "keep layout" if t.token is None else f"keep shape({token(t.token)})"


def keep_pixels(t: P.KeepPixels) -> str:
    if t.token is None:
        return "keep pixels"
    return f"keep pixels {'inside' if t.inside else 'outside'} {token(t.token)}"


def clip(t: P.Clip) -> str:
    return f"clip {string(t.target)}" + (f" from {string(t.source)}" if t.source is not None else "")


def style(t: P.Style) -> str:
    return f"style image {string(t.path)}"


def within(t: P.Drag | P.Direction) -> str:
    if t.token is not None:
        return f" within {token(t.token)}"
    if t.box is not None:
        return " within (" + ", ".join(num(v) for v in t.box) + ")"
    return ""


def drag(t: P.Drag) -> str:
    return f"drag {point(t.handle)} -> {point(t.target)}{within(t)}"


def direction(t: P.Direction) -> str:
    return f"direction {t.name}{within(t)}"


def modifiers(t: P.TermBase) -> str:
    out = ""
    if t.weight != 1.0:
        out += f" * {num(t.weight)}"
    if t.window is not None:
        out += f" @ {num(t.window.start)}..{num(t.window.end)}"
    if t.every is not None:
        out += f" every {t.every}"
    if t.placement is not None:
        out += f" via {t.placement}"
    return out


def keep_word(t: P.TermBase) -> str:
    """A term named by a bare word after `keep` (energies.program.KEEP_WORDS)."""
    return "keep " + next(w for w, cls in P.KEEP_WORDS.items() if isinstance(t, cls))


def term(t: P.TermBase) -> str:
    return globals().get(t.kind, keep_word)(t) + modifiers(t)


def setting_value(settings: P.Settings, name: str):
    """The value of the setting a script calls `name` (`return` is the field return_step)."""
    return getattr(settings, P.SETTING_FIELDS.get(name, name))


def setting(name: str, value) -> str:
    if name == "invert":
        return f"invert {value}"
    if isinstance(value, str):
        return f"{name} {string(value)}"
    return f"{name} {value if isinstance(value, int) else num(value)}"


def format(x) -> str:
    """Canonical text of a Program, a Term or a parsed Script (comments kept)."""
    if isinstance(x, ast.Script):
        return format_script(x)
    prog = P.as_program(x)
    lines = [setting(k, setting_value(prog.settings, k)) for k in SETTING_ORDER if setting_value(prog.settings, k) is not None]
    if lines and prog.terms:
        lines.append("")
    lines += [term(t) for t in prog.terms]
    return "\n".join(lines) + "\n" if lines else ""


def format_script(script: ast.Script) -> str:
    """Canonical text of a script in its own order, one statement a line, comments where they were.

    Each statement is printed from its compiled meaning, so the output parses back to an equal
    Program; a script that does not compile is refused with the compiler's error (it carries the
    script's text, so the error shows the line and a caret). A comment written on a statement's
    line stays at the end of that line; the others keep their place between the statements.
    Blank lines between groups are kept (runs of them collapse to one). Linear in the script's size.
    """
    prog = compile_script(script)
    last_on_line = {st.span.line: i for i, st in enumerate(script.statements)}
    trailing: dict[int, str] = {}  # statement index -> its comment
    items: list[tuple[int, str]] = []  # (line, text): statements and comments of their own line
    for c in script.comments:
        if c.trailing and c.line in last_on_line:
            trailing[last_on_line[c.line]] = c.text
    for i, (st, text) in enumerate(zip(script.statements, _statement_texts(script.statements, prog))):
        items.append((st.span.line, text + ("  " + trailing[i] if i in trailing else "")))
    items += [(c.line, c.text) for c in script.comments if not (c.trailing and c.line in last_on_line)]
    items.sort(key=lambda item: item[0])  # stable: statements sharing a line keep their order

    blanks = _blank_lines_before(script.source)
    out: list[str] = []
    prev = None
    for line, text in items:
        if prev is not None and blanks[min(line - 1, len(blanks) - 1)] > blanks[min(prev, len(blanks) - 1)]:
            out.append("")
        out.append(text)
        prev = line
    return "\n".join(out) + "\n" if out else ""


def _statement_texts(statements, prog: P.Program):
    """Each statement's canonical text, from the program it compiled to: a setting from its value,
    any other statement from its term (the compiler makes exactly one per statement, in order)."""
    terms = iter(prog.terms)
    for st in statements:
        if isinstance(st, ast.Setting):
            yield setting(st.name.value, setting_value(prog.settings, st.name.value))
        else:
            yield term(next(terms))


def _blank_lines_before(source: str) -> list[int]:
    """counts[n]: how many of the source's lines 1..n are blank, so "is there a blank line between
    lines a and b" is counts[b - 1] > counts[a], without rescanning the lines in between."""
    counts = [0]
    for line in source_lines(source):
        counts.append(counts[-1] + (not line.strip(" \t\f")))
    return counts

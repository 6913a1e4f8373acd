"""Program -> canonical text. `parse(format(p))` compiles back to a Program equal to `p`.

One small function per term kind (named after the kind, like sqlglot's `add_sql`), so the
printer reads as a table of the language's surface forms.
"""

from __future__ import annotations

from energies import program as P

from . import ast

SETTING_ORDER = ("model", "source", "invert", "prompt", "negative", "seed", "steps", "cfg")


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


def resize(t: P.Resize) -> str:
    return f"size({token(t.token)}) *= {num(t.factor)}"


def size_to(t: P.SizeTo) -> str:
    return f"size({token(t.token)}) -> {num(t.area)}"


def shape_from(t: P.ShapeFrom) -> str:
    return f"shape({token(t.token)}) -> shape({token(t.other)})"


def appearance_from(t: P.AppearanceFrom) -> str:
    return f"appearance({token(t.token)}) -> appearance({token(t.other)})"


def keep_appearance(t: P.KeepAppearance) -> str:
    return "keep appearance" if t.token is None else f"keep appearance({token(t.token)})"


def keep_shape(t: P.KeepShape) -> str:
    return "keep layout" if t.token is None else f"keep shape({token(t.token)})"


def keep_attention(t: P.KeepAttention) -> str:
    return "keep attention"


def keep_structure(t: P.KeepStructure) -> str:
    return "keep structure"


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
    if t.placement is not None:
        out += f" via {t.placement}"
    return out


def term(t: P.TermBase) -> str:
    return globals()[t.kind](t) + modifiers(t)


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
    lines = [setting(k, getattr(prog.settings, k)) for k in SETTING_ORDER if getattr(prog.settings, k) is not None]
    if lines and prog.terms:
        lines.append("")
    lines += [term(t) for t in prog.terms]
    return "\n".join(lines) + "\n" if lines else ""


def format_script(script: ast.Script) -> str:
    """Canonical text of a script in its own order, one statement a line, comments where they were.

    Each statement is printed from its compiled meaning, so the output parses back to an equal
    Program; blank lines between groups are kept (runs of them collapse to one).
    """
    from .compiler import compile_script

    leading: dict[int, list[str]] = {}
    trailing: dict[int, str] = {}
    stmt_lines = sorted({s.span.line for s in script.statements})

    def owner(line: int) -> int:  # the statement a comment belongs to: the next one at or after it
        later = [l for l in stmt_lines if l >= line]
        return later[0] if later else 10**9

    for c in script.comments:
        if c.trailing:
            trailing[c.line] = trailing.get(c.line, "") + c.text
        else:
            leading.setdefault(owner(c.line), []).append((c.line, c.text))

    out: list[str] = []
    source_lines = script.source.splitlines()
    prev_line = 0

    def blank_between(a: int, b: int) -> bool:
        return any(not source_lines[i - 1].strip() for i in range(a + 1, b) if 0 < i <= len(source_lines))

    for st in script.statements:
        for line, text in leading.pop(st.span.line, []):
            if out and blank_between(prev_line, line):
                out.append("")
            out.append(text)
            prev_line = line
        if out and blank_between(prev_line, st.span.line) and out[-1] != "":
            out.append("")
        text = _statement(st, compile_script)
        if st.span.end_line in trailing and _last_on_line(script, st):
            text += "  " + trailing.pop(st.span.end_line)
        out.append(text)
        prev_line = st.span.end_line
    for line, text in leading.pop(10**9, []):
        if out and blank_between(prev_line, line):
            out.append("")
        out.append(text)
        prev_line = line
    return "\n".join(out) + "\n" if out else ""


def _last_on_line(script: ast.Script, st) -> bool:
    return not any(o.span.line == st.span.end_line and o.span.col > st.span.col for o in script.statements)


def _statement(st, compile_script) -> str:
    one = ast.Script(statements=(st,), file=st.span.file, source="")
    prog = compile_script(one)
    if isinstance(st, ast.Setting):
        name = st.name.value
        return setting(name, getattr(prog.settings, name))
    return term(prog.terms[0])

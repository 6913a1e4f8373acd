"""Syntax tree -> Program: what each statement means, with every check that needs no model.

Checks that need the model (is this word in the prompt? is there a direction by that name?)
happen when the program is bound to a backbone (dsl/binding.py), with the same error type
and the same positions.
"""

from __future__ import annotations

import math

from energies import program as P
from energies.errors import SteerCompileError, did_you_mean

from . import ast, weights


SETTING_TYPES = {"prompt": "string", "negative": "string", "model": "string", "source": "string", "seed": "int", "steps": "int",
                 "cfg": "number", "invert": "name", "return": "number"}
INVERSIONS = ("ddim", "null-text", "noise")
SETTING_HINTS = {"cfg": "cfg 1 means no classifier-free guidance",
                 "return": "return 0.5 inverts the source half way (t0 = 0.5 T) and samples back from there"}
DRAG_PLACEMENTS = ("bottleneck", "latent")  # what a drag optimises: the mid block's output, or z_t itself


def compile_script(script: ast.Script) -> P.Program:
    """Give a parsed script its meaning. Raises SteerCompileError pointing at the statement."""
    try:
        return _compile(script)
    except SteerCompileError as e:
        raise e.with_source(script.source) from None


def _compile(script: ast.Script) -> P.Program:
    settings: dict = {}
    spans: dict = {}
    seen: dict[str, ast.Setting] = {}
    terms = []
    for st in script.statements:
        if isinstance(st, ast.Setting):
            name = st.name.value
            if name in seen:
                raise SteerCompileError(f"{name} is set twice", st.span, hint=f"the first is on line {seen[name].span.line}")
            seen[name] = st
            settings[P.SETTING_FIELDS.get(name, name)] = _setting_value(st)
            spans[name] = st.value.span
            if name in ("prompt", "negative"):  # weight syntax is checked here, where its column is known
                weights.check(settings[name], st.value.span)
        elif isinstance(st, ast.Edit):
            terms.append(_edit(st))
        elif isinstance(st, ast.Keep):
            terms.append(_keep(st))
        elif isinstance(st, ast.DirectionStmt):
            token, box = _within(st.within)
            terms.append(_modified(P.Direction(name=st.name.value, token=token, box=box), st))
        elif isinstance(st, ast.ClipStmt):
            terms.append(_clip(st))
        elif isinstance(st, ast.StyleStmt):
            if not st.path.value.strip():
                raise SteerCompileError("style image needs a file name", st.path.span, hint='for example: style image "ref.png"')
            terms.append(_modified(P.Style(path=st.path.value), st))
        elif isinstance(st, ast.DragStmt):
            terms.append(_drag(st))
        elif isinstance(st, ast.RemoveStmt):
            terms.append(_modified(P.Remove(token=_token(st.token)), st))
    return P.Program(settings=P.Settings(**settings, spans=spans), terms=tuple(terms))


def _setting_value(st: ast.Setting):
    name, v = st.name.value, st.value
    want = SETTING_TYPES[name]
    if want == "name":
        if isinstance(v, ast.String) and v.value in INVERSIONS:
            raise SteerCompileError("invert takes a name, not a string", v.span, hint=f"write it without quotes: invert {v.value}")
        if not isinstance(v, ast.Name) or v.value not in INVERSIONS:
            text = v.value if isinstance(v, (ast.Name, ast.String)) else "this"
            raise SteerCompileError(f"unknown inversion {text!r}", v.span, hint=did_you_mean(str(text), INVERSIONS) or "invert ddim, invert null-text or invert noise")
        return v.value
    if isinstance(v, ast.Name):
        raise SteerCompileError(f"{name} takes a {'string' if want == 'string' else 'number'}, not a name", v.span,
                                hint=f'for example: {name} "{v.value}"' if want == "string" else None)
    if want == "string":
        if not isinstance(v, ast.String):
            raise SteerCompileError(f"{name} takes a string", v.span, hint=f'for example: {name} "..."')
        return v.value
    if not isinstance(v, ast.Number):
        raise SteerCompileError(f"{name} takes a number", v.span)
    if want == "int":
        if not v.is_int:
            raise SteerCompileError(f"{name} takes a whole number, got {_short(v.text)}", v.span)
        # more digits than any seed has is out of range before int() is asked (it refuses > 4300 digits)
        value = int(v.text) if len(v.text.lstrip("+-0")) <= 20 else math.inf
    else:
        value = _finite(v)
    problem = P.setting_problem(name, value)  # the ranges the command line checks too
    if problem:
        raise SteerCompileError(f"{problem}, got {_short(v.text)}", v.span, hint=SETTING_HINTS.get(name))
    return value


def _finite(n: ast.Number) -> float:
    if not math.isfinite(n.value):
        raise SteerCompileError(f"{_short(n.text)} is not a finite number", n.span)
    return n.value


def _short(text: str) -> str:
    """A number as written, cut to a readable length for a message (the caret shows all of it)."""
    return text if len(text) <= 24 else text[:10] + "..." + text[-10:]


def _token(t: ast.TokenRef) -> P.TokenRef:
    if not t.word.value.strip():
        raise SteerCompileError("empty token", t.word.span, hint='name a word of the prompt, like token "circle"')
    if t.occurrence < 1:
        raise SteerCompileError("occurrences count from #1", t.span)
    return P.TokenRef(word=t.word.value, occurrence=t.occurrence, span=t.span)


def _point(v, what: str, lo: float, hi: float, example: str) -> tuple[float, float]:
    if not isinstance(v, ast.Point):
        raise SteerCompileError(f"{what} needs a point (x, y)", v.span, hint=f"for example: {example}")
    out = []
    for n, axis in ((v.x, "x"), (v.y, "y")):
        value = _finite(n)
        if not lo <= value <= hi:
            raise SteerCompileError(
                f"{axis} = {_short(n.text)} is outside [{lo:g}, {hi:g}]", n.span, hint="positions are in image units: (0, 0) top-left, (1, 1) bottom-right"
            )
        out.append(value)
    return (out[0], out[1])


def _number(v, what: str, example: str) -> float:
    if not isinstance(v, ast.Number):
        raise SteerCompileError(f"{what} needs a number", v.span, hint=f"for example: {example}")
    return _finite(v)


def _edit(st: ast.Edit) -> P.TermBase:
    prop, op, v = st.target.name.value, st.op.value, st.value
    tok = _token(st.target.token)
    src = f'{prop}(token "{tok.word}")'
    if prop == "centroid" and op == "->" and isinstance(v, (ast.Prop, ast.Relative)):
        term = _beside(tok, v, src)
    elif prop == "size" and op == "->" and isinstance(v, ast.Prop):
        if v.name.value != "size":
            raise SteerCompileError(f"a size takes another object's size, not its {v.name.value}", v.name.span,
                                    hint=f'for example: {src} -> size(token "other")')
        term = P.SizeLike(token=tok, other=_token(v.token))
    elif prop == "appearance" and op == "->" and isinstance(v, ast.String):
        if not v.value.strip():
            raise SteerCompileError("an appearance needs the words to give the object", v.span, hint=f'for example: {src} -> "green"')
        term = P.Recolour(token=tok, to=" ".join(v.value.split()))
    elif prop == "centroid" and op == "->":
        term = P.Move(token=tok, to=_point(v, "moving a centroid", 0, 1, f"{src} -> (0.75, 0.5)"))
    elif prop == "centroid" and op == "+=":
        term = P.Shift(token=tok, by=_point(v, "shifting a centroid", -1, 1, f"{src} += (0.25, 0)"))
    elif prop == "size" and op == "*=":
        k = _number(v, "scaling a size", f"{src} *= 1.5")
        if k <= 0:
            raise SteerCompileError(f"a size can only be scaled by a positive factor, got {_short(v.text)}", v.span)
        term = P.Resize(token=tok, factor=k)
    elif prop == "size" and op == "->":
        area = _number(v, "setting a size", f"{src} -> 0.12")
        if not 0 < area <= 1:
            raise SteerCompileError(f"an absolute size is a fraction of the image in (0, 1], got {_short(v.text)}", v.span)
        term = P.SizeTo(token=tok, area=area)
    elif prop in ("shape", "appearance") and op == "->":
        if not isinstance(v, ast.Prop) or v.name.value != prop:
            raise SteerCompileError(
                f"{prop} takes another object's {prop}", v.span, hint=f'for example: {src} -> {prop}(token "other")'
            )
        cls = P.ShapeFrom if prop == "shape" else P.AppearanceFrom
        term = cls(token=tok, other=_token(v.token))
    else:
        allowed = {"centroid": "-> (x, y), -> centroid(token ...) + (dx, dy) or += (dx, dy)",
                   "size": "*= k, -> area or -> size(token ...)", "shape": "-> shape(token ...)",
                   "appearance": '-> appearance(token ...) or -> "words" (a colour, a material)'}
        raise SteerCompileError(f"{prop} cannot be changed with {op}", st.op.span, hint=f"{prop} takes {allowed[prop]}")
    return _modified(term, st)


def _beside(tok: P.TokenRef, v, src: str) -> P.TermBase:
    """centroid(token "a") -> centroid(token "b") [+ (dx, dy)]: a place relative to another object."""
    base, offset = (v.base, v.offset) if isinstance(v, ast.Relative) else (v, None)
    if base.name.value != "centroid":
        raise SteerCompileError(f"a centroid moves to another object's centroid, not its {base.name.value}", base.name.span,
                                hint=f'for example: {src} -> centroid(token "other") + (0.3, 0)')
    other = _token(base.token)
    if (other.word, other.occurrence) == (tok.word, tok.occurrence):
        raise SteerCompileError("an object cannot be moved relative to itself", base.span, hint="use += (dx, dy) to shift it")
    by = (0.0, 0.0) if offset is None else _point(offset, "an offset from another object", -1, 1, f"{src} -> centroid(token \"other\") + (0.3, 0)")
    return P.MoveTo(token=tok, other=other, offset=by)


def _clip(st: ast.ClipStmt) -> P.TermBase:
    for s in (st.target, st.source):
        if s is not None and not s.value.strip():
            raise SteerCompileError("clip needs a text to aim at", s.span, hint='for example: clip "a blue circle" from "a red circle"')
    return _modified(P.Clip(target=st.target.value, source=st.source.value if st.source else None), st)


def _drag(st: ast.DragStmt) -> P.TermBase:
    example = "drag (0.3, 0.4) -> (0.55, 0.4)"
    if st.op.value != "->":
        raise SteerCompileError(f"a drag is written with ->, not {st.op.value}", st.op.span, hint=f"for example: {example}")
    handle = _point(st.handle, "a drag", 0, 1, example)
    target = _point(st.target, "a drag", 0, 1, example)
    if handle == target:
        raise SteerCompileError("the drag's target is its handle: nothing would move", st.target.span)
    if st.mods.via is not None and st.mods.via.value not in DRAG_PLACEMENTS:
        raise SteerCompileError(f"a drag acts via bottleneck (DragNoise) or latent (DragDiffusion), not {st.mods.via.value}",
                                st.mods.via.span, hint=did_you_mean(st.mods.via.value, DRAG_PLACEMENTS) or "drop the `via ...` for DragNoise")
    token, box = _within(st.within)
    return _modified(P.Drag(handle=handle, target=target, token=token, box=box), st)


def _within(w) -> tuple[P.TokenRef | None, tuple[float, float, float, float] | None]:
    """`within token "..."` or `within (x0, y0, x1, y1)`: (token, None), (None, box) or (None, None)."""
    if isinstance(w, ast.TokenRef):
        return _token(w), None
    if isinstance(w, ast.Box):
        x0, y0, x1, y1 = (_finite(n) for n in (w.x0, w.y0, w.x1, w.y1))
        if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            raise SteerCompileError("a box is (x0, y0, x1, y1) with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1", w.span,
                                    hint="within (0.2, 0.2, 0.8, 0.8) lets the middle of the image change")
        return None, (x0, y0, x1, y1)
    return None, None


def _keep(st: ast.Keep) -> P.TermBase:
    w = st.what
    if st.region is not None and not (isinstance(w, ast.Name) and w.value == "pixels"):
        raise SteerCompileError(f"only pixels can be kept {st.region.side.value} a token", st.region.side.span,
                                hint='for example: keep pixels outside token "circle"')
    if isinstance(w, ast.Name):
        if w.value not in P.KEEP_WORDS:
            hint = did_you_mean(w.value, P.KEEP_WORDS) or (f"keep takes {', '.join(P.KEEP_WORDS)}, "
                                                            "shape(token ...) or appearance(token ...)")
            raise SteerCompileError(f"nothing called {w.value!r} can be kept", w.span, hint=hint)
        r = st.region
        if r is not None:  # only pixels take a region (checked above)
            term = P.KeepPixels(token=_token(r.token), inside=r.side.value == "inside")
        else:
            term = P.KEEP_WORDS[w.value]()
    elif w.name.value == "shape":
        term = P.KeepShape(token=_token(w.token))
    elif w.name.value == "appearance":
        term = P.KeepAppearance(token=_token(w.token))
    else:
        raise SteerCompileError(
            f"keep {w.name.value}(...) is not a term", w.name.span, hint="keep takes shape(token ...) or appearance(token ...) for one object"
        )
    return _modified(term, st)


def weight_value(n: ast.Number) -> float:
    """A term's weight (`* w`): any finite number. The REPL's :weight asks this too."""
    return _finite(n)


def window_value(start: ast.Number, end: ast.Number) -> P.Window:
    """A term's window (`@ a..b`): 0 <= a < b <= 1. The REPL's :window asks this too."""
    a, b = _finite(start), _finite(end)
    if not 0 <= a < b <= 1:
        raise SteerCompileError(
            f"window {_short(start.text)}..{_short(end.text)} is not inside 0..1 with start < end",
            _span_between(start, end),
            hint="windows are fractions of sampling: @ 0..0.6 is the first 60% of the steps",
        )
    return P.Window(start=a, end=b)


def every_value(k: ast.Number) -> int:
    """`every k`: a whole number of steps, 1 or more."""
    # the range test first: int() of an infinite value (a numeral of 300 digits) raises
    if not 1 <= k.value <= 1000 or k.value != int(k.value):
        raise SteerCompileError(f"every {_short(k.text)} is not a whole number of steps from 1 to 1000", k.span,
                                hint="every 2 takes the term's gradient at every 2nd step and reuses it in between")
    return int(k.value)


def _modified(term: P.TermBase, st) -> P.TermBase:
    m = st.mods
    update: dict = {"span": st.span}
    if m.weight is not None:
        update["weight"] = weight_value(m.weight)
    if m.window is not None:
        update["window"] = window_value(*m.window)
    if m.every is not None:
        if term.kind in P.GRADIENT_FREE:
            raise SteerCompileError(f"`every` paces an energy term's gradient, and a {term.kind} takes none", m.every.span,
                                    hint="put it on the keep, move or other energy terms of the script")
        update["every"] = every_value(m.every)
    if m.via is not None:
        if m.via.value not in P.PLACEMENTS and not isinstance(term, P.Drag):  # drags checked theirs in _drag
            raise SteerCompileError(
                f"unknown placement {m.via.value!r}", m.via.span, hint=did_you_mean(m.via.value, P.PLACEMENTS) or "placements: eps, latent, mean"
            )
        update["placement"] = m.via.value
    return term.model_copy(update=update)


def _span_between(a: ast.Node, b: ast.Node) -> P.Span:
    return P.Span(line=a.span.line, col=a.span.col, end_line=b.span.end_line, end_col=b.span.end_col, file=a.span.file)

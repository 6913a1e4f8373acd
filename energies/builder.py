"""The Python API: build the same Program as the DSL, one call per construct.

    from energies.builder import token, centroid, size, shape, appearance, keep, clip, style, direction, drag, settings

    program = settings(prompt="a red circle and a blue square", seed=3) \\
        + centroid(token("circle")).to(0.75, 0.5) * 2 \\
        + keep.appearance()

Every builder returns a Term (or Settings); `+` makes a Program and `*` scales a weight.
`term.at(0, 0.6)` sets a window and `term.via("latent")` a placement, like `@ 0..0.6` and
`via latent` in a script.
"""

from __future__ import annotations

from . import program as P


def token(word: str, occurrence: int = 1) -> P.TokenRef:
    return P.TokenRef(word=word, occurrence=occurrence)


def _ref(t) -> P.TokenRef:
    return t if isinstance(t, P.TokenRef) else token(t)


class centroid:
    def __init__(self, tok):
        self.token = _ref(tok)

    def to(self, x, y: float | None = None, offset=(0.0, 0.0)):
        """centroid(tok).to(0.7, 0.5), or .to(centroid("square"), offset=(0.3, 0)) beside another object."""
        if isinstance(x, centroid):
            return P.MoveTo(token=self.token, other=x.token, offset=(float(offset[0]), float(offset[1])))
        return P.Move(token=self.token, to=(float(x), float(y)))

    def by(self, dx: float, dy: float) -> P.Shift:
        return P.Shift(token=self.token, by=(float(dx), float(dy)))


class size:
    def __init__(self, tok):
        self.token = _ref(tok)

    def to(self, area) -> P.SizeTo | P.SizeLike:
        """size(tok).to(0.12) (a fraction of the image), or .to(size("square")) (another object's)."""
        if isinstance(area, size):
            return P.SizeLike(token=self.token, other=area.token)
        return P.SizeTo(token=self.token, area=float(area))

    def times(self, factor: float) -> P.Resize:
        return P.Resize(token=self.token, factor=float(factor))


class shape:
    def __init__(self, tok):
        self.token = _ref(tok)

    def to(self, other: "shape") -> P.ShapeFrom:
        return P.ShapeFrom(token=self.token, other=other.token)


class appearance:
    def __init__(self, tok):
        self.token = _ref(tok)

    def to(self, other) -> P.AppearanceFrom | P.Recolour:
        """appearance(tok).to(appearance("square")) (another object's), or .to("green") (words)."""
        if isinstance(other, str):
            return P.Recolour(token=self.token, to=" ".join(other.split()))
        return P.AppearanceFrom(token=self.token, other=other.token)


class _KeepWords(type):
    """keep.WORD() for every bare word of energies.program.KEEP_WORDS, without a method each."""

    def __getattr__(cls, word):
        if word in P.KEEP_WORDS:
            return lambda: P.KEEP_WORDS[word]()
        raise AttributeError(f"keep.{word}: nothing called {word!r} can be kept (the words: {', '.join(P.KEEP_WORDS)})")


class keep(metaclass=_KeepWords):
    @staticmethod
    def appearance(tok=None) -> P.KeepAppearance:
        return P.KeepAppearance(token=None if tok is None else _ref(tok))

    @staticmethod
    def layout() -> P.KeepShape:
        return P.KeepShape()

    @staticmethod
    def shape(tok) -> P.KeepShape:
        return P.KeepShape(token=_ref(tok))

    @staticmethod
    def pixels(inside=None, outside=None) -> P.KeepPixels:
        """keep.pixels(), keep.pixels(inside="square") or keep.pixels(outside="circle")."""
        if inside is not None and outside is not None:
            raise ValueError("keep.pixels takes inside= or outside=, not both")
        if inside is None and outside is None:
            return P.KeepPixels()
        return P.KeepPixels(token=_ref(inside if inside is not None else outside), inside=inside is not None)


def clip(target: str, source: str | None = None) -> P.Clip:
    """clip("a blue circle", source="a red circle"): the directional CLIP term (source: the prompt if None)."""
    return P.Clip(target=target, source=source)


def style(path: str) -> P.Style:
    return P.Style(path=str(path))


def direction(name: str, within=None, box=None) -> P.Direction:
    """direction("green", within="circle") or box=(x0, y0, x1, y1): a learned direction, maybe local."""
    if within is not None and box is not None:
        raise ValueError("direction takes within= (a token) or box=, not both")
    return P.Direction(name=name, token=None if within is None else _ref(within),
                       box=None if box is None else tuple(float(v) for v in box))


def drag(handle, target, within=None, box=None) -> P.Drag:
    """drag((0.3, 0.4), (0.55, 0.4), within="circle") or box=(x0, y0, x1, y1): DragNoise's point drag."""
    if within is not None and box is not None:
        raise ValueError("drag takes within= (a token) or box=, not both")
    return P.Drag(handle=(float(handle[0]), float(handle[1])), target=(float(target[0]), float(target[1])),
                  token=None if within is None else _ref(within), box=None if box is None else tuple(float(v) for v in box))


def remove(tok) -> P.Remove:
    """remove("circle"): the object gone, its place background."""
    return P.Remove(token=_ref(tok))


def settings(**kw) -> P.Program:
    return P.Program(settings=P.Settings(**kw))

"""The Program: what an edit asks for, as data. Both the DSL and the Python builder produce it.

A Program holds the settings (prompt, seed, steps, ...) and a list of Terms. A Term is a frozen
pydantic model naming its kind, the tokens it reads (symbolically, as written: `token "circle"#2`),
its parameters, its weight, its time window and its placement. Token references are resolved
against a backbone's tokenizer only when the program runs (dsl.bind, in dsl/binding.py), so a
Program is model-independent, comparable with ==, and printable back to text (dsl.format).

Positions in the source text (`span`) ride along for error messages but take no part in ==.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

PLACEMENTS = ("eps", "latent", "mean", "x0")  # docs/methods.md, section 8 ("Where a guidance term goes")
GRADIENT_FREE = ("recolour", "remove", "drag", "direction")  # kinds that take no energy gradient: `every` is not theirs


class Span(BaseModel):
    model_config = ConfigDict(frozen=True)
    line: int
    col: int
    end_line: int
    end_col: int
    file: str = "<script>"


class Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def meaning(self) -> dict:
        """The node as plain data without source positions: what == compares."""
        return _strip_spans(self.model_dump())

    def __eq__(self, other):  # spans are where a thing was written, not what it means
        if type(other) is not type(self):
            return NotImplemented
        return self.meaning() == other.meaning()

    def __hash__(self):
        return hash(repr(self.meaning()))


def _strip_spans(x):
    if isinstance(x, dict):
        return {k: _strip_spans(v) for k, v in x.items() if k not in ("span", "spans")}
    if isinstance(x, (list, tuple)):
        return [_strip_spans(v) for v in x]
    return x


class TokenRef(Node):
    """`token "word"` or `token "word"#n`: the n-th occurrence of a word (or phrase) of the prompt."""

    word: str
    occurrence: int = 1
    span: Span | None = None


class Window(Node):
    """Active while start <= progress < end; progress runs from 0 (pure noise) to 1 (done)."""

    start: float = 0.0
    end: float = 1.0


class TermBase(Node):
    weight: float = 1.0  # multiplies the term's default weight (energies/defaults.py)
    window: Window | None = None  # None: the term's default window
    every: int | None = Field(default=None, ge=1)  # gradient at every k-th step, reused between; None: the default
    placement: Literal["eps", "latent", "mean", "x0", "bottleneck"] | None = None  # None: the term's default
    span: Span | None = None

    def tokens(self) -> list[TokenRef]:
        return [v for v in self.__dict__.values() if isinstance(v, TokenRef)]


class Move(TermBase):
    """centroid(token) -> (x, y)"""

    kind: Literal["move"] = "move"
    token: TokenRef
    to: tuple[float, float]


class Shift(TermBase):
    """centroid(token) += (dx, dy): relative to where the object is in the source."""

    kind: Literal["shift"] = "shift"
    token: TokenRef
    by: tuple[float, float]


class Resize(TermBase):
    """size(token) *= k"""

    kind: Literal["resize"] = "resize"
    token: TokenRef
    factor: float


class SizeTo(TermBase):
    """size(token) -> area (fraction of the image)"""

    kind: Literal["size_to"] = "size_to"
    token: TokenRef
    area: float


class MoveTo(TermBase):
    """centroid(token) -> centroid(token other) + (dx, dy): a place relative to another object, taken
    from where that object is in the source."""

    kind: Literal["move_to"] = "move_to"
    token: TokenRef
    other: TokenRef
    offset: tuple[float, float] = (0.0, 0.0)


class SizeLike(TermBase):
    """size(token) -> size(token other): the other object's area in the source."""

    kind: Literal["size_like"] = "size_like"
    token: TokenRef
    other: TokenRef


class ShapeFrom(TermBase):
    """shape(token) -> shape(other)"""

    kind: Literal["shape_from"] = "shape_from"
    token: TokenRef
    other: TokenRef


class AppearanceFrom(TermBase):
    """appearance(token) -> appearance(other)"""

    kind: Literal["appearance_from"] = "appearance_from"
    token: TokenRef
    other: TokenRef


class Recolour(TermBase):
    """appearance(token) -> "green": the object's words in the prompt swapped for the given ones, as
    a shift of the prompt's embedding (Pix2Pix-Zero's edit direction made from this very prompt),
    with the cross-attention hold that keeps the layout (keep attention)."""

    kind: Literal["recolour"] = "recolour"
    token: TokenRef
    to: str


class Remove(TermBase):
    """remove token: the object's region refilled with background once the layout is set, and the
    prompt without the object's phrase from then on."""

    kind: Literal["remove"] = "remove"
    token: TokenRef


class KeepAppearance(TermBase):
    """keep appearance (every object) or keep appearance(token)"""

    kind: Literal["keep_appearance"] = "keep_appearance"
    token: TokenRef | None = None


class KeepShape(TermBase):
    """keep layout (every object's silhouette) or keep shape(token)"""

    kind: Literal["keep_shape"] = "keep_shape"
    token: TokenRef | None = None


class KeepAttention(TermBase):
    """keep attention: Pix2Pix-Zero cross-attention guidance towards the source maps."""

    kind: Literal["keep_attention"] = "keep_attention"


class KeepStructure(TermBase):
    """keep structure: DiffuseIT's self-similarity of ViT keys on the predicted x0, against the source."""

    kind: Literal["keep_structure"] = "keep_structure"


class KeepPixels(TermBase):
    """keep pixels [inside|outside token]: L1 between the predicted x0 and the source's, optionally
    only inside (or outside) a token's mask."""

    kind: Literal["keep_pixels"] = "keep_pixels"
    token: TokenRef | None = None
    inside: bool = True  # with a token: True keeps the pixels inside its mask, False those outside


# `keep WORD`: the term a bare word after `keep` names. The compiler, the printer and the builder
# read this table, so a new keep term is its class here, its energy (terms.py) and its defaults.
KEEP_WORDS: dict[str, type] = {
    "appearance": KeepAppearance,
    "layout": KeepShape,
    "attention": KeepAttention,
    "structure": KeepStructure,
    "pixels": KeepPixels,
}


class Clip(TermBase):
    """clip "target" from "source": DiffusionCLIP's directional CLIP loss on the predicted x0."""

    kind: Literal["clip"] = "clip"
    target: str
    source: str | None = None  # None: the prompt


class Style(TermBase):
    """style image "ref.png": the ViT CLS token of the predicted x0 matches a reference image's (DiffuseIT)."""

    kind: Literal["style"] = "style"
    path: str


class Drag(TermBase):
    """drag (x, y) -> (x, y): DragNoise. The UNet bottleneck is optimised at one step (the window's
    start) so that the decoder features at the handle move to the target, then substituted at the
    later steps (until the window's end). `within`: only that object (token) or box may change."""

    kind: Literal["drag"] = "drag"
    handle: tuple[float, float]
    target: tuple[float, float]
    token: TokenRef | None = None  # within token "circle"
    box: tuple[float, float, float, float] | None = None  # within (x0, y0, x1, y1), image units


class Direction(TermBase):
    """direction NAME * s: a learned direction (h-space, noise space or the prompt embedding), found
    by name. `within`: it acts only on that object (token) or box; elsewhere the sampler is left as
    it was (h-space and noise directions; a prompt direction acts on the whole prompt)."""

    kind: Literal["direction"] = "direction"
    name: str
    token: TokenRef | None = None  # within token "circle"
    box: tuple[float, float, float, float] | None = None  # within (x0, y0, x1, y1), image units


Term = Annotated[
    Union[Move, Shift, MoveTo, Resize, SizeTo, SizeLike, ShapeFrom, AppearanceFrom, Recolour, Remove, KeepAppearance, KeepShape,
          KeepAttention, KeepStructure, KeepPixels, Clip, Style, Direction, Drag],
    Field(discriminator="kind"),
]


# The ranges of the numeric settings, stated once: the compiler checks a script's `seed 5`, the
# command line its `--seed 5` and the Editor a Python-built Program, all with setting_problem, so
# a PNG never records a program that does not compile.
SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit integer
STEPS_MAX = 1000  # the schedulers' training timesteps: DDIM cannot take more steps than that


def setting_problem(name: str, value) -> str | None:
    """Why `value` cannot be the setting `name`, or None. Only the numbers have ranges."""
    import math

    if value is None:
        return None
    if name == "seed" and not (isinstance(value, int) and 0 <= value <= SEED_MAX):
        return "seed must be between 0 and 2^63 - 1"
    if name == "steps" and not (isinstance(value, int) and 1 <= value <= STEPS_MAX):
        return f"steps must be between 1 and {STEPS_MAX}"
    if name == "cfg" and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        return "cfg must be a finite number >= 0"
    if name in ("return", "return_step") and not (isinstance(value, (int, float)) and math.isfinite(value) and 0 < value <= 1):
        return "return must be a fraction of the schedule in (0, 1]"
    return None


# A setting's name in a script -> its field in Settings, where the word is one Python reserves.
SETTING_FIELDS = {"return": "return_step"}


class Settings(Node):
    prompt: str | None = None
    negative: str | None = None
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    model: str | None = None
    source: str | None = None  # a real image to edit (path relative to the script), inverted first
    invert: Literal["ddim", "null-text", "noise"] | None = None  # how the source image is inverted (noise: SDEdit's forward diffusion)
    # `return 0.5`: the source is inverted only to t0 = 0.5 T and sampled back from there
    # (DiffusionCLIP's return step, SDEdit's t0); the run's steps span [t0, 0]. None: from T.
    return_step: float | None = None
    spans: dict[str, Span] = {}  # where each setting was written, for error messages


class Program(Node):
    """Settings plus terms. `a + b` concatenates terms; settings of `b` win where set."""

    settings: Settings = Settings()
    terms: tuple[Term, ...] = ()

    def __add__(self, other):
        other = as_program(other)
        a, b = self.settings, other.settings
        merged = {**a.model_dump(exclude_none=True, exclude={"spans"}), **b.model_dump(exclude_none=True, exclude={"spans"})}
        return Program(settings=Settings(**merged, spans={**a.spans, **b.spans}), terms=self.terms + other.terms)

    def __radd__(self, other):
        return as_program(other) + self

    def with_settings(self, **kw) -> "Program":
        return Program(settings=self.settings.model_copy(update={k: v for k, v in kw.items() if v is not None}), terms=self.terms)


def as_program(x) -> Program:
    if isinstance(x, Program):
        return x
    if isinstance(x, TermBase):
        return Program(terms=(x,))
    if isinstance(x, Settings):
        return Program(settings=x)
    raise TypeError(f"cannot add {type(x).__name__} to a Program")


# Terms compose with + and take weights with *, so Python reads like the DSL:
#     centroid(token("circle")).to(0.75, 0.5) * 2 + keep.appearance()
def _mul(self, w: float):
    return self.model_copy(update={"weight": self.weight * float(w)})


def _at(self, start: float, end: float):
    """Restrict the term to a window of sampling progress, like `@ start..end` in the DSL."""
    return self.model_copy(update={"window": Window(start=start, end=end)})


def _via(self, placement: str):
    """Override where the term acts: "eps", "latent" or "mean", like `via eps` in the DSL."""
    if placement not in PLACEMENTS:
        raise ValueError(f"`placement` must be one of {PLACEMENTS}, got {placement!r}")
    return self.model_copy(update={"placement": placement})


def _guided_every(self, k: int):
    """Take the term's gradient at every k-th step and reuse it in between, like `every k`."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"`every` takes a whole number of steps, 1 or more, not {k!r}")
    return self.model_copy(update={"every": k})


TermBase.at = _at
TermBase.via = _via
TermBase.guided_every = _guided_every
TermBase.__mul__ = _mul
TermBase.__rmul__ = _mul
TermBase.__add__ = lambda self, other: as_program(self) + other
TermBase.__radd__ = lambda self, other: as_program(other) + self

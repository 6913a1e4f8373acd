"""The syntax tree: what was written, with where it was written.

Nodes mirror the grammar (dsl/grammar.lark) one to one and keep their source spans; meaning is
given to them by dsl/compiler.py. Comments are kept on the Script so `steer fmt` never drops them.
"""

from __future__ import annotations

from typing import Union

from pydantic import BaseModel, ConfigDict

from energies.program import Span


class Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    span: Span


class Number(Node):
    value: float
    text: str

    @property
    def is_int(self) -> bool:
        return self.text.lstrip("+-").isdigit()


class String(Node):
    value: str


class Name(Node):
    value: str


class Point(Node):
    x: Number
    y: Number


class TokenRef(Node):
    word: String
    occurrence: int = 1


class Prop(Node):
    name: Name  # centroid | size | shape | appearance
    token: TokenRef


class Relative(Node):
    base: Prop  # centroid(token "square") + (0.3, 0)
    offset: Point


Value = Union[Number, String, Point, Prop, Relative]


class Modifiers(Node):
    weight: Number | None = None
    window: tuple[Number, Number] | None = None
    every: Number | None = None
    via: Name | None = None


class Setting(Node):
    name: Name
    value: Union[Number, String, Point, Prop, Name]


class Edit(Node):
    target: Prop
    op: Name  # -> | += | *=
    value: Value
    mods: Modifiers


class Region(Node):
    side: Name  # inside | outside
    token: TokenRef


class Keep(Node):
    what: Union[Prop, Name]
    mods: Modifiers
    region: Region | None = None  # keep pixels inside/outside token "..."


class ClipStmt(Node):
    target: String  # clip "a blue circle" from "a red circle"
    source: String | None  # None: the prompt
    mods: Modifiers


class StyleStmt(Node):
    path: String  # style image "ref.png", relative to the script
    mods: Modifiers


class Box(Node):
    x0: Number
    y0: Number
    x1: Number
    y1: Number


class DragStmt(Node):
    handle: Point  # drag (x, y) -> (x, y) [within token "..." | within (x0, y0, x1, y1)]
    op: Name  # must be ->; the grammar takes any OP so the compiler can say so
    target: Point
    within: Union[TokenRef, Box, None] = None
    mods: Modifiers


class DirectionStmt(Node):
    name: Name  # direction NAME [within token "..." | within (x0, y0, x1, y1)]
    within: Union[TokenRef, Box, None] = None
    mods: Modifiers


class RemoveStmt(Node):
    token: TokenRef  # remove token "circle"
    mods: Modifiers


Statement = Union[Setting, Edit, Keep, DirectionStmt, ClipStmt, StyleStmt, DragStmt, RemoveStmt]


class Comment(BaseModel):
    model_config = ConfigDict(frozen=True)
    line: int
    text: str  # with the leading '#'
    trailing: bool  # written after a statement on the same line


class Script(BaseModel):
    model_config = ConfigDict(frozen=True)
    statements: tuple[Statement, ...]
    comments: tuple[Comment, ...] = ()
    file: str = "<script>"
    source: str = ""

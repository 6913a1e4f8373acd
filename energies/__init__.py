"""steer's terms: the Program type, the builder API, and the energies as pure tensor functions."""

from .builder import appearance, centroid, clip, direction, keep, remove, settings, shape, size, style, token
from .program import Program, Settings, Span, Term, TokenRef, Window

__all__ = [
    "Program", "Settings", "Span", "Term", "TokenRef", "Window",
    "appearance", "centroid", "clip", "direction", "keep", "remove", "settings", "shape", "size", "style", "token",
]

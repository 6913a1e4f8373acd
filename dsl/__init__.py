"""steer's edit language: parse text, compile it to a Program, format a Program back to text.

    import dsl
    program = dsl.compile(dsl.parse(text))     # or dsl.load("edit.edit")
    text = dsl.format(program)                 # canonical text, parses back to an equal Program
"""

from energies.errors import SteerCompileError, SteerError, SteerRuntimeError, SteerSyntaxError


def parse(text: str, file: str = "<script>"):
    from .parser import parse as _parse

    return _parse(text, file)


def compile(script):
    """A parsed Script (or source text) -> energies.Program."""
    from .compiler import compile_script

    if isinstance(script, str):
        script = parse(script)
    return compile_script(script)


def format(x) -> str:
    from .printer import format as _format

    return _format(x)


def bind(program, prompt: str, tokenizer, direction_paths=(), backbone: str | None = None):
    """Resolve a Program against a model: tokens against its tokenizer, directions against the
    direction folders, defaults of its backbone family. -> [energies.terms.BoundTerm]."""
    from .binding import bind as _bind

    return _bind(program, prompt, tokenizer, direction_paths, backbone)


def prompt_objects(prompt: str, tokenizer):
    """The objects a prompt names: for each noun phrase, its head token and all its tokens."""
    from .resolve import prompt_objects as _objects

    return _objects(prompt, tokenizer)


def load(path) -> "object":
    """Read, parse and compile a .edit file."""
    from pathlib import Path

    p = Path(path)
    return compile(parse(p.read_text(), str(path)))


__all__ = ["parse", "compile", "format", "load", "bind", "prompt_objects", "SteerError", "SteerSyntaxError", "SteerCompileError", "SteerRuntimeError"]

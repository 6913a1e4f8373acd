"""steer's edit language: parse text, compile it to a Program, format a Program back to text.

    import dsl
    program = dsl.compile(dsl.parse(text))     # or dsl.load("edit.edit")
    text = dsl.format(program)                 # canonical text, parses back to an equal Program
"""

import re

from energies.errors import SteerCompileError, SteerError, SteerRuntimeError, SteerSyntaxError, SteerUsageError


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


def bind(program, prompt: str, tokenizer, direction_paths=(), backbone: str | None = None, warnings: list | None = None):
    """Resolve a Program against a model: tokens against its tokenizer, directions against the
    direction folders, defaults of its backbone family. -> [energies.terms.BoundTerm]; statements
    with nothing to do or in conflict are SteerWarnings appended to `warnings`."""
    from .binding import bind as _bind

    return _bind(program, prompt, tokenizer, direction_paths, backbone, warnings)


def prompt_objects(prompt: str, tokenizer):
    """The objects a prompt names: for each noun phrase, its head token and all its tokens."""
    from .resolve import prompt_objects as _objects

    return _objects(plain_prompt(prompt), tokenizer)


def token_indices(word: str, prompt: str, tokenizer) -> list[int]:
    """Positions in the encoded prompt of `word` as the language resolves `token "word"`: a word or
    a phrase, "red#2" for its second occurrence; a word split into sub-word tokens gives all of
    them. A word not in the prompt is a SteerCompileError (without a position) listing its words."""
    from energies.program import TokenRef

    from .resolve import token_indices as _indices

    text, _, n = word.rpartition("#") if re.fullmatch(r".+#\d+", word) else (word, "", "1")
    if int(n) < 1:
        raise SteerCompileError(f"{word}: occurrences count from #1", None)
    return _indices(TokenRef(word=text, occurrence=int(n)), plain_prompt(prompt), tokenizer)


def token_weights(prompt: str, tokenizer) -> tuple[str, list[float]]:
    """A prompt with weights ((word:1.3), word++, (words)0.8) -> (the plain prompt, one weight for
    each of the tokenizer's max-length positions), for the backbone's encoder to apply."""
    from .weights import token_weights as _weights

    return _weights(prompt, tokenizer)


def prompt_words(prompt: str) -> list[str]:
    """Every word of the prompt, lower-cased, as token_indices takes it: a word's second
    occurrence is "red#2"."""
    from .resolve import prompt_words as _words

    seen: dict[str, int] = {}
    out = []
    for w, _, _ in _words(plain_prompt(prompt)):
        seen[w] = seen.get(w, 0) + 1
        out.append(w if seen[w] == 1 else f"{w}#{seen[w]}")
    return out


def plain_prompt(prompt: str) -> str:
    """The prompt without its weight syntax: the words the tokenizer encodes."""
    from .weights import plain

    return plain(prompt)


def read_script(path) -> str:
    """A script's text: UTF-8, a file. A missing file, a folder or other bytes are a
    SteerUsageError (`steer: error: ...`), not a traceback."""
    from pathlib import Path

    from energies.errors import SteerUsageError

    p = Path(path)
    if p.is_dir():
        raise SteerUsageError(f"cannot read {path}: it is a folder", hint="give an .edit script")
    if not p.is_file():
        raise SteerUsageError(f"cannot read {path}: no such file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SteerUsageError(f"cannot read {path}: it is not UTF-8 text (byte {e.start} is {e.object[e.start:e.start + 1]!r})",
                              hint="save the script as UTF-8") from None
    except OSError as e:
        raise SteerUsageError(f"cannot read {path}: {e.strerror or e}") from None


def load(path) -> "object":
    """Read, parse and compile a .edit file."""
    return compile(parse(read_script(path), str(path)))


__all__ = ["parse", "compile", "format", "load", "read_script", "bind", "prompt_objects", "token_indices", "prompt_words", "token_weights", "plain_prompt",
           "SteerError", "SteerSyntaxError", "SteerCompileError", "SteerRuntimeError", "SteerUsageError"]

"""Prompt weights: Automatic1111's `(word:1.3)` and compel's `word++`, `word--`, `(words)1.3`.

The language keeps a prompt as written. Two things are read from it here:
  - the plain prompt, with the weight syntax taken out: what binding resolves tokens against, and
    what the tokenizer encodes, so token positions are those of the plain prompt;
  - one weight per token position of the plain prompt, which the backbone applies to the text
    encoder's output as compel does (sampler/backbones/base.py, `weighted`).
The weights come from compel's parser (A1111's `(x:w)` is rewritten to compel's `(x)w` first).
compel reads anything it does not understand as plain text, silently, so the syntax is checked
here first and every construct that is not supported is an error at its column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from energies.errors import SteerCompileError

_NUMBER = re.compile(r"\d+(\.\d+)?|\.\d+")
_WORD = re.compile(r"\w+")
_WORD_BEFORE = re.compile(r"\w*$")
# Prompt syntax of other tools that steer does not read: an error, never plain text.
UNSUPPORTED = {
    "[": "A1111's [word] de-emphasis and [from:to:when] prompt editing are not supported; write (word:0.9)",
    "]": "A1111's [word] de-emphasis and [from:to:when] prompt editing are not supported; write (word:0.9)",
    "<": "LoRA and embedding tags (<lora:...>) are not supported in a prompt",
    "\\(": "escaped parentheses are not supported; a prompt's parentheses are weights",
    "\\)": "escaped parentheses are not supported; a prompt's parentheses are weights",
    ".and(": "compel's .and() conjunctions are not supported",
    ".blend(": "compel's .blend() is not supported",
    ".swap(": "compel's .swap() is not supported",
}
PLUS_MINUS = "+-"


class WeightError(ValueError):
    """A malformed weight at `offset` (a character of the prompt as written)."""

    def __init__(self, message: str, offset: int, hint: str | None = None):
        super().__init__(message)
        self.offset, self.hint = offset, hint


@dataclass
class Scanned:
    plain: str  # the prompt without weight syntax
    compel: str  # the prompt in compel's syntax, for its parser
    at: list[int]  # where each character of `plain` is in the prompt
    marked: list[tuple[int, int]]  # spans of `plain` that weight syntax applies to


def scan(prompt: str) -> Scanned:
    """Check the weight syntax and rewrite it two ways (plain, compel's). Raises WeightError."""
    plain, at, compel, marked, i = [], [], [], [], 0
    opened: list[tuple[int, int]] = []  # each open "(": its offset in the prompt, the plain text's length there
    while i < len(prompt):
        _refuse_unsupported(prompt, i)
        c = prompt[i]
        if c == "(":
            opened.append((i, len(plain)))
            compel.append("(")
            i += 1
        elif c == ":" and opened:
            i = _a1111_weight(prompt, i, compel)
            marked.append((opened.pop()[1], len(plain)))
        elif c == ")":
            if not opened:
                raise WeightError("a `)` closes no `(`", i, hint="weights are written (word:1.3) or (words)1.3")
            start, from_plain = opened.pop()
            i = _compel_weight(prompt, i, start, compel)
            marked.append((from_plain, len(plain)))
        elif c in PLUS_MINUS and i > 0 and (prompt[i - 1].isalnum() or prompt[i - 1] in PLUS_MINUS) and _ends_word(prompt, i):
            if prompt[i - 1].isalnum():
                word = len(plain) - len(_WORD_BEFORE.search("".join(plain))[0])
                marked.append((word, len(plain)))
            compel.append(c)
            i += 1
        else:
            plain.append(c)
            at.append(i)
            compel.append(c)
            i += 1
    if opened:
        raise WeightError("this `(` is never closed", opened[-1][0], hint="weights are written (word:1.3) or (words)1.3")
    return Scanned(plain="".join(plain), compel="".join(compel), at=at, marked=marked)


def _refuse_unsupported(prompt: str, i: int):
    for mark, why in UNSUPPORTED.items():
        if prompt.startswith(mark, i):
            raise WeightError(why, i)


def _ends_word(prompt: str, i: int) -> bool:
    """A run of + or - right after a word is compel's weight, unless a word goes on after it
    (a hyphenated word like "blue-green" is text)."""
    j = i
    while j < len(prompt) and prompt[j] in PLUS_MINUS:
        j += 1
    return j == len(prompt) or not prompt[j].isalnum()


def _a1111_weight(prompt: str, i: int, compel: list) -> int:
    """At the `:` of (words:1.3): the number, then `)`. Rewritten as compel's (words)1.3."""
    close = prompt.find(")", i)
    if close < 0:
        raise WeightError("this `(` is never closed", prompt.rfind("(", 0, i), hint="weights are written (word:1.3)")
    text = prompt[i + 1:close].strip()
    at = i + 1 + (len(prompt[i + 1:close]) - len(prompt[i + 1:close].lstrip()))
    if not _NUMBER.fullmatch(text):
        raise WeightError(f"the weight {text!r} is not a number", at, hint="weights are written (word:1.3)")
    compel.append(")" + text)
    return close + 1


def _compel_weight(prompt: str, i: int, start: int, compel: list) -> int:
    """At the `)` of (words)1.3, (words)++ or (words)--; bare (words) is refused: A1111 reads it
    as 1.1, compel as 1, and a prompt should not mean two things."""
    m = _NUMBER.match(prompt, i + 1)
    j = m.end() if m else i + 1
    while j < len(prompt) and prompt[j] in PLUS_MINUS:
        j += 1
    if j == i + 1:
        raise WeightError("parentheses without a weight", start,
                          hint="A1111 reads (word) as 1.1 and compel as 1: write the weight, (word:1.1), or drop them")
    if j < len(prompt) and (prompt[j].isalnum() or prompt[j] == "."):
        raise WeightError("the weight after `)` is not a number", i + 1, hint="weights are written (words)1.3")
    compel.append(prompt[i:j])
    return j


def _compel_parser():
    """compel's prompt parser. Importing compel imports transformers' image processors, which
    print a line each about torchvision; a language check must not say that, so they are quiet."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        from compel.prompt_parser import FlattenedPrompt, PromptParser
    finally:
        logging.set_verbosity(level)
    return FlattenedPrompt, PromptParser


def weighted_words(prompt: str) -> list[tuple[int, int, float]]:
    """(start, end, weight) in the plain prompt of every word, the weights from compel's parser."""
    s = scan(prompt)
    if s.compel == s.plain and not re.search(r"[()+\-]", s.plain):  # no weight syntax: compel is not needed
        return [(m.start(), m.end(), 1.0) for m in _WORD.finditer(s.plain)]
    FlattenedPrompt, PromptParser = _compel_parser()
    parsed = PromptParser().parse_conjunction(s.compel).prompts
    if len(parsed) != 1 or not isinstance(parsed[0], FlattenedPrompt):
        raise WeightError("compel read this prompt as more than one prompt", 0)
    weights = [w for f in parsed[0].children for w in [f.weight] * len(_WORD.findall(f.text))]
    words = list(_WORD.finditer(s.plain))
    if len(weights) != len(words):  # compel split the words differently: never guess which word got what
        raise WeightError("cannot line up compel's reading of the weights with the prompt's words", 0)
    for m, w in zip(words, weights):  # compel reads a weight where this reading sees plain text ("well--known")
        if w != 1.0 and not any(a < m.end() and m.start() < b for a, b in s.marked):
            raise WeightError(f"compel reads a weight on {m.group()!r} here: the prompt is ambiguous", s.at[m.start()],
                              hint="write the weight explicitly, (word:0.9), or avoid + and - inside words")
    return [(m.start(), m.end(), w) for m, w in zip(words, weights)]


def plain(prompt: str) -> str:
    """The prompt without weight syntax (the prompt itself when it has none). Raises WeightError."""
    return scan(prompt).plain


def token_weights(prompt: str, tokenizer) -> tuple[str, list[float]]:
    """(plain prompt, a weight for each of the tokenizer's max-length positions): a token takes
    the weight of the word it is in; special and padding tokens keep 1."""
    words = weighted_words(prompt)
    text = plain(prompt)
    enc = tokenizer(text, return_offsets_mapping=True, padding="max_length", truncation=True,
                    max_length=tokenizer.model_max_length)
    out = []
    for a, b in enc["offset_mapping"]:
        out.append(next((w for s, e, w in words if a < e and s < b), 1.0) if b > a else 1.0)
    return text, out


def check(prompt: str, span) -> None:
    """The compiler's check of a `prompt` or `negative` string: a SteerCompileError at the column
    of the mistake (the string's text starts one column after its opening quote)."""
    try:
        weighted_words(prompt)
    except WeightError as e:
        col = span.col + 1 + _raw_offset(prompt, e.offset) if span else 0
        at = span.model_copy(update=dict(col=col, end_line=span.line, end_col=col + 1)) if span else None
        raise SteerCompileError(f"prompt weights: {e}", at, hint=e.hint) from None


def _raw_offset(prompt: str, offset: int) -> int:
    """Where the prompt's character `offset` is in the script: a `"` or `\\` was written escaped,
    with one more character."""
    return offset + sum(c in '"\\' for c in prompt[:offset])

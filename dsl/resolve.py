"""Name resolution: token references against a tokenizer and a prompt, directions against folders.

This is the part of compilation that needs the model (its tokenizer), so `steer check` runs it
too. Errors are SteerCompileErrors at the reference's position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from energies.defaults import STOPWORDS
from energies.errors import SteerCompileError, did_you_mean
from energies.program import TokenRef

from .printer import string

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)


def _q(word: str) -> str:
    return string(word)


def prompt_words(prompt: str) -> list[tuple[str, int, int]]:
    """(word, start, end) for each word of the prompt, lower-cased."""
    return [(m.group().lower(), m.start(), m.end()) for m in _WORD.finditer(prompt)]


def _char_to_tokens(prompt: str, tokenizer) -> list[tuple[int, int]]:
    """Character span of every token position of the encoded prompt ((0, 0) for special tokens)."""
    enc = tokenizer(prompt, return_offsets_mapping=True, truncation=True, max_length=tokenizer.model_max_length)
    return [tuple(o) for o in enc["offset_mapping"]]


def _tokens_in(offsets, start: int, end: int) -> list[int]:
    return [i for i, (s, e) in enumerate(offsets) if e > s and s < end and e > start]


def token_indices(ref: TokenRef, prompt: str, tokenizer) -> list[int]:
    """Positions in the encoded prompt of the `ref.occurrence`-th occurrence of ref.word (a word or
    a phrase). A word split into several sub-word tokens gives all of them."""
    words = prompt_words(prompt)
    wanted = [w for w, _, _ in prompt_words(ref.word)]
    listing = ", ".join(dict.fromkeys(w for w, _, _ in words)) or "(the prompt is empty)"
    if not wanted:
        raise SteerCompileError(f"token {_q(ref.word)} has no word in it", ref.span, hint=f"the prompt's words are: {listing}")
    starts = [i for i in range(len(words) - len(wanted) + 1) if [w for w, _, _ in words[i : i + len(wanted)]] == wanted]
    if not starts:
        hint = did_you_mean(ref.word.lower(), [w for w, _, _ in words])
        raise SteerCompileError(
            f"token {_q(ref.word)} is not in the prompt",
            ref.span,
            hint=(hint + "; " if hint else "") + f"the prompt's words are: {listing}",
        )
    if ref.occurrence > len(starts):
        raise SteerCompileError(
            f"token {_q(ref.word)}#{ref.occurrence}: the prompt has only {len(starts)} occurrence{'s' * (len(starts) > 1)}",
            ref.span,
            hint=f'use #1 to #{len(starts)}' if len(starts) > 1 else f'drop the "#{ref.occurrence}"',
        )
    i = starts[ref.occurrence - 1]
    start, end = words[i][1], words[i + len(wanted) - 1][2]
    indices = _tokens_in(_char_to_tokens(prompt, tokenizer), start, end)
    if not indices:
        raise SteerCompileError(
            f"token {_q(ref.word)} falls beyond the model's {tokenizer.model_max_length}-token limit", ref.span, hint="shorten the prompt"
        )
    return indices


@dataclass(frozen=True)
class PromptObject:
    """A noun phrase of the prompt ("red circle"): what "every object" terms act on."""

    words: str
    head: tuple[int, ...]  # token positions of its last word, whose map stands for the object
    tokens: tuple[int, ...]  # token positions of the whole phrase


def _phrases(prompt: str) -> list[list[tuple[str, int, int]]]:
    """Runs of words between stop words and punctuation, as (word, start, end)."""
    phrases: list[list[tuple[str, int, int]]] = [[]]
    prev_end = 0
    for w, s, e in prompt_words(prompt):
        if w in STOPWORDS or re.search(r"[,;.:!?]", prompt[prev_end:s]):
            phrases.append([])
        if w not in STOPWORDS:
            phrases[-1].append((w, s, e))
        prev_end = e
    return [ph for ph in phrases if ph]


def prompt_objects(prompt: str, tokenizer) -> list[PromptObject]:
    """Runs of words between stop words and punctuation; the last word of each is its head."""
    offsets = _char_to_tokens(prompt, tokenizer)
    out = []
    for ph in _phrases(prompt):
        head = _tokens_in(offsets, ph[-1][1], ph[-1][2])
        toks = _tokens_in(offsets, ph[0][1], ph[-1][2])
        if head:
            out.append(PromptObject(" ".join(w for w, _, _ in ph), tuple(head), tuple(toks)))
    return out


# ----------------------------------------------------------------------------------------------
# The prompt as an edit rewrites it: recolour and remove compile to a shift of the prompt's
# embedding towards the rewritten prompt (Pix2Pix-Zero's edit direction, made from this prompt).


def _phrase_of(prompt: str, tokenizer, token: list[int]) -> list[tuple[str, int, int]]:
    offsets = _char_to_tokens(prompt, tokenizer)
    for ph in _phrases(prompt):
        if set(_tokens_in(offsets, ph[0][1], ph[-1][2])) & set(token):
            return ph
    raise ValueError(f"no phrase of {prompt!r} holds token positions {token}")  # bind resolved the token: cannot happen


def recoloured(prompt: str, tokenizer, token: list[int], words: str) -> str:
    """The prompt with the object's describing words (its phrase but the head) replaced by `words`:
    "a red circle and a blue square", circle, "green" -> "a green circle and a blue square". A
    phrase of one word gets `words` in front of it."""
    ph = _phrase_of(prompt, tokenizer, token)
    start, end = (ph[0][1], ph[-2][2]) if len(ph) > 1 else (ph[-1][1], ph[-1][1])
    return prompt[:start] + words + ("" if len(ph) > 1 else " ") + prompt[end:]


def reshaped(prompt: str, tokenizer, token: list[int], head: str) -> str:
    """The prompt with the object's head word replaced by `head`: "a red circle and a blue square",
    circle, "square" -> "a red square and a blue square"."""
    ph = _phrase_of(prompt, tokenizer, token)
    return prompt[: ph[-1][1]] + head + prompt[ph[-1][2]:]


def head_word(prompt: str, tokenizer, token: list[int]) -> str:
    """The object's head word: "a red circle and a blue square", square -> "square"."""
    return _phrase_of(prompt, tokenizer, token)[-1][0]


def describing_words(prompt: str, tokenizer, token: list[int]) -> str:
    """The object's phrase but its head: "a red circle and a blue square", square -> "blue"."""
    return " ".join(w for w, _, _ in _phrase_of(prompt, tokenizer, token)[:-1])


JOINERS = ("and", "with")


def without(prompt: str, tokenizer, token: list[int]) -> str:
    """The prompt without the object's phrase, its article and the word that joins it to the rest:
    "a red circle and a blue square", circle -> "a blue square"."""
    ph = _phrase_of(prompt, tokenizer, token)
    words = prompt_words(prompt)
    first = next(i for i, w in enumerate(words) if w[1] == ph[0][1])
    last = next(i for i, w in enumerate(words) if w[1] == ph[-1][1])
    while first > 0 and words[first - 1][0] in STOPWORDS and words[first - 1][0] not in JOINERS:
        first -= 1  # its article: "a", "the"
    if last + 1 < len(words) and words[last + 1][0] in JOINERS:
        last += 1  # "a red circle and ..." loses "and" after it
    elif first > 0 and words[first - 1][0] in JOINERS:
        first -= 1  # "... and a red circle" loses "and" before it
    text = prompt[: words[first][1]] + prompt[words[last][2]:]
    return re.sub(r"\s+", " ", text).strip(" ,;")

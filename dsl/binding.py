"""Binding: a Program's terms resolved against a model, the model-dependent half of compiling.

Tokens resolve against the model's tokenizer and the script's prompt (resolve.py), directions
against the direction folders (energies/directions.py), and every term gets its backbone's
defaults (energies/defaults.py). The result is the engine's input: a list of BoundTerms. Every
mistake is a SteerCompileError at the offending term.
"""

from __future__ import annotations

from energies import defaults as D
from energies import directions
from energies import program as P
from energies.errors import SteerCompileError, SteerWarning
from energies.terms import LAYOUT_KINDS, BoundTerm

from .printer import term as term_text
from .resolve import describing_words, head_word, prompt_objects, recoloured, reshaped, token_indices, without
from . import weights


def bind(program: P.Program, prompt: str, tokenizer, direction_paths=(), backbone: str | None = None,
         warnings: list | None = None) -> list[BoundTerm]:
    """Resolve every term's tokens against the prompt and its directions against the direction
    folders; apply the defaults of the backbone family `backbone`. Raises SteerCompileError at the
    offending term. Statements left with nothing to do, that pull against another, or that the
    bench measured doing nothing on this backbone (D.INEFFECTIVE) are SteerWarnings appended to
    `warnings` (the vacuous ones are dropped from the result)."""
    warnings = [] if warnings is None else warnings
    weights.check(prompt, program.settings.spans.get("prompt"))  # a Program built in Python skipped the compiler
    prompt = weights.plain(prompt)  # the words as the tokenizer sees them: weight syntax is the encoder's business
    objects = prompt_objects(prompt, tokenizer)
    resolved = {}

    def where(ref: P.TokenRef) -> list[int]:
        key = (ref.word, ref.occurrence)
        if key not in resolved:
            resolved[key] = token_indices(ref, prompt, tokenizer)
        return resolved[key]

    def phrase_of(indices: list[int]) -> set[int]:
        return {i for o in objects if set(o.tokens) & set(indices) for i in o.tokens} | set(indices)

    # Which objects other terms change, so "every object" keep terms leave them free.
    moved = set().union(*[phrase_of(where(t.token)) for t in program.terms if t.kind in LAYOUT_KINDS and t.token is not None] or [set()])
    restyled = set().union(*[phrase_of(where(t.token)) for t in program.terms if t.kind in ("appearance_from", "recolour")] or [set()])
    removed = set().union(*[phrase_of(where(t.token)) for t in program.terms if t.kind == "remove"] or [set()])
    holds = any(t.kind == "keep_attention" for t in program.terms)
    # Every change local (the sampler's local blend keeps the rest of the image the source's).
    blended = all(t.kind.startswith("keep") or t.kind in D.LOCAL_BLEND
                  or (t.kind == "direction" and (t.token is not None or t.box is not None)) for t in program.terms)

    swapped = set()  # the edit prompts that swap two objects' words (their hold is stronger)

    def restyle(t, token: list[int], words: str) -> str:
        """The edit prompt that gives the object at `token` the describing words `words`, with
        any object that has those words already, and that the blend keeps, given the edited
        object's old ones (_swapped)."""
        swaps, own = [(token, words)], describing_words(prompt, tokenizer, token)
        for o in objects:
            kept = not any(u is not t and not u.kind.startswith("keep") and getattr(u, "token", None) is not None
                           and phrase_of(where(u.token)) & set(o.tokens) for u in program.terms)
            if (own and blended and kept and not set(o.tokens) & set(token)
                    and describing_words(prompt, tokenizer, list(o.tokens)) == words):
                swaps.append((list(o.tokens), own))
        edit_prompt = _swapped(prompt, tokenizer, swaps)
        if len(swaps) > 1:
            swapped.add(edit_prompt)
        return edit_prompt

    out = []
    for t in program.terms:
        d = D.term_defaults(t.kind, backbone)
        b = BoundTerm(
            term=t,
            label=term_text(t),
            weight=d.weight * t.weight,
            window=(t.window.start, t.window.end) if t.window else d.window,
            placement=t.placement or d.placement,
            every=t.every or d.every,
        )
        if t.kind in LAYOUT_KINDS:
            b.reach = min(1.0, max(0.0, t.weight))  # the dial: 0.5 goes half way; above 1 holds harder
        if getattr(t, "token", None) is not None:
            b.token = where(t.token)
        if getattr(t, "other", None) is not None:
            b.other = where(t.other)
        if t.kind in ("keep_appearance", "keep_shape") and t.token is None:
            skip = restyled | removed if t.kind == "keep_appearance" else moved
            b.objects = [list(o.head) for o in objects if not set(o.tokens) & skip]
            if not b.objects:
                warnings.append(SteerWarning(f"`{b.label}` has nothing to do: the other statements change every object",
                                             t.span, hint="drop it, or keep one object: keep shape(token ...)"))
                continue
        elif t.kind in ("keep_appearance", "keep_shape"):
            b.objects = [b.token]
        elif t.kind == "keep_attention" and moved:
            b.objects = [_held(tokenizer, moved)]
        if t.kind == "direction":  # an unknown name is an error listing the known ones; a bad file, its own error
            found = b.direction = directions.read_direction(directions.find(t, direction_paths), t.span)
            if found.kind == "prompt" and (t.token is not None or t.box is not None):
                raise SteerCompileError(f"`{b.label}` cannot act within a region: {found.name!r} is a prompt direction, "
                                        "a shift of the whole prompt's embedding", t.span,
                                        hint="drop the `within ...`; `keep attention` keeps the other objects where they were")
        weak = D.INEFFECTIVE.get(backbone, {}).get(f"direction:{b.direction.kind}" if t.kind == "direction" else t.kind)
        if weak is not None:
            warnings.append(SteerWarning(weak[0].format(label=b.label, family=backbone), t.span, hint=weak[1]))
        if t.kind == "recolour":
            b.edit_prompt = restyle(t, b.token, t.to)
        elif t.kind == "remove":
            b.edit_prompt = without(prompt, tokenizer, b.token)
        out.append(b)
        if t.kind == "appearance_from":  # the other's describing words too, where the prompt has them
            words = describing_words(prompt, tokenizer, b.other)
            if words and words != describing_words(prompt, tokenizer, b.token):
                out.append(_recolour_for(b, words, restyle(t, b.token, words), backbone))
        if t.kind == "shape_from":  # the other's head word too: "a red circle ..." -> "a red square ..."
            head = head_word(prompt, tokenizer, b.other)
            if head != head_word(prompt, tokenizer, b.token):
                out.append(_recolour_for(b, head, reshaped(prompt, tokenizer, b.token, head), backbone, what="word"))
        if t.kind in ("recolour", "appearance_from", "shape_from") and out[-1].kind == "recolour" and not holds:
            out.append(_hold_for(b, backbone, relocated=bool(phrase_of(b.token) & moved),  # Pix2Pix-Zero's pairing
                                 swap=out[-1].edit_prompt in swapped))
            holds = True
    for x in out:
        if x.kind == "keep_attention" and moved and not x.objects:  # the hold a recolour brought along
            x.objects = [_held(tokenizer, moved)]
    warnings.extend(conflicts(out))
    return out


def _held(tokenizer, moved: set[int]) -> list[int]:
    """The token positions keep attention holds when other statements move objects: all but theirs
    (Pix2Pix-Zero holds every map; one that held the moved object's would hold it in place)."""
    return [i for i in range(tokenizer.model_max_length) if i not in moved]


# What each one-object keep holds, and the statements that change it.
CHANGES = {"keep_shape": LAYOUT_KINDS, "keep_appearance": {"appearance_from", "recolour", "remove"}}


def conflicts(bound: list[BoundTerm]) -> list[SteerWarning]:
    """A keep of one object (keep shape(token ...), keep appearance(token ...)) that holds what
    another statement changes: both run and pull against each other; the warning points at both.
    (The every-object keeps leave changed objects alone, so they never conflict.)"""
    out = []
    for keep in (x for x in bound if x.kind in CHANGES and x.term.token is not None):
        for other in (x for x in bound if x.kind in CHANGES[keep.kind] and x.token and x.swaps != "head"):  # a noun swap keeps the look
            overlap = keep.window[0] < other.window[1] and other.window[0] < keep.window[1]
            if set(keep.token) & set(other.token) and overlap and other.weight != 0 and keep.weight != 0:
                out.append(SteerWarning(
                    f"`{keep.label}` holds what `{other.label}` changes: the two pull against each other", keep.term.span,
                    hint="narrow the keep (a window that ends before the change, or one object), or drop it",
                    notes=[(other.term.span, f"`{other.label}` is here")]))
    return out


def _recolour_for(b: BoundTerm, words: str, edit_prompt: str, backbone: str | None, what: str = "words") -> BoundTerm:
    """The word swap an appearance or shape transfer brings along: the object's describing words
    swapped for the other's ("a red circle and a blue square": circle's "red" for "blue"), as
    `appearance(token "circle") -> "blue"` does, or its head word for the other's (circle's
    "circle" for "square"), at the transfer's weight and position. On the shapes model the
    appearance energy alone took the colour on 0 of 12 (tune split), the shape energy alone the
    shape on 0 of 48 (report split); the words carry them."""
    d = D.term_defaults("recolour", backbone)
    term = P.Recolour(token=b.term.token, to=words, span=b.term.span)
    r = BoundTerm(term=term, label=f"{b.label} (as the {what} {words!r})", weight=d.weight * b.term.weight, window=d.window,
                  placement=d.placement, token=b.token, swaps="head" if what == "word" else "words")
    r.edit_prompt = edit_prompt
    return r


def _swapped(prompt: str, tokenizer, swaps: list[tuple[list[int], str]]) -> str:
    """The prompt with each object's describing words replaced, the later object first so that the
    earlier one's token positions still hold.

    A recolour or an appearance transfer can give the edited object words another object has;
    where the local blend keeps that object as the source's (every change of the script is local,
    and no other statement changes it), it takes the edited object's old words in the edit
    prompt, so "a red circle and a blue square" becomes "a blue circle and a red square", not "a
    blue circle and a blue square". The other object's words there never reach the image (outside the edited
    object's region each step's latent is the source's); what they change is that the edit prompt
    stays a caption of two distinct objects. The shapes model never saw one colour twice in a
    caption, and on such prompts it often drew the edited object in neither colour: tune split, 24
    appearance swaps, colour taken 54% -> 79%, success 50% -> 75%. Dropping the other object's
    phrase from the edit prompt instead ("a blue circle") was worse: tune split, 48 appearance
    swaps, 20 of 48 against 42 (the edit prompt's words no longer sit at the source's token
    positions, where the attention hold reads them). Giving the other object a third colour, one
    neither object has ("a green triangle and a blue square" -> "a blue triangle and a red
    square", not "... and a green square"), was no better: tune split, 48 appearance swaps, 40
    against 42. It fixed four of the six misses, where the old words with the other's shape word
    were drawn over the edited object's place (a green square where the green triangle was), and
    lost six others."""
    for token, words in sorted(swaps, key=lambda s: -min(s[0])):
        prompt = recoloured(prompt, tokenizer, token, words)
    return prompt


def _hold_for(recolour: BoundTerm, backbone: str | None, relocated: bool = False, swap: bool = False) -> BoundTerm:
    """The keep-attention term a recolour brings along, at its own statement's position: the maps
    held where the source has them. Where the script also moves or resizes the recoloured object
    (`relocated`), the hold ends at the relocation step (D.RECOLOUR_HOLD_END_WITH_LAYOUT): after it
    the layout is the moved one, and the source's maps (the padding tokens' too, which carry the
    old layout) pulled the grown object back toward its old size. Where the edit prompt swaps two
    objects' words (`swap`), the hold is D.SWAPPED_HOLD_FACTOR times stronger."""
    hold = P.KeepAttention(span=recolour.term.span)
    d = D.term_defaults("keep_attention", backbone)
    window = (d.window[0], min(d.window[1], D.RECOLOUR_HOLD_END_WITH_LAYOUT)) if relocated else d.window
    weight = d.weight * (D.SWAPPED_HOLD_FACTOR if swap else 1.0)
    return BoundTerm(term=hold, label=f"keep attention (for {recolour.label})", weight=weight, window=window,
                     placement=d.placement)

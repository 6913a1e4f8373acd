"""NoiseCLR directions (Dalva & Yanardag, CVPR 2024, arXiv 2312.05390): one token, one edit.

A direction d is a single learned row of the text encoder's input-embedding table. It conditions
the UNet through the prompt made of just that token, BOS + <d> + EOS + padding (NoiseCLR tokenizes
the string "<tk>"), and edits by adding its noise difference to the guided epsilon
(docs/methods.md, section 5):

    delta_d(z_t) = eps(z_t, d) - eps(z_t, "")
    eps~         = eps_cfg(z_t, c) + sum_k lambda_k delta_{d_k}(z_t)

Within a token (`direction green within token "circle"`) the direction acts on that object
through the prompt instead: its token stands in the object's phrase, in place of the describing
words, and the edit is the difference that makes, inside the object's mask (steer's, not
NoiseCLR's; docs/methods.md, section 5):

    delta_d(z_t) = eps(z_t, "a <d> circle and a blue square") - eps(z_t, "a red circle and a blue square")
    eps~         = eps_cfg(z_t, c) + s * NOISE_PHRASE_SCALE * cfg * mask * delta_d(z_t)

The tokenizer and the embedding table are never changed. The installed transformers'
CLIPTextModel takes no `inputs_embeds`, so the token's row is swapped in by a forward hook on the
input-embedding module, for one call, removed in a `finally`: the placeholder position's output is
replaced by the embedding, which keeps the context differentiable w.r.t. it (training needs that).

SDXL conditions on two text encoders (their penultimate hidden states, concatenated) and on the
second one's pooled projection. NoiseCLR was published on SD 1.5; steer's SDXL direction is one
token in both tables, stored as one vector [row of encoder 1; row of encoder 2], and conditions
the UNet as a prompt of that token would: both hidden states, its pooled embedding, the model's
size ids. Its eps(z_t, "") is the empty prompt's own embedding, as NoiseCLR's is on SD.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch

import dsl
from energies import defaults as D

from ..hooks import forward_hook
from ..regions import local
from .base import DirectionKind, Step

PLACEHOLDER = 1  # the token's position: right after BOS


class Context(NamedTuple):
    """What a prompt conditions the UNet with: hidden states (K, T, D) and, on SDXL, the added
    conditions (text_embeds (K, P), time_ids (K, 6)); {} elsewhere."""

    hidden: torch.Tensor
    added: dict

    def rows(self, n: int) -> "Context":
        """Each of the K rows repeated n times in a row (direction-major batches)."""
        return Context(self.hidden.repeat_interleave(n, 0), {k: v.repeat_interleave(n, 0) for k, v in self.added.items()})

    def batch(self, n: int) -> "Context":
        """A one-row context broadcast to n rows."""
        return Context(self.hidden.expand(n, -1, -1), {k: v.expand(n, -1) for k, v in self.added.items()})

    @staticmethod
    def cat(parts: list["Context"]) -> "Context":
        return Context(torch.cat([c.hidden for c in parts]), {k: torch.cat([c.added[k] for c in parts]) for k in parts[0].added})


def encoders(backbone) -> list[tuple[object, object]]:
    """(tokenizer, text encoder) pairs whose input tables a direction has a row in."""
    pairs = [(backbone.tokenizer, backbone.text_encoder)]
    if backbone.kind == "sdxl":
        pairs.append((backbone.tokenizer_2, backbone.text_encoder_2))
    return pairs


def widths(backbone) -> list[int]:
    """The width of each encoder's input-embedding table: a direction is their concatenation."""
    return [int(enc.get_input_embeddings().weight.shape[1]) for _, enc in encoders(backbone)]


def width(backbone) -> int:
    """W of a direction of this model: its rows in every table, concatenated."""
    return sum(widths(backbone))


def direction_ids(tokenizer) -> list[int]:
    """The ids of the one-token prompt: the tokenizer's own "" (BOS, EOS, padding) with a
    placeholder after BOS. The placeholder is BOS's id: its embedding is replaced anyway, and an
    id below EOS's keeps CLIP's EOS pooling (argmax of the ids, or the first EOS) on the real EOS."""
    empty = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    return [empty[0], empty[0], *empty[1:-1]]


@contextlib.contextmanager
def swapped_token(text_encoder, embeddings: torch.Tensor, position: int = PLACEHOLDER):
    """Inside the block, the text encoder's token embedding at `position` of row b of the batch is
    embeddings[b] (or the one embedding for every row)."""

    def hook(module, inputs, out):
        e = embeddings.to(out.device, out.dtype)
        e = e.expand(out.shape[0], -1) if e.dim() == 1 or e.shape[0] == 1 else e
        return torch.cat([out[:, :position], e[:, None], out[:, position + 1 :]], dim=1)

    with forward_hook(text_encoder.get_input_embeddings(), hook):
        yield


def direction_context(backbone, embedding: torch.Tensor) -> Context:
    """The conditioning of the one-token prompt "<d>": hidden (1, T, D) for an embedding (W,), or
    (K, T, D) for K embeddings (K, W) at once. Differentiable w.r.t. `embedding`; the text
    encoders' weights may stay frozen."""
    return _context(backbone, direction_ids, embedding, PLACEHOLDER)


def _context(backbone, ids_of, embedding: torch.Tensor | None, position: int) -> Context:
    """The conditioning of the token ids `ids_of(tokenizer)` gives for each text encoder, the row at
    `position` being `embedding` (K embeddings: K rows; None: the ids as they are)."""
    emb = None if embedding is None else embedding[None] if embedding.dim() == 1 else embedding
    rows = 1 if emb is None else emb.shape[0]
    parts = [None] * len(encoders(backbone)) if emb is None else emb.split(widths(backbone), dim=-1)
    hidden, pooled = [], None
    for (tok, enc), part in zip(encoders(backbone), parts):
        ids = torch.tensor([ids_of(tok)], device=backbone.device).expand(rows, -1)
        with swapped_token(enc, part, position) if part is not None else contextlib.nullcontext():
            out = enc(ids, output_hidden_states=backbone.kind == "sdxl")
        if backbone.kind != "sdxl":
            return Context(out[0], {})  # last hidden state, as Backbone.encode_prompt conditions on
        hidden.append(out.hidden_states[-2])  # as StableDiffusionXLBackbone._embed_xl
        pooled = out[0]  # the second encoder's pooled projection
    ids = backbone._time_ids().expand(rows, -1)
    return Context(torch.cat(hidden, dim=-1), {"text_embeds": pooled, "time_ids": ids})


def in_phrase(ids: list[int], phrase: list[int], head: list[int], placeholder: int) -> tuple[list[int], int]:
    """The prompt's token ids with the direction's placeholder standing in the object's phrase:
    in place of its describing tokens (the phrase but its head: "a <d> circle and a blue square"
    for "a red circle ..."), or before the head where the phrase is the head alone ("a <d> circle").
    The length stays; the last id (padding, or EOS in a full prompt) stays last.
    -> (ids, the placeholder's position)."""
    describing = sorted(set(phrase) - set(head))
    if describing:
        a, b = describing[0], describing[-1] + 1
        out = ids[:a] + [placeholder] + ids[b:]
        return out + [ids[-1]] * (len(ids) - len(out)), a
    a = min(head)
    out = ids[:a] + [placeholder] + ids[a:]
    return out[: len(ids) - 1] + [ids[-1]], a


def phrase_contexts(backbone, prompt: str, token: list[int], embedding: torch.Tensor) -> tuple[Context, Context]:
    """(the prompt with the direction in the phrase of the word at `token`, the prompt as it is):
    the pair whose noise difference edits that object (`direction NAME within token "..."`).
    Both plain (the prompt's weights are the base prompt's business, not the edit's)."""
    plain = dsl.plain_prompt(prompt)
    phrase = next((o for o in dsl.prompt_objects(plain, backbone.tokenizer) if set(o.tokens) & set(token)), None)
    tokens, head = (list(phrase.tokens), list(phrase.head)) if phrase else (token, token)

    def ids(tok):
        return tok(plain, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids

    def edited(tok):  # the placeholder is BOS's id, as in direction_ids: its row is replaced anyway
        row = ids(tok)
        return in_phrase(row, tokens, head, row[0])[0]

    position = in_phrase(ids(backbone.tokenizer), tokens, head, 0)[1]  # where it goes depends on the phrase alone
    return _context(backbone, edited, embedding, position), _context(backbone, ids, None, 0)


def empty_context(backbone) -> Context:
    """The conditioning of "" (NoiseCLR's unconditional prompt), one row, no graph."""
    with torch.no_grad():
        c = backbone.encode_prompt("")
    return Context(c.cond, dict(c.added))


def noise_direction_eps(backbone, z: torch.Tensor, t: int, ctx_dir: Context, ctx_empty: Context) -> torch.Tensor:
    """eps(z_t, d) - eps(z_t, ""), from one batched forward. z (B, ...); contexts of 1 or B rows."""
    B = z.shape[0]
    both = Context.cat([ctx_dir.batch(B) if ctx_dir.hidden.shape[0] == 1 else ctx_dir,
                        ctx_empty.batch(B) if ctx_empty.hidden.shape[0] == 1 else ctx_empty])
    eps_d, eps_0 = backbone.eps(torch.cat([z, z]), t, both.hidden, both.added).chunk(2)
    return eps_d - eps_0


# ----------------------------------------------------------------------------------------------
# The plug-in: how the editor uses a direction of this kind (directions/base.py)


@dataclass
class NoiseShift:
    context: Context  # the direction's prompt: "<d>" alone, or within a token the prompt with <d> in the object's phrase
    base: Context  # what its noise is compared with: "" (NoiseCLR's), or the prompt as it is
    scale: float  # lambda per unit of weight


class Noise(DirectionKind):
    name = "noise"
    window = D.NOISE_DIRECTION_WINDOW

    def mismatch(self, direction, shapes):
        got, want = int(direction.tensors["embedding"].shape[-1]), shapes.token_width
        if got != want:
            return f"its token embedding has {got} dimensions but this text encoder's has {want}"
        return None

    def prepare(self, term, direction, backbone, settings):
        embedding = direction.tensors["embedding"].to(backbone.device)
        with torch.no_grad():
            if term.term.token is None:
                return NoiseShift(direction_context(backbone, embedding), empty_context(backbone), D.NOISE_DIRECTION_SCALE)
            # Within a token: the direction stands in the object's own words, and the difference
            # it makes there is the edit (docs/methods.md, section 5: the lone "<d>" inside the
            # object's mask mostly says "no object here", and the object faded).
            # Scaled by cfg, which scales what any word of the prompt does to the guided epsilon.
            return NoiseShift(*phrase_contexts(backbone, settings.prompt, term.token, embedding),
                              D.NOISE_PHRASE_SCALE * settings.cfg)

    def guide(self, g, terms, step: Step):
        active = [x for x in terms if x.active(step.progress)]
        if not active:
            return g
        with torch.no_grad():
            shift = sum(x.weight * x.state.scale
                        * local(noise_direction_eps(step.backbone, step.z, step.t, x.state.context, x.state.base),
                                step.regions[id(x)])
                        for x in active)
        return dataclasses.replace(g, eps=shift if g.eps is None else g.eps + shift)

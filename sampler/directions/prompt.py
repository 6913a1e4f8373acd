"""Pix2Pix-Zero edit directions (Parmar et al., SIGGRAPH 2023, arXiv 2302.03027): an edit as a
shift of the prompt's embedding.

The direction is the difference of the mean text embeddings of two sets of sentences, one with the
source concept and one with the target (docs/methods.md, section 3):

    delta_c = mean_i E(target_i) - mean_i E(source_i)        E: the full (T, D) encoder output

and the edit pass conditions on c + s * delta_c (the conditional half only, Pix2Pix-Zero's
`prompt_embeds_edit[1:2] += edit_dir`). On its own that redraws the image as a new prompt would;
what keeps the layout is Pix2Pix-Zero's cross-attention guidance, `keep attention` in a script,
which pulls the edit pass's maps back to the source pass's.

The embedding is positional: row k of delta_c is what the k-th position of a prompt gains. A
small causal text encoder, like the shapes model's, only moves the rows at and after the changed
word, so the sentences should put the word where the scripts' prompts have it (see
`steer learn prompt --help`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from energies import defaults as D

from .base import DirectionKind

def mean_embedding(backbone, sentences: list[str], progress: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mean (T, D) encoder output, mean pooled embedding or None) over the sentences."""
    total, pooled = None, None
    with torch.no_grad():
        for text in tqdm(sentences, desc="embedding", disable=not progress or len(sentences) < 32, leave=False):
            c = backbone.encode_prompt(text)
            total = c.cond[0].float() if total is None else total + c.cond[0].float()
            if "text_embeds" in c.added:  # SDXL's pooled embedding conditions the UNet too
                p = c.added["text_embeds"][0].float()
                pooled = p if pooled is None else pooled + p
    n = len(sentences)
    return total / n, (pooled / n if pooled is not None else None)


def edit_direction(backbone, sources: list[str], targets: list[str], progress: bool = True) -> dict[str, torch.Tensor]:
    """Pix2Pix-Zero's construct_direction: {"delta": (T, D)} (and "pooled" on SDXL), on the CPU."""
    if not sources or not targets:
        raise ValueError("an edit direction needs at least one source and one target sentence")
    src, src_pooled = mean_embedding(backbone, sources, progress)
    dst, dst_pooled = mean_embedding(backbone, targets, progress)
    out = {"delta": (dst - src).cpu()}
    if src_pooled is not None:
        out["pooled"] = (dst_pooled - src_pooled).cpu()
    return out


def prompt_shape(backbone) -> tuple[int, int]:
    """(T, D) of a prompt direction: the encoder hidden states a prompt conditions the UNet with."""
    with torch.no_grad():
        return tuple(backbone.encode_prompt("").cond.shape[-2:])


def shifted(cond, shifts: list[tuple[float, dict[str, torch.Tensor]]]):
    """The Conditioning with its conditional half moved by sum_k s_k * delta_k; the unconditional
    half (and the negative prompt) stays, as in Pix2Pix-Zero."""
    if not shifts:
        return cond
    c = cond.cond + sum(s * d["delta"].to(cond.cond) for s, d in shifts)
    added = dict(cond.added)
    if "text_embeds" in added:
        added["text_embeds"] = added["text_embeds"] + sum(s * d["pooled"].to(added["text_embeds"]) for s, d in shifts if "pooled" in d)
    return dataclasses.replace(cond, cond=c, added=added)


# ----------------------------------------------------------------------------------------------
# The plug-in: how the editor uses a direction of this kind (directions/base.py)


@dataclass
class PromptShift:
    tensors: dict[str, torch.Tensor]  # "delta" (T, D), and "pooled" on SDXL


class Prompt(DirectionKind):
    name = "prompt"
    window = D.PROMPT_DIRECTION_WINDOW

    def mismatch(self, direction, shapes):
        got, want = tuple(direction.tensors["delta"].shape), shapes.prompt
        if got != want:
            return f"its edit direction is {'x'.join(map(str, got))} but this model's prompts are {'x'.join(map(str, want))}"
        return None

    def prepare(self, term, direction, backbone, settings):
        return PromptShift(direction.tensors)  # bind() refused `within` for it: it shifts the whole prompt

    def condition(self, cond, active):
        return shifted(cond, [(x.weight, x.state.tensors) for x in active])

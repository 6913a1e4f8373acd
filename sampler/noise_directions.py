"""NoiseCLR directions (Dalva & Yanardag, CVPR 2024, arXiv 2312.05390): one token, one edit.

A direction d is a single learned row of the text encoder's input-embedding table. It conditions
the UNet through the prompt made of just that token, BOS + <d> + EOS + padding (NoiseCLR tokenizes
the string "<tk>"), and edits by adding its noise difference to the guided epsilon
(reference/methods.md, section 5):

    delta_d(z_t) = eps(z_t, d) - eps(z_t, "")
    eps~         = eps_cfg(z_t, c) + sum_k lambda_k delta_{d_k}(z_t)

The tokenizer and the embedding table are never changed. The installed transformers'
CLIPTextModel takes no `inputs_embeds`, so the token's row is swapped in by a forward hook on the
input-embedding module, for one call, removed in a `finally`: the placeholder position's output is
replaced by the embedding, which keeps the context differentiable w.r.t. it (training needs that).
"""

from __future__ import annotations

import contextlib

import torch

PLACEHOLDER = 1  # the token's position: right after BOS


def _encoder(backbone):
    if backbone.kind == "sdxl":  # two text encoders and a pooled embedding: a direction would be two rows
        raise NotImplementedError("NoiseCLR directions are not supported on SDXL yet (two text encoders); use a shapes or SD 1.x/2.x model")
    return backbone.text_encoder


def direction_ids(backbone) -> list[int]:
    """The ids of the one-token prompt: the tokenizer's own "" (BOS, EOS, padding) with a
    placeholder after BOS. The placeholder is BOS's id: its embedding is replaced anyway, and an
    id below EOS's keeps CLIP's EOS pooling (argmax of the ids, or the first EOS) on the real EOS."""
    empty = backbone.token_ids("")
    return [empty[0], empty[0], *empty[1:-1]]


@contextlib.contextmanager
def swapped_token(text_encoder, embeddings: torch.Tensor, position: int = PLACEHOLDER):
    """Inside the block, the text encoder's token embedding at `position` of row b of the batch is
    embeddings[b] (or the one embedding for every row)."""

    def hook(module, inputs, out):
        e = embeddings.to(out.device, out.dtype)
        e = e.expand(out.shape[0], -1) if e.dim() == 1 or e.shape[0] == 1 else e
        return torch.cat([out[:, :position], e[:, None], out[:, position + 1 :]], dim=1)

    handle = text_encoder.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def direction_context(backbone, embedding: torch.Tensor) -> torch.Tensor:
    """Encoder hidden states of the one-token prompt "<d>": (1, T, D) for an embedding (D,),
    (K, T, D) for K embeddings (K, D) at once. Differentiable w.r.t. `embedding`; the text
    encoder's weights may stay frozen."""
    encoder = _encoder(backbone)
    emb = embedding[None] if embedding.dim() == 1 else embedding
    ids = torch.tensor([direction_ids(backbone)], device=backbone.device).expand(emb.shape[0], -1)
    with swapped_token(encoder, emb):
        return encoder(ids)[0]  # last hidden state, as Backbone.encode_prompt conditions on


def empty_context(backbone) -> torch.Tensor:
    """Hidden states of "" (NoiseCLR's unconditional prompt), (1, T, D), no graph."""
    with torch.no_grad():
        return _encoder(backbone)(torch.tensor([backbone.token_ids("")], device=backbone.device))[0]


def noise_direction_eps(backbone, z: torch.Tensor, t: int, ctx_dir: torch.Tensor, ctx_empty: torch.Tensor) -> torch.Tensor:
    """eps(z_t, d) - eps(z_t, ""), from one batched forward. z (B, ...); contexts (1 or B, T, D).
    An editor that already has eps(z_t, "") from classifier-free guidance (empty negative prompt)
    needs only the eps(z_t, d) half: one extra UNet row per direction."""
    B = z.shape[0]
    ctx = torch.cat([ctx_dir.expand(B, -1, -1), ctx_empty.expand(B, -1, -1)])
    eps_d, eps_0 = backbone.eps(torch.cat([z, z]), t, ctx).chunk(2)
    return eps_d - eps_0

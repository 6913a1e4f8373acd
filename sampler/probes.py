"""Probes: small plug-ins that read features out of a UNet forward, installed and restored around it.

- AttentionProbe is a diffusers attention processor for cross-attention (`attn2`) layers. SDPA
  never materialises the attention probabilities, so this processor computes them explicitly
  (the classic AttnProcessor path) and hands them to a ProbeStore, head-averaged, conditional
  half only. Self-attention layers keep their original (fast) processor.
- JointAttentionProbe does the same for the joint text-image attention of an MMDiT (SD3's
  JointAttnProcessor2_0, FLUX's FluxAttnProcessor): the block's output is the original
  processor's, untouched, and the maps are computed beside it from the same queries and keys.
- Feature hooks are forward hooks on a module (a decoder block, the mid block, a transformer
  block: its image stream, as a grid) that store its output.

`probing(unet, store, ...)` installs exactly the probes asked for and restores the original
processors and removes the hooks in a `finally`, even when the forward raises.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from energies.terms import Features

from .hooks import forward_hook


class ProbeStore:
    """What the probes saw during one forward. Keyed by layer name, so a gradient-checkpoint
    recomputation of a layer overwrites its own entry instead of adding a second one."""

    def __init__(self, latent_hw: tuple[int, int], cond: slice = slice(None), detach: bool = False):
        self.latent_hw = latent_hw
        self.cond = cond  # which batch rows are the conditional half of classifier-free guidance
        self.detach = detach  # source pass: keep values, not the graph
        self.attn: dict[str, torch.Tensor] = {}  # layer -> (B, T, h, w)
        self.features: dict[str, torch.Tensor] = {}  # module -> output

    def _grid(self, n: int) -> tuple[int, int]:
        H, W = self.latent_hw
        f = math.sqrt(H * W / n)
        return round(H / f), round(W / f)

    def record_attention(self, name: str, probs: torch.Tensor, batch: int, heads: int):
        p = probs.view(batch, heads, *probs.shape[1:])[self.cond].mean(1)  # (B, N, T), head-averaged
        h, w = self._grid(p.shape[1])
        p = p.transpose(1, 2).reshape(p.shape[0], p.shape[2], h, w)  # (B, T, h, w)
        self.attn[name] = p.detach() if self.detach else p

    def record_feature(self, name: str, out):
        if isinstance(out, tuple):  # a joint transformer block: (text stream, image stream); the image's, as a grid
            tokens = out[1]
            h, w = self._grid(tokens.shape[1])
            out = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)
        out = out[self.cond]
        self.features[name] = out.detach() if self.detach else out

    def token_maps(self, res: int, names=None) -> torch.Tensor:
        """Every token's map, averaged over the probed layers (those of `names` only, if given) at
        res x res: (B, T, res, res)."""
        probed = [a for n, a in self.attn.items() if names is None or n in names]
        if not probed:
            raise RuntimeError("no attention layer was probed")
        maps = [F.interpolate(a.float(), size=(res, res), mode="bilinear", align_corners=False) for a in probed]
        return torch.stack(maps).mean(0)


class AttentionProbe:
    """A cross-attention processor that also records the attention probabilities."""

    def __init__(self, name: str, store: ProbeStore):
        self.name = name
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch = context.shape[0]
        attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.to_k(context), attn.to_v(context)
        query, key, value = (attn.head_to_batch_dim(x) for x in (query, key, value))
        probs = attn.get_attention_scores(query, key, attention_mask)  # (B * heads, N, T)
        self.store.record_attention(self.name, probs, batch, attn.heads)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def text_attention(attn, hidden_states, encoder_hidden_states, text: slice, rotary=None) -> torch.Tensor:
    """(B, heads, N, T): each image query's attention over the text keys `text`,
    softmax(q k^T / sqrt(d)) taken over those keys only, from the processor's own projections,
    q/k norms and (FLUX) rotary embedding.

    Over the text keys, not over all keys then the text columns: in joint attention the image
    keys (thousands) take most of every query's mass, so the text columns' share would mix "which
    word" with "how much text at all"; normalised over the words, a map is the UNet's
    cross-attention map again (each position's distribution over the prompt's tokens), and it
    costs N x T instead of N x (N + T). Over the mapped tokens only (SD3: the T5's), so that a
    position's maps sum to one over the tokens `token "word"` indexes."""
    head_dim = attn.head_dim if hasattr(attn, "head_dim") else attn.to_q.out_features // attn.heads
    if getattr(attn, "fused_projections", False):
        q = attn.to_qkv(hidden_states).chunk(3, dim=-1)[0]
        k = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)[1]
    else:
        q, k = attn.to_q(hidden_states), attn.add_k_proj(encoder_hidden_states)
    q, k = q.unflatten(-1, (-1, head_dim)), k.unflatten(-1, (-1, head_dim))  # (B, S, heads, d)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_added_k is not None:
        k = attn.norm_added_k(k)
    if rotary is not None:  # FLUX: RoPE over the sequence [text; image]
        from diffusers.models.embeddings import apply_rotary_emb

        n_text = encoder_hidden_states.shape[1]
        q = apply_rotary_emb(q, tuple(r[n_text:] for r in rotary), sequence_dim=1)
        k = apply_rotary_emb(k, tuple(r[:n_text] for r in rotary), sequence_dim=1)
    k = k[:, text]
    scores = torch.einsum("bnhd,bthd->bhnt", q.float(), k.float()) / math.sqrt(head_dim)
    return scores.softmax(-1)


class JointAttentionProbe:
    """A joint-attention processor (MMDiT) that also records the image-to-text attention maps.
    The block's output comes from the original processor, so probing does not change it."""

    def __init__(self, name: str, store: ProbeStore, original, text: slice):
        self.name, self.store, self.original, self.text = name, store, original, text

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        kwargs = {"image_rotary_emb": image_rotary_emb} if image_rotary_emb is not None else {}
        out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        if encoder_hidden_states is not None:
            probs = text_attention(attn, hidden_states, encoder_hidden_states, self.text, image_rotary_emb)
            b, h = probs.shape[:2]
            self.store.record_attention(self.name, probs.reshape(b * h, *probs.shape[2:]), b, h)
        return out


def is_transformer(model) -> bool:
    """An MMDiT (SD3, FLUX, the shapes flow model): joint blocks, no attn2 cross-attention."""
    return hasattr(model, "transformer_blocks") and not hasattr(model, "down_blocks")


def joint_attention_layers(transformer, prefixes=("transformer_blocks",)) -> list[str]:
    """The joint attention modules to probe. Prefixes naming blocks ("transformer_blocks.2"): those
    blocks' (a measured choice: the shapes flow model's in energies/defaults.py). The family's
    prefix alone ("transformer_blocks"): the middle third of its joint (double-stream) blocks, where
    DiT probing studies find the most semantic maps, as the default for models nobody measured
    (on random weights it cannot be measured), and for a model that has none of the named blocks
    (a shallower one trained from the same family). FLUX's single-stream blocks are not probed."""
    names = [n[: -len(".processor")] for n in transformer.attn_processors
             if n.startswith("transformer_blocks.") and n.endswith(".attn.processor")]
    named = [n for n in names if any(n.startswith(p + ".") for p in prefixes if p != "transformer_blocks")]
    if named:
        return named
    if all(p != "transformer_blocks" for p in prefixes):  # the measured blocks of a deeper model: the default here
        prefixes = ("transformer_blocks",)
    names = [n for n in names if any(n.startswith(p) for p in prefixes)]
    k = len(names)
    return names[k // 3: max(k // 3 + 1, (2 * k) // 3)]


def resolve_module(model, name: str) -> str:
    """A module name, with a trailing ".-1" meaning the last of its list (a transformer's last
    joint block, whatever its depth)."""
    if name.endswith(".-1"):
        head = name[:-3]
        return f"{head}.{len(model.get_submodule(head)) - 1}"
    return name


def probe_for(module, name: str, store: ProbeStore, model):
    if is_transformer(model):
        return JointAttentionProbe(name, store, module.processor, getattr(model, "steer_map_tokens", slice(None)))
    return AttentionProbe(name, store)


def cross_attention_layers(unet, prefixes=("",)) -> list[str]:
    """Names of the `attn2` modules under any of the module-name prefixes (a transformer: its
    probed joint attention modules, joint_attention_layers)."""
    if is_transformer(unet):
        return joint_attention_layers(unet, prefixes)
    names = [n[: -len(".processor")] for n in unet.attn_processors if n.endswith("attn2.processor")]
    return [n for n in names if any(n.startswith(p) for p in prefixes)]


@contextlib.contextmanager
def probing(unet, store: ProbeStore, attn_layers=(), feature_modules=()):
    """Install attention probes on `attn_layers` and output hooks on `feature_modules`."""
    originals = {}
    with contextlib.ExitStack() as hooks:
        try:
            for name in attn_layers:
                module = unet.get_submodule(name)
                originals[name] = module.processor
                module.set_processor(probe_for(module, name, store, unet))
            for name in feature_modules:
                hooks.enter_context(forward_hook(unet.get_submodule(name), lambda m, i, o, name=name: store.record_feature(name, o)))
            yield store
        finally:
            for name, proc in originals.items():
                unet.get_submodule(name).set_processor(proc)


class Readout:
    """What the terms of an edit read from a forward: the backbone's attention layers (averaged
    into token maps at map_res), the layers `keep attention` holds one by one (hold_layers: the
    same ones unless the backbone says otherwise) and one decoder block's output (appearance)."""

    def __init__(self, backbone):
        d = backbone.defaults
        self.map_res = d.map_res
        self.attn_layers = cross_attention_layers(backbone.unet, d.attn_layers)
        if not self.attn_layers:
            raise ValueError(f"no cross-attention layer under {d.attn_layers} in this UNet")
        held = getattr(d, "hold_layers", None)
        self.hold_layers = cross_attention_layers(backbone.unet, held) if held else self.attn_layers
        if not self.hold_layers:
            raise ValueError(f"no cross-attention layer under {held} in this UNet")
        self.feature_module = resolve_module(backbone.unet, d.appearance_features)
        backbone.unet.get_submodule(self.feature_module)  # fail early if the layout is not what we expect

    def probed(self, needs) -> list[str]:
        """The attention layers a forward probes for terms that need `needs`: the token maps' for
        "attn" (and "features", pooled under them), the held layers for "layers"."""
        names = (self.attn_layers if needs & {"attn", "features"} else []) + (self.hold_layers if "layers" in needs else [])
        return list(dict.fromkeys(names))

    def features(self, store: ProbeStore, detach: bool = False):
        """The store's contents as the terms' Features (the batch's first conditional row); no
        maps where none of their layers was probed (a source pass recording features only, a
        forward for keep attention alone)."""

        maps = store.token_maps(self.map_res, self.attn_layers)[0] if any(n in store.attn for n in self.attn_layers) else None
        feats = store.features.get(self.feature_module)
        layers = [store.attn[n][0] for n in self.hold_layers if n in store.attn]
        if detach:  # the source pass is kept for many runs: keep it small
            maps, layers = (maps.cpu() if maps is not None else None), [l.cpu() for l in layers]
            feats = feats[0].to("cpu", torch.float16 if feats.numel() > 2**20 else torch.float32) if feats is not None else None
        else:
            feats = feats[0] if feats is not None else None
        return Features(maps=maps.float() if maps is not None else None, layers=layers, features=feats)


class TrajectoryMaps:
    """The token maps of a sampled trajectory at any step, made on demand: one probed conditional
    forward at the recorded z_t of that step, with that step's conditioning. The edit pass keeps
    its latents (cheap) instead of probing every step, so a run that never asks pays nothing."""

    def __init__(self, backbone, readout: Readout, latents: list[torch.Tensor], timesteps: list[int], cond_at):
        self.backbone, self.readout = backbone, readout
        self.latents, self.timesteps, self.cond_at = latents, timesteps, cond_at
        self._made: dict[int, torch.Tensor] = {}

    def __call__(self, i: int) -> torch.Tensor:
        """(T, r, r) at step i, on the CPU."""
        if i not in self._made:
            b = self.backbone
            c = self.cond_at(i)
            store = ProbeStore(b.latent_shape()[1:], detach=True)
            with torch.no_grad(), probing(b.unet, store, self.readout.attn_layers):
                b.eps(self.latents[i], self.timesteps[i], c.cond, c.added)
            self._made[i] = store.token_maps(self.readout.map_res, self.readout.attn_layers)[0].float().cpu()
        return self._made[i]

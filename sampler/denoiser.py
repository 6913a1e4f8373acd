"""The classifier-free-guided epsilon the DDIM loop calls: `denoise(i, t, z, eps_cond, eps_uncond)`.

One place decides how a step's two halves are computed: one batched forward for both, reused
halves (the guided forward already ran the conditional one, or both, at this z_t), a single
forward at cfg 1,
or, in the source pass, a forward whose conditional half is probed and recorded.
"""

from __future__ import annotations

from torch.autograd.profiler import record_function

from energies.terms import Features

from .guided import classifier_free
from .probes import ProbeStore, probing

RECORDABLE = frozenset({"attn", "features"})  # what a source pass can record: token maps, decoder features


def denoiser(backbone, cond, cfg: float, readout=None, record: list | None = None, what=RECORDABLE):
    """CFG's epsilon at step i. `cond` is a Conditioning, or i -> the step's Conditioning (an
    edit pass whose prompt directions shift the prompt in their windows). With `record`, each
    step's conditional features (through `readout`) are appended to it: the attention maps if
    `what` holds "attn", the decoder features if it holds "features"; with neither, the step is
    plain batched sampling (fast attention, no hooks) and an empty Features is appended."""
    b = backbone
    cond_at = cond if callable(cond) else lambda i: cond

    def denoise(i, t, z, eps_cond=None, eps_uncond=None):
        c = cond_at(i)
        if eps_cond is not None:
            eps_c = eps_u = eps_cond  # cfg 1 needs no other half
            if cfg != 1 and eps_uncond is not None:
                eps_u = eps_uncond
            elif cfg != 1:
                with record_function("steer.uncond_forward"):
                    eps_u = b.eps(z, t, c.uncond_at(i), c.added_uncond)
        elif record is not None and what:  # source pass: probe the conditional half of the batch
            eps_u, eps_c, f = recorded_forward(b, readout, z, t, c, i, what)
            record.append(f)
        elif cfg == 1:
            with record_function("steer.plain_forward"):
                eps_u = eps_c = b.eps(z, t, c.cond, c.added)
            if record is not None:
                record.append(Features())
        else:
            with record_function("steer.plain_forward"):
                eps_u, eps_c = b.eps_both(z, t, c, i)
            if record is not None:
                record.append(Features())
        return classifier_free(eps_u, eps_c, cfg)

    return denoise


def recorded_forward(b, readout, z, t, c, i, what=RECORDABLE):
    """(eps_u, eps_c, Features) of one batched CFG forward whose conditional half is probed for
    `what` ("attn": the token maps; "features": the decoder block's output)."""
    store = ProbeStore(b.latent_shape()[1:], cond=slice(1, 2), detach=True)
    attn = readout.probed({"attn", "layers"}) if "attn" in what else []  # the maps and the held layers
    feature_modules = [readout.feature_module] if "features" in what else []
    with record_function("steer.recorded_forward"), probing(b.unet, store, attn, feature_modules):
        eps_u, eps_c = b.eps_both(z, t, c, i)
    return eps_u, eps_c, readout.features(store, detach=True)

"""The classifier-free-guided epsilon the DDIM loop calls: `denoise(i, t, z, eps_cond)`.

One place decides how a step's two halves are computed: one batched forward for both, a reused
conditional half (the guided forward already ran it at this z_t), a single forward at cfg 1,
or, in the source pass, a forward whose conditional half is probed and recorded.
"""

from __future__ import annotations

from .guided import classifier_free
from .probes import ProbeStore, probing


def denoiser(backbone, cond, cfg: float, readout=None, record: list | None = None):
    """CFG's epsilon at step i. `cond` is a Conditioning, or i -> the step's Conditioning (an
    edit pass whose prompt directions shift the prompt in their windows). With `record`, each
    step's conditional features (through `readout`) are appended to it."""
    b = backbone
    hw = b.latent_shape()[1:]
    cond_at = cond if callable(cond) else lambda i: cond

    def denoise(i, t, z, eps_cond=None):
        c = cond_at(i)
        if eps_cond is not None:
            eps_c = eps_cond
            eps_u = b.eps(z, t, c.uncond_at(i), c.added_uncond) if cfg != 1 else eps_c
        elif record is not None:  # source pass: probe the conditional half of the batch
            store = ProbeStore(hw, cond=slice(1, 2), detach=True)
            with probing(b.unet, store, readout.attn_layers, [readout.feature_module]):
                eps_u, eps_c = b.eps_both(z, t, c, i)
            record.append(readout.features(store, detach=True))
        elif cfg == 1:
            eps_u = eps_c = b.eps(z, t, c.cond, c.added)
        else:
            eps_u, eps_c = b.eps_both(z, t, c, i)
        return classifier_free(eps_u, eps_c, cfg)

    return denoise

"""Noise directions (NoiseCLR): eps + lambda (eps(z_t, d) - eps(z_t, "")).

The math is in sampler/noise_directions.py; this plug-in adds each active direction's noise
difference to the step's epsilon, kept inside its region for `within` terms.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from energies import defaults as D

from .. import noise_directions as N
from ..regions import local
from .base import DirectionKind, Step


@dataclass
class NoiseShift:
    context: N.Context  # the one-token prompt of the direction
    empty: N.Context  # the empty prompt


class Noise(DirectionKind):
    name = "noise"
    window = D.NOISE_DIRECTION_WINDOW

    def prepare(self, term, direction, backbone, settings):
        with torch.no_grad():
            return NoiseShift(N.direction_context(backbone, direction.tensors["embedding"].to(backbone.device)),
                              N.empty_context(backbone))

    def guide(self, g, terms, step: Step):
        active = [x for x in terms if x.active(step.progress)]
        if not active:
            return g
        with torch.no_grad():
            shift = sum(x.weight * D.NOISE_DIRECTION_SCALE
                        * local(N.noise_direction_eps(step.backbone, step.z, step.t, x.state.context, x.state.empty),
                                step.regions[id(x)])
                        for x in active)
        return dataclasses.replace(g, eps=shift if g.eps is None else g.eps + shift)

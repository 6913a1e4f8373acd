"""h-space directions (Asyrp's delta-h): the mid block's output shifted, the step asymmetric.

The math is in sampler/hspace.py; this plug-in computes the step's shifted eps (for x0 only) and
switches on Asyrp's quality boosting late in sampling.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from energies import defaults as D

from .. import hspace as H
from ..guided import classifier_free
from ..regions import local
from .base import DirectionKind, Step


@dataclass
class HSpaceShift:
    delta: H.HSpaceDelta
    scale: float  # Asyrp's n_train_step / n_test_step


class HSpace(DirectionKind):
    name = "hspace"
    window = H.EDIT_WINDOW  # Asyrp's t_edit

    def prepare(self, term, direction, backbone, settings):
        train_steps = int(direction.meta.get("train_steps") or settings.steps)
        return HSpaceShift(H.HSpaceDelta.from_direction(direction), H.step_scale(train_steps, settings.steps))

    def guide(self, g, terms, step: Step):
        active = [x for x in terms if x.active(step.progress)]
        if active:  # x0 from the eps of an h-shifted forward; the step's direction keeps the original eps
            z, t = step.z, step.t
            delta = sum(x.weight * x.state.scale * local(x.state.delta.at(t).to(z), step.regions[id(x)]) for x in active)
            with torch.no_grad(), H.shifting(step.backbone.unet, delta):
                eps_u, eps_c = step.backbone.eps_both(z, t, step.cond, step.i)
            g = dataclasses.replace(g, x0_eps=classifier_free(eps_u, eps_c, step.cfg))
        if terms and D.HSPACE_BOOST and step.progress >= H.BOOST_FROM:
            g = dataclasses.replace(g, eta=H.BOOST_ETA)  # Asyrp's quality boosting below t_boost
        return g

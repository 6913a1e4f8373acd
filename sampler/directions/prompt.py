"""Prompt directions (Pix2Pix-Zero's delta_c): the edit pass conditions on c + s * delta_c.

The math is in sampler/prompt_directions.py; this plug-in only says when it acts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from energies import defaults as D

from .. import prompt_directions as PD
from .base import DirectionKind


@dataclass
class PromptShift:
    tensors: dict[str, torch.Tensor]  # "delta" (T, D), and "pooled" on SDXL


class Prompt(DirectionKind):
    name = "prompt"
    window = D.PROMPT_DIRECTION_WINDOW

    def prepare(self, term, direction, backbone, settings):
        return PromptShift(direction.tensors)  # bind() refused `within` for it: it shifts the whole prompt

    def condition(self, cond, active):
        return PD.shifted(cond, [(x.weight, x.state.tensors) for x in active])

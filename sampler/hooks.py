"""One way to read or change a module's output for the length of a block.

Every feature steer reads or shifts inside a model (the mid block's h for Asyrp and DragNoise,
a decoder block's output for appearance, a token's input embedding for NoiseCLR, a ViT's keys) is
a forward hook installed here and removed in a `finally`, so no exception leaves a model changed.
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def forward_hook(module, hook):
    """`hook(module, inputs, output)` runs after every forward of `module` inside the block; what
    it returns (if not None) replaces the output."""
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()

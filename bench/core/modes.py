"""A model's train/eval mode, set for a block of code and given back module by module."""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # torch is imported by whoever hands in a model
    from torch import nn


@contextlib.contextmanager
def eval_mode(model: 'nn.Module') -> Iterator['nn.Module']:
    """Eval mode for the block, then every submodule's own mode back.

    `model.train(was_training)` would give back only the root's mode and set every submodule to it: a submodule the
    caller keeps in another mode (a frozen norm layer in eval, or a train mode leaked by an attack, which a check
    must still see afterwards) would be changed by the block that only meant to look at the model.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training

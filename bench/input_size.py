"""Whether a model can take the data's images at all: an input smaller than the architecture reduces it to nothing
(ConvNeXt's 32x downsampling on Fashion-MNIST's 28x28) is bad input, said in one line with the size it needs,
instead of a traceback from deep inside a convolution.

The probe is a shape-only forward (every parameter, buffer and the input on the meta device: nothing is computed
and no memory is used), so checking costs a fraction of a second.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from bench.core.errors import UserError

LARGEST = 1024  # the largest side the search for a working size tries


def runs_at(model: nn.Module, in_chans: int, side: int) -> bool:
    """Whether a forward of one `in_chans` x `side` x `side` image gets through `model`'s shapes (in eval mode:
    training-mode batch norm also refuses a single value per channel, which is not a size limit)."""
    meta = {n: torch.empty_like(t, device='meta') for n, t in (*model.named_parameters(), *model.named_buffers())}
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            torch.func.functional_call(model, meta, (torch.empty(1, in_chans, side, side, device='meta'),))
        return True
    except (RuntimeError, ValueError):
        return False
    finally:
        for m, training in modes:
            m.train(training)


def min_side(model: nn.Module, in_chans: int, side: int) -> Optional[int]:
    """The smallest side >= `side` at which `model` runs (`side` itself if it does); None when no side up to
    `LARGEST` does, so the failure is not the size."""
    if runs_at(model, in_chans, side):
        return side
    hi = side
    while not runs_at(model, in_chans, hi):
        if hi >= LARGEST:
            return None
        hi = min(2 * hi, LARGEST)
    lo = hi // 2 if hi // 2 > side else side  # lo fails, hi runs
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if runs_at(model, in_chans, mid) else (mid, hi)
    return hi


def check_input_size(model: nn.Module, in_chans: int, side: int, label: str, hint: str) -> None:
    """Raise a one-line UserError when `model` cannot take `side` x `side` images, naming the side it needs.

    Args:
        model: The built model.
        in_chans: Channels of the images.
        side: Their height and width.
        label: The model, as the message names it (e.g. 'convnext_atto').
        hint: How to give larger images with this verb, e.g. '--img-size {need} resizes them inside the model'
            (`{need}` is filled in).
    """
    need = min_side(model, in_chans, side)
    if need is not None and need != side:
        raise UserError(f'{side}x{side} images are too small for {label}: it needs at least {need}x{need} '
                        f'({hint.format(need=need)})')

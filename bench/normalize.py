"""Keep normalisation inside the model, so that every attack works in [0, 1] pixel space."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Normalized(nn.Module):
    """Wrap a model so that it takes images in [0, 1] and normalises them itself.

    Args:
        model: The classifier, expecting normalised input.
        mean: Per-channel mean, as in the model's `pretrained_cfg`.
        std: Per-channel standard deviation.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        # buffers, so that .to(device) moves them, but not persistent: checkpoints hold only `model`
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def normalized(model: nn.Module, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> Normalized:
    """Wrap `model`, taking mean/std from its timm `pretrained_cfg` unless given."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    mean = mean if mean is not None else cfg.get('mean', (0.0,))
    std = std if std is not None else cfg.get('std', (1.0,))
    in_chans = getattr(model, 'in_chans', len(mean))
    if len(mean) != in_chans:
        # a model built with in_chans != 3 keeps the RGB cfg; average it down so shapes agree
        mean = (sum(mean) / len(mean),) * in_chans
        std = (sum(std) / len(std),) * in_chans
    return Normalized(model, mean, std)


def unwrap(model: nn.Module) -> nn.Module:
    """The timm model inside any wrappers (Normalized, DDP, EMA)."""
    while True:
        inner = getattr(model, 'model', None) or getattr(model, 'module', None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner

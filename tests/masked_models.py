"""Models that mask gradients on purpose, for the tests of the evaluation's gradient-masking checks."""
import torch
from torch import nn


class Quantised(nn.Module):
    """Rounding the input to 8 bits: zero input gradient almost everywhere, so only a black box gets through."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * 255) / 255)

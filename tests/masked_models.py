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


class MeanThreshold(nn.Module):
    """Two classes: class 1 iff the image mean exceeds `c`. Its robustness is known in closed form.

    Every pixel moved by -eps lowers the mean by eps / n_pixels, so a point at mean c + m (0 < m < eps) is broken
    exactly by perturbations whose mean is below -m: PGD on the plain model always finds one (the gradient is
    constant), and under `Quantised` the input gradient is exactly zero, so PGD never leaves the clean point while a
    black box (Square) that only compares scores still finds one. No training, so nothing depends on luck.
    """

    def __init__(self, c: float = 0.5, scale: float = 100.0) -> None:
        super().__init__()
        self.c, self.scale = c, scale
        self.w = nn.Parameter(torch.ones(()))  # a parameter, so the model has a device and gradients flow

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z1 = self.scale * self.w * (x.flatten(1).mean(1) - self.c)
        return torch.stack([torch.zeros_like(z1), z1], 1)

    @staticmethod
    def points(n: int, eps: float, c: float = 0.5, side: int = 28):
        """n single-channel images of class 1 at margins 0.1 eps .. 0.4 eps above `c`, on the 8-bit grid."""
        m = torch.linspace(0.1, 0.4, n) * eps
        x = (c + m).view(n, 1, 1, 1).expand(n, 1, side, side)
        return torch.round(x * 255) / 255, torch.ones(n, dtype=torch.long)

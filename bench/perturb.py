"""The inner maximisation of adversarial training: projected sign-gradient ascent in an L-inf ball.

Madry's PGD-AT maximises cross-entropy; TRADES maximises the KL divergence from the clean prediction.
Both are this one loop with a different loss. Evaluation attacks live in `bench.attacks`.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def linf_ascent(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float, step: float,
                steps: int, start: str = 'uniform') -> torch.Tensor:
    """Maximise `loss_fn(x_adv)` over ||x_adv - x||_inf <= eps, x_adv in [0, 1].

    Args:
        loss_fn: Maps a batch of images to a scalar loss to increase.
        x: Clean images in [0, 1].
        eps: Radius of the ball.
        step: Size of each signed-gradient step.
        steps: Number of steps.
        start: 'uniform' (Madry: uniform in the ball), 'gaussian' (TRADES: 0.001 * N(0, 1)) or 'none'.
    """
    x = x.detach()
    if start == 'uniform':
        delta = torch.empty_like(x).uniform_(-eps, eps)
    elif start == 'gaussian':
        delta = 0.001 * torch.randn_like(x)
    else:
        delta = torch.zeros_like(x)
    x_adv = (x + delta).clamp_(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        grad, = torch.autograd.grad(loss_fn(x_adv), x_adv)
        x_adv = x_adv.detach() + step * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0, 1)
    return x_adv.detach()


def madry_examples(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step: float,
                   steps: int, random_start: bool = True) -> torch.Tensor:
    """PGD on the cross-entropy (Madry et al., 2018): the paper's adversarial training examples."""
    return linf_ascent(lambda z: F.cross_entropy(model(z), y), x, eps, step, steps,
                       'uniform' if random_start else 'none')


def trades_examples(model: torch.nn.Module, x: torch.Tensor, eps: float, step: float, steps: int) -> torch.Tensor:
    """PGD on KL(f(x) || f(x_adv)) (Zhang et al., 2019), starting from a tiny Gaussian as TRADES does."""
    with torch.no_grad():
        p_clean = F.softmax(model(x), dim=1)
    return linf_ascent(lambda z: F.kl_div(F.log_softmax(model(z), dim=1), p_clean, reduction='sum'),
                       x, eps, step, steps, 'gaussian')

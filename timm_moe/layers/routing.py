"""Top-k routing over gate logits, and the auxiliary load-balancing losses.

Notation as in DESIGN.md: p = softmax over E per image, p_bar = batch mean of p, H = entropy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict

import torch
import torch.nn.functional as F


@dataclass
class Routing:
    """The outcome of routing one batch.

    Attributes:
        logits: Gate logits (B, E).
        probs: Softmax of the logits (B, E).
        indices: Selected experts per image (B, k), best first.
        weights: Combination weight per selected expert (B, k).
    """
    logits: torch.Tensor
    probs: torch.Tensor
    indices: torch.Tensor
    weights: torch.Tensor


class _StraightThroughOne(torch.autograd.Function):
    """Forward: exactly 1. Backward: the incoming gradient unchanged (as the reference STE)."""

    @staticmethod
    def forward(ctx, p: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.ones_like(p)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


def route(
        logits: torch.Tensor,
        k: int,
        straight_through: bool = True,
        noise_std: float = 0.0,
) -> Routing:
    """Select the top-k experts per image and their combination weights.

    Args:
        logits: Gate logits (B, E).
        k: Experts per image.
        straight_through: For k=1, weight exactly 1.0 forward with the gradient of p in backward.
            Otherwise the selected probabilities are renormalised to sum to 1.
        noise_std: If > 0, select on s/std(s) + N(0, noise_std^2) (the reference's noisy top-k);
            weights still come from the clean probabilities. Callers pass 0 in eval.
    """
    probs = logits.float().softmax(dim=-1)
    select_on = probs
    if noise_std > 0:
        select_on = probs / probs.std().clamp_min(1e-6) + noise_std * torch.randn_like(probs)
    indices = select_on.topk(k, dim=-1, sorted=True).indices
    top_p = probs.gather(1, indices)
    if k == 1 and straight_through:
        weights = _StraightThroughOne.apply(top_p)
    else:
        weights = top_p / top_p.sum(dim=-1, keepdim=True)
    return Routing(logits=logits, probs=probs, indices=indices, weights=weights.to(logits.dtype))


def _entropy(p: torch.Tensor) -> torch.Tensor:
    # xlogy gives 0*log(0) = 0, so a collapsed distribution has a finite entropy and gradient
    return -torch.special.xlogy(p, p).sum(dim=-1)


def switch_loss(r: Routing) -> torch.Tensor:
    """Switch-Transformer balance loss E * sum_i f_i * p_bar_i (1 when perfectly balanced).

    f_i is the (detached) fraction of images whose argmax is expert i. The reference subtracts 1;
    a constant does not change the gradient, so we keep the textbook form.
    """
    num_experts = r.probs.shape[-1]
    f = F.one_hot(r.probs.argmax(dim=-1), num_experts).float().mean(dim=0).detach()
    return num_experts * (f * r.probs.mean(dim=0)).sum()


def entropy_loss(r: Routing) -> torch.Tensor:
    """mean_b H(p_b) - H(p_bar): sharp routing per image, balanced use on average (the paper's best)."""
    return _entropy(r.probs).mean() - _entropy(r.probs.mean(dim=0))


def kl_loss(r: Routing) -> torch.Tensor:
    """KL(p_bar || uniform) = log E - H(p_bar)."""
    return math.log(r.probs.shape[-1]) - _entropy(r.probs.mean(dim=0))


def z_loss(r: Routing) -> torch.Tensor:
    """ST-MoE router z-loss: mean of logsumexp(logits)^2, which keeps the logits small."""
    return torch.logsumexp(r.logits.float(), dim=-1).pow(2).mean()


def no_loss(r: Routing) -> torch.Tensor:
    return r.probs.new_zeros(())


AUX_LOSSES: Dict[str, Callable[[Routing], torch.Tensor]] = {
    'entropy': entropy_loss,
    'switch': switch_loss,
    'kl': kl_loss,
    'z_loss': z_loss,
    'none': no_loss,
}

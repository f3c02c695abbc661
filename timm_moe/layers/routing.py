"""Top-k routing over gate logits, and the auxiliary load-balancing losses.

Notation as in docs/METHOD.md: p = softmax over E per image, p_bar = batch mean of p, H = entropy.
Every function here gives finite values and finite gradients for any finite logits (docs/METHOD.md,
"Saturated gates").
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
        # the reference divides by the std over the whole (B, E) batch of probabilities; a single
        # probability has no std, and a collapsed batch has std 0, hence the guards
        scale = probs.std().clamp_min(1e-6) if probs.numel() > 1 else probs.new_ones(())
        select_on = probs / scale + noise_std * torch.randn_like(probs)
    indices = select_on.topk(k, dim=-1, sorted=True).indices
    top_p = probs.gather(1, indices)
    if k == 1 and straight_through:
        weights = _StraightThroughOne.apply(top_p)
    else:
        weights = top_p / top_p.sum(dim=-1, keepdim=True)
    return Routing(logits=logits, probs=probs, indices=indices, weights=weights.to(logits.dtype))


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) over the last dim, with 0 * log 0 = 0 and a finite gradient at p = 0.

    Once a logit gap passes ~104 the float32 softmax gives p = 0 exactly, and xlogy(p, p) then has a
    NaN gradient (0 * -inf), which poisons every gate gradient. The reference guards with
    log(p + (p == 0) * 1e-5); we take log(1) = 0 at p = 0 instead, through torch.where, so that values
    and gradients are unchanged wherever p > 0 and no gradient flows into the masked branch.
    """
    positive = p > 0
    log_p = torch.where(positive, p, torch.ones_like(p)).log()
    return -(p * log_p).sum(dim=-1)


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

"""Free adversarial training (Shafahi et al., 2019, "Adversarial training for free!"): minibatch replay with a
perturbation carried from each optimizer update to the next, and the trainer's book-keeping for it.

Each minibatch is replayed m times; every replay is one optimizer update on clamp(x + delta, 0, 1), and the same
backward gives delta its gradient, on which delta takes one sign step of the PGD core (`bench.attacks.pgd`).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.distributed as dist

from bench.attacks.pgd import ascent_step, clip_to_ball


class FreePerturbation:
    """Free-AT's perturbation (Shafahi et al., 2019), carried from one optimizer update to the next.

    Each minibatch is replayed m times. Every replay trains on clamp(x + delta, 0, 1), and the same backward
    that gives the weights their gradient gives delta's: delta <- clip_eps(delta + step * sign(d loss / d delta)).
    delta is kept per batch position and is not reset between minibatches, so the next minibatch starts from the
    last replay's perturbation, as in Shafahi et al.'s code and the paper's (`global_noise_data`). It lives in
    the eps-ball around 0; the [0, 1] clamp is applied to each image it is added to, so where the clamp is active
    the gradient, and so the step, is 0.

    Args:
        eps: Radius of the L-inf ball.
        step: Sign-gradient step per replay (Shafahi et al. and the reference: eps).
        reset_prob: Before each replay, each image's perturbation restarts at 0 with this probability (the
            reference's `p_reset_noise`; 0 = never).
    """

    def __init__(self, eps: float, step: float, reset_prob: float = 0.0) -> None:
        self.eps, self.step, self.reset_prob = eps, step, reset_prob
        self.delta: Optional[torch.Tensor] = None  # (local batch, C, H, W), allocated at the first minibatch

    def begin(self, x: torch.Tensor) -> None:
        """Make sure a perturbation of x's shape exists (zeros at the first minibatch, as the reference)."""
        if self.delta is None or self.delta.shape != x.shape:
            self.delta = torch.zeros_like(x)

    def inputs(self, x: torch.Tensor, index: slice) -> Tuple[torch.Tensor, torch.Tensor]:
        """(x_adv, leaf): the images x at batch positions `index`, perturbed and clamped to [0, 1], and the leaf
        perturbation whose `.grad` the update's backward fills. Draws the resets from the caller's RNG."""
        delta = self.delta[index]
        if self.reset_prob > 0:
            delta[torch.rand(len(delta), device=delta.device) < self.reset_prob] = 0
        leaf = delta.detach().clone().requires_grad_(True)
        return (x + leaf).clamp(0, 1), leaf

    @torch.no_grad()
    def ascend(self, leaf: torch.Tensor, index: slice) -> None:
        """One sign step of the core's ascent on the positions `index`, back into the ball. A non-finite gradient
        (a float16 overflow, whose update `GradScaler` skips) leaves those coordinates where they were."""
        grad = torch.nan_to_num(leaf.grad, nan=0.0, posinf=0.0, neginf=0.0)
        self.delta[index] = clip_to_ball(ascent_step(leaf.detach(), grad, self.step), self.eps)

    def state_dict(self) -> Dict[str, Any]:
        return dict(delta=None if self.delta is None else self.delta.detach().cpu())

    def load_state_dict(self, state: Dict[str, Any], device: torch.device) -> None:
        self.delta = None if state.get('delta') is None else state['delta'].to(device)


def from_config(cfg: Any) -> Optional[FreePerturbation]:
    """The run's perturbation for `training: free` (step `free_step`, default eps), else None."""
    if cfg.training != 'free':
        return None
    return FreePerturbation(cfg.eps, cfg.eps if cfg.free_step is None else cfg.free_step, cfg.free_reset_prob)


def replay(update: Callable[[], Dict[str, float]], m: int) -> Dict[str, float]:
    """Run `update` (one optimizer update on the minibatch) m times; the metrics are the means over the replays, as
    the reference logs them, with the idle experts summed and `updates` = m."""
    outs = [update() for _ in range(m)]
    totals = {k: sum(o[k] for o in outs) / m for k in outs[0]}
    totals['idle_experts'] = sum(o['idle_experts'] for o in outs)
    totals['updates'] = m
    return totals


def crossed(every: int, step: int, advanced: int) -> bool:
    """Whether the last `advanced` updates, ending at `step`, passed a multiple of `every` (0 = never): the trainer's
    step logs and checkpoints, which Free-AT's m updates per minibatch can step over."""
    return bool(every) and step // every > (step - advanced) // every


def gather_state(free: FreePerturbation, world_size: int) -> Dict[str, Any]:
    """The perturbation of the whole global batch, for the checkpoint (a collective when world_size > 1).

    Position p of a global batch is on rank p % world_size (`ShardedBatches`), so the checkpoint holds the same
    tensor for any number of processes, and a resumed run continues from it exactly."""
    local = free.delta
    if world_size == 1 or local is None:
        return free.state_dict()
    parts = [torch.empty_like(local) for _ in range(world_size)]
    dist.all_gather(parts, local.contiguous())
    whole = torch.empty((len(local) * world_size,) + tuple(local.shape[1:]), dtype=local.dtype, device=local.device)
    for r, part in enumerate(parts):
        whole[r::world_size] = part
    return dict(delta=whole.cpu())


def load_state(free: FreePerturbation, state: Dict[str, Any], rank: int, world_size: int, device: torch.device) -> None:
    """This rank's positions of a checkpoint's global-batch perturbation (`gather_state`)."""
    whole = state.get('delta')
    free.load_state_dict(dict(delta=None if whole is None else whole[rank::world_size]), device)

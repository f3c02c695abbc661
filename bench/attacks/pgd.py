"""THE projected gradient method: one projection, one step and one ascent loop in an L-inf or L2 ball, in [0, 1]
pixel space. Evaluation's `PGD` attack and the training attacks (`bench.training.adversarial`: Madry's PGD-AT,
TRADES, Fast-AT and Free-AT) are all built on `project`, `clip_to_ball`, `ascent_step`, `input_grad` and `ascend`,
so a fix here reaches both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from bench.attacks.base import check_eps_and_norm, perturbation_norm, predict, settings_of
from bench.core.errors import UserError


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample vector shaped to broadcast over a batch like `like`."""
    return v.view(-1, *[1] * (like.dim() - 1))


def clip_to_ball(delta: torch.Tensor, eps: float, norm: str = 'Linf') -> torch.Tensor:
    """A perturbation moved into the eps-ball around 0 (L-inf: clipped per coordinate; L2: scaled down).

    Free adversarial training carries a perturbation from one minibatch to the next, so its ball is centred at 0
    and the [0, 1] clamp belongs to each image it is added to, not to the perturbation (`project` does both).
    """
    if norm == 'Linf':
        return delta.clamp(-eps, eps)
    return delta * torch.clamp(eps / _per_sample(perturbation_norm(delta, 'L2'), delta).clamp_min(1e-12), max=1.0)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str = 'Linf') -> torch.Tensor:
    """x_adv moved into the eps-ball around x (L-inf: clipped per coordinate; L2: scaled down) and into [0, 1]."""
    if norm == 'Linf':
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
    else:
        x_adv = x + clip_to_ball(x_adv - x, eps, 'L2')
    # clamping to [0, 1] only moves coordinates towards x, so it never leaves the ball
    return x_adv.clamp(0.0, 1.0)


def ascent_step(x_adv: torch.Tensor, grad: torch.Tensor, step_size: float, norm: str = 'Linf') -> torch.Tensor:
    """One steepest-ascent step: the gradient's sign (L-inf) or its direction (L2), times `step_size`."""
    if norm == 'Linf':
        return x_adv + step_size * grad.sign()
    return x_adv + step_size * grad / _per_sample(perturbation_norm(grad, 'L2'), grad).clamp_min(1e-12)


def input_grad(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """d loss_fn(x) / d x for a scalar loss, with autograd on even inside a `no_grad` caller."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        grad, = torch.autograd.grad(loss_fn(x), x)
    return grad


def ascend(grad_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, x_adv: torch.Tensor, eps: float,
           step_size: float, steps: int, norm: str = 'Linf') -> torch.Tensor:
    """`steps` projected ascent steps from `x_adv` in the eps-ball around x; returns the last iterate.

    Args:
        grad_fn: Maps the current iterate to the gradient to ascend (e.g. `input_grad` of a loss).
        x: The clean images, the ball's centre.
        x_adv: The starting point (already in the ball).
        eps: Radius of the ball.
        step_size: Length of each step.
        steps: Number of steps.
        norm: 'Linf' or 'L2'.
    """
    for _ in range(steps):
        x_adv = project(ascent_step(x_adv.detach(), grad_fn(x_adv), step_size, norm), x, eps, norm)
    return x_adv.detach()


@dataclass
class PGD:
    """Projected gradient descent (Madry et al.) in an L-inf or L2 ball, with restarts on robust points only.

    Args:
        eps: Radius of the ball, [0, 1] pixel units.
        norm: 'Linf' (signed-gradient steps) or 'L2' (normalised-gradient steps).
        steps: Gradient steps per restart.
        step_size: Step length; None = eps / 4 (the paper's 2/255 at eps 8/255).
        random_start: Start the first restart at a uniform point of the ball instead of x itself.
        restarts: Runs in total; runs after the first always start at random (else they would repeat the
            first) and attack only the points that no earlier run broke.
        loss: 'ce' (cross-entropy) or 'margin' (max_j z_j - z_y, which does not saturate).
        seed: Seed of the random starts (a private generator: the global RNG is not touched).
        final_iterate: Attack every point, also those misclassified from the start, and return the last
            iterate for every point. For analyses that compare x_adv with x (routing under attack, transfer):
            the default returns x itself for points that start misclassified and the first breaking iterate
            for the others, which are not comparable attempts. Needs restarts = 1.
    """
    white_box = True  # a class attribute, not a dataclass field: not among the settings
    eps: float = 8 / 255
    norm: str = 'Linf'
    steps: int = 20
    step_size: Optional[float] = None
    random_start: bool = False
    restarts: int = 1
    loss: str = 'ce'
    seed: int = 0
    final_iterate: bool = False

    def __post_init__(self) -> None:
        check_eps_and_norm(self.eps, self.norm)
        if self.steps < 0 or self.restarts < 1:
            raise UserError(f'PGD steps={self.steps}, restarts={self.restarts}: need steps >= 0 and restarts >= 1')
        if self.loss not in ('ce', 'margin'):
            raise UserError(f'PGD loss={self.loss!r}: choose ce or margin')
        if self.final_iterate and self.restarts != 1:
            raise UserError(f'PGD final_iterate=True with restarts={self.restarts}: restarts run on robust points '
                            'only, so the last iterates would not be one attempt per point; use restarts=1')
        if self.step_size is None:
            self.step_size = self.eps / 4

    def settings(self, n_cls: Optional[int] = None) -> dict:
        kept = 'last iterate, every point attacked' if self.final_iterate else \
            'first iterate that breaks a point (else the last); points misclassified at the start are not attacked'
        return settings_of(self, 'timm-moe', step_schedule='constant', returns=kept)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.run(model, x, y)[0]

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(x_adv, attacked): the examples, and which points the attack actually ran on (the others are x)."""
        x, y = x.detach(), y.detach()
        x_adv = x.clone()
        gen = torch.Generator(device=x.device).manual_seed(self.seed)
        if self.final_iterate:
            adv, _ = self._single_run(model, x, y, self.random_start, gen, keep_last=True)
            return adv, torch.ones(len(x), dtype=torch.bool, device=x.device)
        robust = predict(model, x) == y
        attacked = robust.clone()
        for r in range(self.restarts):
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            adv, fooled = self._single_run(model, x[idx], y[idx], self.random_start or r > 0, gen)
            # a broken point keeps the iterate that broke it; a robust one the last run's final iterate
            x_adv[idx] = adv
            robust[idx[fooled]] = False
        return x_adv, attacked

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.loss == 'ce':
            return F.cross_entropy(logits, y, reduction='none')
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.scatter(1, y[:, None], float('-inf')).amax(1)
        return other - true

    def _random_delta(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.norm == 'Linf':
            return (torch.rand(x.shape, generator=gen, device=x.device) * 2 - 1) * self.eps
        direction = torch.randn(x.shape, generator=gen, device=x.device)
        direction = direction / _per_sample(perturbation_norm(direction, 'L2'), x).clamp_min(1e-12)
        radius = torch.rand((len(x),) + (1,) * (x.dim() - 1), generator=gen, device=x.device) * self.eps
        return direction * radius

    def _loss_sum(self, model: nn.Module, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda z: self._loss(model(z), y).sum()

    def _single_run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, random_start: bool,
                    gen: torch.Generator, keep_last: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        x_adv = project(x + self._random_delta(x, gen), x, self.eps, self.norm) if random_start else x.clone()
        if keep_last:
            # no book-keeping of breaking iterates: every point simply takes `steps` steps
            loss = self._loss_sum(model, y)
            x_adv = ascend(lambda z: input_grad(loss, z), x, x_adv, self.eps, self.step_size, self.steps, self.norm)
            return x_adv, torch.zeros(len(x), dtype=torch.bool, device=x.device)
        best = x_adv.clone()
        fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                logits = model(x_adv)
                grad, = torch.autograd.grad(self._loss(logits, y).sum(), x_adv)
            with torch.no_grad():
                # the logits of this gradient pass judge the current iterate: no extra forward
                newly = (logits.argmax(1) != y) & ~fooled
                best[newly] = x_adv[newly]
                fooled |= newly
                x_adv = project(ascent_step(x_adv.detach(), grad, self.step_size, self.norm), x, self.eps, self.norm)
        with torch.no_grad():
            newly = (model(x_adv).argmax(1) != y) & ~fooled
            fooled |= newly
            keep_last = ~fooled | newly
            best[keep_last] = x_adv[keep_last]
        return best.detach(), fooled


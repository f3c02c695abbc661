"""The inner maximisation of adversarial training: projected sign-gradient ascent in an L-inf ball.

Madry's PGD-AT maximises cross-entropy; TRADES maximises the KL divergence from the clean prediction; Fast-AT is
Madry's PGD cut to one step of 1.25 eps from the random start. All three are the one projected ascent of
`bench.attacks.pgd` (which evaluation's PGD also runs) with a different loss, start and length; this module holds
only what training adds: those losses and starts, and float16 loss scaling. (Free-AT, which takes one step of
that core per optimizer update on a perturbation it carries along, is `bench.training.free`.)

Under float16 autocast the input gradient passes backwards through float16 activations. Its smallest
positive value is 6e-8, and a mean loss over a batch of 640 confidently classified images has input
gradients far below that: they round to zero, the sign step is zero, and those images are never
attacked. `InputGradScaler` multiplies the loss by a large power of two before the backward, as
`torch.amp.GradScaler` does for weight gradients; the sign step does not depend on the scale.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch
import torch.nn.functional as F

from bench.attacks.pgd import ascend, input_grad


class InputGradScaler:
    """Dynamic loss scaling for an attack's input gradient under float16 autocast.

    The loss is multiplied by `scale` before the backward, and the gradient divided by it. After
    `growth_interval` clean steps in a row the scale doubles again. A gradient with an inf or NaN means
    the scaled backward overflowed float16: that step is recomputed with autocast off (float32), and
    the scale is halved for the next ones. So a step costs at most two backwards, and its gradient is
    never lost to the format.

    Args:
        init_scale: First scale, a power of two (GradScaler's default).
        growth_interval: Clean steps before the scale doubles.
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_interval: int = 100) -> None:
        self.scale = float(init_scale)
        self.growth_interval = growth_interval
        self._clean_steps = 0

    def grad(self, loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """d loss_fn / d x, free of float16 underflow; an overflowing step is redone in float32."""
        g = input_grad(lambda z: loss_fn(z) * self.scale, x)
        if bool(torch.isfinite(g).all()):  # one host sync per attack step, only under float16
            self._clean_steps += 1
            if self._clean_steps >= self.growth_interval:
                self.scale, self._clean_steps = self.scale * 2, 0
            return g / self.scale  # a power of two: exact
        # overflow (or a model that already gives NaN): this step in float32, a smaller scale for the next
        self.scale, self._clean_steps = max(self.scale / 2, 1.0), 0
        with torch.autocast(x.device.type, enabled=False):
            return input_grad(loss_fn, x)

    def state_dict(self) -> Dict[str, Any]:
        return dict(scale=self.scale, clean_steps=self._clean_steps)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.scale, self._clean_steps = float(state['scale']), int(state['clean_steps'])


def linf_ascent(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float, step: float,
                steps: int, start: str = 'uniform', scaler: Optional[InputGradScaler] = None) -> torch.Tensor:
    """Maximise `loss_fn(x_adv)` over ||x_adv - x||_inf <= eps, x_adv in [0, 1].

    Args:
        loss_fn: Maps a batch of images to a scalar loss to increase.
        x: Clean images in [0, 1].
        eps: Radius of the ball.
        step: Size of each signed-gradient step.
        steps: Number of steps.
        start: 'uniform' (Madry: uniform in the ball), 'gaussian' (TRADES: 0.001 * N(0, 1)) or 'none'.
        scaler: Loss scaling for the input gradient; give one when `loss_fn` runs under float16 autocast.
    """
    x = x.detach()
    if start == 'uniform':
        delta = torch.empty_like(x).uniform_(-eps, eps)
    elif start == 'gaussian':
        delta = 0.001 * torch.randn_like(x)
    else:
        delta = torch.zeros_like(x)
    x_adv = (x + delta).clamp_(0, 1)
    grad_fn = scaler.grad if scaler is not None else input_grad
    return ascend(lambda z: grad_fn(loss_fn, z), x, x_adv, eps, step, steps, 'Linf')


def madry_examples(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step: float,
                   steps: int, random_start: bool = True, scaler: Optional[InputGradScaler] = None) -> torch.Tensor:
    """PGD on the cross-entropy (Madry et al., 2018): the paper's adversarial training examples."""
    return linf_ascent(lambda z: F.cross_entropy(model(z), y), x, eps, step, steps,
                       'uniform' if random_start else 'none', scaler)


def trades_examples(model: torch.nn.Module, x: torch.Tensor, eps: float, step: float, steps: int,
                    scaler: Optional[InputGradScaler] = None) -> torch.Tensor:
    """PGD on KL(f(x) || f(x_adv)) (Zhang et al., 2019), starting from a tiny Gaussian as TRADES does."""
    with torch.no_grad():
        p_clean = F.softmax(model(x).float(), dim=1)
    return linf_ascent(lambda z: F.kl_div(F.log_softmax(model(z).float(), dim=1), p_clean, reduction='sum'),
                       x, eps, step, steps, 'gaussian', scaler)


# Wong et al. (2020): alpha = 1.25 eps; much beyond it, FGSM training overfits catastrophically
FAST_STEP_RATIO = 1.25


def fast_examples(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step: Optional[float] = None,
                  scaler: Optional[InputGradScaler] = None) -> torch.Tensor:
    """Fast-AT's examples (Wong et al., 2020, "Fast is better than free"): FGSM from a uniform random start.

    delta ~ U(-eps, eps); delta <- clip_eps(delta + step * sign(grad)); x_adv = clamp(x + delta, 0, 1). That is one
    step of Madry's PGD with a random start, so it is exactly `madry_examples` with steps=1.

    Args:
        model: Maps [0, 1] images to logits.
        x: Clean images in [0, 1].
        y: Labels.
        eps: Radius of the L-inf ball.
        step: The FGSM step; None = 1.25 * eps.
        scaler: Loss scaling for the input gradient under float16 autocast.
    """
    step = FAST_STEP_RATIO * eps if step is None else step
    return madry_examples(model, x, y, eps, step, 1, random_start=True, scaler=scaler)

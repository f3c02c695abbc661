"""Evaluation attacks in [0, 1] pixel space: our PGD, and the reference AutoAttack family through `pyautoattack`.

Every attack is a small object with its settings in `__init__` and `__call__(model, x, y) -> x_adv`. The
model takes [0, 1] images (normalisation lives inside it, `bench.models`) and is put in eval mode by the
caller. Each returned x_adv lies in the eps-ball around x and in [0, 1].

Discipline copied from AutoAttack: restarts run only on points that are still classified correctly, a point
counts as broken as soon as any iterate breaks it, and an ensemble reports the worst case per sample.
APGD-CE, APGD-T, FAB-T, Square and AutoAttack itself are the reference implementation (`pyautoattack`),
wrapped, never re-written. The reference seeds torch's global RNG inside `perturb`; the wrappers fork the
RNG so that an evaluation leaves the caller's random stream untouched.

`settings(n_cls)` of every attack gives its exact, effective settings for a model with `n_cls` classes (target
counts capped, AutoAttack's parts that apply); `reference_warnings()` collects what pyautoattack warns about
(randomised model, probability outputs, zero gradients, Square stronger than the rest, ...), which it would
otherwise only log or `warnings.warn`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from bench.core.errors import UserError
from bench.core.rng import forked_rng

NORMS = ('Linf', 'L2')
# AutoAttack's own sub-attack names, as `version='custom'` takes them
AUTOATTACK_PARTS = ('apgd-ce', 'apgd-dlr', 'apgd-t', 'fab', 'fab-t', 'square')


class Attack(Protocol):
    """What the evaluator needs of an attack."""
    eps: float
    norm: str

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...

    def settings(self, n_cls: Optional[int] = None) -> dict: ...


# ---------------------------------------------------------------------------------------------- helpers

def parse_eps(text: Union[str, float], norm: str = 'Linf') -> float:
    """'8/255' or '0.03' (or a number) -> float; L-inf radii must lie in [0, 1], L2 radii be >= 0.

    Anything else is a UserError naming the value and what is allowed.
    """
    try:
        eps = float(Fraction(text)) if isinstance(text, str) else float(text)
    except (ValueError, ZeroDivisionError):
        raise UserError(f'--eps {text!r} is not a number or a fraction like 8/255') from None
    if norm == 'Linf' and not 0.0 <= eps <= 1.0:
        raise UserError(f'--eps {text!r} = {eps:g} is outside [0, 1]: eps is in [0, 1] pixel units (8/255 = 0.0314)')
    if not eps >= 0.0:  # also catches nan
        raise UserError(f'--eps {text!r} = {eps:g} is negative; an L2 radius must be >= 0 (e.g. 0.5)')
    return eps


def accuracy(correct: torch.Tensor) -> float:
    """Percentage of True in a per-sample correctness vector (exact: a count over n, not a float32 mean)."""
    return 100.0 * int(correct.sum()) / len(correct) if len(correct) else float('nan')


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: Optional[int] = None) -> torch.Tensor:
    """Predicted labels of `x`, batched so that large inputs fit in memory."""
    bs = batch_size or len(x) or 1
    return torch.cat([model(x[i:i + bs]).argmax(1) for i in range(0, len(x), bs)]) if len(x) else \
        torch.zeros(0, dtype=torch.long, device=x.device)


@torch.no_grad()
def num_classes_of(model: nn.Module, x: torch.Tensor) -> int:
    """Number of logits the model outputs (one forward of one image)."""
    return int(model(x[:1]).shape[-1])


def perturbation_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample L-inf or L2 norm of a batch of perturbations."""
    flat = delta.reshape(len(delta), -1)
    return flat.abs().amax(1) if norm == 'Linf' else flat.norm(dim=1)


def _check_common(eps: float, norm: str) -> None:
    if norm not in NORMS:
        raise UserError(f'norm {norm!r} is not supported; choose one of {", ".join(NORMS)}')
    parse_eps(eps, norm)


def _settings(obj: object, implementation: str, **extra: Any) -> dict:
    d = dataclasses.asdict(obj)  # type: ignore[arg-type]
    d.update(attack=type(obj).__name__, implementation=implementation, **extra)
    return d


# ---------------------------------------------------------------------------------------------- reference warnings

# pyautoattack's warnings (pyautoattack/checks.py), by a phrase of their text -> the flag an evaluation raises.
# They go through `warnings.warn` when an attack runs standalone, and through the 'auto-attack' logger inside
# AutoAttack; nothing else in pyautoattack warns (its prints are behind verbose=True, which we never set).
REFERENCE_WARNINGS = {
    'it seems to be a randomized defense': 'randomized_defense',  # 5 forwards of one batch differ
    'output is a probability distribution': 'probability_output',  # softmax outputs instead of logits
    'points with zero gradient': 'zero_gradients',  # the DLR losses' input gradient is 0 for some images
    'Square Attack has decreased the robust accuracy': 'square_stronger',  # black box beat the gradient parts
    'it seems to be a dynamic defense': 'dynamic_defense',  # the forward itself computes gradients
    'not possible to use the DLR loss': 'too_few_classes',
    'not possible to use the targeted DLR loss': 'too_few_classes',
    'more target classes': 'too_many_target_classes',
}
REFERENCE_LOGGER = 'auto-attack'


def reference_warning_flag(message: str) -> str:
    """The flag of one pyautoattack warning: 'pyautoattack_<kind>' ('pyautoattack_other' for unknown text)."""
    kind = next((k for phrase, k in REFERENCE_WARNINGS.items() if phrase in message), 'other')
    return f'pyautoattack_{kind}'


class _ListHandler(logging.Handler):
    def __init__(self, sink: List[str]) -> None:
        super().__init__(level=logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


@contextlib.contextmanager
def reference_warnings() -> Iterator[List[str]]:
    """Collect the warnings pyautoattack raises in the block (both routes) into the yielded list, in order.

    Other code's warnings pass through untouched, so that nothing unrelated is swallowed.
    """
    caught: List[str] = []
    logger = logging.getLogger(REFERENCE_LOGGER)
    handler = _ListHandler(caught)
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as recorded:
            warnings.simplefilter('always')
            yield caught
    finally:
        logger.removeHandler(handler)
    for w in recorded:
        if 'pyautoattack' in (w.filename or ''):
            caught.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _reference_version() -> str:
    import pyautoattack
    return f'pyautoattack {pyautoattack.__version__}'


# APGD's step size as pyautoattack runs it (autopgd_base.APGDAttack.attack_single_run)
APGD_SCHEDULE = ('adaptive: 2*eps at first; halved at checkpoints (the first after 22% of the steps, then closer '
                 'together by 3% of the steps, never under 6%), restarting from the best point, when fewer than rho '
                 'of the steps since the last checkpoint raised the loss or the best loss did not improve; '
                 'momentum 0.75')


def _apgd_effective(n_iter: int, rho: float) -> dict:
    return dict(step_size=APGD_SCHEDULE, first_step_size='2*eps', rho=rho, random_start=True, eot_iter=1,
                checkpoint_first=max(int(0.22 * n_iter), 1))


def _check_classes(name: str, n_cls: int, minimum: int, why: str) -> None:
    if n_cls < minimum:
        raise UserError(f'{name} needs at least {minimum} classes ({why}); the model outputs {n_cls}')


class _Reference:
    """What every wrapper of a `pyautoattack` attack shares: the eps/norm check, its settings, and running
    the reference's `perturb` without gradients and without touching the caller's RNG stream."""

    eps: float
    norm: str

    def __post_init__(self) -> None:
        _check_common(self.eps, self.norm)

    def settings(self, n_cls: Optional[int] = None) -> dict:
        return _settings(self, _reference_version(), **self._effective(n_cls))

    def _effective(self, n_cls: Optional[int]) -> dict:
        """Settings the reference fixes or derives at call time, which the dataclass fields do not show."""
        return {}

    @staticmethod
    def _perturb(atk: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # the reference code reseeds torch's RNG: on a fork, the caller's stream is untouched
        with forked_rng(x.device), torch.no_grad():
            return atk.perturb(x, y).detach()


# ---------------------------------------------------------------------------------------------- PGD (ours)

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
        _check_common(self.eps, self.norm)
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
        return _settings(self, 'timm-moe', step_schedule='constant', returns=kept)

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
        direction = direction / perturbation_norm(direction, 'L2').clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
        radius = torch.rand((len(x),) + (1,) * (x.dim() - 1), generator=gen, device=x.device) * self.eps
        return direction * radius

    def _project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.norm == 'Linf':
            x_adv = torch.min(torch.max(x_adv, x - self.eps), x + self.eps)
        else:
            delta = x_adv - x
            n = perturbation_norm(delta, 'L2').view(-1, *[1] * (x.dim() - 1))
            x_adv = x + delta * torch.clamp(self.eps / n.clamp_min(1e-12), max=1.0)
        # clamping to [0, 1] only moves coordinates towards x, so it never leaves the ball
        return x_adv.clamp(0.0, 1.0)

    def _grad(self, model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            grad, = torch.autograd.grad(self._loss(model(x_adv), y).sum(), x_adv)
        return grad

    def _step(self, x_adv: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        if self.norm == 'Linf':
            return x_adv + self.step_size * grad.sign()
        n = perturbation_norm(grad, 'L2').view(-1, *[1] * (grad.dim() - 1))
        return x_adv + self.step_size * grad / n.clamp_min(1e-12)

    def _single_run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, random_start: bool,
                    gen: torch.Generator, keep_last: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        x_adv = self._project(x + self._random_delta(x, gen), x) if random_start else x.clone()
        if keep_last:
            # no book-keeping of breaking iterates: every point simply takes `steps` steps
            for _ in range(self.steps):
                x_adv = self._project(self._step(x_adv, self._grad(model, x_adv, y)), x)
            return x_adv.detach(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
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
                x_adv = self._project(self._step(x_adv.detach(), grad), x)
        with torch.no_grad():
            newly = (model(x_adv).argmax(1) != y) & ~fooled
            fooled |= newly
            keep_last = ~fooled | newly
            best[keep_last] = x_adv[keep_last]
        return best.detach(), fooled


# ---------------------------------------------------------------------------------------------- reference wrappers

@dataclass
class APGD(_Reference):
    """APGD (Croce & Hein, 2020) with the CE or DLR loss, from `pyautoattack`.

    Args:
        eps: Radius of the ball.
        norm: 'Linf' or 'L2'.
        steps: Iterations (AutoAttack uses 100; the paper's reference ran 20).
        restarts: Random restarts, on robust points only.
        loss: 'ce' or 'dlr' (DLR needs 3 or more classes).
        rho: Step-size halving threshold.
        seed: Seed of the random start.
    """
    eps: float = 8 / 255
    norm: str = 'Linf'
    steps: int = 100
    restarts: int = 1
    loss: str = 'ce'
    rho: float = 0.75
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in ('ce', 'dlr'):
            raise UserError(f'APGD loss={self.loss!r}: choose ce or dlr')

    def _effective(self, n_cls: Optional[int]) -> dict:
        return _apgd_effective(self.steps, self.rho)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from pyautoattack.autopgd_base import APGDAttack
        if self.loss == 'dlr':
            _check_classes('APGD-DLR', num_classes_of(model, x), 3, 'the DLR loss uses the top-3 logits')
        atk = APGDAttack(model, n_iter=self.steps, norm=self.norm, n_restarts=self.restarts, eps=float(self.eps),
                         seed=self.seed, loss=self.loss, rho=self.rho, device=x.device, verbose=False)
        return self._perturb(atk, x, y)


@dataclass
class _Targeted(_Reference):
    """Settings of the targeted attacks, which AutoAttack runs against the 9 highest other classes.

    Args:
        eps: Radius of the ball.
        norm: 'Linf' or 'L2'.
        steps: Iterations per target class.
        restarts: Restarts per target class.
        n_target_classes: Target classes tried (AutoAttack: 9); capped at num_classes - 1 at call time.
        seed: Seed of the random start or restarts.
    """
    eps: float = 8 / 255
    norm: str = 'Linf'
    steps: int = 100
    restarts: int = 1
    n_target_classes: int = 9
    seed: int = 0

    def targets(self, n_cls: Optional[int]) -> Optional[int]:
        """Target classes actually tried for a model with `n_cls` classes (None when unknown)."""
        return None if n_cls is None else max(0, min(self.n_target_classes, n_cls - 1))

    def _effective(self, n_cls: Optional[int]) -> dict:
        return dict(n_target_classes_run=self.targets(n_cls))


@dataclass
class APGDTargeted(_Targeted):
    """APGD-T: APGD on the targeted DLR loss against the top `n_target_classes` other classes, from `pyautoattack`.

    Args: as `_Targeted`.
    """

    def _effective(self, n_cls: Optional[int]) -> dict:
        return dict(super()._effective(n_cls), loss='dlr-targeted', **_apgd_effective(self.steps, 0.75))

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from pyautoattack.autopgd_base import APGDAttack_targeted
        n_cls = num_classes_of(model, x)
        # the targeted DLR loss divides by z_1 - (z_3 + z_4) / 2 of the sorted logits
        _check_classes('APGD-T', n_cls, 4, 'the targeted DLR loss uses the top-4 logits')
        atk = APGDAttack_targeted(model, n_iter=self.steps, norm=self.norm, n_restarts=self.restarts,
                                  eps=float(self.eps), seed=self.seed, device=x.device, verbose=False,
                                  n_target_classes=self.targets(n_cls))
        return self._perturb(atk, x, y)


@dataclass
class FABTargeted(_Targeted):
    """FAB-T: the targeted minimum-norm Fast Adaptive Boundary attack, from `pyautoattack`.

    Only points whose boundary point lies within eps are replaced, so x_adv stays in the ball.

    Args: as `_Targeted`.
    """

    def _effective(self, n_cls: Optional[int]) -> dict:
        # FABAttack_PT's defaults, which the wrapper does not change
        return dict(super()._effective(n_cls), alpha_max=0.1, eta=1.05, beta=0.9, step_size='FAB projection step')

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from pyautoattack.fab_pt import FABAttack_PT
        n_cls = num_classes_of(model, x)
        _check_classes('FAB-T', n_cls, 2, 'it needs a class to target')
        atk = FABAttack_PT(model, norm=self.norm, n_restarts=self.restarts, n_iter=self.steps, eps=float(self.eps),
                           seed=self.seed, targeted=True, device=x.device, verbose=False,
                           n_target_classes=self.targets(n_cls))
        return self._perturb(atk, x, y)


@dataclass
class Square(_Reference):
    """Square Attack: score-based, gradient-free random search, from `pyautoattack` (AutoAttack's settings).

    Args:
        eps: Radius of the ball.
        norm: 'Linf' or 'L2'.
        n_queries: Model queries per image (AutoAttack: 5000).
        p_init: Initial fraction of pixels changed per square.
        restarts: Restarts, on robust points only.
        seed: Seed of the random search.
    """
    eps: float = 8 / 255
    norm: str = 'Linf'
    n_queries: int = 5000
    p_init: float = 0.8
    restarts: int = 1
    seed: int = 0

    def _effective(self, n_cls: Optional[int]) -> dict:
        return dict(loss='margin', resc_schedule=False, step_size='square side from p_init, shrinking by schedule')

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from pyautoattack.square import SquareAttack
        atk = SquareAttack(model, norm=self.norm, n_queries=self.n_queries, eps=float(self.eps), p_init=self.p_init,
                           n_restarts=self.restarts, seed=self.seed, verbose=False, device=x.device,
                           resc_schedule=False)
        # black-box: no graph needed, and Square's own initial forward is not under no_grad
        return self._perturb(atk, x, y)


@dataclass
class AutoAttack(_Reference):
    """AutoAttack (Croce & Hein, 2020) from `pyautoattack`: 'standard', or 'custom' with a list of its parts.

    The standard version is APGD-CE, APGD-T (9 targets), FAB-T (9 targets) and Square (5000 queries), each run
    on the points the previous ones left robust. With fewer than 10 classes the target counts are capped at
    num_classes - 1; with fewer than 4 classes APGD-T is dropped (its loss needs 4 logits), with fewer than 3
    APGD-DLR. `plan(n_cls)` says which parts run and which are dropped, and why; `label(name, n_cls)` is the
    name a result must carry (never plain 'autoattack' when a part was dropped); `settings(n_cls)` reads every
    sub-attack's settings off the configured reference object.

    Args:
        eps: Radius of the ball.
        norm: 'Linf' or 'L2'.
        version: 'standard' or 'custom'.
        parts: For 'custom': a subset of `AUTOATTACK_PARTS`, in the order to run.
        seed: Seed of every sub-attack (AutoAttack seeds from the clock when None; we never do).
    """
    eps: float = 8 / 255
    norm: str = 'Linf'
    version: str = 'standard'
    parts: Tuple[str, ...] = ()
    seed: int = 0
    ran: Tuple[str, ...] = field(default=(), compare=False)

    STANDARD = ('apgd-ce', 'apgd-t', 'fab-t', 'square')

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.version not in ('standard', 'custom'):
            raise UserError(f'AutoAttack version {self.version!r}: choose standard or custom')
        self.parts = tuple(self.parts)
        bad = [p for p in self.parts if p not in AUTOATTACK_PARTS]
        if bad or (self.version == 'custom' and not self.parts):
            raise UserError(f'AutoAttack custom parts {"+".join(self.parts) or "(none)"!r}: choose one or more of '
                            f'{", ".join(AUTOATTACK_PARTS)} joined by +')

    def requested(self) -> Tuple[str, ...]:
        return self.parts if self.version == 'custom' else self.STANDARD

    def plan(self, n_cls: int) -> Tuple[Tuple[str, ...], Dict[str, str]]:
        """(parts that run, {dropped part: why}) for a model with `n_cls` classes."""
        # the targeted DLR loss divides by z_1 - (z_3 + z_4) / 2 of the sorted logits, the untargeted by z_1 - z_3
        why = {'apgd-t': (4, 'the targeted DLR loss needs 4 logits'), 'apgd-dlr': (3, 'the DLR loss needs 3 logits'),
               'fab-t': (2, 'it needs a class to target')}
        dropped = {p: f'{why[p][1]}; the model has {n_cls} classes' for p in self.requested()
                   if p in why and n_cls < why[p][0]}
        return tuple(p for p in self.requested() if p not in dropped), dropped

    def label(self, name: str, n_cls: int) -> str:
        """`name` if every requested part runs, else 'autoattack.<parts that ran>' (AutoAttack's custom version
        with exactly those parts and the standard settings, which is what runs)."""
        ran, dropped = self.plan(n_cls)
        return f'{CUSTOM_PREFIX}{"+".join(ran)}' if dropped else name

    def adversary(self, model: Optional[nn.Module], n_cls: int, device: Union[torch.device, str]):
        """The configured `pyautoattack.AutoAttack` for a model with `n_cls` classes (model None: settings only)."""
        from pyautoattack import AutoAttack as RefAutoAttack
        parts, _ = self.plan(n_cls)
        if not parts:
            raise UserError(f'AutoAttack: none of {"+".join(self.requested())} applies to {n_cls} classes')
        if self.version == 'standard' and parts == self.STANDARD:
            adv = RefAutoAttack(model, eps=float(self.eps), norm=self.norm, seed=self.seed, device=device,
                                version='standard')
        else:
            # the same sub-attack settings as 'standard', for a list that standard cannot express
            adv = RefAutoAttack(model, eps=float(self.eps), norm=self.norm, seed=self.seed, device=device,
                                version='custom', attacks=list(parts))
            adv.apgd.n_restarts = adv.fab.n_restarts = adv.apgd_targeted.n_restarts = 1
        adv.apgd_targeted.n_target_classes = max(0, min(9, n_cls - 1))
        adv.fab.n_target_classes = max(0, min(9, n_cls - 1))
        adv.verbose = False
        self.ran = tuple(parts)
        return adv

    def settings(self, n_cls: Optional[int] = None) -> dict:
        d = _settings(self, _reference_version())
        d.pop('ran')
        d['parts_requested'] = list(self.requested())
        if n_cls is None:
            return d
        ran, dropped = self.plan(n_cls)
        d.update(parts_run=list(ran), parts_dropped=dropped)
        if ran:
            adv = self.adversary(None, n_cls, 'cpu')
            d['parts'] = {p: _part_settings(adv, p) for p in ran}
        return d

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        adv = self.adversary(model, num_classes_of(model, x), x.device)
        with forked_rng(x.device):
            x_adv, _ = adv.run_standard_evaluation(x, y, batch_size=len(x))
        return x_adv.detach()


def _part_settings(adv: Any, part: str) -> dict:
    """One AutoAttack part's settings, read off the configured reference object (what will actually run).

    Mirrors `pyautoattack.AutoAttack.run_standard_evaluation`, which sets the loss per part and forces one
    restart for FAB-T.
    """
    if part in ('apgd-ce', 'apgd-dlr', 'apgd-t'):
        a = adv.apgd_targeted if part == 'apgd-t' else adv.apgd
        d = dict(attack='APGD', loss={'apgd-ce': 'ce', 'apgd-dlr': 'dlr', 'apgd-t': 'dlr-targeted'}[part],
                 steps=a.n_iter, restarts=a.n_restarts, seed=a.seed, eps=a.eps, norm=a.norm,
                 **_apgd_effective(a.n_iter, a.thr_decr))
        d.update(random_start=a.use_rs, eot_iter=a.eot_iter)
        if part == 'apgd-t':
            d['n_target_classes'] = a.n_target_classes
        return d
    if part in ('fab', 'fab-t'):
        f = adv.fab
        return dict(attack='FAB', targeted=part == 'fab-t', steps=f.n_iter,
                    restarts=1 if part == 'fab-t' else f.n_restarts, seed=f.seed, eps=f.eps, norm=f.norm,
                    n_target_classes=f.n_target_classes if part == 'fab-t' else None, alpha_max=f.alpha_max,
                    eta=f.eta, beta=f.beta, step_size='FAB projection step')
    q = adv.square
    return dict(attack='Square', n_queries=q.n_queries, p_init=q.p_init, restarts=q.n_restarts, seed=q.seed,
                eps=q.eps, norm=q.norm, loss=q.loss, resc_schedule=q.rescale_schedule)


# ---------------------------------------------------------------------------------------------- ensemble

def robust_under_all(corrects: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-sample worst case of correctness flags: robust only if every attack left the sample correct."""
    return torch.stack(list(corrects)).all(0)


def worst_case(advs: Sequence[torch.Tensor], corrects: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the worst case over attacks: robust only if every attack left it correct.

    Args:
        advs: Each attack's adversarial batch (same shape).
        corrects: Each attack's per-sample correctness (bool) on its batch.

    Returns:
        (x_adv, correct): for each sample the first attack's example that broke it (the first attack's if
        none did), and the AND of the correctness flags.
    """
    if not advs or len(advs) != len(corrects):
        raise ValueError('worst_case needs one correctness vector per adversarial batch, and at least one')
    x_adv, broken = advs[0].clone(), ~corrects[0]
    for adv, ok in zip(advs[1:], corrects[1:]):
        newly = ~broken & ~ok
        x_adv[newly] = adv[newly]
        broken |= newly
    return x_adv, robust_under_all(corrects)


@dataclass
class EnsembleResult:
    x_adv: torch.Tensor
    correct: torch.Tensor
    per_attack: Dict[str, torch.Tensor]


@dataclass
class Ensemble:
    """Several attacks; a sample is robust only if it survives all of them (the per-sample worst case).

    Args:
        members: Name -> attack, run in order.
        all_points: Run every member on every point (per-member accuracies are then meaningful); False runs
            each member only on the points still robust, as AutoAttack does, which is cheaper and gives
            the same ensemble number.
    """
    members: Dict[str, Attack]
    all_points: bool = True

    @property
    def eps(self) -> float:
        return max(a.eps for a in self.members.values())

    @property
    def norm(self) -> str:
        return next(iter(self.members.values())).norm

    def settings(self) -> dict:
        return dict(attack='Ensemble', all_points=self.all_points,
                    members={k: a.settings() for k, a in self.members.items()})

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> EnsembleResult:
        advs, corrects = [], []
        robust = predict(model, x) == y
        for attack in self.members.values():
            adv = x.clone()
            todo = torch.ones_like(robust) if self.all_points else robust
            if todo.any():
                adv[todo] = attack(model, x[todo], y[todo])
            ok = predict(model, adv) == y
            advs.append(adv)
            corrects.append(ok if self.all_points else ok & robust)
            robust &= ok
        x_adv, correct = worst_case(advs, corrects)
        return EnsembleResult(x_adv, correct, dict(zip(self.members, corrects)))

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.run(model, x, y).x_adv


# ---------------------------------------------------------------------------------------------- names and presets

Builder = Callable[[float, str, int], Attack]

ATTACKS: Dict[str, Builder] = {
    # the paper's PGD-20: step 2/255 at 8/255 (eps / 4), no random start, one restart
    'pgd20': lambda eps, norm, seed: PGD(eps, norm, steps=20, seed=seed),
    'pgd10': lambda eps, norm, seed: PGD(eps, norm, steps=10, seed=seed),
    'apgd-ce': lambda eps, norm, seed: APGD(eps, norm, steps=100, seed=seed),
    'apgd-ce20': lambda eps, norm, seed: APGD(eps, norm, steps=20, seed=seed),
    'apgd-ce10': lambda eps, norm, seed: APGD(eps, norm, steps=10, seed=seed),
    'apgd-dlr': lambda eps, norm, seed: APGD(eps, norm, steps=100, loss='dlr', seed=seed),
    'apgd-t': lambda eps, norm, seed: APGDTargeted(eps, norm, seed=seed),
    'fab-t': lambda eps, norm, seed: FABTargeted(eps, norm, seed=seed),
    'square': lambda eps, norm, seed: Square(eps, norm, seed=seed),
    'autoattack': lambda eps, norm, seed: AutoAttack(eps, norm, seed=seed),
}
PRESETS: Dict[str, Tuple[str, ...]] = {
    'paper': ('pgd20', 'apgd-ce20'),  # the reference's evaluation: PGD-20 and a 20-step APGD
    'standard': ('autoattack',),  # the headline number, comparable with RobustBench
    'quick': ('pgd10', 'apgd-ce10'),  # a CPU smoke test
}
# 'autoattack.apgd-ce+square' = AutoAttack version='custom'; a '.' keeps the name a valid registry key
CUSTOM_PREFIX = 'autoattack.'
# purely gradient-based attacks (AutoAttack is not one: it ends with Square)
WHITE_BOX = ('pgd20', 'pgd10', 'apgd-ce', 'apgd-ce20', 'apgd-ce10', 'apgd-dlr', 'apgd-t', 'fab-t')


def attack_choices() -> str:
    return (f'{", ".join(ATTACKS)}, {CUSTOM_PREFIX}PART+PART (PART in {", ".join(AUTOATTACK_PARTS)}) '
            f'or a preset ({", ".join(PRESETS)})')


def resolve_attacks(spec: Union[str, Sequence[str]]) -> List[str]:
    """Expand a comma list of attack names and presets into attack names, in order, without repeats.

    Args:
        spec: 'pgd20,apgd-ce', 'quick', ['paper', 'square'], ...
    """
    items = [s.strip() for s in (spec.split(',') if isinstance(spec, str) else spec)]
    if not any(items):
        raise UserError(f'--attacks {spec!r} is empty; choose from {attack_choices()}')
    names: List[str] = []
    for item in items:
        if not item:
            continue
        expanded = PRESETS.get(item, (item,))
        for name in expanded:
            if name not in ATTACKS and not name.startswith(CUSTOM_PREFIX):
                raise UserError(f'unknown attack {name!r}; choose from {attack_choices()}')
            if name.startswith(CUSTOM_PREFIX):
                AutoAttack(version='custom', parts=tuple(name[len(CUSTOM_PREFIX):].split('+')))  # validates
            if name not in names:
                names.append(name)
    return names


def build_attack(name: str, eps: float, norm: str = 'Linf', seed: int = 0) -> Attack:
    """The attack called `name` (see `ATTACKS`, or 'autoattack.PART+PART') at radius eps.

    Args:
        name: Attack name.
        eps: Radius, [0, 1] pixel units.
        norm: 'Linf' or 'L2'.
        seed: Seed of its randomness.
    """
    if name.startswith(CUSTOM_PREFIX):
        return AutoAttack(eps, norm, version='custom', parts=tuple(name[len(CUSTOM_PREFIX):].split('+')), seed=seed)
    if name not in ATTACKS:
        raise UserError(f'unknown attack {name!r}; choose from {attack_choices()}')
    return ATTACKS[name](eps, norm, seed)


def is_white_box(name: str) -> bool:
    """Whether the attack is purely gradient-based (AutoAttack is not: its last part is the black-box Square)."""
    return name in WHITE_BOX

"""The reference AutoAttack family through `pyautoattack`, wrapped, never re-written: APGD-CE/DLR, APGD-T,
FAB-T, Square and AutoAttack itself, plus `reference_warnings()`, which collects what pyautoattack warns about
(randomised model, probability outputs, zero gradients, Square stronger than the rest, ...) that it would
otherwise only log or `warnings.warn`.

Discipline copied from AutoAttack: restarts run only on points that are still classified correctly, a point
counts as broken as soon as any iterate breaks it. The reference seeds torch's global RNG inside `perturb`; the
wrappers fork the RNG so that an evaluation leaves the caller's random stream untouched. `settings(n_cls)` of
every attack gives its exact, effective settings for a model with `n_cls` classes (target counts capped,
AutoAttack's parts that apply).
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import torch
from torch import nn

from bench.attacks.base import check_eps_and_norm, num_classes_of, settings_of
from bench.attacks.names import CUSTOM_PREFIX, check_custom_parts
from bench.core.errors import UserError
from bench.core.rng import forked_rng

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
        check_eps_and_norm(self.eps, self.norm)

    def settings(self, n_cls: Optional[int] = None) -> dict:
        return settings_of(self, _reference_version(), **self._effective(n_cls))

    def _effective(self, n_cls: Optional[int]) -> dict:
        """Settings the reference fixes or derives at call time, which the dataclass fields do not show."""
        return {}

    @staticmethod
    def _perturb(atk: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # the reference code reseeds torch's RNG: on a fork, the caller's stream is untouched
        with forked_rng(x.device), torch.no_grad():
            return atk.perturb(x, y).detach()


# ---------------------------------------------------------------------------------------------- PGD (ours)

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
    white_box = True  # a class attribute, not a dataclass field: not among the settings
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
    white_box = True  # APGD-T and FAB-T: gradient-based
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
    white_box = False  # score-based: the model's outputs only
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
    white_box = False  # its standard version ends with the black-box Square
    eps: float = 8 / 255
    norm: str = 'Linf'
    version: str = 'standard'
    parts: Tuple[str, ...] = ()
    seed: int = 0
    ran: Tuple[str, ...] = field(default=(), compare=False)

    STANDARD = ('apgd-ce', 'apgd-t', 'fab-t', 'square')

    def __post_init__(self) -> None:
        super().__post_init__()
        self.parts = check_custom_parts(self.parts, self.version)

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
        d = settings_of(self, _reference_version())
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



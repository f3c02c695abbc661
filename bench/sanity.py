"""Gradient-masking and sanity checks that run with every evaluation (Carlini et al. 2019; Croce & Hein 2020).

Each check returns {'passed': True | False | None, 'detail': str}. None means the check cannot apply to this
evaluation, and `detail` says why: no check is skipped silently. Checks that need extra attacks run a cheap
PGD or Square on the first `n_check` examples only, so that they stay affordable beside AutoAttack.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.attacks import PGD, Square, accuracy, is_white_box, predict, robust_under_all

Check = Dict[str, object]
# relative size of the logit change between two identical forwards that still counts as deterministic
DETERMINISM_RTOL = 1e-5
# how far (points) the cheap PGD's accuracy may rise with eps before it is flagged, beyond one example
MONOTONE_TOL = 1.0
# a large eps must bring accuracy to within this many points of chance (100 / num_classes)
CHANCE_TOL = 10.0
# APGD-CE may not be weaker than PGD by more than this many points (the reference's symptom)
APGD_PGD_TOL = 0.5
# Square (black-box) may not beat the white-box attacks by more than this many points, beyond one example
SQUARE_TOL = 1.0
# cheap attacks of the checks
CHEAP_PGD_STEPS = 10
CHEAP_SQUARE_QUERIES = 100


def _check(passed: Optional[bool], detail: str) -> Check:
    return {'passed': passed, 'detail': detail}


def _batched(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
             batch_size: int) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def _pgd_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, seed: int,
                 batch_size: int) -> torch.Tensor:
    pgd = PGD(eps, norm, steps=CHEAP_PGD_STEPS, seed=seed)
    return _batched(lambda xb, yb: predict(model, pgd(model, xb, yb)) == yb, x, y, batch_size)


def check_deterministic(model: nn.Module, x: torch.Tensor) -> Check:
    """Two eval-mode forwards of the same batch give the same logits (randomised defences need EOT)."""
    if model.training:
        return _check(False, 'the model is in train mode; evaluate it in eval mode')
    with torch.no_grad():
        a, b = model(x), model(x)
    diff = (a - b).abs().max().item()
    scale = a.abs().max().item() or 1.0
    ok = diff <= DETERMINISM_RTOL * scale
    return _check(ok, f'max |logit difference| between two forwards = {diff:.3g} (logit scale {scale:.3g})')


def check_logits(model: nn.Module, x: torch.Tensor) -> Check:
    """The model outputs logits, not probabilities (softmax outputs flatten the CE gradient)."""
    with torch.no_grad():
        out = model(x)
    probs = bool(out.min() > -1e-5 and out.max() < 1 + 1e-5 and ((out.sum(-1) - 1).abs() < 1e-5).all())
    return _check(not probs, 'outputs look like probabilities (in [0, 1], rows sum to 1): give the attacks logits'
                  if probs else 'outputs are unnormalised logits')


def check_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Check:
    """Input gradients of the margin loss are non-zero for every image.

    The margin (max_j z_j - z_y) does not saturate the way cross-entropy does on confident points, so a zero
    gradient means the network is flat in its input: quantisation, a step function, or a detached path.
    """
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.scatter(1, y[:, None], float('-inf')).amax(1)
        grad_margin, = torch.autograd.grad((other - true).sum(), x, retain_graph=True)
        grad_ce, = torch.autograd.grad(F.cross_entropy(logits, y, reduction='sum'), x)
    zero_margin = (grad_margin.reshape(len(x), -1).abs().sum(1) == 0)
    zero_ce = (grad_ce.reshape(len(x), -1).abs().sum(1) == 0)
    n_zero = int(zero_margin.sum())
    return _check(n_zero == 0, f'{n_zero}/{len(x)} images have an all-zero margin-loss input gradient '
                               f'({int(zero_ce.sum())} with the cross-entropy)')


def check_eps_zero(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, seed: int,
                   batch_size: int) -> Check:
    """PGD at eps = 0 reproduces the clean accuracy exactly."""
    clean = predict(model, x, batch_size) == y
    at_zero = _pgd_correct(model, x, y, 0.0, norm, seed, batch_size)
    ok = bool((clean == at_zero).all())
    return _check(ok, f'clean {accuracy(clean):.2f}% vs PGD at eps=0 {accuracy(at_zero):.2f}% '
                      f'({int((clean != at_zero).sum())} images differ) on {len(x)} images')


def check_monotone(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, seed: int,
                   batch_size: int) -> Check:
    """Robust accuracy of a cheap PGD does not increase with eps (0, eps/2, eps, 2 eps)."""
    if eps <= 0:
        return _check(None, 'eps = 0: there is no range of eps to compare')
    epss = [0.0, eps / 2, eps, min(2 * eps, 1.0) if norm == 'Linf' else 2 * eps]
    accs = [accuracy(_pgd_correct(model, x, y, e, norm, seed, batch_size)) for e in epss]
    tol = max(MONOTONE_TOL, 100.0 / len(x))
    rises = [(epss[i], epss[i + 1]) for i in range(len(accs) - 1) if accs[i + 1] > accs[i] + tol]
    curve = ', '.join(f'{e:.4g}: {a:.2f}%' for e, a in zip(epss, accs))
    return _check(not rises, f'PGD-{CHEAP_PGD_STEPS} accuracy by eps: {curve}' +
                  (f'; rises between {rises}' if rises else ''))


def large_eps(norm: str, input_shape: Sequence[int]) -> float:
    """An eps that lets an attack reach (almost) any image: half the L-inf range, or its L2 equivalent."""
    return 0.5 if norm == 'Linf' else 0.5 * math.sqrt(math.prod(input_shape))


def check_large_eps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, num_classes: int, seed: int,
                    batch_size: int) -> Check:
    """A very large eps drives accuracy to about chance or below; if not, the attack cannot follow the model."""
    big = large_eps(norm, x.shape[1:])
    acc = accuracy(_pgd_correct(model, x, y, big, norm, seed, batch_size))
    chance = 100.0 / num_classes
    return _check(acc <= chance + CHANCE_TOL, f'PGD-{CHEAP_PGD_STEPS} at eps={big:.4g}: {acc:.2f}% '
                                              f'(chance {chance:.2f}%, allowed up to {chance + CHANCE_TOL:.2f}%)')


def check_ensemble(attack_correct: Mapping[str, torch.Tensor], ensemble_correct: torch.Tensor) -> Check:
    """Per sample, the ensemble is never weaker than any member: robust under the ensemble implies robust under each."""
    if not attack_correct:
        return _check(None, 'no attack ran')
    bad = {k: int((ensemble_correct & ~c).sum()) for k, c in attack_correct.items()}
    worse = {k: v for k, v in bad.items() if v}
    members = ', '.join(f'{k} {accuracy(c):.2f}%' for k, c in attack_correct.items())
    return _check(not worse, f'ensemble {accuracy(ensemble_correct):.2f}% vs {members}' +
                  (f'; images robust under the ensemble but broken by a member: {worse}' if worse else ''))


def check_apgd_vs_pgd(attack_correct: Mapping[str, torch.Tensor]) -> Check:
    """APGD-CE is not weaker than PGD (the reference's APGD often was, which points to a weak evaluation)."""
    apgd = [k for k in attack_correct if k.startswith('apgd-ce')]
    pgd = [k for k in attack_correct if k.startswith('pgd')]
    if not apgd or not pgd:
        return _check(None, 'needs both an APGD-CE and a PGD attack in --attacks (e.g. the paper preset)')
    pairs = [(a, p, accuracy(attack_correct[a]), accuracy(attack_correct[p])) for a in apgd for p in pgd]
    weaker = [f'{a} {aa:.2f}% > {p} {pa:.2f}%' for a, p, aa, pa in pairs if aa > pa + APGD_PGD_TOL]
    return _check(not weaker, '; '.join(weaker) if weaker else
                  ', '.join(f'{a} {aa:.2f}% <= {p} {pa:.2f}% + {APGD_PGD_TOL}' for a, p, aa, pa in pairs))


def check_square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, seed: int,
                 batch_size: int, attack_correct: Mapping[str, torch.Tensor]) -> Check:
    """Black-box Square is not much stronger than the white-box attacks: if it is, gradients are misleading.

    Uses the evaluation's own Square if it ran, else a cheap one; compares with the white-box attacks that
    ran (a cheap PGD if none did), on the same first `len(x)` examples.
    """
    if eps <= 0:
        return _check(None, 'eps = 0: no attack can change a prediction')
    n = len(x)
    if 'square' in attack_correct:
        square, how = attack_correct['square'][:n], 'Square (5000 queries)'
    else:
        sq = Square(eps, norm, n_queries=CHEAP_SQUARE_QUERIES, seed=seed)
        square = _batched(lambda xb, yb: predict(model, sq(model, xb, yb)) == yb, x, y, batch_size)
        how = f'cheap Square ({CHEAP_SQUARE_QUERIES} queries)'
    white = [k for k in attack_correct if is_white_box(k)]
    if white:
        wb = robust_under_all([attack_correct[k][:n] for k in white])
        wb_how = '+'.join(white)
    else:
        wb, wb_how = _pgd_correct(model, x, y, eps, norm, seed, batch_size), f'cheap PGD-{CHEAP_PGD_STEPS}'
    tol = max(SQUARE_TOL, 100.0 / n)
    sq_acc, wb_acc = accuracy(square), accuracy(wb)
    only_square = int((~square & wb).sum())
    return _check(sq_acc >= wb_acc - tol, f'{how} {sq_acc:.2f}% vs white-box {wb_how} {wb_acc:.2f}% on {n} images; '
                                          f'{only_square} broken by Square only')


def run_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, num_classes: int,
               attack_correct: Mapping[str, torch.Tensor], ensemble_correct: torch.Tensor, seed: int = 0,
               batch_size: int = 128, n_check: int = 100) -> Dict[str, Check]:
    """Every check, in a fixed order. Per-sample results must be aligned with `x`.

    Args:
        model: The evaluated model, in eval mode, taking [0, 1] images.
        x: Evaluation images (on the model's device).
        y: Their labels.
        eps: The evaluation's radius.
        norm: 'Linf' or 'L2'.
        num_classes: Number of classes (for chance level).
        attack_correct: Attack name -> per-sample correctness (bool, on x's device or CPU).
        ensemble_correct: Per-sample correctness under the ensemble.
        seed: Seed of the cheap attacks.
        batch_size: Batch size of the cheap attacks.
        n_check: Examples used by the checks that run extra attacks.
    """
    device = x.device
    attack_correct = {k: v.to(device) for k, v in attack_correct.items()}
    xs, ys = x[:n_check], y[:n_check]
    xb, yb = x[:min(len(x), batch_size)], y[:min(len(x), batch_size)]
    return {
        'deterministic': check_deterministic(model, xb),
        'logits': check_logits(model, xb),
        'nonzero_gradients': check_gradients(model, xb, yb),
        'eps_zero_is_clean': check_eps_zero(model, xs, ys, norm, seed, batch_size),
        'monotone_in_eps': check_monotone(model, xs, ys, eps, norm, seed, batch_size),
        'large_eps_to_chance': check_large_eps(model, xs, ys, norm, num_classes, seed, batch_size),
        'ensemble_not_weaker': check_ensemble(attack_correct, ensemble_correct.to(device)),
        'apgd_not_weaker_than_pgd': check_apgd_vs_pgd(attack_correct),
        'square_not_stronger': check_square(model, xs, ys, eps, norm, seed, batch_size,
                                            {k: v[:n_check] for k, v in attack_correct.items()}),
    }


def failed(checks: Mapping[str, Check]) -> List[str]:
    """Names of the checks that failed (None = not applicable does not count)."""
    return [k for k, c in checks.items() if c['passed'] is False]


def print_checks(checks: Mapping[str, Check], console=None) -> None:
    """The checks as a rich table: PASS / FAIL / n/a with the detail."""
    from rich.console import Console
    from rich.table import Table
    table = Table(title='Sanity and gradient-masking checks')
    table.add_column('check')
    table.add_column('result')
    table.add_column('detail', overflow='fold')
    for name, c in checks.items():
        mark = {True: '[green]PASS', False: '[bold red]FAIL', None: '[yellow]n/a'}[c['passed']]
        table.add_row(name, mark, str(c['detail']))
    (console or Console()).print(table)

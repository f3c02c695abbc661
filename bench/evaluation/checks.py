"""Gradient-masking and sanity checks that run with every evaluation (Carlini et al. 2019; Croce & Hein 2020).

Each check returns {'passed': True | False | None, 'detail': str}. None means the check cannot apply to this
evaluation, and `detail` says why: no check is skipped silently. Checks that need extra attacks run them on the
first `n_check` examples only, so that they stay affordable beside AutoAttack. docs/EVALUATION.md lists every
check with its rule, its tolerance and how it can fail.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from bench.attacks import (PGD, Attack, Square, accuracy, build_attack, is_white_box, perturbation_norm, predict,
                           reference_warnings, robust_under_all)
from bench.core.modes import eval_mode
from bench.core.stats import mcnemar_exact

Check = Dict[str, object]
Builder = Callable[[str, float, str, int], Attack]
# called once per unit of a check's work (one batch of one attack), with what it just did: the stage's progress
Tick = Callable[[str], None]


def _no_tick(_: str) -> None:
    pass


# relative size of the logit change between two identical forwards that still counts as deterministic
DETERMINISM_RTOL = 1e-5
# an example counts as inside the eps-ball (and the [0, 1] box) up to this float32 rounding slack
BALL_ATOL = 1e-5
# how far (points) the cheap PGD's accuracy may rise with eps before it is flagged, beyond one example
MONOTONE_TOL = 1.0
# a large eps must bring accuracy to within this many points of chance (100 / num_classes)
CHANCE_TOL = 10.0
# APGD-CE is flagged as weaker than the matched PGD when the one-sided exact McNemar test rejects "as strong"
# at this level (false alarm rate of the check on an APGD that is exactly as strong as PGD)
APGD_PGD_ALPHA = 0.01
# Square (black-box) may not beat the white-box attacks by more than this many points, beyond one example
SQUARE_TOL = 1.0
# cheap attacks of the checks
CHEAP_PGD_STEPS = 10
CHEAP_SQUARE_QUERIES = 100


@dataclass
class AttackRecord:
    """What an evaluation's attack left behind, for the checks.

    Args:
        name: The name `build_attack` takes (the attack can be rebuilt at another eps from it).
        settings: Its exact settings (`attack.settings(n_cls)`).
        correct: Per-sample correctness under the attack (bool, aligned with the evaluation's x).
        examples: Per sample, the example that broke it: the attack's x_adv where that is misclassified, x
            where the point was misclassified already; anything for the robust points. None if not kept.
    """
    name: str
    settings: dict
    correct: torch.Tensor
    examples: Optional[torch.Tensor] = None


def _check(passed: Optional[bool], detail: str) -> Check:
    return {'passed': passed, 'detail': detail}


def _batched(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
             batch_size: int, tick: Tick = _no_tick, what: str = '') -> torch.Tensor:
    """fn over x and y in batches; `tick(what)` after each batch, so that a long check shows where it is."""
    out = []
    for i in range(0, len(x), batch_size):
        out.append(fn(x[i:i + batch_size], y[i:i + batch_size]))
        tick(what)
    return torch.cat(out)


def _n_batches(n: int, batch_size: int) -> int:
    return max(1, -(-n // batch_size))


def _pgd_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, seed: int,
                 batch_size: int, tick: Tick = _no_tick) -> torch.Tensor:
    pgd = PGD(eps, norm, steps=CHEAP_PGD_STEPS, seed=seed)
    return _batched(lambda xb, yb: predict(model, pgd(model, xb, yb)) == yb, x, y, batch_size, tick,
                    f'PGD-{CHEAP_PGD_STEPS} at eps {eps:.4g}')


def in_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Per sample: x_adv lies in the eps-ball around x and in [0, 1], up to `BALL_ATOL`."""
    flat = x_adv.reshape(len(x_adv), -1)
    return ((perturbation_norm(x_adv - x, norm) <= eps + BALL_ATOL) & (flat.amin(1) >= -BALL_ATOL)
            & (flat.amax(1) <= 1 + BALL_ATOL))


# ---------------------------------------------------------------------------------------------- model checks

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


# ---------------------------------------------------------------------------------------------- attack checks

def check_eps_zero(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Mapping[str, str], norm: str,
                   seed: int, batch_size: int, build: Builder = build_attack, tick: Tick = _no_tick) -> Check:
    """Every attack of the evaluation, rebuilt at eps = 0, leaves every prediction as it is on clean input.

    At eps 0 the only point in the ball is x, so any change of a prediction (or any movement of x) means the
    attack does not honour its eps: it would inflate its success at the real eps too.

    Args:
        attacks: Label -> name of the evaluation's attacks (the name is rebuilt with `build` at eps 0).
        build: The evaluation's attack factory, (name, eps, norm, seed) -> attack.
    """
    if not attacks:
        return _check(None, 'no attack ran')
    clean = predict(model, x, batch_size) == y
    bad, parts = [], []
    for label, name in attacks.items():
        attack = build(name, 0.0, norm, seed)
        with reference_warnings():  # pyautoattack's warnings about eps 0 runs are not the evaluation's
            adv = _batched(lambda xb, yb: attack(model, xb, yb), x, y, batch_size, tick, f'{label} at eps 0')
        ok = predict(model, adv, batch_size) == y
        differ = int((ok != clean).sum())
        moved = perturbation_norm(adv - x, norm).max().item() if len(x) else 0.0
        if differ or moved > BALL_ATOL:
            bad.append(label)
        parts.append(f'{label} {accuracy(ok):.2f}% ({differ} predictions differ, moved up to {moved:.3g})')
    return _check(not bad, f'clean {accuracy(clean):.2f}% on {len(x)} images; at eps=0: ' + '; '.join(parts) +
                  (f'; FAILED: {", ".join(bad)} do not honour eps' if bad else ''))


def check_monotone(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, seed: int,
                   batch_size: int, tick: Tick = _no_tick) -> Check:
    """Robust accuracy of a cheap PGD does not increase with eps (0, eps/2, eps, 2 eps)."""
    if eps <= 0:
        return _check(None, 'eps = 0: there is no range of eps to compare')
    epss = [0.0, eps / 2, eps, min(2 * eps, 1.0) if norm == 'Linf' else 2 * eps]
    accs = [accuracy(_pgd_correct(model, x, y, e, norm, seed, batch_size, tick)) for e in epss]
    tol = max(MONOTONE_TOL, 100.0 / len(x))
    rises = [(epss[i], epss[i + 1]) for i in range(len(accs) - 1) if accs[i + 1] > accs[i] + tol]
    curve = ', '.join(f'{e:.4g}: {a:.2f}%' for e, a in zip(epss, accs))
    return _check(not rises, f'PGD-{CHEAP_PGD_STEPS} accuracy by eps: {curve}' +
                  (f'; rises between {rises}' if rises else ''))


def large_eps(norm: str, input_shape: Sequence[int]) -> float:
    """An eps that lets an attack reach (almost) any image: half the L-inf range, or its L2 equivalent."""
    return 0.5 if norm == 'Linf' else 0.5 * math.sqrt(math.prod(input_shape))


def check_large_eps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, num_classes: int, seed: int,
                    batch_size: int, tick: Tick = _no_tick) -> Check:
    """A very large eps drives accuracy to about chance or below; if not, the attack cannot follow the model."""
    big = large_eps(norm, x.shape[1:])
    acc = accuracy(_pgd_correct(model, x, y, big, norm, seed, batch_size, tick))
    chance = 100.0 / num_classes
    return _check(acc <= chance + CHANCE_TOL, f'PGD-{CHEAP_PGD_STEPS} at eps={big:.4g}: {acc:.2f}% '
                                              f'(chance {chance:.2f}%, allowed up to {chance + CHANCE_TOL:.2f}%)')


def reverify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, record: AttackRecord, eps: float, norm: str,
             batch_size: int) -> Tuple[torch.Tensor, int, int]:
    """(verified correctness, #claimed-broken points not misclassified, #outside the ball) of one attack.

    Every point the attack claims to have broken is judged again from its stored example: a fresh eval-mode
    forward must misclassify it, and it must lie in the eps-ball around x. A point that fails either stays
    robust in the verified vector.
    """
    device = x.device
    verified = record.correct.to(device).clone()
    idx = (~verified).nonzero().squeeze(1)
    if idx.numel() == 0:
        return verified, 0, 0
    ex = record.examples[idx.cpu()].to(device)
    with eval_mode(model):
        misclassified = predict(model, ex, batch_size) != y[idx]
    inside = in_ball(ex, x[idx], eps, norm)
    verified[idx[~(misclassified & inside)]] = True
    return verified, int((~misclassified).sum()), int((~inside).sum())


def check_worst_case(model: nn.Module, x: torch.Tensor, y: torch.Tensor, runs: Mapping[str, AttackRecord],
                   worst_case_correct: torch.Tensor, eps: float, norm: str, batch_size: int,
                   tick: Tick = _no_tick) -> Check:
    """Each attack's broken points hold up when re-verified, and the worst case is the AND of the verified attacks.

    Catches an attack (or a book-keeping path, e.g. --resume) that reports points as broken that are not: an
    example that the final model classifies correctly (a randomised model, a model left in train mode by an
    attack, weights changed between crafting and scoring) or one outside the threat model.
    """
    if not runs:
        return _check(None, 'no attack ran')
    unkept = [k for k, r in runs.items() if r.examples is None]
    if unkept:
        return _check(None, f'the examples of {", ".join(unkept)} were not kept, so they cannot be re-verified')
    verified, lies = [], {}
    for label, record in runs.items():
        ok, not_mis, outside = reverify(model, x, y, record, eps, norm, batch_size)
        tick(f'{label} re-verified')
        verified.append(ok)
        if not_mis or outside:
            lies[label] = f'{not_mis} classified correctly, {outside} outside the ball'
    expected = robust_under_all(verified)
    mismatch = int((expected != worst_case_correct.to(expected.device)).sum())
    claimed = sum(int((~r.correct).sum()) for r in runs.values())
    detail = (f'{claimed} (attack, point) breaks re-verified on {len(x)} images; worst case '
              f'{accuracy(worst_case_correct):.2f}% vs AND of verified attacks {accuracy(expected):.2f}%')
    if lies:
        detail += '; broken points that do not hold up: ' + '; '.join(f'{k}: {v}' for k, v in lies.items())
    if mismatch:
        detail += f'; {mismatch} images where the worst case differs from the verified AND'
    return _check(not lies and not mismatch, detail)


def matched_pairs(runs: Mapping[str, AttackRecord]) -> Tuple[List[Tuple[str, str]], str]:
    """(APGD-CE label, PGD label) pairs with the same steps and restarts (CE loss, same eps and norm), and a
    note on what ran when none match."""
    def steps(s: dict) -> Tuple:
        return s.get('steps'), s.get('restarts'), s.get('eps'), s.get('norm')
    pgd = {k: r.settings for k, r in runs.items() if r.settings.get('attack') == 'PGD'
           and r.settings.get('loss') == 'ce' and not r.settings.get('final_iterate')}
    apgd = {k: r.settings for k, r in runs.items() if r.settings.get('attack') == 'APGD'
            and r.settings.get('loss') == 'ce'}
    pairs = [(a, p) for a, sa in apgd.items() for p, sp in pgd.items() if steps(sa) == steps(sp)]
    ran = ', '.join(f'{k} ({s.get("steps")} steps, {s.get("restarts")} restarts)' for k, s in {**apgd, **pgd}.items())
    return pairs, ran


def check_apgd_vs_pgd(runs: Mapping[str, AttackRecord]) -> Check:
    """APGD-CE is not significantly weaker than PGD with the same steps, on the same points.

    The reference's APGD often came out weaker than its PGD, which points to a weak evaluation. Per pair, b =
    points PGD broke and APGD did not, c = the reverse; under "APGD is as strong as PGD" b ~ Binomial(b + c, 1/2)
    (the exact McNemar test), and the check fails when P(X >= b) < APGD_PGD_ALPHA.
    """
    pairs, ran = matched_pairs(runs)
    if not pairs:
        kinds = {r.settings.get('attack') for r in runs.values()}
        if not {'APGD', 'PGD'} <= kinds:
            return _check(None, 'needs both an APGD-CE and a PGD attack in --attacks with the same number of steps '
                                '(e.g. the paper preset, pgd20 + apgd-ce20)')
        return _check(None, f'no APGD-CE and PGD with the same number of steps and restarts ran ({ran}); '
                            'compare like with like, e.g. pgd20 + apgd-ce20')
    parts, weaker = [], []
    for a, p in pairs:
        ca, cp = runs[a].correct.bool().cpu(), runs[p].correct.bool().cpu()
        b, c = int((ca & ~cp).sum()), int((~ca & cp).sum())
        pval = mcnemar_exact(ca.numpy(), cp.numpy(), alternative='greater')
        parts.append(f'{a} {accuracy(ca):.2f}% vs {p} {accuracy(cp):.2f}% on {len(ca)} images: {b} broken by '
                     f'{p} only, {c} by {a} only, one-sided p = {pval:.3g}')
        if pval < APGD_PGD_ALPHA:
            weaker.append(a)
    return _check(not weaker, '; '.join(parts) + (f'; {", ".join(weaker)} significantly weaker than PGD '
                                                  f'(p < {APGD_PGD_ALPHA})' if weaker else ''))


def check_square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, seed: int,
                 batch_size: int, attack_correct: Mapping[str, torch.Tensor], tick: Tick = _no_tick) -> Check:
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
        how = f'cheap Square ({CHEAP_SQUARE_QUERIES} queries)'
        with reference_warnings():
            square = _batched(lambda xb, yb: predict(model, sq(model, xb, yb)) == yb, x, y, batch_size, tick, how)
    white = [k for k in attack_correct if is_white_box(k)]
    if white:
        wb = robust_under_all([attack_correct[k][:n] for k in white])
        wb_how = '+'.join(white)
    else:
        wb, wb_how = _pgd_correct(model, x, y, eps, norm, seed, batch_size, tick), f'cheap PGD-{CHEAP_PGD_STEPS}'
    tol = max(SQUARE_TOL, 100.0 / n)
    sq_acc, wb_acc = accuracy(square), accuracy(wb)
    only_square = int((~square & wb).sum())
    return _check(sq_acc >= wb_acc - tol, f'{how} {sq_acc:.2f}% vs white-box {wb_how} {wb_acc:.2f}% on {n} images; '
                                          f'{only_square} broken by Square only')


# every check, in the order `run_checks` runs them and a result lists them
CHECKS = ('deterministic', 'logits', 'nonzero_gradients', 'eps_zero_is_clean', 'monotone_in_eps', 'large_eps_to_chance',
          'worst_case_reverified', 'apgd_not_weaker_than_pgd', 'square_not_stronger')


def run_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, num_classes: int,
               runs: Mapping[str, AttackRecord], worst_case_correct: torch.Tensor, seed: int = 0,
               batch_size: int = 128, n_check: int = 100, build: Builder = build_attack,
               step: Callable[..., None] = lambda n=1, **_: None) -> Dict[str, Check]:
    """Every check, in a fixed order. Per-sample results must be aligned with `x`.

    Progress is counted in units of work (one batch of one attack, one attack re-verified, one quick model
    check), not in checks: a check that re-runs AutoAttack at eps 0 would otherwise stay silent for minutes.

    Args:
        model: The evaluated model, in eval mode, taking [0, 1] images.
        x: Evaluation images (on the model's device).
        y: Their labels.
        eps: The evaluation's radius.
        norm: 'Linf' or 'L2'.
        num_classes: Number of classes (for chance level).
        runs: Attack label -> what the attack left (`AttackRecord`).
        worst_case_correct: Per-sample correctness under the worst case over the attacks.
        seed: Seed of the cheap attacks.
        batch_size: Batch size of the extra attacks.
        n_check: Examples used by the checks that run extra attacks.
        build: The evaluation's attack factory (eps_zero_is_clean rebuilds its attacks at eps 0).
        step: Advances the stage by n units (`bench.core.progress.stage`); `ips` says which check is at work.
            The stage's total is `check_units(...)`.
    """
    device = x.device
    correct = {k: r.correct.to(device) for k, r in runs.items()}
    xs, ys = x[:n_check], y[:n_check]
    xb, yb = x[:min(len(x), batch_size)], y[:min(len(x), batch_size)]
    run = {
        'deterministic': lambda tick: check_deterministic(model, xb),
        'logits': lambda tick: check_logits(model, xb),
        'nonzero_gradients': lambda tick: check_gradients(model, xb, yb),
        'eps_zero_is_clean': lambda tick: check_eps_zero(model, xs, ys, {k: r.name for k, r in runs.items()}, norm,
                                                         seed, batch_size, build, tick),
        'monotone_in_eps': lambda tick: check_monotone(model, xs, ys, eps, norm, seed, batch_size, tick),
        'large_eps_to_chance': lambda tick: check_large_eps(model, xs, ys, norm, num_classes, seed, batch_size, tick),
        'worst_case_reverified': lambda tick: check_worst_case(model, x, y, runs, worst_case_correct, eps, norm,
                                                               batch_size, tick),
        'apgd_not_weaker_than_pgd': lambda tick: check_apgd_vs_pgd(runs),
        'square_not_stronger': lambda tick: check_square(model, xs, ys, eps, norm, seed, batch_size,
                                                         {k: v[:n_check] for k, v in correct.items()}, tick),
    }
    units = check_units(len(x), eps, batch_size, n_check, runs)
    checks = {}
    for name in CHECKS:
        used = [0]

        def tick(what: str, name: str = name, used: List[int] = used) -> None:
            if used[0] < units[name] - 1:  # the last unit is the check's end, whatever it counted
                used[0] += 1
                step(1, ips=f'{name}: {what}')
        step(0, ips=f'{name}...')
        checks[name] = run[name](tick)
        step(units[name] - used[0], ips=name)
    return checks


def check_units(n: int, eps: float, batch_size: int, n_check: int, runs: Mapping[str, AttackRecord]) -> Dict[str, int]:
    """The units of work (`run_checks`'s progress) of each check: batches of its extra attacks, attacks it
    re-verifies, or 1 for a check of a few forwards. An estimate where a check may stop early; it ends exact."""
    batches = _n_batches(min(n, n_check), batch_size)
    white_box = any(is_white_box(k) for k in runs)
    return {'deterministic': 1, 'logits': 1, 'nonzero_gradients': 1,
            'eps_zero_is_clean': max(1, len(runs) * batches),
            'monotone_in_eps': 4 * batches if eps > 0 else 1,
            'large_eps_to_chance': batches,
            'worst_case_reverified': max(1, len(runs)),
            'apgd_not_weaker_than_pgd': 1,
            'square_not_stronger': ('square' not in runs) * batches + (not white_box) * batches or 1}


def not_run(reason: str) -> Dict[str, Check]:
    """Every check, recorded as not applicable because it did not run (`reason`): none is left out silently."""
    return {name: _check(None, f'not run ({reason})') for name in CHECKS}


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

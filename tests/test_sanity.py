"""Every sanity check fires on a model or an attack built to break it, and passes on a sound one.

The broken cases are small constructions: a narrow adversarial band that PGD's large steps jump over (accuracy
rises with eps), an attack that ignores its eps, an APGD that does nothing, an attack that leaves the model in
train mode, a randomised model, a three-class model on which AutoAttack must drop APGD-T.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bench import attacks as attacks_mod
from bench.evaluation import checks as sanity
from bench.attacks import APGD, PGD, build_attack, predict
from bench.data import eval_tensors
from bench.evaluation.loop import evaluate_model
from masked_models import MeanThreshold, Quantised
from bench.evaluation.checks import AttackRecord

DATA = 'fashion-mnist-bundled'
EPS = 8 / 255

pytestmark = pytest.mark.usefixtures('one_thread')


class Band(nn.Module):
    """Class 1 only in a narrow band |mean(x) - c| < half, class 0 elsewhere; the CE gradient points at the band.

    PGD's sign steps of eps / 4 land in the band from 3 eps / 8 away when eps is small (steps of eps / 8 hit it
    exactly), but jump over it at eps and 2 eps: a model "robust at large eps but not at small", which is what
    gradient masking by a badly scaled attack looks like.
    """

    def __init__(self, c: float = 0.5, half: float = EPS / 64) -> None:
        super().__init__()
        self.c = nn.Parameter(torch.tensor(c))
        self.half = half

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z1 = self.half - (x.flatten(1).mean(1) - self.c).abs()
        return torch.stack([torch.zeros_like(z1), z1], 1)


class Noisy(nn.Module):
    """A randomised two-class model: a linear score plus noise much larger than it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(28 * 28, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc(x.flatten(1))
        return z + 10 * torch.randn_like(z)


class SmallNet(nn.Module):
    """A few-parameter CNN, cheap enough to run AutoAttack's every part (Square's 5000 queries included)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                  nn.Linear(16, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class IgnoresEps:
    """A buggy attack: PGD at a fixed radius of 8/255, whatever eps it was built with."""

    def __init__(self, eps: float, norm: str, seed: int) -> None:
        self.eps, self.norm = eps, norm
        self.inner = PGD(EPS, norm, steps=10, seed=seed)

    def __call__(self, model, x, y):
        return self.inner(model, x, y)

    def settings(self, n_cls=None):
        return dict(self.inner.settings(n_cls), eps=self.eps)


class DoesNothing:
    """A broken APGD: returns x, but reports APGD-CE's settings (so it is paired with the PGD of equal steps)."""

    def __init__(self, eps: float, norm: str, seed: int) -> None:
        self.real = APGD(eps, norm, steps=10, seed=seed)
        self.eps, self.norm = eps, norm

    def __call__(self, model, x, y):
        return x.clone()

    def settings(self, n_cls=None):
        return self.real.settings(n_cls)


class LeavesTrainMode:
    """A buggy attack: runs PGD, then leaves the model in train mode (BatchNorm then uses batch statistics)."""

    def __init__(self, eps: float, norm: str, seed: int) -> None:
        self.inner = PGD(eps, norm, steps=10, seed=seed)
        self.eps, self.norm = eps, norm

    def __call__(self, model, x, y):
        out = self.inner(model, x, y)
        model.train()
        return out

    def settings(self, n_cls=None):
        return self.inner.settings(n_cls)


# ------------------------------------------------------------------------------------------- worst-case re-verification

def _linear():
    model = nn.Linear(1, 2)  # class 1 iff x > 0.5
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-1.0], [1.0]]))
        model.bias.copy_(torch.tensor([0.5, -0.5]))
    return model.eval()


def test_worst_case_reverification_passes_on_honest_records_and_fires_on_lies():
    model = _linear()
    x = torch.tensor([[0.52], [0.6], [0.7], [0.4]])
    y = torch.tensor([1, 1, 1, 1])  # the last is misclassified from the start
    honest_adv = torch.tensor([[0.49], [0.6], [0.7], [0.4]])  # eps 0.05 breaks the first only
    correct = torch.tensor([False, True, True, False])
    runs = {'a': AttackRecord('a', {}, correct, honest_adv)}
    ok = sanity.check_worst_case(model, x, y, runs, correct, 0.05, 'Linf', 4)
    assert ok['passed'] is True, ok
    # claims the second point too, but its example (x itself) is still classified correctly
    lying = {'a': AttackRecord('a', {}, torch.tensor([False, False, True, False]), honest_adv)}
    bad = sanity.check_worst_case(model, x, y, lying, lying['a'].correct, 0.05, 'Linf', 4)
    assert bad['passed'] is False and '1 classified correctly' in bad['detail'], bad
    # an example that breaks the point, but from outside the eps-ball
    far = honest_adv.clone()
    far[1] = 0.3
    outside = {'a': AttackRecord('a', {}, torch.tensor([False, False, True, False]), far)}
    bad = sanity.check_worst_case(model, x, y, outside, outside['a'].correct, 0.05, 'Linf', 4)
    assert bad['passed'] is False and '1 outside the ball' in bad['detail'], bad
    # honest members, but a worst-case vector that is not their AND
    bad = sanity.check_worst_case(model, x, y, runs, torch.tensor([False, False, True, False]), 0.05, 'Linf', 4)
    assert bad['passed'] is False and '1 images where the worst case differs' in bad['detail'], bad
    assert sanity.check_worst_case(model, x, y, {'a': AttackRecord('a', {}, correct)}, correct, 0.05, 'Linf',
                                 4)['passed'] is None


def test_worst_case_reverification_fires_when_an_attack_leaves_the_model_in_train_mode(monkeypatch, tiny_trained):
    x, y = eval_tensors(DATA, 32)
    honest = evaluate_model(tiny_trained, x, y, attacks='pgd10', batch_size=8, per_expert=False, n_check=8)
    assert honest.sanity['worst_case_reverified']['passed'] is True
    monkeypatch.setitem(attacks_mod.ATTACKS, 'pgd10', LeavesTrainMode)
    try:
        r = evaluate_model(tiny_trained, x, y, attacks='pgd10', batch_size=8, per_expert=False, n_check=8)
    finally:
        tiny_trained.eval()  # a session fixture: the next test gets it back as it was
    assert 'worst_case_reverified' in r.flags, r.sanity['worst_case_reverified']
    assert 'classified correctly' in r.sanity['worst_case_reverified']['detail']


def test_randomised_model_fails_reverification_and_pyautoattack_warning_reaches_flags():
    torch.manual_seed(0)
    model = Noisy().eval()
    x, y = eval_tensors(DATA, 16)
    y = y % 2
    r = evaluate_model(model, x, y, attacks='pgd10,autoattack.apgd-ce', batch_size=16, per_expert=False, n_check=8)
    assert {'worst_case_reverified', 'deterministic', 'pyautoattack_randomized_defense'} <= set(r.flags)
    assert any('randomized defense' in m for m in r.attack_warnings['autoattack.apgd-ce'])
    assert 'pgd10' not in r.attack_warnings  # our PGD runs no such check: nothing is invented for it


# ------------------------------------------------------------------------------------------- eps = 0

def test_eps_zero_runs_the_evaluations_own_attacks_and_fires_on_one_ignoring_eps(tiny_trained):
    x, y = eval_tensors(DATA, 8)
    good = sanity.check_eps_zero(tiny_trained, x, y, {'pgd10': 'pgd10', 'apgd-ce10': 'apgd-ce10'}, 'Linf', 0, 8)
    assert good['passed'] is True and 'apgd-ce10' in good['detail'], good

    def buggy(name, eps, norm, seed):
        return IgnoresEps(eps, norm, seed) if name == 'pgd10' else build_attack(name, eps, norm, seed)

    bad = sanity.check_eps_zero(tiny_trained, x, y, {'pgd10': 'pgd10', 'apgd-ce10': 'apgd-ce10'}, 'Linf', 0, 8,
                                build=buggy)
    assert bad['passed'] is False and 'pgd10 do not honour eps' in bad['detail'], bad


def test_eps_zero_fires_end_to_end_through_the_attack_factory(monkeypatch, tiny_trained):
    # at the evaluation's eps the buggy attack stays in its ball, so only the eps-0 rerun can expose it
    monkeypatch.setitem(attacks_mod.ATTACKS, 'pgd10', IgnoresEps)
    x, y = eval_tensors(DATA, 16)
    r = evaluate_model(tiny_trained, x, y, attacks='pgd10', eps=EPS, batch_size=16, per_expert=False, n_check=16)
    assert 'eps_zero_is_clean' in r.flags, r.sanity['eps_zero_is_clean']


def test_standard_autoattack_at_eps_zero_reproduces_clean_predictions():
    model = SmallNet(10).eval()
    x = torch.rand(4, 1, 8, 8)
    y = predict(model, x)  # every point correct: each part runs on all of them (Square for 5000 queries)
    r = sanity.check_eps_zero(model, x, y, {'autoattack': 'autoattack'}, 'Linf', 0, 4)
    assert r['passed'] is True and 'autoattack 100.00% (0 predictions differ, moved up to 0)' in r['detail'], r


# ------------------------------------------------------------------------------------------- monotone, large eps

def test_monotone_in_eps_fires_on_a_band_that_large_steps_jump_over():
    model = Band().eval()
    x = torch.full((4, 1, 2, 2), 0.5 - 3 * EPS / 8)
    y = torch.zeros(4, dtype=torch.long)
    r = sanity.check_monotone(model, x, y, EPS, 'Linf', 0, 4)
    assert r['passed'] is False and 'rises between' in r['detail'], r
    assert sanity.check_large_eps(model, x, y, 'Linf', 2, 0, 4)['passed'] is False


def test_monotone_in_eps_passes_on_a_trained_model(tiny_trained):
    x, y = eval_tensors(DATA, 16)
    assert sanity.check_monotone(tiny_trained, x, y, EPS, 'Linf', 0, 16)['passed'] is True


# ------------------------------------------------------------------------------------------- APGD vs PGD

def _record(steps: int, kind: str, correct) -> AttackRecord:
    settings = dict(attack=kind, loss='ce', steps=steps, restarts=1, eps=EPS, norm='Linf')
    return AttackRecord(kind.lower(), settings, torch.tensor(correct, dtype=torch.bool))


@pytest.mark.parametrize('apgd_only, pgd_only, passed', [
    (0, 6, True),  # p = 1/64 > 0.01: six points are not enough evidence
    (0, 7, False),  # p = 1/128 < 0.01
    (5, 10, True),  # P(X >= 10 | 15) = 0.15
    (0, 0, True),
])
def test_apgd_vs_pgd_uses_an_exact_one_sided_mcnemar_test(apgd_only, pgd_only, passed):
    both = 20
    apgd = [True] * both + [False] * apgd_only + [True] * pgd_only
    pgd = [True] * both + [True] * apgd_only + [False] * pgd_only
    r = sanity.check_apgd_vs_pgd({'apgd-ce20': _record(20, 'APGD', apgd), 'pgd20': _record(20, 'PGD', pgd)})
    assert r['passed'] is passed, r


def test_apgd_vs_pgd_compares_only_matched_steps():
    unmatched = {'apgd-ce': _record(100, 'APGD', [True, False]), 'pgd20': _record(20, 'PGD', [False, True])}
    r = sanity.check_apgd_vs_pgd(unmatched)
    assert r['passed'] is None and 'same number of steps' in r['detail'] and '100 steps' in r['detail'], r
    assert sanity.check_apgd_vs_pgd({'pgd20': _record(20, 'PGD', [True])})['passed'] is None


def test_apgd_vs_pgd_fires_end_to_end_on_an_apgd_that_does_nothing(monkeypatch, tiny_trained):
    x, y = eval_tensors(DATA, 48)
    honest = evaluate_model(tiny_trained, x, y, attacks='quick', batch_size=48, per_expert=False, n_check=8)
    assert honest.sanity['apgd_not_weaker_than_pgd']['passed'] is True
    monkeypatch.setitem(attacks_mod.ATTACKS, 'apgd-ce10', DoesNothing)
    r = evaluate_model(tiny_trained, x, y, attacks='quick', batch_size=48, per_expert=False, n_check=8)
    assert 'apgd_not_weaker_than_pgd' in r.flags, r.sanity['apgd_not_weaker_than_pgd']


# ------------------------------------------------------------------------------------------- AutoAttack drops

def test_autoattack_that_drops_a_part_is_not_stored_as_autoattack():
    model = SmallNet(3).eval()
    x, _ = eval_tensors(DATA, 6)
    y = torch.arange(6) % 3
    r = evaluate_model(model, x, y, attacks='autoattack', eps=0.5 / 255, batch_size=6, n_check=2)
    label = 'autoattack.apgd-ce+fab-t+square'
    assert 'autoattack' not in r.robust_acc and label in r.robust_acc
    assert r.autoattack_attacks_run == {label: ['apgd-ce', 'fab-t', 'square']}
    assert 'autoattack_dropped_apgd-t' in r.flags
    s = r.settings['attacks'][label]
    assert s['name'] == 'autoattack' and list(s['parts_dropped']) == ['apgd-t']
    assert '4 logits' in s['parts_dropped']['apgd-t']
    assert s['parts_run'] == ['apgd-ce', 'fab-t', 'square'] and s['parts']['fab-t']['n_target_classes'] == 2
    assert s['parts']['apgd-ce']['steps'] == 100 and s['parts']['square']['n_queries'] == 5000


def test_reverify_helper_counts_what_it_rejects():
    model = _linear()
    x = torch.tensor([[0.6]])
    y = torch.tensor([1])
    rec = AttackRecord('a', {}, torch.tensor([False]), torch.tensor([[0.6]]))
    verified, not_mis, outside = sanity.reverify(model, x, y, rec, 0.05, 'Linf', 1)
    assert verified.tolist() == [True] and (not_mis, outside) == (1, 0)
    assert predict(model, x).tolist() == [1]


# ------------------------------------------------------------------------------------------- logits, Square

def test_logits_check_fires_on_probabilities():
    model = SmallNet(10).eval()
    x = torch.rand(4, 1, 8, 8)
    assert sanity.check_logits(model, x)['passed'] is True
    assert sanity.check_logits(nn.Sequential(model, nn.Softmax(1)), x)['passed'] is False


def test_square_check_fires_when_the_black_box_beats_masked_gradients():
    # margins 0.1-0.4 eps: PGD-10 breaks every point of the plain model (constant gradient), none of the quantised
    # one (zero gradient), while Square's score comparisons break them all; any Square seed does (checked 0-9)
    model = MeanThreshold().eval()
    x, y = MeanThreshold.points(16, EPS)
    assert sanity.check_square(model, x, y, EPS, 'Linf', 0, 16, {})['passed'] is True
    r = sanity.check_square(Quantised(model).eval(), x, y, EPS, 'Linf', 0, 16, {})
    assert r['passed'] is False and '16 broken by Square only' in r['detail'], r


def test_no_checks_records_every_check_as_not_run(tiny_trained):
    """`eval --no-checks`: the checks' cost (minutes with AutoAttack) can be skipped, and the result says so."""
    from bench.cli import build_parser
    args = build_parser('eval').parse_args(['eval', '--model', 'resnet18_dense', '--no-checks'])
    assert args.no_checks
    x, y = eval_tensors(DATA, 8)
    r = evaluate_model(tiny_trained, x, y, attacks='pgd10', eps=EPS, batch_size=8, per_expert=False,
                       sanity_checks=False)
    assert list(r.sanity) == list(sanity.CHECKS) and not r.flags
    assert all(c == {'passed': None, 'detail': 'not run (--no-checks)'} for c in r.sanity.values()), r.sanity

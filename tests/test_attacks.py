"""Attacks: closed-form oracles on linear models, threat-model invariants for every attack, the worst case's
worst case, names and presets, and the reference-vs-PGD strength ordering on a small trained MoE."""
from __future__ import annotations

import logging
import warnings

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from bench.attacks import (APGD, AutoAttack, FABTargeted, PGD, APGDTargeted, PRESETS, REFERENCE_LOGGER,
                           Square, accuracy, build_attack, parse_eps, perturbation_norm, predict,
                           reference_warning_flag, reference_warnings, resolve_attacks, robust_under_all)
from bench.data import eval_tensors
from bench.core.errors import UserError


pytestmark = pytest.mark.usefixtures('one_thread')


class Linear(nn.Module):
    """logits = x.flatten() @ W.T + b: every worst case has a closed form."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.w, self.b = nn.Parameter(w), nn.Parameter(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.T + self.b


def _margins(model: Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - z_j for every j (B, C), +inf at j = y."""
    z = model(x)
    return (z.gather(1, y[:, None]) - z).scatter(1, y[:, None], float('inf'))


def _worst_margins(model: Linear, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Closed form (no clipping): min over the ball of z_y - z_j = (z_y - z_j) - eps * ||w_y - w_j||_dual."""
    dw = model.w[y][:, None, :] - model.w[None, :, :]  # (B, C, d)
    dual = dw.abs().sum(-1) if norm == 'Linf' else dw.norm(dim=-1)
    return _margins(model, x, y) - eps * dual


# ------------------------------------------------------------------------------------------- analytic oracles

@pytest.mark.parametrize('norm', ['Linf', 'L2'])
def test_pgd_reaches_closed_form_worst_case_binary(norm):
    torch.manual_seed(1)
    d, eps = 12, 0.05
    model = Linear(torch.randn(2, d), torch.tensor([5.0, 0.0]))  # class 0 by a wide margin: never fooled
    x = 0.4 + 0.2 * torch.rand(6, 1, 3, 4)  # interior: eps never reaches 0 or 1, so no clipping
    y = torch.zeros(6, dtype=torch.long)
    with torch.no_grad():
        expected = _worst_margins(model, x, y, eps, norm)[:, 1]
        x_adv = PGD(eps, norm, steps=20)(model, x, y)
        got = _margins(model, x_adv, y)[:, 1]
    assert torch.allclose(got, expected, atol=1e-5), (got, expected)


def test_pgd_margin_loss_reaches_closed_form_multiclass():
    torch.manual_seed(2)
    c, d, eps = 5, 16, 0.04
    w = torch.randn(c, d) * 0.5
    w[3] = -w[0] + 0.1 * torch.randn(d)  # class 3 is the worst case: ||w_0 - w_3||_1 is by far the largest
    model = Linear(w, torch.tensor([6.0, 0.0, 0.0, 2.0, 0.0]))
    x = 0.4 + 0.2 * torch.rand(8, d)
    y = torch.zeros(8, dtype=torch.long)
    with torch.no_grad():
        expected = _worst_margins(model, x, y, eps, 'Linf').amin(1)
        got = _margins(model, PGD(eps, 'Linf', steps=20, loss='margin')(model, x, y), y).amin(1)
    assert torch.allclose(got, expected, atol=1e-5), (got, expected)


@pytest.mark.parametrize('attack, complete_below', [
    (PGD(0.03, steps=20), -0.15), (APGD(0.03, steps=50), -0.15),  # untargeted CE: misses a few borderline points
    (PGD(0.03, steps=20, loss='margin'), -0.05), (APGDTargeted(0.03, steps=30), -0.01),
    (build_attack('autoattack', 0.03), -0.01)], ids=['pgd-ce', 'apgd-ce', 'pgd-margin', 'apgd-t', 'autoattack'])
def test_attacks_break_exactly_the_breakable_points_of_a_linear_model(attack, complete_below):
    """Sound: no attack breaks a point whose closed-form worst margin is positive. Complete: every point whose
    worst margin is below `complete_below` is broken (untargeted CE ascent may miss a point that is breakable
    only towards one class by a little; the targeted attacks and AutoAttack must not)."""
    torch.manual_seed(3)
    c, d = 10, 36
    w = torch.randn(c, d) * 0.3
    model = Linear(w, -0.5 * w.sum(1))  # centred at x = 0.5, so margins and eps * ||dw||_1 are comparable
    x = 0.1 + 0.8 * torch.rand(64, 1, 6, 6)  # at least 0.1 from the box's faces: no clipping at eps = 0.03
    with torch.no_grad():
        y = model(x).argmax(1)
        worst = _worst_margins(model, x, y, attack.eps, 'Linf').amin(1)
        x_adv = attack(model, x, y)
        broken = predict(model, x_adv) != y
    assert (perturbation_norm(x_adv - x, 'Linf') <= attack.eps + 1e-6).all() and 0 <= x_adv.min() <= x_adv.max() <= 1
    assert (worst < -0.15).sum() > 10 and (worst > 0).sum() > 5, 'the oracle needs both kinds of points'
    assert not broken[worst > 1e-4].any(), 'broke a provably robust point: the ball was left'
    assert broken[worst < complete_below].all(), f'missed breakable points: {worst[~broken & (worst < 0)]}'
    if isinstance(attack, AutoAttack):
        assert attack.ran == ('apgd-ce', 'apgd-t', 'fab-t', 'square')


# ------------------------------------------------------------------------------------------- invariants

class TinyNet(nn.Module):
    """A few-parameter CNN: cheap enough for property-based tests of every attack."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                  nn.Linear(16, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


CHEAP = {
    'pgd-linf': lambda eps, norm: PGD(eps, norm, steps=5),
    'pgd-rs-restarts': lambda eps, norm: PGD(eps, norm, steps=3, random_start=True, restarts=2),
    'pgd-margin': lambda eps, norm: PGD(eps, norm, steps=3, loss='margin'),
    'pgd-final-iterate': lambda eps, norm: PGD(eps, norm, steps=3, random_start=True, final_iterate=True),
    'apgd-ce': lambda eps, norm: APGD(eps, norm, steps=5),
    'apgd-dlr': lambda eps, norm: APGD(eps, norm, steps=5, loss='dlr'),
    'apgd-t': lambda eps, norm: APGDTargeted(eps, norm, steps=5, n_target_classes=2),
    'fab-t': lambda eps, norm: FABTargeted(eps, norm, steps=5, n_target_classes=2),
    'square': lambda eps, norm: Square(eps, norm, n_queries=20),
    # Square's 5000 queries are the costly part of AutoAttack; the oracle test above runs the standard version
    'autoattack-custom': lambda eps, norm: AutoAttack(eps, norm, version='custom', parts=('apgd-ce', 'apgd-t')),
}
_NET = TinyNet().eval()


@pytest.mark.parametrize('name', sorted(CHEAP))
@settings(max_examples=4, deadline=None)
@given(norm=st.sampled_from(['Linf', 'L2']), eps=st.floats(0.0, 0.3), seed=st.integers(0, 2 ** 16))
def test_every_attack_stays_in_the_ball_and_the_box(name, norm, eps, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 1, 8, 8, generator=g)
    x[0] = 0.0  # corners of the box, where clipping matters
    x[1] = 1.0
    y = predict(_NET, x)  # attack the model's own predictions, so every point is attacked
    x_adv = CHEAP[name](eps, norm)(_NET, x, y)
    assert x_adv.shape == x.shape and torch.isfinite(x_adv).all()
    assert (perturbation_norm(x_adv - x, norm) <= eps + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize('name', sorted(CHEAP))
def test_attacks_are_seeded_and_leave_the_global_rng_alone(name):
    x = torch.rand(4, 1, 8, 8)
    y = predict(_NET, x)
    attack = CHEAP[name](0.05, 'Linf')
    state = torch.get_rng_state()
    first = attack(_NET, x, y)
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(first, attack(_NET, x, y)), 'a fixed seed must give the same examples'


def test_class_count_limits():
    three = TinyNet(num_classes=3).eval()
    x = torch.rand(4, 1, 8, 8)
    y = predict(three, x)
    with pytest.raises(UserError, match='APGD-T needs at least 4 classes'):
        APGDTargeted(0.03, steps=2)(three, x, y)
    aa = AutoAttack(0.03)
    aa.adversary(three, 3, x.device)
    assert 'apgd-t' not in aa.ran and aa.ran[0] == 'apgd-ce'
    five = TinyNet(num_classes=5).eval()
    adv = AutoAttack(0.03).adversary(five, 5, x.device)
    assert adv.apgd_targeted.n_target_classes == 4 and adv.fab.n_target_classes == 4


def test_autoattack_settings_and_label_say_exactly_what_runs():
    aa = AutoAttack(0.03)
    full = aa.settings(n_cls=10)
    assert aa.label('autoattack', 10) == 'autoattack' and full['parts_dropped'] == {}
    assert full['parts_run'] == ['apgd-ce', 'apgd-t', 'fab-t', 'square']
    assert full['parts']['apgd-t']['n_target_classes'] == 9 and full['parts']['fab-t']['n_target_classes'] == 9
    assert full['parts']['apgd-ce']['restarts'] == 1 and full['parts']['apgd-ce']['random_start'] is True
    assert full['parts']['square']['n_queries'] == 5000 and full['parts']['fab-t']['restarts'] == 1
    three = aa.settings(n_cls=3)
    assert aa.label('autoattack', 3) == 'autoattack.apgd-ce+fab-t+square'
    assert three['parts_run'] == ['apgd-ce', 'fab-t', 'square'] and list(three['parts_dropped']) == ['apgd-t']
    assert three['parts']['fab-t']['n_target_classes'] == 2
    # the label is itself a valid attack name, for exactly what ran
    assert resolve_attacks(aa.label('autoattack', 3)) == ['autoattack.apgd-ce+fab-t+square']
    custom = AutoAttack(0.03, version='custom', parts=('apgd-ce', 'apgd-dlr'))
    assert custom.label('autoattack.apgd-ce+apgd-dlr', 2) == 'autoattack.apgd-ce'
    assert APGDTargeted(0.03).settings(n_cls=5)['n_target_classes_run'] == 4
    assert PGD(0.03).settings()['step_size'] == pytest.approx(0.0075)


# ------------------------------------------------------------------------------------------- final iterate

def test_final_iterate_pgd_attacks_every_point_and_keeps_its_last_iterate():
    torch.manual_seed(4)
    x = torch.rand(6, 1, 8, 8)
    y = (predict(_NET, x) + torch.tensor([0, 1, 0, 1, 0, 0])) % 10  # two points misclassified from the start
    default, attacked = PGD(0.05, steps=4).run(_NET, x, y)
    assert attacked.tolist() == (predict(_NET, x) == y).tolist()
    assert torch.equal(default[~attacked], x[~attacked]), 'the default returns x where it did not attack'
    last, attacked = PGD(0.05, steps=4, final_iterate=True).run(_NET, x, y)
    assert attacked.all() and (last[~(predict(_NET, x) == y)] != x[~(predict(_NET, x) == y)]).any()
    # the last of four plain signed-gradient steps, projected: recomputed by hand
    ref = x.clone()
    for _ in range(4):
        ref.requires_grad_(True)
        grad, = torch.autograd.grad(nn.functional.cross_entropy(_NET(ref), y, reduction='sum'), ref)
        ref = torch.min(torch.max(ref.detach() + 0.0125 * grad.sign(), x - 0.05), x + 0.05).clamp(0, 1)
    assert torch.allclose(last, ref)
    with pytest.raises(UserError, match='final_iterate=True with restarts=2'):
        PGD(0.05, restarts=2, final_iterate=True)


# ------------------------------------------------------------------------------------------- reference warnings

class _Softmax(nn.Module):
    def forward(self, x):
        return _NET(x).softmax(1)


class _GradInForward(nn.Module):
    def forward(self, x):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            torch.autograd.grad(_NET(x).sum(), x)
        return _NET(x)


def test_every_pyautoattack_warning_is_caught_by_both_routes_and_named():
    """Each check in pyautoattack/checks.py, made to fire, lands in `reference_warnings` with a known flag."""
    from pyautoattack import checks
    x = torch.rand(4, 1, 8, 8)
    y = predict(_NET, x)
    noisy = lambda v: _NET(v) + torch.randn(len(v), 10)  # noqa: E731
    logger = logging.getLogger(REFERENCE_LOGGER)
    with reference_warnings() as caught:
        checks.check_randomized(noisy, x, y, logger=logger)  # AutoAttack's route: its logger
        checks.check_range_output(_Softmax(), x, logger=logger)
        checks.check_zero_gradients(torch.zeros(2, 3))  # a standalone attack's route: warnings.warn
        checks.check_square_sr({'clean': 0.9, 'apgd-ce': 0.5, 'square': 0.3})
        checks.check_dynamic(_GradInForward(), x, logger=logger)
        checks.check_n_classes(2, ['apgd-dlr'], 9, 9)
        checks.check_n_classes(3, ['apgd-t'], 9, 9)
        checks.check_n_classes(5, ['apgd-t'], 9, 9)
    # the logger's messages arrive as they are logged, warnings.warn's when the block ends
    assert [reference_warning_flag(m) for m in caught] == [
        'pyautoattack_randomized_defense', 'pyautoattack_probability_output', 'pyautoattack_dynamic_defense',
        'pyautoattack_zero_gradients', 'pyautoattack_square_stronger', 'pyautoattack_too_few_classes',
        'pyautoattack_too_few_classes', 'pyautoattack_too_many_target_classes']
    assert reference_warning_flag('something new') == 'pyautoattack_other'


def test_reference_warnings_let_other_warnings_through():
    with pytest.warns(UserWarning, match='not ours'):
        with reference_warnings() as caught:
            warnings.warn('not ours', UserWarning)
    assert caught == []


def test_apgd_dlr_zero_gradient_warning_is_caught_from_a_real_run():
    flat = TinyNet().eval()
    with torch.no_grad():
        flat.body[0].weight.zero_()
        flat.body[0].bias.zero_()  # every input gives the same logits: the input gradient is exactly 0
    x = torch.rand(4, 1, 8, 8)
    y = predict(flat, x)
    with reference_warnings() as caught:
        APGD(0.03, steps=3, loss='dlr')(flat, x, y)
    assert [reference_warning_flag(m) for m in caught] == ['pyautoattack_zero_gradients']


# ------------------------------------------------------------------------------------------- worst case

def test_robust_under_all_is_the_per_sample_and():
    corrects = [torch.tensor([1, 0, 1, 1]).bool(), torch.tensor([1, 1, 0, 1]).bool(),
                torch.tensor([0, 0, 1, 1]).bool()]
    assert robust_under_all(corrects).tolist() == [False, False, False, True]


# ------------------------------------------------------------------------------------------- names

def test_resolve_attacks_expands_presets_and_rejects_unknown_names():
    assert resolve_attacks('paper') == list(PRESETS['paper'])
    assert resolve_attacks('quick,pgd10,square') == ['pgd10', 'apgd-ce10', 'square']
    assert resolve_attacks(['autoattack.apgd-ce+square']) == ['autoattack.apgd-ce+square']
    with pytest.raises(UserError, match="unknown attack 'pgd7'"):
        resolve_attacks('pgd20,pgd7')
    with pytest.raises(UserError, match='custom parts'):
        resolve_attacks('autoattack.apgd-ce+cw')
    assert build_attack('pgd20', 8 / 255).step_size == pytest.approx(2 / 255)
    assert isinstance(build_attack('autoattack.apgd-ce', 0.1), AutoAttack)


@pytest.mark.parametrize('text, value', [('8/255', 8 / 255), ('0.5', 0.5), ('0', 0.0), ('1', 1.0)])
def test_parse_eps_accepts_fractions_and_floats(text, value):
    assert parse_eps(text) == pytest.approx(value)


@pytest.mark.parametrize('text', ['-0.1', '1.5', '8/0', 'eight'])
def test_parse_eps_rejects_bad_values(text):
    with pytest.raises(UserError, match='--eps'):
        parse_eps(text)


# ------------------------------------------------------------------------------------------- trained model

def test_apgd_is_at_least_as_strong_as_pgd_on_a_trained_moe(tiny_trained):
    """The reference's symptom (APGD above PGD-20) must not appear with a sound APGD: APGD-CE <= PGD-20 + 0.5."""
    x, y = eval_tensors('fashion-mnist-bundled', 100)
    eps = 8 / 255
    ok = {name: predict(tiny_trained, build_attack(name, eps)(tiny_trained, x, y)) == y for name in ('pgd20', 'apgd-ce')}
    pgd, apgd = accuracy(ok['pgd20']), accuracy(ok['apgd-ce'])
    clean = accuracy(predict(tiny_trained, x) == y)
    assert apgd <= pgd + 0.5, (apgd, pgd)
    assert pgd < clean, 'the attack should break something at 8/255'
    assert accuracy(robust_under_all(ok.values())) <= min(pgd, apgd)

"""The budget study (issue 27): its pre-registered interaction contrast, (MoE − dense at the largest budget) −
(MoE − dense at the base budget), with seeds as the unit (`stats.interaction_welch`, `base:` in a primary entry),
and the shipped spec `study_budget_fashion_mnist`: its budgets, its cells and its sizing."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from bench.core.errors import UserError
from bench.pipeline.grid import cell_config, cells, load_spec
from bench.core import stats
from bench.results.study import analysis as an
from bench.results.study.analysis import Study
from bench.results.study.render import preregistration
from test_study_prereg import _run, _spread

SPEC = Path(__file__).resolve().parents[1] / 'bench' / 'configs' / 'study_budget_fashion_mnist.yaml'


def test_the_interaction_t_on_numbers():
    a, b, c, d = [60, 62, 61, 63], [50, 51, 49, 50], [40, 42, 41], [50, 52, 50, 51, 52]
    r = stats.interaction_welch(a, b, c, d)
    q = [np.var(x, ddof=1) / len(x) for x in (a, b, c, d)]
    assert r['diff'] == pytest.approx((np.mean(a) - np.mean(b)) - (np.mean(c) - np.mean(d)))
    assert r['se'] == pytest.approx(math.sqrt(sum(q)))
    assert r['df'] == pytest.approx(sum(q) ** 2 / sum(v ** 2 / (len(x) - 1) for v, x in zip(q, (a, b, c, d))))
    assert r['lo'] < r['diff'] < r['hi'] and r['p'] < 1e-4 and (r['n_c'], r['n_d']) == (3, 5)
    # no change of the gap: the interaction is 0 and far from significant
    same = stats.interaction_welch(a, b, [x - 5 for x in a], [x - 5 for x in b])
    assert same['diff'] == pytest.approx(0) and same['p'] == pytest.approx(1)
    with pytest.raises(ValueError, match='at least 2 values per arm'):
        stats.interaction_welch(a, b, c, [50])


ARMS = ('dense_b0', 'moe_b0', 'dense_b2', 'moe_b2')


def _study(values, base=('moe_b0', 'dense_b0')) -> Study:
    configs = {a: {} for a in ARMS}
    block = an.check_preregistration({'baseline': 'dense_b2', 'primary': {'moe_b2': {'base': list(base)}}}, configs,
                                     'test')
    planned = list(range(max(map(len, values.values()))))  # every arm plans as many seeds as the longest ran
    plan = {'name': 'synth', 'seeds': [], 'configs': {a: {'seeds': planned} for a in ARMS},
            'preregistration': block}
    runs = {a: {s: _run(v, 100 * i + s) for s, v in enumerate(values[a])} for i, a in enumerate(ARMS)}
    return Study(name='synth', plan=plan, runs=runs, autoattack=[])


def test_the_interaction_is_a_primary_contrast_with_its_own_verdict():
    # the base gap is -10, the gap at the largest budget 0: the interaction +10 holds, the gap is equivalent
    study = _study({'dense_b0': _spread(50, 1, 20), 'moe_b0': _spread(40, 1, 20),
                    'dense_b2': _spread(60, 1, 20), 'moe_b2': _spread(60, 1, 20)})
    r = an.preregistered(study)
    gap, inter = r['contrasts']
    assert (gap['config'], gap['baseline'], gap['verdict']) == ('moe_b2', 'dense_b2', 'equivalent')
    assert inter['label'] == '(moe_b2 − dense_b2) − (moe_b0 − dense_b0)'
    assert inter['diff'] == pytest.approx(10) and inter['verdict'] == 'holds'
    # Holm over both primaries: the smaller p at alpha / 2, the other at alpha
    assert sorted(c['level'] for c in r['contrasts']) == pytest.approx([0.025, 0.05])
    assert r['sizing']['level'] == pytest.approx(0.025)
    text = '\n'.join(preregistration(study))
    assert '| (moe_b2 − dense_b2) − (moe_b0 − dense_b0) | 20 / 20 | +10.00 [' in text
    assert 'primary contrasts moe_b2 − dense_b2, (moe_b2 − dense_b2) − (moe_b0 − dense_b0);' in text
    # the gap grows with the budget: worse; noisy seeds: inconclusive
    grows = _study({'dense_b0': _spread(50, 1, 20), 'moe_b0': _spread(45, 1, 20),
                    'dense_b2': _spread(60, 1, 20), 'moe_b2': _spread(45, 1, 20)})
    assert an.preregistered(grows)['contrasts'][1]['verdict'] == 'worse'
    noisy = _study({a: _spread(50, 8, 4) for a in ARMS})
    assert an.preregistered(noisy)['contrasts'][1]['verdict'] == 'inconclusive at this power'


def test_an_interaction_arm_without_seeds_is_not_analysed():
    study = _study({'dense_b0': _spread(50, 1, 5), 'moe_b0': [40.0], 'dense_b2': _spread(60, 1, 5),
                    'moe_b2': _spread(60, 1, 5)})
    inter = an.preregistered(study)['contrasts'][1]
    assert 'p' not in inter and inter['verdict'].startswith('not analysed: ') and 'at least 2 seeds' in inter['verdict']
    assert 'interim' in '\n'.join(preregistration(study)).lower()  # moe_b0 ran 1 of its 5 planned seeds


@pytest.mark.parametrize('base, message', [
    ('moe_b0', 'give \\[moe config, baseline config\\]'),
    (['moe_b0'], 'give \\[moe config, baseline config\\]'),
    (['moe_b0', 'moe_b0'], 'give \\[moe config, baseline config\\]'),
    (['moe_b0', 'dense_b9'], "base in test is \\['moe_b0', 'dense_b9'\\]"),
    (['moe_b2', 'dense_b0'], 'two other configs'),  # the primary itself
    (['moe_b0', 'dense_b2'], 'two other configs'),  # the baseline
])
def test_a_bad_base_is_refused(base, message):
    with pytest.raises(UserError, match=message):
        an.check_preregistration({'baseline': 'dense_b2', 'primary': {'moe_b2': {'base': base}}},
                                 {a: {} for a in ARMS}, 'test')


# --- the shipped spec -----------------------------------------------------------------------------------------

def test_the_budget_spec_runs_two_arms_at_three_budgets_on_one_recipe():
    spec = load_spec('study_budget_fashion_mnist')
    grid = cells(spec)
    assert len(grid) == 2 * 3 * 8 and [c['cell'] for c in grid[:6]] == [
        f'{arm}_b{b}-seed200' for b in range(3) for arm in ('dense', 'convmoe')]
    budgets = {}
    for c in grid:
        cfg = cell_config(c, spec)
        budgets.setdefault(c['config'].split('_')[1], set()).add((cfg.dataset, cfg.epochs, cfg.model_kwargs['width']))
        # one recipe: only the data set and the epochs change with the budget
        assert (cfg.lr, cfg.batch_size, cfg.eps, cfg.attack_steps, cfg.training) == (0.05, 64, 0.1, 7, 'pgd')
    assert budgets == {'b0': {('fashion-mnist-bundled', 2, 8)}, 'b1': {('fashion-mnist-bundled', 6, 8)},
                       'b2': {('fashion-mnist', 2, 8)}}
    p = spec.preregistration
    assert (p['baseline'], list(p['primary']), p['primary']['convmoe_b2']['base']) == (
        'dense_b2', ['convmoe_b2'], ['convmoe_b0', 'dense_b0'])
    assert spec.eval['n_examples'] == 1000 and not spec.autoattack


def test_the_moe_arm_is_the_powered_studys_convmoe():
    budget, powered = cells(load_spec('study_budget_fashion_mnist')), cells(load_spec('study_powered_fashion_mnist'))
    assert {c['spec'] for c in budget if c['experts']} == {c['spec'] for c in powered if c['config'] == 'convmoe_all'}
    assert {c['spec'] for c in budget if not c['experts']} == {c['spec'] for c in powered if c['config'] == 'dense'}


def test_the_specs_sizing_is_what_the_sds_give():
    """The detectable interaction and gap the spec states, from the powered study's sds at 8 seeds per arm."""
    text = SPEC.read_text()
    n, level = 8, 0.05 / 2
    q = [4.80 ** 2 / n, 3.38 ** 2 / n]
    se_i, se_g = math.sqrt(2 * sum(q)), math.sqrt(sum(q))
    df_i = (2 * sum(q)) ** 2 / (2 * sum(v ** 2 / (n - 1) for v in q))
    df_g = sum(q) ** 2 / sum(v ** 2 / (n - 1) for v in q)
    inter = stats.minimum_detectable_difference(se_i, df_i, level, 0.8)
    gap = stats.minimum_detectable_difference(se_g, df_g, level, 0.8)
    stated = re.search(r'detectable interaction is ([\d.]+) points, the smallest detectable gap at b2 ([\d.]+)',
                       text.replace('\n#', ''))
    assert stated and (float(stated[1]), float(stated[2])) == (round(inter, 1), round(gap, 1))
    assert f'Welch df about {round(df_i)}' in text.replace('\n#', '')
    # the cost: 8 seeds x 2 arms x (250 + 604 + 1135) s, under the 10 h the issue allows
    assert 8 * 2 * (250 + (3 * 177 + 73) + (6 * 177 + 73)) == 31824 and '31,824 s = 8.8 h' in text


def test_every_budget_is_attacked_on_the_same_test_points():
    from bench.data import DEBIAN_FMNIST, load_tensors
    if not (DEBIAN_FMNIST / 't10k-images-idx3-ubyte.gz').is_file():
        pytest.skip('the full Fashion-MNIST (dataset-fashion-mnist) is not installed')
    bundled, full = load_tensors('fashion-mnist-bundled', 'test'), load_tensors('fashion-mnist', 'test', DEBIAN_FMNIST)
    assert all(bool((x[:1000] == y[:1000]).all()) for x, y in zip(bundled, full))


# --- the budget-response plot ---------------------------------------------------------------------------------

CONVMOE = {'name': 'resnet18_convmoe_e4_k1', 'arch': 'resnet18', 'experts': 4, 'k': 1,
           'effective_kwargs': {'width': 8, 'placement': 'all', 'gate': 'gap_fc', 'aux_loss': 'entropy'}}
DENSE = {'name': 'resnet18_dense', 'arch': 'resnet18', 'experts': 0, 'k': None, 'effective_kwargs': {'width': 8}}
PAPER_CONVMOE = {'table': 'resnet18-placement-conv5_x', 'moe': 'ConvMoEs replacing all 4 conv layers',
                 'loss': 'L_ent', 'gate': 'GAP-FC', 'k': '1'}


def _budget_run(acc: float, seed: int, model, dataset: str, epochs: int, train_limit=None):
    e = _run(acc, seed)
    e.update(model=dict(model), dataset=dataset, n_examples=100, eps=0.1, threat_model='Linf',
             training={'method': 'pgd', 'epochs': epochs,
                       'config': {'training': 'pgd', 'epochs': epochs, 'dataset': dataset, 'train_limit': train_limit,
                                  'attack_steps': 7, 'eps': 0.1}})
    return e


def _budget_study(gaps=(-10.0, -2.0)) -> Study:
    """dense and ConvMoE at two budgets (the bundled 10k images x 2 epochs, the full 60k x 2), 6 seeds each;
    ConvMoE's gap to dense is `gaps` (base, largest)."""
    arms = {'dense_b0': (DENSE, 'fashion-mnist-bundled', 50.0), 'convmoe_b0': (CONVMOE, 'fashion-mnist-bundled', 50 + gaps[0]),
            'dense_b2': (DENSE, 'fashion-mnist', 60.0), 'convmoe_b2': (CONVMOE, 'fashion-mnist', 60 + gaps[1])}
    block = an.check_preregistration({'baseline': 'dense_b2', 'primary': {
        'convmoe_b2': {'paper': PAPER_CONVMOE, 'base': ['convmoe_b0', 'dense_b0']}}}, arms, 'test')
    plan = {'name': 'synth_budget', 'seeds': list(range(6)), 'preregistration': block,
            'configs': {a: {'seeds': list(range(6))} for a in arms}}
    runs = {a: {s: _budget_run(v, 100 * i + s, model, dataset, 2) for s, v in enumerate(_spread(mean, 1, 6))}
            for i, (a, (model, dataset, mean)) in enumerate(arms.items())}
    for a, by_seed in runs.items():
        for s, e in by_seed.items():
            e['grid'] = {'spec': 'synth_budget', 'config': a, 'seed': s, 'cell': f'{a}-seed{s}', 'stage': 'main'}
    return Study(name='synth_budget', plan=plan, runs=runs, autoattack=[])


def test_the_budget_response_is_the_gap_per_budget_with_the_papers_effect():
    r = an.budget_response(_budget_study())
    assert r['metric'] == 'apgd-ce' and r['budgets'] == [(10000, 2, 8), (60000, 2, 8)]
    (arm, points), = r['arms'].items()
    assert arm == 'resnet18_convmoe_e4_k1, placement all'
    assert [b for b, _ in points] == r['budgets']
    assert [w['diff'] for _, w in points] == pytest.approx([-10.0, -2.0])
    assert all(w['lo'] < w['diff'] < w['hi'] for _, w in points)
    assert r['paper'] == {arm: pytest.approx(8.16, abs=0.005)}  # the paper's ConvMoE row, PGD-20, minus dense


def test_the_report_draws_the_budget_plot_only_for_a_study_of_budgets(tmp_path):
    from bench.results.study import PLOTS, plot_budget_response, plots, report_text

    study = _budget_study()
    assert [name for name, _, _ in plots(study)][-1] == 'budget_response.png'
    assert '![the gap to dense vs the training budget](study/budget_response.png)' in report_text(study)
    path = plot_budget_response(study, tmp_path / 'b.png')
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and path.stat().st_size > 10000
    again = plot_budget_response(_budget_study(), tmp_path / 'c.png')
    assert again.read_bytes() == path.read_bytes()  # the same entries draw the same bytes
    # a study that pre-registers no interaction across budgets: the report's plots stay what they were
    assert plots(Study(name='s', plan={**study.plan, 'preregistration': None}, runs=study.runs, autoattack=[])) == PLOTS
    # one budget: nothing to draw
    one = Study(name='one', plan=study.plan, runs={a: study.runs[a] for a in ('dense_b0', 'convmoe_b0')},
                autoattack=[])
    assert an.budget_response(one) is None
    assert plot_budget_response(one, tmp_path / 'd.png').read_bytes() != path.read_bytes()


def test_the_scope_of_a_budget_studys_verdicts_names_every_budget():
    from bench.results.study.render import scope

    text = scope(_budget_study())[0]
    assert ('resnet18 at the budgets 10000 training images x 2 epochs at width 8; 60000 training images x 2 epochs '
            'at width 8 of pgd training') in text


def test_the_report_states_the_gap_at_each_budget_in_a_table():
    from bench.results.study.render import budget_table

    text = '\n'.join(budget_table(_budget_study()))
    assert '| resnet18_convmoe_e4_k1, placement all | 10000 training images x 2 epochs, width 8 | 6 / 6 | -10.00 [' in text
    assert '| 60000 training images x 2 epochs, width 8 | 6 / 6 | -2.00 [' in text
    study = _budget_study()
    assert budget_table(Study(name='s', plan={**study.plan, 'preregistration': None}, runs=study.runs,
                              autoattack=[])) == []

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
    assert r['metric'] == 'apgd-ce' and r['budgets'] == [an.Budget('fashion-mnist-bundled', 10000, 2, 8),
                                                        an.Budget('fashion-mnist', 60000, 2, 8)]
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
    # budgets from the runs when the plan does not state them
    assert ('resnet18 at 2 budgets: fashion-mnist-bundled, 10000 training images x 2 epochs, width 8 (dense_b0, '
            'convmoe_b0); fashion-mnist, 60000 training images x 2 epochs, width 8 (dense_b2, convmoe_b2); each of pgd '
            'training') in text


def test_the_report_states_the_gap_at_each_budget_in_a_table():
    from bench.results.study.render import budget_table

    text = '\n'.join(budget_table(_budget_study()))
    assert ('| resnet18_convmoe_e4_k1, placement all | fashion-mnist-bundled, 10000 training images x 2 epochs, width 8 '
            '| 6 / 6 | -10.00 [') in text
    assert '| fashion-mnist, 60000 training images x 2 epochs, width 8 | 6 / 6 | -2.00 [' in text
    study = _budget_study()
    assert budget_table(Study(name='s', plan={**study.plan, 'preregistration': None}, runs=study.runs,
                              autoattack=[])) == []


# --- a study at three budgets: scope, summary, expert usage ----------------------------------------------------

THREE = {'b0': ('fashion-mnist-bundled', 2), 'b1': ('fashion-mnist-bundled', 6), 'b2': ('fashion-mnist', 2)}
LAYERS = {'layer4.0.conv1': [0.25, 0.25, 0.25, 0.25], 'layer4.1.conv1': [0.55, 0.15, 0.15, 0.15]}


def _first_seed_analyses(e, lead: float):
    """The first seed's per-expert analyses: each expert forced alone breaks `lead` points more of the gated
    model's correct points (so the gated model leads its average expert by `lead`), and two MoE layers' load."""
    (start, _), vectors = stats.per_sample_vectors(e)
    vectors['clean'][:] = True  # the gated model's clean bits, as the subpaths' (clean_acc 100 below)
    e['per_sample'] = stats.per_sample_block(vectors, start)
    rows = []
    for i in range(4):
        sub = vectors['apgd-ce'].copy()
        sub[np.flatnonzero(sub)[:int(round(lead))]] = False  # N = 100 points: one point is one percent
        rows.append(dict(expert=i, clean_acc=100.0, n_examples=len(sub), robust_acc={'apgd-ce': 100.0 * sub.mean()},
                         per_sample=stats.per_sample_block({'clean': np.ones(len(sub), bool), 'apgd-ce': sub}, start)))
    collapse = float(np.mean([1 - sum(-p * math.log(p) for p in load) / math.log(4) for load in LAYERS.values()]))
    e.update(clean_acc=100.0, per_expert=rows,
             routing={'load': list(np.mean(list(LAYERS.values()), axis=0)), 'collapse': collapse,
                      'layers': dict(LAYERS)})


def _three_budgets(ran=('b0', 'b1', 'b2'), gaps=(-10.0, -6.0, -2.0), leads=(5.0, 10.0, 20.0), n_seeds=6) -> Study:
    """dense and ConvMoE at three budgets (the bundled 10k images x 2 and x 6 epochs, the full 60k x 2), as
    the spec plans them (a config yet to run has its budget and experts in the plan); the budgets in `ran`
    have `n_seeds` seeds, the first seed of each ConvMoE config its per-expert analyses with lead `leads`."""
    configs, runs = {}, {}
    for i, (b, (dataset, epochs)) in enumerate(THREE.items()):
        for arm, model, mean in (('dense', DENSE, 50.0 + 5 * i), ('convmoe', CONVMOE, 50.0 + 5 * i + gaps[i])):
            name = f'{arm}_{b}'
            configs[name] = {'seeds': list(range(n_seeds)), 'experts': model['experts'],
                             'budget': {'dataset': dataset, 'train_limit': None, 'epochs': epochs, 'width': 8}}
            if b not in ran:
                continue
            values = _spread(mean, 1, n_seeds) if n_seeds > 1 else [mean]
            runs[name] = {s: _budget_run(v, 1000 * len(runs) + s, model, dataset, epochs) for s, v in enumerate(values)}
            for s, e in runs[name].items():
                e['grid'] = {'spec': 'synth3', 'config': name, 'seed': s, 'cell': f'{name}-seed{s}', 'stage': 'main'}
                e['flops'] = {'ratio': 1.0}  # ConvMoE k=1 at dense FLOPs: claim 1's pairs
            if arm == 'convmoe':
                _first_seed_analyses(runs[name][0], leads[i])
    block = an.check_preregistration({'baseline': 'dense_b2', 'primary': {
        'convmoe_b2': {'paper': PAPER_CONVMOE, 'base': ['convmoe_b0', 'dense_b0']}}}, configs, 'test')
    plan = {'name': 'synth3', 'seeds': list(range(n_seeds)), 'preregistration': block, 'configs': configs}
    return Study(name='synth3', plan=plan, runs=runs, autoattack=[])


SCOPE_3 = ('resnet18 at 3 budgets: fashion-mnist-bundled, 10000 training images x 2 epochs, width 8 (dense_b0, '
           'convmoe_b0); fashion-mnist-bundled, 10000 training images x 6 epochs, width 8 (dense_b1, convmoe_b1: '
           'reported, not tested); fashion-mnist, 60000 training images x 2 epochs, width 8 (dense_b2, convmoe_b2); '
           'each of pgd training with 7 attack steps at eps 0.1.')


@pytest.mark.parametrize('ran', [('b0', 'b1', 'b2'), ('b0',)])
def test_the_scope_names_every_planned_budget_with_its_data_set_images_and_epochs(ran):
    from bench.results.study.render import scope

    # the budgets yet to run come from the plan: the scope is the study's, not its first runs'
    assert SCOPE_3 in scope(_three_budgets(ran))[0]


def test_the_summary_pairs_moe_and_dense_at_each_budget():
    from bench.results.study.render import equal_flops_pairs, summary

    study = _three_budgets()
    assert equal_flops_pairs(study)[0] == [('convmoe_b0', 'dense_b0'), ('convmoe_b1', 'dense_b1'),
                                           ('convmoe_b2', 'dense_b2')]  # each MoE against the dense of its budget
    text = '\n'.join(summary(study))
    for row in ('convmoe_b0 vs dense_b0 (fashion-mnist-bundled, 10000 training images x 2 epochs, width 8) | -10.00 [',
                'convmoe_b1 vs dense_b1 (fashion-mnist-bundled, 10000 training images x 6 epochs, width 8) | -6.00 [',
                'convmoe_b2 vs dense_b2 (fashion-mnist, 60000 training images x 2 epochs, width 8) | -2.00 ['):
        assert row in text
    assert '(6 seeds per adversarially trained config)' in text and 'Of 3 comparisons on apgd-ce' in text
    # one budget run, with one seed: the others say they have no pair yet, and the grammar reads for one seed
    early = '\n'.join(summary(_three_budgets(('b0',), n_seeds=1)))
    assert ('| convmoe_b0 vs dense_b0 (fashion-mnist-bundled, 10000 training images x 2 epochs, width 8) '
            '| -10.00 |') in early
    assert ('|  |  | fashion-mnist-bundled, 10000 training images x 6 epochs, width 8: no pair yet (dense_b1, '
            'convmoe_b1 not run) | – | – | – |') in early
    assert ('| fashion-mnist, 60000 training images x 2 epochs, width 8: no pair yet (dense_b2, convmoe_b2 not run) '
            '|') in early
    assert '(1 seed per adversarially trained config)' in early and 'Of 1 comparison on apgd-ce' in early


def test_the_expert_usage_section_answers_whether_experts_specialise_as_training_grows():
    from bench.results.study.render import expert_usage, layer_collapse

    assert layer_collapse([0.25] * 4) == pytest.approx(0) and layer_collapse([1.0, 0, 0, 0]) == pytest.approx(1)
    text = '\n'.join(expert_usage(_three_budgets()))
    assert text.startswith('## Expert usage at each budget (first seed)')
    collapse = layer_collapse(LAYERS['layer4.1.conv1'])
    assert (f'| fashion-mnist, 60000 training images x 2 epochs, width 8 | convmoe_b2 | 0 | layer4.1.conv1 | '
            f'0.550, 0.150, 0.150, 0.150 | {collapse:.3f} |') in text
    assert ('| fashion-mnist-bundled, 10000 training images x 6 epochs, width 8 | convmoe_b1 | 0 | apgd-ce '
            '| 100 |') in text
    mean = collapse / 2  # the other layer's load is uniform
    assert ('**Do the experts specialise more as training grows?** resnet18_convmoe_e4_k1, placement all, from the '
            f'smallest budget to the largest, on apgd-ce: 10k x 2 ep, w8 (convmoe_b0): lead +5.00 points, collapse '
            f'{mean:.3f}; 10k x 6 ep, w8 (convmoe_b1): lead +10.00 points, collapse {mean:.3f}; 60k x 2 ep, w8 '
            f'(convmoe_b2): lead +20.00 points, collapse {mean:.3f}: yes, the experts specialise more as training '
            'grows (one run per budget, its first seed: no interval over seeds).') in text
    assert 'no steady trend, so no sign that the experts specialise more' in '\n'.join(
        expert_usage(_three_budgets(leads=(5.0, 20.0, 10.0))))
    # budgets without their first seed: the section says which, and what there is so far
    early = '\n'.join(expert_usage(_three_budgets(('b0',), n_seeds=1)))
    assert ('Not yet answerable: 10k x 6 ep, w8 (convmoe_b1 seed 0); 60k x 2 ep, w8 (convmoe_b2 seed 0) lack a '
            f'first-seed run with per-expert analyses; so far, on apgd-ce: 10k x 2 ep, w8 (convmoe_b0): lead +5.00 '
            f'points, collapse {mean:.3f}.') in early
    # a study that is not of budgets: no such section
    study = _three_budgets()
    assert expert_usage(Study(name='s', plan={**study.plan, 'preregistration': None}, runs=study.runs,
                              autoattack=[])) == []


def test_the_expert_plots_of_a_budget_study_have_one_panel_per_config_by_budget(tmp_path):
    from bench.results.study import _panels, plot_expert_load, plot_subpaths, plots

    study = _three_budgets()
    assert _panels(study, ['convmoe_b2', 'convmoe_b0', 'convmoe_b1']) == {
        'convmoe_b0 (10k x 2 ep, w8)': ['convmoe_b0'], 'convmoe_b1 (10k x 6 ep, w8)': ['convmoe_b1'],
        'convmoe_b2 (60k x 2 ep, w8)': ['convmoe_b2']}
    titles = {name: title for name, _, title in plots(study)}
    assert titles['expert_load.png'] == 'expert load per config, by budget'
    for fn in (plot_subpaths, plot_expert_load):
        assert fn(study, tmp_path / f'{fn.__name__}.png').stat().st_size > 10000


def test_the_gap_table_and_plot_read_right_at_three_budgets(tmp_path):
    from bench.results.study import plot_budget_response
    from bench.results.study.render import budget_table

    study = _three_budgets()
    r = an.budget_response(study)
    assert [b.short for b in r['budgets']] == ['10k x 2 ep, w8', '10k x 6 ep, w8', '60k x 2 ep, w8']
    assert [w['diff'] for _, w in r['arms']['resnet18_convmoe_e4_k1, placement all']] == pytest.approx([-10, -6, -2])
    text = '\n'.join(budget_table(study))
    assert text.index('10000 training images x 2 epochs') < text.index('10000 training images x 6 epochs') < \
        text.index('60000 training images x 2 epochs')
    assert '| fashion-mnist-bundled, 10000 training images x 6 epochs, width 8 | 6 / 6 | -6.00 [' in text
    assert plot_budget_response(study, tmp_path / 'b.png').stat().st_size > 10000


def test_a_refused_subpath_is_named_and_leaves_its_budget_unanswered():
    from bench.results.study.render import expert_usage

    study = _three_budgets()
    study.runs['convmoe_b1'][0]['per_expert'][2]['robust_acc']['apgd-ce'] += 7  # bits and number disagree
    text = '\n'.join(expert_usage(study))
    assert "- refused (convmoe_b1 seed 0, apgd-ce): entry 'e" in text and 'the entry is inconsistent' in text
    assert 'Not yet answerable: 10k x 6 ep, w8 (convmoe_b1 seed 0, its subpaths refused) lack' in text


def test_the_papers_line_is_drawn_before_the_primary_config_has_run():
    # an interim study: the largest budget's ConvMoE has no run yet, so the plot had no reference line at all
    study = _budget_study()
    interim = Study(name='interim', plan=study.plan, autoattack=[],
                    runs={a: (v if a != 'convmoe_b2' else {}) for a, v in study.runs.items()})
    r = an.budget_response(interim)
    assert r['paper'] == {'resnet18_convmoe_e4_k1, placement all': pytest.approx(8.16, abs=0.005)}

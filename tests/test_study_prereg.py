"""The pre-registered analysis of a study (`bench.results.study.analysis.preregistered`): every verdict on
constructed seeds, Holm over the primary contrasts, the sizing, the spec's block and the report section.

Arms are built from accuracies per seed whose mean and spread are chosen, so each verdict holds by
construction: far above the baseline with a small spread ('holds'), far below ('worse'), the same mean with a
tiny spread and many seeds ('equivalent'), the same mean with a large spread ('inconclusive').
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import pytest

from bench.core.errors import UserError
from bench.core import stats
from bench.results.study import analysis as an
from bench.results.study.analysis import Study
from bench.results.study.render import VERDICTS_END, preregistration

N = 100  # test points per run


def _run(acc: float, seed: int) -> Dict:
    """A main-stage entry of `acc` % on N points, with per-point bits that give exactly that accuracy."""
    k = int(round(acc * N / 100))
    bits = np.zeros(N, dtype=bool)
    bits[np.random.default_rng(seed).permutation(N)[:k]] = True
    return {'entry_id': f'e{seed}-{acc}', 'clean_acc': 90.0, 'robust_acc': {'apgd-ce': 100.0 * k / N},
            'eval_settings': {'attacks': {'apgd-ce': {'attack': 'APGD', 'steps': 100, 'seed': seed}}},
            'per_sample': stats.per_sample_block({'clean': np.ones(N, bool), 'apgd-ce': bits}),
            'dataset': 'fashion-mnist-bundled', 'model': {'arch': 'resnet18', 'kwargs': {'width': 8}},
            'training': {'config': {'training': 'pgd', 'epochs': 2, 'attack_steps': 7, 'eps': 0.1,
                                    'train_limit': 1000}}}


def _study(arms: Dict[str, List[float]], **prereg) -> Study:
    block = an.check_preregistration({'baseline': 'dense', 'primary': [a for a in arms if a != 'dense'], **prereg},
                                     {a: {} for a in arms}, 'test')
    plan = {'name': 'synth', 'seeds': [], 'configs': {a: {'seeds': list(range(len(v)))} for a, v in arms.items()},
            'preregistration': block}
    runs = {a: {s: _run(v, 100 * i + s) for s, v in enumerate(vals)} for i, (a, vals) in enumerate(arms.items())}
    return Study(name='synth', plan=plan, runs=runs, autoattack=[])


def _spread(mean: float, sd_points: float, n: int) -> List[float]:
    """n accuracies on a 1-point grid around `mean`, alternating ± so that the sd is about `sd_points`."""
    return [mean + (sd_points if i % 2 else -sd_points) for i in range(n)]


def test_the_verdict_rule_on_numbers():
    assert an.prereg_verdict(3.0, 1.0, 5.0, 0.01, 1.5, 0.05) == 'holds'
    assert an.prereg_verdict(-3.0, -5.0, -1.0, 0.01, 1.5, 0.05) == 'worse'
    assert an.prereg_verdict(0.2, -1.0, 1.4, 0.6, 1.5, 0.05) == 'equivalent'
    assert an.prereg_verdict(0.2, -3.0, 3.4, 0.6, 1.5, 0.05) == 'inconclusive at this power'
    # an interval above 0 at the contrast's own level is not enough when Holm does not reject
    assert an.prereg_verdict(1.0, 0.1, 1.9, 0.06, 1.5, 0.05) == 'inconclusive at this power'


def test_every_verdict_fires_on_constructed_seeds():
    study = _study({'dense': _spread(50, 1, 20), 'up': _spread(56, 1, 20), 'down': _spread(44, 1, 20),
                    'same': _spread(50, 1, 20), 'noisy': _spread(50, 8, 4)})
    r = an.preregistered(study)
    verdicts = {c['config']: c['verdict'] for c in r['contrasts']}
    assert verdicts == {'up': 'holds', 'down': 'worse', 'same': 'equivalent', 'noisy': 'inconclusive at this power'}
    noisy = next(c for c in r['contrasts'] if c['config'] == 'noisy')
    assert noisy['detectable'] > 1.5 and noisy['n_a'] == 4
    same = next(c for c in r['contrasts'] if c['config'] == 'same')
    assert same['boot'][1] < 0 < same['boot'][2]  # the hierarchical bootstrap is there, over seeds and points
    # Holm: the smallest p is tested at alpha / 4, the next at alpha / 3, ...
    assert sorted(c['level'] for c in r['contrasts']) == pytest.approx([0.0125, 0.05 / 3, 0.025, 0.05])
    assert all(c['p_holm'] >= c['p'] for c in r['contrasts'])


def test_holm_turns_a_marginal_contrast_inconclusive():
    """Alone, a contrast with p between alpha/2 and alpha holds; beside a second contrast whose p is larger,
    Holm tests it at alpha/2 and it does not."""
    base = [49.0, 51.0, 50.0, 49.0, 51.0, 50.0]
    up = [50.0, 52.0, 53.0, 50.0, 52.0, 53.0]  # Welch p = 0.035
    alone = an.preregistered(_study({'dense': base, 'up': up}))['contrasts'][0]
    assert 0.025 < alone['p'] < 0.05 and alone['verdict'] == 'holds'
    both = an.preregistered(_study({'dense': base, 'up': up, 'flat': _spread(50, 3, 6)}))['contrasts']
    assert both[0]['verdict'] == 'inconclusive at this power' and both[0]['p_holm'] > 0.05


def test_sizing_from_the_spec_and_from_the_seeds():
    r = an.preregistered(_study({'dense': _spread(50, 1, 4), 'up': _spread(52, 1, 4)}, seed_sd=1.5, margin=1.5))
    assert r['sizing']['spec'] == (1.5, 17)  # one sd of effect: the textbook 17 per arm
    assert r['sizing']['measured'][1] == stats.seeds_for_margin(r['sizing']['measured'][0], 1.5)


def test_sizing_is_at_holms_strictest_level():
    # two primary contrasts: the one with the smaller p is tested at alpha / 2, so each arm is sized for that
    r = an.preregistered(_study({'dense': _spread(50, 1, 4), 'up': _spread(52, 1, 4), 'down': _spread(48, 1, 4)},
                                seed_sd=1.5, margin=1.5))
    assert r['sizing']['level'] == 0.025
    assert r['sizing']['spec'] == (1.5, stats.seeds_for_margin(1.5, 1.5, 0.025)) and r['sizing']['spec'][1] == 21


def test_a_contrast_without_enough_seeds_or_the_metric_is_not_analysed():
    study = _study({'dense': _spread(50, 1, 4), 'one': [52.0]})
    assert an.preregistered(study)['contrasts'][0]['verdict'].startswith('not analysed: one and dense need at least 2')
    study = _study({'dense': _spread(50, 1, 4), 'up': _spread(55, 1, 4)}, metric='pgd20')
    assert 'did not measure pgd20' in an.preregistered(study)['contrasts'][0]['verdict']


@pytest.mark.parametrize('block, message', [
    ({'primary': ['up']}, 'preregistration.baseline'),
    ({'baseline': 'dense'}, 'preregistration.primary'),
    ({'baseline': 'dense', 'primary': ['dense']}, "names 'dense'"),
    ({'baseline': 'dense', 'primary': ['nope']}, "names 'nope'"),
    ({'baseline': 'dense', 'primary': ['up'], 'margin': 0}, 'preregistration.margin'),
    ({'baseline': 'dense', 'primary': ['up'], 'alpha': 1.0}, 'preregistration.alpha'),
    ({'baseline': 'dense', 'primary': ['up'], 'analysis': 'anova'}, 'preregistration.analysis'),
    ({'baseline': 'dense', 'primary': ['up'], 'seeds': 3}, "unknown preregistration key 'seeds'"),
    ({'baseline': 'dense', 'primary': {'up': {'paper': {'row': 1}}}}, 'preregistration.primary.up.paper'),
])
def test_bad_preregistration_blocks_name_the_key(block, message):
    with pytest.raises(UserError, match=message):
        an.check_preregistration(block, {'dense': {}, 'up': {}}, 'spec.yaml')


def test_the_report_shows_the_preregistration_and_the_papers_effect():
    study = _study({'dense': _spread(50, 1, 6), 'up': _spread(55, 1, 6)})
    study.plan['preregistration']['primary']['up'] = {'paper': {
        'table': 'resnet18-placement-conv5_x', 'moe': 'ConvMoEs replacing all 4 conv layers', 'loss': 'L_ent',
        'gate': 'GAP-FC'}}
    text = '\n'.join(preregistration(study))
    assert '## Pre-registered analysis' in text and 'primary contrasts up − dense' in text
    assert '| +8.16 / +6.04 | holds |' in text  # the paper's ConvMoE over conv5_x: 25.03 - 16.87 PGD-20
    assert 'Everything below this section is exploratory.' in text


def test_a_study_without_preregistration_says_everything_is_exploratory():
    study = _study({'dense': _spread(50, 1, 3), 'up': _spread(55, 1, 3)})
    study.plan['preregistration'] = None
    assert 'every comparison in this report is exploratory' in '\n'.join(preregistration(study))


def test_verdicts_before_every_planned_seed_has_run_are_labelled_interim():
    study = _study({'dense': _spread(50, 1, 6), 'up': _spread(55, 1, 6)})
    assert 'Interim' not in '\n'.join(preregistration(study))
    study.plan['configs']['up']['seeds'] = list(range(10))
    text = '\n'.join(preregistration(study))
    assert 'Interim: not every pre-registered seed has run (up 6 of 10 seeds)' in text
    # inside the block the README quotes, so the README cannot show an interim verdict as final
    assert text.index('Interim') < text.index(VERDICTS_END)


def test_the_verdicts_state_the_recipe_they_are_about():
    """A verdict tests the claim in this study's setting, which is not the paper's: the block the README quotes
    says which, from the runs' own training configs."""
    text = '\n'.join(preregistration(_study({'dense': _spread(50, 1, 6), 'up': _spread(55, 1, 6)})))
    scope = next(line for line in text.splitlines() if line.startswith('Scope:'))
    assert ('fashion-mnist-bundled, 1000 training images, resnet18 at width 8, 2 epochs of pgd training with 7 '
            'attack steps at eps 0.1') in scope and "CIFAR-100" in scope
    assert text.index('Scope:') < text.index(VERDICTS_END)

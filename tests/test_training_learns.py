"""Adversarial training learns: PGD-3 training of a small dense ResNet-18 on the bundled Fashion-MNIST reaches a
clean accuracy far above chance and a PGD-20 accuracy far above its normally trained twin's.

The smoke quickstart's pins prove bit-reproducibility only (its numbers are at chance); this run is sized to learn
(`tests/learning_run.py`: 2 epochs of 2,048 images, 200 test points) and runs in a process of its own on the
portable kernel path at one thread, so that its numbers are the same on every x86-64 machine. Two checks, apart:
the learned thresholds (`check_learned`), which hold with wide margins whatever the initialisation or schedule,
and the pinned numbers with their Wilson intervals (tests/fixtures/training_learns_numbers.json), which a change of
the models, the initialisation, the training or the attacks moves: re-pin with the command in REPIN.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.core.portable_cpu import portable_cpu_env
from bench.core.stats import wilson_interval
from pins import pinned_numbers

REPO = Path(__file__).resolve().parents[1]
PINNED = Path(__file__).parent / 'fixtures' / 'training_learns_numbers.json'
REPIN = 'TIMM_MOE_REPIN=1 python -m pytest tests/test_training_learns.py -k pinned'
CHANCE = 10.0  # percent: 10 classes
# the thresholds, in percent, on the lower/upper ends of 95% Wilson intervals over the test points
MIN_CLEAN_LOWER = 2.5 * CHANCE  # both models' clean accuracy: the lower end of its interval above 25 %
MIN_PGD_GAIN = 0.0  # points between the adversarial model's lower end and the normal twin's upper end (PGD-20): apart


@pytest.fixture(scope='module')
def learned(tmp_path_factory):
    out = tmp_path_factory.mktemp('learns')
    done = subprocess.run([sys.executable, str(REPO / 'tests' / 'learning_run.py'), str(out)],
                          env=portable_cpu_env({**os.environ, 'OMP_NUM_THREADS': '1'}), cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return with_intervals(json.loads(done.stdout.strip().splitlines()[-1]))


def with_intervals(numbers: dict) -> dict:
    """The run's counts with each accuracy and its 95% Wilson interval, in percent."""
    n = numbers['n_eval']
    for run in numbers['runs'].values():
        for key in ('clean', 'pgd20'):
            run[f'{key}_acc'] = 100 * run[key] / n
            run[f'{key}_interval'] = [round(v, 4) for v in wilson_interval(run[key], n)]
    return numbers


def check_learned(numbers: dict) -> None:
    """Fail unless both models learned (clean accuracy clearly above chance) and adversarial training clearly
    raised PGD-20 accuracy over the normal twin's."""
    pgd, normal = numbers['runs']['pgd'], numbers['runs']['normal']
    for name, run in numbers['runs'].items():
        assert run['clean_interval'][0] > MIN_CLEAN_LOWER, \
            f'{name}: clean {run["clean_acc"]:.1f} % {run["clean_interval"]}, chance is {CHANCE} %: it did not learn'
    gain = pgd['pgd20_interval'][0] - normal['pgd20_interval'][1]
    assert gain > MIN_PGD_GAIN, (f'PGD-20: adversarial {pgd["pgd20_acc"]:.1f} % {pgd["pgd20_interval"]}, normal '
                                 f'{normal["pgd20_acc"]:.1f} % {normal["pgd20_interval"]}: the intervals are '
                                 f'{gain:.1f} points apart, not more than {MIN_PGD_GAIN}')


def test_adversarial_training_learns(learned):
    check_learned(learned)


def test_training_learns_numbers_are_pinned(learned):
    assert learned == pinned_numbers(PINNED, learned), (
        'the learning run\'s numbers changed. If the change is meant to alter them (models, init, training, '
        f'attacks) and test_adversarial_training_learns passes, re-pin with `{REPIN}` and commit the fixture')


def test_the_learned_check_fires_at_chance_and_without_a_gain():
    pinned = json.loads(PINNED.read_text())
    check_learned(pinned)
    at_chance = json.loads(json.dumps(pinned))
    at_chance['runs']['pgd'].update(clean=22)  # the smoke quickstart's 10.9 % of 200 points
    with pytest.raises(AssertionError, match='pgd: clean 11.0'):
        check_learned(with_intervals(at_chance))
    no_gain = json.loads(json.dumps(pinned))
    no_gain['runs']['pgd']['pgd20'] = no_gain['runs']['normal']['pgd20'] + 10  # 5 points: within the intervals
    with pytest.raises(AssertionError, match='PGD-20: adversarial'):
        check_learned(with_intervals(no_gain))

"""scripts/fgsm_stability.py: its report and its pass/fail verdict (the full run is a manual 10-minute job)."""
import importlib.util
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / 'scripts' / 'fgsm_stability.py'


@pytest.fixture(scope='module')
def fgsm():
    spec = importlib.util.spec_from_file_location('fgsm_stability', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_reports_finite_training(fgsm):
    report = fgsm.run(width=4, n_train=128, n_test=64, epochs=1, log=lambda line: None)
    epoch, = report['history']
    assert epoch['steps'] == 2 and math.isfinite(epoch['mean_loss']) and epoch['max_gate_logit_gap'] > 0
    assert report['weights_finite'] and report['grads_finite'] and 0 <= report['clean_acc'] <= 100


def test_verdict_fails_on_non_finite_weights_or_low_accuracy(fgsm):
    good = dict(weights_finite=True, clean_acc=80.0)
    assert fgsm.failures(good) == []
    assert fgsm.failures(dict(good, weights_finite=False, clean_acc=float('nan'))) == [
        'non-finite weights', 'clean accuracy nan <= 50.0 %']
    assert fgsm.failures(dict(good, clean_acc=50.0)) == ['clean accuracy 50.0 <= 50.0 %']


def test_main_exits_1_when_the_run_fails(fgsm, capsys):
    # a tiny run cannot reach 101 % clean accuracy: the exit status must say so
    assert fgsm.main(['--width', '4', '--train-images', '64', '--test-images', '32', '--epochs', '1',
                      '--min-acc', '101', '--threads', '1']) == 1
    assert '"passed": false' in capsys.readouterr().out

"""RobustBench interop: robustbench 1.1.1 imports through `bench.evaluation.robustbench`, its `benchmark()` runs on
our models, and its AutoAttack number equals ours on the same model and examples.

robustbench's benchmark() loads CIFAR through torchvision (md5-checked downloads; there is no network here), so
these tests patch its data loader, `robustbench.eval.load_clean_dataset`, with `feed_examples` to hand it
exactly the examples our evaluator uses (`bench.data.eval_tensors`). Everything after loading (clean accuracy,
AutoAttack standard, the robust accuracy it reports) is robustbench's own code.

Runs in tox env timm109-robustbench (timm 1.0.9, `timm-moe[robustbench]`); skipped where the extra is missing.
"""
from __future__ import annotations

import importlib.util
import inspect

import pytest
import timm
import torch

import timm_moe  # noqa: F401 - registers the models
from bench.evaluation.robustbench import benchmark_on_examples, feed_examples, import_robustbench, install_autoattack_alias

pytestmark = [pytest.mark.robustbench, pytest.mark.usefixtures('one_thread')]

install_autoattack_alias()
if importlib.util.find_spec('robustbench') is not None:
    import_robustbench()  # installed: a broken install (pkg_resources, torchattacks' stub) must fail, not skip
robustbench = pytest.importorskip('robustbench', reason="the robustbench extra is not installed "
                                                        "(pip install 'timm-moe[robustbench]')")

from bench.data import eval_tensors  # noqa: E402
from bench.evaluation.loop import evaluate_model  # noqa: E402


def test_benchmark_is_the_real_function():
    """torchattacks' wheel ships a stub robustbench package without eval.benchmark; we must have the real one."""
    assert callable(robustbench.eval.benchmark) and robustbench.benchmark is robustbench.eval.benchmark
    assert 'aa_state_path' in inspect.signature(robustbench.eval.benchmark).parameters


def test_autoattack_alias_maps_to_pyautoattack_with_the_original_api():
    import autoattack
    import autoattack.autopgd_base
    import autoattack.state
    import pyautoattack.autopgd_base
    import pyautoattack.state
    assert autoattack.autopgd_base is pyautoattack.autopgd_base
    assert issubclass(autoattack.state.EvaluationState, pyautoattack.state.EvaluationState)
    assert issubclass(autoattack.AutoAttack, pyautoattack.AutoAttack)
    params = inspect.signature(autoattack.AutoAttack).parameters
    assert {'norm', 'eps', 'version', 'device', 'log_path', 'attacks_to_run'} <= set(params)
    assert 'bs' in inspect.signature(autoattack.AutoAttack.run_standard_evaluation).parameters


def test_benchmark_runs_on_a_cifar100_moe():
    """robustbench's own CIFAR-100 L-inf path, on our model (random weights: this shows the plumbing only)."""
    torch.manual_seed(0)
    model = timm.create_model('resnet18_blockmoe_e4_k1', width=8, num_classes=100).eval()
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 100, (4,))
    clean, robust = benchmark_on_examples(model, x, y, eps=8 / 255, dataset='cifar100', threat_model='Linf',
                                          batch_size=4)
    assert 0.0 <= robust <= clean <= 1.0


def test_benchmark_with_an_autoattack_state_file(tmp_path):
    """robustbench's resumable path reads the state back; its `.mean()` of the flags needs them as float."""
    torch.manual_seed(0)
    model = timm.create_model('resnet18_blockmoe_e4_k1', width=8, num_classes=100).eval()
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 100, (4,))
    with feed_examples(x, y):
        clean, robust = robustbench.eval.benchmark(model, n_examples=4, dataset='cifar100', threat_model='Linf',
                                                   eps=8 / 255, batch_size=4, aa_state_path=tmp_path / 'aa.json')
    assert (tmp_path / 'aa.json').exists() and 0.0 <= robust <= clean <= 1.0


def test_robustbench_autoattack_agrees_with_ours(tiny_trained):
    """Same model, same examples, one batch each: RobustBench's number must equal ours within 0.5 points."""
    x, y = eval_tensors('fashion-mnist-bundled', 8)
    eps = 8 / 255
    ours = evaluate_model(tiny_trained, x, y, attacks='standard', eps=eps, batch_size=8, per_expert=False,
                          n_check=1)  # the sanity checks rerun all of AutoAttack at eps 0 on these: 1 keeps CI short
    # dataset only selects robustbench's preprocessing (ToTensor for CIFAR), which the patched loader bypasses
    clean, robust = benchmark_on_examples(tiny_trained, x, y, eps=eps, dataset='cifar10', batch_size=8)
    assert 100 * clean == pytest.approx(ours.clean_acc)
    assert abs(100 * robust - ours.robust_acc['autoattack']) <= 0.5, (robust, ours.robust_acc)
    assert ours.robust_acc['autoattack'] < ours.clean_acc, 'AutoAttack should break something here'

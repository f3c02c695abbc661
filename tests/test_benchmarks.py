"""benchmarks/: each one runs (tiny shapes, one repeat), so a moved import or a changed API breaks a test."""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import timm_moe  # noqa: F401 - registers the models
from benchmarks import bench_attacks, bench_layer, bench_models, bench_training
from bench.models import normalized

ROOT = Path(__file__).resolve().parents[1]


def test_bench_layer_runs_as_a_module_from_the_repo_root():
    # the documented way to run it: `python -m benchmarks.bench_layer`, with nothing but the clone
    out = subprocess.run(
        [sys.executable, '-m', 'benchmarks.bench_layer', '--experts', '2', '--k', '1', '--batch', '4',
         '--channels', '8', '--repeats', '1', '--threads', '1'],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith(('eval', 'train'))]
    assert [r[0] for r in rows] == ['eval', 'train']
    assert all(float(v) > 0 for r in rows for v in r[1:4])  # ours, ideal and experts were timed


def test_bench_layer_times_every_candidate_in_both_modes():
    res = bench_layer.run_benchmark(experts=4, k=2, batch=6, channels=8, size=4, repeats=1, reference_src=None)
    assert set(res) == {'eval', 'train'}
    for med in res.values():
        assert set(med) == {'ours', 'ideal', 'experts'} and all(t > 0 for t in med.values())


def test_bench_models_times_the_moe_against_its_dense_baseline(capsys):
    assert bench_models.main(['--models', 'resnet18_blockmoe_e2_k1', '--batch', '1', '2', '--repeats', '1',
                              '--width', '4', '--device', 'cpu']) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith('resnet18_blockmoe_e2_k1')]
    assert len(row) == 1 and len(row[0].split()) == 1 + 3 * 2  # name, then (moe ms, dense ms, ratio) per batch


def test_bench_attacks_reports_times_ratio_and_accuracies(one_thread):
    model = timm.create_model(bench_attacks.TINY_MODEL, **dict(bench_attacks.TINY_KWARGS, width=4))
    net = normalized(model, (0.5,), (0.5,)).eval()
    x, y = torch.rand(4, 1, 28, 28), torch.arange(4)
    res = bench_attacks.run_benchmark(net, x, y, repeats=1, warmup=0)
    assert set(res['median_s']) == {'pgd20', 'apgd20'} and math.isfinite(res['ratio_pgd_over_apgd'])
    for acc in res['robust_acc'].values():
        assert 0 <= acc <= res['clean_acc']


def test_bench_training_reports_cost_per_epoch_against_normal(one_thread, capsys):
    assert bench_training.main(['--width', '4', '--batch-size', '8', '--free-replays', '2', '--attack-steps', '2',
                                '--repeats', '1', '--warmup', '0']) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()
            if line.startswith(('normal', 'pgd-2', 'fast', 'free'))}
    assert set(rows) == {'normal', 'pgd-2', 'fast', 'free'}
    # (ms per minibatch, cost per epoch over normal); free's row names m before them and a note after
    got = {k: tuple(map(float, r[2:4] if k == 'free' else r[1:3])) for k, r in rows.items()}
    assert got['normal'][1] == 1.0
    assert all(math.isfinite(v) and v > 0 for pair in got.values() for v in pair)
    # free per effective epoch: its time per minibatch over m, over normal's
    assert got['free'][1] == pytest.approx(got['free'][0] / 2 / got['normal'][0], rel=0.05, abs=0.01)

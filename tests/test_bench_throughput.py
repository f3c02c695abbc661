"""benchmarks/bench_throughput.py, bench_threads.py and profile_evaluation.py run and report (tiny shapes, one repeat); the OpenMP
defaults that the CLI sets (bench/core/threads.py)."""
import math

import pytest

from bench.core.threads import BUSY_LOAD, OPENMP_ENV, WAIT_VARS, set_openmp_defaults
from benchmarks import bench_threads, bench_throughput


def test_bench_throughput_reports_speed_flops_and_fraction_of_peak(one_thread):
    paths = ('fp32', 'bf16', 'channels_last', 'batch128')
    res = bench_throughput.run_benchmark(widths=(4,), names=('dense', 'convmoe-all'), paths=paths, batch_size=4,
                                         attack_steps=1, repeats=1, warmup=0)
    assert set(res['peak_gmacs_per_s']) == {'fp32', 'bf16'} and res['threads'] == 1
    assert [(r['model'], r['path']) for r in res['rows']] == [(m, p) for m in ('dense', 'convmoe-all') for p in paths]
    for r in res['rows']:
        assert r['img_per_s'] > 0 and math.isfinite(r['gmacs_per_s']) and 0 < r['fraction_of_peak']
    dense = {r['path']: r for r in res['rows'] if r['model'] == 'dense'}
    assert dense['fp32']['speed_over_fp32'] == 1.0 and dense['batch128']['batch_size'] == 128
    # one attack step: 2 forward-equivalents, the training step 3 (the module's count); the width-4 dense
    # ResNet-18 on 28x28 costs 1.87M MACs forward (a quarter of width 8's 7.3M)
    assert 5 * 1.8e6 < dense['fp32']['macs_per_image'] < 5 * 1.9e6


def test_bench_threads_measures_a_setting_in_a_fresh_process():
    default = {name.rsplit(', ', 1)[1]: s for name, s in bench_threads.settings(2).items() if 'timm-moe default' in name}
    assert {k: s['env'] for k, s in default.items()} == {'busy': OPENMP_ENV, 'quiet': {}}
    assert bench_threads._img_per_s(width=4, threads=1, env=dict(OPENMP_ENV), batch_size=4, repeats=1) > 0


@pytest.mark.parametrize('user', WAIT_VARS)
def test_openmp_defaults_never_override_a_wait_the_user_set(user):
    env = {user: '7'}
    assert set_openmp_defaults(env, load=BUSY_LOAD + 1) == {} and env == {user: '7'}


def test_openmp_defaults_wait_passively_on_a_busy_machine_and_spin_on_a_quiet_one():
    env = {'OMP_NUM_THREADS': '2'}
    assert set_openmp_defaults(env, load=BUSY_LOAD) == OPENMP_ENV and env == {'OMP_NUM_THREADS': '2', **OPENMP_ENV}
    env = {'OMP_NUM_THREADS': '2'}
    assert set_openmp_defaults(env, load=BUSY_LOAD - 0.01) == {} and env == {'OMP_NUM_THREADS': '2'}


@pytest.mark.parametrize('preset, load', [(None, 2.0), (None, 0.0), ('ACTIVE', 2.0)])
def test_the_cli_sets_the_openmp_wait_before_any_verb_runs(monkeypatch, preset, load):
    import os

    from bench.cli import main
    for var in WAIT_VARS:
        monkeypatch.delenv(var, raising=False)
    if preset is not None:
        monkeypatch.setenv('OMP_WAIT_POLICY', preset)
    monkeypatch.setattr(os, 'getloadavg', lambda: (load, load, load))
    with pytest.raises(SystemExit):
        main(['--help'])
    got = {var: os.environ[var] for var in WAIT_VARS if var in os.environ}
    assert got == ({'OMP_WAIT_POLICY': preset} if preset else OPENMP_ENV if load >= BUSY_LOAD else {})


def test_profile_evaluation_reports_the_cpu_seconds_of_each_part(one_thread, capsys):
    from benchmarks import profile_evaluation
    assert profile_evaluation.main(['--n-eval', '4', '--n-expert', '2', '--top', '40']) == 0
    out = capsys.readouterr().out
    assert 'evaluation of 4 images, per-expert analysis on 2:' in out
    assert 'analyse' in out and 'run_checks' in out  # the parts the doc's table names

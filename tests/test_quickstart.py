"""The quickstart end to end at its smoke size: every stage runs and writes what the README promises, and its
numbers are the pinned ones (tests/fixtures/quickstart_smoke_numbers.json)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.core.portable_cpu import portable_cpu_env
from bench.results.registry import load_entries
from bench.core.stats import wilson_interval
from pins import pinned_numbers

REPO = Path(__file__).resolve().parents[1]
PINNED = Path(__file__).parent / 'fixtures' / 'quickstart_smoke_numbers.json'
REGENERATE = 'TIMM_MOE_REPIN=1 python -m pytest tests/test_quickstart.py -k pinned'
# the smoke plan is deterministic for a given number of torch threads per worker (cores / 2); with another
# count, float reductions round differently, so a number may move by a test point or two (not by drift's ten)
OTHER_THREADS_TOLERANCE_POINTS = 2


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    """The smoke quickstart, in a process of its own on the portable CPU kernel path: the pins hold on an
    AVX-512 machine as on the AVX2 one that made them (on its native path an AVX-512 machine trains other
    weights; bench/core/portable_cpu.py)."""
    out = tmp_path_factory.mktemp('quickstart') / 'qs'
    done = subprocess.run([sys.executable, '-m', 'bench.cli', 'quickstart', '--out', str(out), '--plan', 'smoke'],
                          env=portable_cpu_env(), cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return out, json.loads((out / 'summary.json').read_text())


def test_the_smoke_run_is_on_the_portable_kernel_path(smoke):
    """The pins are only worth as much as this: the run's own entries record the kernel path they ran on."""
    for e in load_entries(smoke[0] / 'registry'):
        assert e['provenance']['device'].endswith(', AVX2 kernels)'), e['provenance']['device']


def smoke_numbers(out: Path, summary: dict) -> dict:
    """What the smoke plan measured, per run: the numbers that a change of the models, the training or the
    attacks moves (the final training loss and which test points each attack broke, beside the accuracies)."""
    entries = {e['entry_id']: e for e in load_entries(out / 'registry')}
    runs = {}
    for r in summary['rows']:
        method = 'pgd' if r['training'] == 'adversarial' else 'normal'
        history = json.loads((out / 'runs' / f"{r['model']}-{method}" / 'result.json').read_text())['history']
        runs[f"{r['model']}-{r['training']}"] = dict(
            clean_acc=r['clean_acc'], pgd_acc=r['pgd_acc'], apgd_acc=r['apgd_acc'],
            flops_ratio=round(r['flops_ratio'], 6), train_loss=round(history[-1]['train_loss'], 6),
            per_expert=[[p['clean_acc'], *[p['robust_acc'][k] for k in sorted(p['robust_acc'])]]
                        for p in r['per_expert']],
            per_sample_bits=entries[r['entry_id']]['per_sample']['bits'])
    return dict(n_eval=summary['n_eval'], threads_per_process=summary['threads_per_process'],
                runs=dict(sorted(runs.items())))


def check_pinned(got: dict, pinned: dict) -> None:
    """Fail, with the commands that regenerate the pins, when the smoke numbers differ from the pinned ones."""
    why = (f'the smoke quickstart\'s numbers changed. If the change is meant to alter them (models, init, '
           f'training, attacks), regenerate the fixture with `{REGENERATE}` and the shipped quickstart entries with '
           '`python scripts/refresh_quickstart_entries.py`, and commit both')
    assert got['n_eval'] == pinned['n_eval'] and got['runs'].keys() == pinned['runs'].keys(), why
    if got['threads_per_process'] == pinned['threads_per_process']:
        assert got['runs'] == pinned['runs'], why
        return
    tol = 100 * OTHER_THREADS_TOLERANCE_POINTS / got['n_eval']
    for name, run in got['runs'].items():
        want = pinned['runs'][name]
        for key in ('clean_acc', 'pgd_acc', 'apgd_acc'):
            assert abs(run[key] - want[key]) <= tol, f'{name} {key}: {run[key]} vs pinned {want[key]}: {why}'
        assert run['flops_ratio'] == pytest.approx(want['flops_ratio'], abs=1e-6), why


def test_quickstart_smoke_numbers_are_pinned(smoke):
    got = smoke_numbers(*smoke)
    check_pinned(got, pinned_numbers(PINNED, got))


def test_the_pin_fires_on_a_changed_number():
    pinned = json.loads(PINNED.read_text())
    changed = json.loads(json.dumps(pinned))
    run = next(iter(changed['runs'].values()))
    run['train_loss'] += 1e-6  # a change of the initialisation moves at least this
    with pytest.raises(AssertionError, match='TIMM_MOE_REPIN=1'):
        check_pinned(changed, pinned)
    changed['threads_per_process'] += 1  # on another machine only a clear move fails
    check_pinned(changed, pinned)
    run['pgd_acc'] += 10.0
    with pytest.raises(AssertionError, match='pgd_acc'):
        check_pinned(changed, pinned)


def test_quickstart_smoke_plan_writes_everything(smoke):
    out, summary = smoke
    assert len(summary['rows']) == 4
    for row in summary['rows']:
        assert set(row) >= {'model', 'training', 'clean_acc', 'pgd_acc', 'apgd_acc', 'flops_ratio'}
        assert 0 <= row['pgd_acc'] <= row['clean_acc'] <= 100
        assert row['flops_ratio'] == pytest.approx(1.0, abs=1e-3)  # k=1: the dense model's cost plus the gate
    assert {(r['model'].split('_')[1], r['training']) for r in summary['rows']} == {
        ('dense', 'normal'), ('dense', 'adversarial'), ('blockmoe', 'normal'), ('blockmoe', 'adversarial')}
    moe = next(r for r in summary['rows'] if 'blockmoe' in r['model'])
    assert len(moe['per_expert']) == 4
    entries = load_entries(out / 'registry')
    assert len(entries) == 4
    n = summary['n_eval']
    for row in summary['rows']:  # each printed accuracy has its Wilson interval, which holds the accuracy
        for key, acc in (('clean', row['clean_acc']), ('pgd20', row['pgd_acc']), ('apgd-ce20', row['apgd_acc'])):
            lo, hi = row['intervals'][key]
            assert lo <= acc <= hi and (lo, hi) == wilson_interval(round(acc * n / 100), n)
    for kind in ('dense', 'moe'):  # the gain's paired interval holds the gain
        lo, hi = summary['pgd_gain_interval'][kind]
        assert lo <= summary['pgd_gain_points'][kind] <= hi
    for e in entries:  # schema 2: exact settings and per-sample bits of every printed number
        assert e['schema_version'] == 2 and e['per_sample']['n'] == n
        assert set(e['per_sample']['bits']) == {'clean', 'pgd20', 'apgd-ce20', 'worst_case'}
        assert e['eval_settings']['attacks']['apgd-ce20']['steps'] == 20
    assert (out / 'registry' / 'LEADERBOARD.md').exists()
    assert {p.split('/')[-1] for p in summary['plots']} == {
        'clean_vs_robust.png', 'expert_load.png', 'per_expert.png', 'flops_vs_robust.png'}


def test_quickstart_refuses_a_used_directory(tmp_path, capsys):
    out = tmp_path / 'qs'
    out.mkdir()
    (out / 'summary.json').write_text('{}')
    assert main(['quickstart', '--out', str(out), '--plan', 'smoke']) == 2
    assert 'is not empty' in capsys.readouterr().err
    assert (out / 'summary.json').read_text() == '{}'
    assert main(['quickstart', '--out', str(out), '--plan', 'huge']) == 2


def test_repinning_writes_the_pins_and_compares_nothing(tmp_path, monkeypatch):
    pins, got = tmp_path / 'pins.json', {'n_eval': 20, 'runs': {'a': {'clean_acc': 12.5}}}
    pins.write_text(json.dumps({'n_eval': 20, 'runs': {'a': {'clean_acc': 99.0}}}))
    assert pinned_numbers(pins, got)['runs']['a']['clean_acc'] == 99.0  # without the variable: the file's pins
    monkeypatch.setenv('TIMM_MOE_REPIN', '1')
    with pytest.raises(pytest.skip.Exception, match='run again without it'):
        pinned_numbers(pins, got)  # the run's own numbers are never compared with themselves
    assert json.loads(pins.read_text()) == got

"""The quickstart end to end at its smoke size: every stage runs and writes what the README promises."""
import json

import pytest

from bench.cli import main
from bench.results.registry import load_entries
from bench.results.stats import wilson_interval


def test_quickstart_smoke_plan_writes_everything(tmp_path):
    out = tmp_path / 'qs'
    assert main(['quickstart', '--out', str(out), '--plan', 'smoke']) == 0
    summary = json.loads((out / 'summary.json').read_text())
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
        assert set(e['per_sample']['bits']) == {'clean', 'pgd20', 'apgd-ce20', 'ensemble'}
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

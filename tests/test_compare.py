"""`timm-moe compare`: paired comparison of two registry entries, on synthetic entries in a tmp registry."""
import json

import numpy as np
import pytest

from bench.core import stats
from bench.results import compare
from bench.cli import main
from bench.core.errors import UserError
from bench.results.registry import write_entry

PGD20 = {'attack': 'PGD', 'implementation': 'timm-moe', 'eps': 8 / 255, 'norm': 'Linf', 'steps': 20,
         'restarts': 1, 'step_size': 2 / 255, 'random_start': False, 'seed': 0}
APGD = {'attack': 'APGD', 'implementation': 'pyautoattack 0.2', 'eps': 8 / 255, 'norm': 'Linf', 'steps': 100,
        'restarts': 1, 'loss': 'ce', 'seed': 0}


def _entry(entry_id, correct, start=0, settings=None, dataset='fashion-mnist-bundled', per_sample=True, eps=8 / 255):
    """A valid version-2 measured entry whose accuracies are those of the `correct` vectors."""
    correct = {k: np.asarray(v, bool) for k, v in correct.items()}
    n = len(correct['clean'])
    acc = {k: 100.0 * v.sum() / n for k, v in correct.items()}
    attacks = settings if settings is not None else {
        k: dict(PGD20 if k.startswith('pgd') else APGD) for k in correct if k not in ('clean', 'worst_case')}
    entry = {
        'schema_version': 2, 'entry_id': entry_id, 'source': 'measured',
        'model': {'name': 'resnet18_dense', 'kwargs': {'width': 8}, 'arch': 'resnet18', 'experts': 0, 'k': None,
                  'gate': None, 'aux_loss': None, 'placement': None, 'noisy_gating': None,
                  'effective_kwargs': {'width': 8}},
        'training': {'method': 'pgd', 'config': None, 'config_sha256': None, 'config_path': None, 'epochs': 1},
        'dataset': dataset, 'threat_model': 'Linf', 'eps': eps, 'n_examples': n,
        'clean_acc': acc['clean'], 'robust_acc': {k: v for k, v in acc.items() if k != 'clean'},
        'attack_note': None,
        'eval_settings': {'seed': 0, 'eps': eps, 'norm': 'Linf', 'n_examples': n, 'batch_size': 64,
                          'attacks': attacks},
        'per_sample': stats.per_sample_block(correct, start),
        'provenance': {'package_version': '0.1.0', 'git_commit': None, 'torch': None, 'timm': None, 'device': None,
                       'command': None, 'seed': 0, 'date': None, 'checkpoint_sha256': None},
    }
    if not per_sample:  # as written before per-sample storage (schema version 1)
        for key in ('schema_version', 'eval_settings', 'per_sample'):
            del entry[key]
        for key in ('noisy_gating', 'effective_kwargs'):
            del entry['model'][key]
    return entry


def _vectors(n, seed, p_clean=0.8, p_pgd=0.5):
    rng = np.random.default_rng(seed)
    clean = rng.random(n) < p_clean
    pgd = clean & (rng.random(n) < p_pgd / p_clean)
    apgd = pgd & (rng.random(n) < 0.9)
    return {'clean': clean, 'pgd20': pgd, 'apgd-ce': apgd, 'worst_case': apgd}


@pytest.fixture
def registry(tmp_path):
    root = tmp_path / 'registry'
    a, b = _vectors(200, 1, p_pgd=0.55), _vectors(200, 2, p_pgd=0.45)
    write_entry(_entry('model-a', a), root)
    write_entry(_entry('model-b', b), root)
    return root, a, b


def _run(capsys, *argv):
    code = main(['compare', *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_identical_points_default_metric(registry, capsys):
    root, a, b = registry
    code, out, err = _run(capsys, 'model-a', 'model-b', '--registry', root, '--json', '-')
    assert code == 0, err
    r = json.loads(out)
    assert r['metric'] == 'worst_case'  # strongest shared: worst_case ranks above apgd-ce and pgd20
    xa, xb = a['worst_case'], b['worst_case']
    assert r['n'] == 200 and not r['overlap']['partial'] and r['warnings'] == []
    assert r['diff'] == pytest.approx(100 * (xa.mean() - xb.mean()))
    assert r['discordant'] == {'a_only': int((xa & ~xb).sum()), 'b_only': int((~xa & xb).sum())}
    assert r['mcnemar_p'] == pytest.approx(stats.mcnemar_exact(xa, xb))
    assert (r['diff_lo'], r['diff_hi']) == pytest.approx(stats.paired_bootstrap(xa, xb)[1:])
    assert (r['a']['lo'], r['a']['hi']) == pytest.approx(stats.wilson_interval(int(xa.sum()), 200))


def test_text_output_and_metric_option(registry, capsys, tmp_path):
    root, a, b = registry
    code, out, err = _run(capsys, 'model-a', 'model-b', '--registry', root, '--metric', 'pgd20', '--boot', 500,
                          '--json', tmp_path / 'r.json')
    assert code == 0, err
    assert 'metric: pgd20 (given with --metric); 200 shared test points [0, 200)' in out
    assert 'paired bootstrap' in out and 'exact McNemar p =' in out and 'verdict:' in out
    saved = json.loads((tmp_path / 'r.json').read_text())
    assert saved['metric'] == 'pgd20' and saved['n_boot'] == 500
    assert saved['diff'] == pytest.approx(100 * (a['pgd20'].mean() - b['pgd20'].mean()))


def test_entry_files_by_path(registry, capsys):
    root, _, _ = registry
    pa = root / 'fashion-mnist-bundled' / 'Linf' / 'model-a.json'
    code, out, err = _run(capsys, pa, 'model-b', '--registry', root, '--metric', 'clean')
    assert code == 0, err
    assert 'metric: clean' in out


def test_shifted_points_compare_on_the_overlap(tmp_path, capsys):
    root = tmp_path / 'reg'
    a, b = _vectors(100, 3), _vectors(100, 4)
    write_entry(_entry('early', a, start=0), root)
    write_entry(_entry('late', b, start=40), root)  # points [40, 140)
    code, out, err = _run(capsys, 'early', 'late', '--registry', root, '--metric', 'pgd20', '--json', '-')
    assert code == 0, err
    r = json.loads(out)
    assert r['n'] == 60 and r['overlap'] == {'index_range': [40, 100], 'partial': True}
    xa, xb = a['pgd20'][40:], b['pgd20'][:60]  # the same test points 40..99
    assert r['diff'] == pytest.approx(100 * (xa.mean() - xb.mean()))
    assert r['mcnemar_p'] == pytest.approx(stats.mcnemar_exact(xa, xb))
    assert 'the point sets differ' in r['warnings'][0] and '[40, 100)' in r['warnings'][0]
    _, text, _ = _run(capsys, 'early', 'late', '--registry', root, '--metric', 'pgd20')
    assert text.startswith('WARNING: the point sets differ')
    assert f"{100 * a['pgd20'].mean():.2f}% on all its points [0, 100)" in text


def test_disjoint_points_are_refused(tmp_path, capsys):
    root = tmp_path / 'reg'
    write_entry(_entry('first', _vectors(50, 5), start=0), root)
    write_entry(_entry('second', _vectors(50, 6), start=50), root)
    code, out, err = _run(capsys, 'first', 'second', '--registry', root)
    assert code == 2 and out == ''
    assert err.count('\n') == 1 and 'share no test points' in err and '[0, 50)' in err and '[50, 100)' in err


def test_different_attack_settings_refused_unless_allowed(tmp_path, capsys):
    root = tmp_path / 'reg'
    va, vb = _vectors(100, 7), _vectors(100, 8)
    write_entry(_entry('steps20', va), root)
    other = {'pgd20': dict(PGD20, steps=10), 'apgd-ce': dict(APGD)}
    write_entry(_entry('steps10', vb, settings=other), root)
    code, _, err = _run(capsys, 'steps20', 'steps10', '--registry', root, '--metric', 'pgd20')
    assert code == 2 and err.count('\n') == 1
    assert "settings of 'pgd20' differ" in err and 'steps: 20 vs 10' in err and '--allow-different-settings' in err
    code, out, err = _run(capsys, 'steps20', 'steps10', '--registry', root, '--metric', 'pgd20',
                          '--allow-different-settings')
    assert code == 0, err
    assert 'WARNING: DIFFERENT ATTACK SETTINGS' in out
    # the settings of another metric are not this metric's business: APGD agrees
    code, _, err = _run(capsys, 'steps20', 'steps10', '--registry', root, '--metric', 'apgd-ce')
    assert code == 0, err
    # the worst case is over every attack run, so a different attack in it makes a different worst case
    code, _, err = _run(capsys, 'steps20', 'steps10', '--registry', root, '--metric', 'worst_case')
    assert code == 2 and 'pgd20.steps: 20 vs 10' in err
    # its old name is refused in one line that gives the new one
    code, _, err = _run(capsys, 'steps20', 'steps10', '--registry', root, '--metric', 'ensemble')
    assert code == 2 and err.count('\n') == 1 and "'ensemble' is now called 'worst_case'" in err, err


def test_different_eps_is_a_different_setting(tmp_path, capsys):
    root = tmp_path / 'reg'
    write_entry(_entry('eps8', _vectors(60, 9)), root)
    write_entry(_entry('eps4', _vectors(60, 10), eps=4 / 255), root)
    code, _, err = _run(capsys, 'eps8', 'eps4', '--registry', root, '--metric', 'pgd20')
    assert code == 2 and 'eps: 8/255 vs 4/255' in err
    code, _, err = _run(capsys, 'eps8', 'eps4', '--registry', root, '--metric', 'clean')
    assert code == 0, err  # clean accuracy does not depend on eps


def test_attack_seed_difference_is_a_note_not_a_refusal(tmp_path, capsys):
    root = tmp_path / 'reg'
    write_entry(_entry('seed0', _vectors(60, 11)), root)
    reseeded = {'pgd20': dict(PGD20, seed=1), 'apgd-ce': dict(APGD, seed=1)}
    write_entry(_entry('seed1', _vectors(60, 12), settings=reseeded), root)
    code, out, err = _run(capsys, 'seed0', 'seed1', '--registry', root, '--metric', 'pgd20')
    assert code == 0, err
    assert 'note: randomness/bookkeeping differs' in out and 'seed: 0 vs 1' in out


def test_old_entry_without_per_sample_is_refused_in_one_line(tmp_path, capsys):
    root = tmp_path / 'reg'
    write_entry(_entry('new', _vectors(40, 13)), root)
    write_entry(_entry('old', _vectors(40, 14), per_sample=False), root)
    code, out, err = _run(capsys, 'new', 'old', '--registry', root)
    assert code == 2 and out == ''
    assert err.count('\n') == 1 and "entry 'old' has no per-sample results: it predates per-sample storage" in err


def test_bad_references_and_metrics(registry, capsys, tmp_path):
    root, _, _ = registry
    cases = [
        (('model-a', 'nope', '--registry', root), "no entry 'nope' in registry"),
        (('model-a', 'Bad Id!', '--registry', root), 'neither an entry file nor an entry id'),
        (('model-a', 'model-b', '--registry', tmp_path / 'missing'), 'does not exist'),
        (('model-a', 'model-b', '--registry', root, '--metric', 'autoattack'),
         "--metric 'autoattack' is not stored in both entries"),
        (('model-a', 'model-b', '--registry', root, '--boot', 0), '--boot 0 must be at least 1'),
        (('model-a', 'model-b', '--registry', root, '--confidence', 95), '--confidence 95.0 must lie'),
    ]
    for argv, message in cases:
        code, _, err = _run(capsys, *argv)
        assert code == 2 and message in err, (argv, err)


def test_different_datasets_are_refused():
    a = _entry('a', _vectors(30, 15))
    b = _entry('b', _vectors(30, 16), dataset='fashion-mnist')
    with pytest.raises(UserError, match='different data sets'):
        compare.compare_entries(a, b)


def test_bits_that_contradict_the_entry_are_refused():
    a, b = _entry('a', _vectors(30, 17)), _entry('b', _vectors(30, 18))
    a['robust_acc']['pgd20'] += 10.0  # hand-edited number: the bits no longer back it
    with pytest.raises(UserError, match="'a': its per-sample bits for 'pgd20' give"):
        compare.compare_entries(a, b, metric='pgd20')


def test_strongest_shared_order():
    s = compare.strongest_shared
    assert s(['clean', 'pgd20', 'apgd-ce', 'autoattack'], ['clean', 'pgd20', 'apgd-ce']) == 'apgd-ce'
    assert s(['autoattack', 'worst_case'], ['autoattack', 'worst_case']) == 'autoattack'
    assert s(['autoattack.apgd-ce+square', 'apgd-ce'], ['autoattack.apgd-ce+square', 'apgd-ce']) == \
        'autoattack.apgd-ce+square'
    assert s(['pgd10', 'pgd20', 'apgd-ce20'], ['pgd20', 'pgd10', 'apgd-ce20']) == 'apgd-ce20'
    assert s(['pgd10', 'clean', 'mystery'], ['mystery', 'clean', 'pgd10']) == 'pgd10'
    assert s(['clean', 'mystery'], ['mystery', 'clean']) == 'mystery'  # unknown attacks rank above clean
    assert s(['clean'], ['pgd20']) is None


def test_default_metric_skips_a_worst_case_over_different_attack_sets(tmp_path, capsys):
    """A study's first seed runs an extra attack: its worst case is over another attack set, so the default
    is the strongest metric both measured the same way (here apgd-ce), not a refusal."""
    root = tmp_path / 'reg'
    va, vb = _vectors(100, 13), _vectors(100, 14)
    va['apgd-dlr'] = va['apgd-ce'].copy()  # the first seed's extra attack, also in its worst case
    write_entry(_entry('first-seed', va, settings={'pgd20': dict(PGD20), 'apgd-ce': dict(APGD),
                                                   'apgd-dlr': dict(APGD, loss='dlr')}), root)
    write_entry(_entry('other-seed', vb), root)
    code, out, err = _run(capsys, 'first-seed', 'other-seed', '--registry', root)
    assert code == 0, err
    assert ('metric: apgd-ce (the strongest metric both entries measured with the same settings '
            '(worst_case: settings differ))') in out
    code, _, err = _run(capsys, 'first-seed', 'other-seed', '--registry', root, '--metric', 'worst_case')
    assert code == 2 and 'worst-case members' in err  # asked for by name, it is still refused

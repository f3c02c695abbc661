"""benchmarks/fast_path_accuracy.py: trains and attacks each path over seeds (tiny sizes), compares it with fp32
by the paired difference over seeds, resumes from its finished runs, and refuses bad options in one line."""
import json

import pytest

from benchmarks import fast_path_accuracy as fpa

TINY = ['--train-limit', '64', '--n-eval', '32', '--attack-steps', '2', '--procs', '1', '--no-progress']


def test_each_path_is_trained_attacked_and_paired_with_fp32(one_thread, tmp_path, capsys):
    out, record = tmp_path / 'runs', tmp_path / 'fpa.json'
    argv = ['--paths', 'fp32', 'channels_last', '--seeds', '0', '1', *TINY, '--out', str(out), '--json', str(record)]
    assert fpa.main(argv) == 0
    res = json.loads(record.read_text())
    assert res['sizes'] == dict(fpa.sizes_of(), train_limit=64, n_eval=32, attack_steps=2)
    assert res['sizes']['batch_size'] == 64 and res['sizes']['lr'] == 0.05  # the plan's adversarial recipe
    assert [(r['path'], r['seed']) for r in res['runs']] == [(p, s) for p in ('fp32', 'channels_last') for s in (0, 1)]
    for r in res['runs']:
        assert r['n_eval'] == 32 and r['steps'] == 1 and r['threads'] == 1 and r['img_per_s'] > 0
        assert 0 <= r['counts']['pgd20'] <= r['counts']['clean'] <= 32
        assert r['acc']['clean'] == pytest.approx(100 * r['counts']['clean'] / 32)
        assert r['settings']['channels_last'] == (r['path'] == 'channels_last')
    fp32, cl = res['summary']['fp32'], res['summary']['channels_last']
    assert 'vs_fp32' not in fp32['clean'] and 'verdict' not in fp32
    for m in ('clean', 'pgd20'):
        d = cl[m]['vs_fp32']
        assert d['n'] == 2 and d['diffs'] == [a - b for a, b in zip(cl[m]['values'], fp32[m]['values'])]
        assert d['lo'] <= d['mean'] <= d['hi'] and isinstance(d['within_noise'], bool)
        for (lo, hi), v in zip(cl[m]['wilson'], cl[m]['values']):
            assert 0 <= lo <= v <= hi <= 100
    assert cl['verdict'] in ('within seed noise', 'beyond seed noise')
    assert '| channels_last | 64 |' in capsys.readouterr().out
    # a rerun with --resume reads the finished runs instead of training them again (their train_s is kept)
    assert fpa.main(argv + ['--resume']) == 0
    assert json.loads(record.read_text())['runs'] == res['runs']


def test_batch128_keeps_the_recipes_lr_and_batch128_lr2x_scales_it(one_thread, tmp_path):
    sizes = fpa.sizes_of(train_limit=128, n_eval=8, attack_steps=1)
    rec = fpa.train_and_evaluate('batch128', 0, sizes, str(tmp_path), threads=1)
    assert (rec['batch_size'], rec['lr'], rec['steps']) == (128, 0.05, 1)
    assert fpa.path_settings('batch128_lr2x', sizes) == dict(batch_size=128, lr=0.1)  # 0.05 x 128/64
    assert fpa.path_settings('bf16', sizes) == dict(batch_size=64, lr=0.05, amp=True)


@pytest.mark.parametrize('path, fp32, within', [
    ([70.0, 72.0, 71.0], [71.0, 71.5, 70.0], True),  # differences -1, +0.5, +1: straddle 0, mean 0.17 < sd 0.76
    ([60.0, 61.0, 60.5], [71.0, 71.5, 70.0], False),  # ten points lower on every seed
    ([71.0, 71.5, 72.5], [71.0, 71.5, 70.0], False),  # interval includes 0 (+0.83 [-2.8, +4.4]), |0.83| > sd 0.76
    ([50.0, 50.0, 50.0], [50.0, 50.0, 50.0], True),  # no run changed, fp32's sd is 0: within, not beyond
])
def test_the_verdict_needs_an_interval_through_zero_and_a_difference_within_fp32s_seed_sd(path, fp32, within):
    from bench.core.stats import seed_summary
    assert fpa.paired_difference(path, fp32, seed_summary(fp32)['std'])['within_noise'] is within


def test_one_seed_gives_no_verdict():
    d = fpa.paired_difference([70.0], [71.0], None)
    assert (d['mean'], d['lo'], d['within_noise']) == (-1.0, None, None)
    runs = [dict(path=p, seed=0, n_eval=10, counts=dict(clean=7, pgd20=3), acc=dict(clean=70.0, pgd20=30.0),
                 train_s=1.0, img_per_s=1.0) for p in ('fp32', 'bf16')]
    assert fpa.summarise(runs, ['fp32', 'bf16'], [0])['bf16']['verdict'] == 'not decided (one seed)'


@pytest.mark.parametrize('argv, message', [
    (['--paths', 'bf16'], '--paths must include fp32'),
    (['--seeds', '0', '0'], '--seeds 0 0 repeats a seed'),
    (['--n-eval', '0'], '--n-eval 0 must be at least 1'),
    (['--paths', 'fp32', 'fp16'], "invalid choice: 'fp16'"),
])
def test_bad_options_are_refused_in_one_line(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        fpa.main(argv + ['--out', str(tmp_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and 'Traceback' not in err
    assert not any(tmp_path.iterdir())  # refused before any run

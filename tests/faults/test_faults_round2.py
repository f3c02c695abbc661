"""Faults a user can cause (issue 19, section 4): each refused in one line with exit status 2, and nothing the
user made (a run, a registry entry, a shipped folder) lost or corrupted. Every test here failed before its fix."""
from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import socket
import stat
from pathlib import Path

import pytest
import yaml

import timm_moe  # noqa: F401  registers the models
from bench.cli import main
from bench.core.errors import UserError
from trained_run import NAME, two_step_run
from contract import one_line as _one_line

STUDY = Path(__file__).parents[1] / 'fixtures' / 'study_tiny.yaml'
RUN_FILES = ('config.yaml', 'model.pth', 'last.pth.tar', 'metrics.jsonl', 'result.json')


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    """A real two-step training run, as `timm-moe train` writes it (a pristine copy per test: `run`)."""
    return two_step_run(tmp_path_factory.mktemp('run') / 'run')


@pytest.fixture
def run(run_dir, tmp_path):
    copy = tmp_path / 'runs' / 'x'
    shutil.copytree(run_dir, copy)
    return copy


def _study(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load(STUDY.read_text())
    data.update({'out': str(tmp_path / 'study'), **changes})
    path = tmp_path / 'study_tiny.yaml'
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ------------------------------------------------------------------ 1. an --out that overlaps the source

@pytest.mark.parametrize('where', ['same', 'inside', 'contains'])
def test_export_refuses_an_out_that_overlaps_the_run(run, tmp_path, capsys, where):
    out = {'same': run, 'inside': run / 'hub', 'contains': run.parent}[where]
    assert main(['export', '--checkpoint', str(run), '--out', str(out), '--overwrite',
                 '--registry', str(tmp_path / 'none')]) == 2
    _one_line(capsys, '--out', 'overlaps')
    assert all((run / name).is_file() for name in RUN_FILES)
    assert not (run / 'hub').exists()


def test_export_refuses_an_out_that_overlaps_the_registry(run, tmp_path, capsys):
    registry = tmp_path / 'registry'
    (registry / 'fashion-mnist-bundled').mkdir(parents=True)
    assert main(['export', '--checkpoint', str(run), '--out', str(registry), '--overwrite',
                 '--registry', str(registry)]) == 2
    _one_line(capsys, '--out', 'registry')
    assert (registry / 'fashion-mnist-bundled').is_dir()


def test_ship_refuses_an_out_inside_the_study_or_its_registry(tmp_path, capsys):
    spec = _study(tmp_path)
    for out in (tmp_path / 'study' / 'tags', tmp_path / 'study' / 'registry' / 'tags'):
        assert main(['ship', str(spec), '--out', str(out)]) == 2
        _one_line(capsys, '--out', 'overlaps')
        assert not out.exists()


def test_report_refuses_an_out_that_overlaps_the_registry(tmp_path, capsys):
    registry = tmp_path / 'registry'
    registry.mkdir()
    for out in (registry, registry / 'plots'):
        assert main(['report', '--registry', str(registry), '--out', str(out)]) == 2
        _one_line(capsys, '--out', 'overlaps')
    assert sorted(registry.iterdir()) == []


# ------------------------------------------------------------------ 2. a read-only file system

class ReadOnly:
    """A folder that refuses every write as a read-only file system does (EROFS), once `on()` is called.

    As root, chmod does not stop writes, so the calls every writer ends in (open for writing, os.open, mkdir,
    rename, link, unlink) are patched to raise what the kernel raises on a read-only mount.
    """

    def __init__(self, root: Path, monkeypatch) -> None:
        self.root, self.monkeypatch = root, monkeypatch
        root.mkdir()

    def _guard(self, *paths) -> None:
        top = str(self.root.resolve())
        for path in paths:
            if isinstance(path, (str, bytes, os.PathLike)):
                p = os.path.abspath(os.fsdecode(path))
                if p == top or p.startswith(top + os.sep):
                    raise OSError(errno.EROFS, os.strerror(errno.EROFS), p)

    def on(self) -> Path:
        real = dict(open=builtins.open, os_open=os.open, mkdir=os.mkdir, rename=os.rename, replace=os.replace,
                    link=os.link, unlink=os.unlink, rmdir=os.rmdir)

        def fake_open(file, mode='r', *a, **k):
            if any(c in mode for c in 'wax+'):
                self._guard(file)
            return real['open'](file, mode, *a, **k)

        def fake_os_open(path, flags, *a, **k):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                self._guard(path)
            return real['os_open'](path, flags, *a, **k)

        def fake_mkdir(path, *a, **k):
            if os.path.exists(path):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(path))
            self._guard(path)
            return real['mkdir'](path, *a, **k)

        def two(name):
            def fake(src, dst, *a, **k):
                self._guard(src, dst)
                return real[name](src, dst, *a, **k)
            return fake

        def one(name):
            def fake(path, *a, **k):
                self._guard(path)
                return real[name](path, *a, **k)
            return fake

        for module, attr, fake in ((builtins, 'open', fake_open), (io, 'open', fake_open), (os, 'open', fake_os_open),
                                   (os, 'mkdir', fake_mkdir), (os, 'rename', two('rename')),
                                   (os, 'replace', two('replace')), (os, 'link', two('link')),
                                   (os, 'unlink', one('unlink')), (os, 'rmdir', one('rmdir'))):
            self.monkeypatch.setattr(module, attr, fake)
        return self.root


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    return ReadOnly(tmp_path / 'ro', monkeypatch)


def _registry_with_two(tmp_path: Path) -> Path:
    from bench.results.registry import write_entry
    from registry_fakes import make_entry
    registry = tmp_path / 'registry'
    for i, clean in enumerate((60.0, 55.0)):
        write_entry(make_entry(entry_id=f'e{i}', clean=clean, lr=0.1 + i), registry)
    return registry


def _tiny_train(out: Path) -> list:
    return ['train', '--model', 'resnet18_dense', '--model-kwargs', 'width=4', '--dataset', 'fashion-mnist-bundled',
            '--batch-size', '16', '--train-limit', '32', '--eval-limit', '0', '--workers', '0', '--max-steps', '1',
            '--progress', 'false', '--out', str(out)]


@pytest.mark.parametrize('verb', ['train', 'leaderboard', 'report', 'compare', 'export', 'grid', 'import-paper',
                                  'eval'])
def test_a_read_only_file_system_is_one_line(verb, run, read_only, tmp_path, capsys):
    ro = read_only.root
    if verb == 'leaderboard':  # the registry itself is read-only: LEADERBOARD.md cannot be written
        shutil.copytree(_registry_with_two(tmp_path), ro / 'registry')
    registry = _registry_with_two(tmp_path / 'w') if verb in ('report', 'compare') else None
    argv = {
        'train': _tiny_train(ro / 'run'),
        'leaderboard': ['leaderboard', '--registry', str(ro / 'registry')],
        'report': ['report', '--registry', str(registry), '--out', str(ro / 'plots')],
        'compare': ['compare', 'e0', 'e1', '--registry', str(registry), '--json', str(ro / 'c.json')],
        'export': ['export', '--checkpoint', str(run), '--out', str(ro / 'hub'), '--registry', str(tmp_path / 'no')],
        'grid': ['grid', str(_study(tmp_path, out=str(ro / 'study'))), '--only', 'dense_normal'],
        'import-paper': ['import-paper', '--registry', str(ro / 'registry')],
        'eval': ['eval', '--model', NAME, '--checkpoint', str(run / 'model.pth'), '--dataset', 'fashion-mnist-bundled',
                 '--attacks', 'pgd10', '--n-examples', '4', '--batch-size', '4', '--n-check', '2', '--no-per-expert',
                 '--no-progress', '--json', str(ro / 'e.json')],
    }[verb]
    read_only.on()
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert 'Traceback' not in captured.out + captured.err
    # progress lines (grid's "started") may come first; the error itself is one line, and the last
    err = captured.err.splitlines()[-1]
    assert [line for line in captured.err.splitlines() if 'error:' in line] == [err], captured.err
    assert 'Read-only file system' in err and str(ro) in err, captured.err
    assert '.tmp' not in err  # the user's path, not the writer's temporary file


# ------------------------------------------------------------------ 3. named-config specs checked whole at load

@pytest.mark.parametrize('configs, message', [
    ({'d': {'model': 'resnet18_dense', 'training': 'bogus'}}, "training='bogus' is not allowed"),
    ({'d': {'model': 'resnet18_dense', 'train': {'epochs': 'two'}}}, "epochs='two' has the wrong type"),
    ({'d': {'model': 'resnet18_dense', 'train': {'epoch': 2}}}, "unknown config key 'epoch'"),
    ({'m': {'model': 'resnet18_blockmoe_e2_k1'}, 'u': {'model': 'resnet18_blockmoe_e2_k1', 'upcycle_from': 'm'}},
     "upcycle_from 'm' is a MoE config"),
    ({'d': {'model': 'resnet50_dense'}, 'u': {'model': 'resnet18_blockmoe_e2_k1', 'upcycle_from': 'd'}},
     'upcycles from resnet18_dense'),
    ({'d': {'model': 'resnet18_dense', 'model_kwargs': {'width': 8}},
      'u': {'model': 'resnet18_blockmoe_e2_k1', 'upcycle_from': 'd'}}, 'upcycles from resnet18_dense'),
    ({'d': {'model': 'resnet18_dense'}, 'u': {'model': 'resnet18_dense', 'upcycle_from': 'd'}},
     'only a BlockMoE config can be upcycled'),
])
def test_a_named_config_spec_is_checked_whole_before_the_dry_run(tmp_path, capsys, configs, message):
    spec = _study(tmp_path, configs=configs, autoattack=None, first_seed_eval={})
    assert main(['grid', str(spec), '--dry-run']) == 2
    _one_line(capsys, message)


# ------------------------------------------------------------------ 4. a config's own seeds; one process per cell

@pytest.mark.parametrize('seeds, message', [(5, 'seeds is 5'), ([0, 0], 'repeats a seed'), ([-3], 'seeds is [-3]'),
                                            ([], 'seeds is []'), ([True], 'seeds is [True]')])
def test_a_configs_own_seeds_are_checked_like_the_spec_seeds(tmp_path, capsys, seeds, message):
    configs = {'d': {'model': 'resnet18_dense', 'seeds': seeds}}
    assert main(['grid', str(_study(tmp_path, configs=configs, autoattack=None, first_seed_eval={})), '--dry-run']) == 2
    _one_line(capsys, "config 'd'", message)


def test_a_lock_is_held_by_one_process_and_a_dead_holders_lock_is_reclaimed(tmp_path):
    import subprocess
    import sys
    from bench.core.locks import acquire, release
    lock = tmp_path / 'running.lock'
    assert acquire(lock) is None
    assert str(os.getpid()) in acquire(lock)  # a live holder (this process): busy
    release(lock)
    assert not lock.exists()
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    lock.write_text(f'{socket.gethostname()} {int(dead.stdout)}\n')  # a holder killed before it released
    assert acquire(lock) is None  # its holder is gone: reclaimed
    assert lock.read_text().split() == [socket.gethostname(), str(os.getpid())]
    release(lock)


def test_a_cell_another_live_process_runs_is_skipped_and_reported(tmp_path, capsys):
    from bench.core.locks import acquire, release
    spec = _study(tmp_path)
    lock = tmp_path / 'study' / 'cells' / 'dense_normal-seed0' / 'running.lock'
    lock.parent.mkdir(parents=True)
    assert acquire(lock) is None  # as if another grid process were training this cell
    try:
        assert main(['grid', str(spec), '--only', 'dense_normal']) == 0
    finally:
        release(lock)
    out = capsys.readouterr().out
    assert 'dense_normal-seed0' in out and 'running in another process' in out and '1 running elsewhere' in out
    assert not (lock.parent / 'run').exists() and not (lock.parent / 'failed.txt').exists()


# ------------------------------------------------------------------ 5. non-finite numbers

def _float_options():
    import dataclasses
    import typing
    from bench.training.config import TrainConfig
    hints = typing.get_type_hints(TrainConfig)
    return [f.name for f in dataclasses.fields(TrainConfig) if float in (hints[f.name], *typing.get_args(hints[f.name]))]


@pytest.mark.parametrize('value', ['.nan', '.inf', '-.inf', '1e400'])
@pytest.mark.parametrize('option', _float_options())
def test_every_float_option_must_be_finite(tmp_path, capsys, option, value):
    assert main(_tiny_train(tmp_path / 'run') + [f'--{option.replace("_", "-")}={value}']) == 2
    _one_line(capsys, option)
    assert not (tmp_path / 'run').exists()


def test_a_float_in_a_config_file_must_be_finite(tmp_path, capsys):
    config = tmp_path / 'recipe.yaml'
    config.write_text('lr: .nan\n')
    assert main(_tiny_train(tmp_path / 'run') + ['--config', str(config)]) == 2
    _one_line(capsys, 'lr=nan', 'finite')


def test_a_run_whose_loss_turns_non_finite_stops_in_one_line(tmp_path, capsys):
    import torch
    out = tmp_path / 'run'
    # lr 1e20 blows the weights up in one step: the second loss is NaN
    argv = _tiny_train(out) + ['--lr', '1e20', '--max-steps', '4', '--train-limit', '64', '--log-every', '1',
                               '--checkpoint-every', '1']
    assert main(argv) == 2
    _one_line(capsys, 'loss', 'step 2', 'lr')
    lines = (out / 'metrics.jsonl').read_text().splitlines()
    records = [json.loads(line, parse_constant=lambda c: pytest.fail(f'{c} in metrics.jsonl')) for line in lines]
    assert [r['step'] for r in records] == [1]
    weights = torch.load(out / 'model.pth', weights_only=True)  # the last checkpoint: from before the NaN
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


# ------------------------------------------------------------------ 8. overflow and nesting

@pytest.mark.parametrize('norm', ['Linf', 'L2'])
@pytest.mark.parametrize('eps', ['1e400', '1' * 400 + '/3', 'inf', '.nan'])
def test_an_eps_beyond_a_float_is_one_line(capsys, norm, eps):
    assert main(['eval', '--model', NAME, '--eps', eps, '--norm', norm]) == 2
    _one_line(capsys, '--eps')


# ------------------------------------------------------------------ 6. files that are not UTF-8

LATIN1 = 'model: résnet\n'.encode('latin-1')  # é as one byte: not UTF-8


@pytest.mark.parametrize('verb', ['leaderboard', 'compare', 'eval', 'export', 'grid', 'train'])
def test_a_file_that_is_not_utf8_is_one_line_naming_it(verb, run, tmp_path, capsys):
    registry = _registry_with_two(tmp_path)
    bad = {'leaderboard': registry / 'fashion-mnist-bundled' / 'Linf' / 'e9.json', 'compare': tmp_path / 'e9.json',
           'eval': run / 'config.yaml', 'export': run / 'config.yaml', 'grid': tmp_path / 'grid.yaml',
           'train': tmp_path / 'recipe.yaml'}[verb]
    bad.write_bytes(LATIN1)
    argv = {
        'leaderboard': ['leaderboard', '--registry', str(registry), '--no-write'],
        'compare': ['compare', str(bad), 'e0', '--registry', str(registry)],
        'eval': ['eval', '--model', NAME, '--checkpoint', str(run / 'model.pth'), '--dataset', 'fashion-mnist-bundled'],
        'export': ['export', '--checkpoint', str(run), '--out', str(tmp_path / 'hub'), '--registry', str(registry)],
        'grid': ['grid', str(bad), '--dry-run'],
        'train': _tiny_train(tmp_path / 'run') + ['--config', str(bad)],
    }[verb]
    assert main(argv) == 2
    _one_line(capsys, str(bad), 'UTF-8')


@pytest.mark.parametrize('argv', [
    ['eval', '--model', NAME, '--model-kwargs', 'width=[4'],
    ['train', '--model-kwargs', 'width=[4'],
    ['train', '--model-kwargs', 'width={a: [1'],
])
def test_a_model_kwarg_that_is_not_yaml_is_one_line(capsys, argv):
    assert main(argv) == 2
    _one_line(capsys, 'width', '[4' if '[4' in ' '.join(argv) else '[1')


def test_a_dotted_model_kwarg_that_is_not_yaml_is_a_user_error():
    from bench.training.config import load_config
    with pytest.raises(UserError, match=r"model_kwargs.width='\[4' is not a YAML value"):
        load_config(None, ['--model-kwargs.width=[4'])


@pytest.mark.parametrize('where', ['leaderboard', 'compare', 'grid'])
def test_a_file_nested_too_deep_is_one_line(tmp_path, capsys, where):
    registry = _registry_with_two(tmp_path)
    deep = '[' * 100_000 + ']' * 100_000
    bad = {'leaderboard': registry / 'fashion-mnist-bundled' / 'Linf' / 'e9.json', 'compare': tmp_path / 'e9.json',
           'grid': tmp_path / 'grid.yaml'}[where]
    bad.write_text(deep if where != 'grid' else f'configs: {deep}\n')
    argv = {'leaderboard': ['leaderboard', '--registry', str(registry), '--no-write'],
            'compare': ['compare', str(bad), 'e0', '--registry', str(registry)],
            'grid': ['grid', str(bad), '--dry-run']}[where]
    assert main(argv) == 2
    _one_line(capsys, str(bad), 'nested')


# ------------------------------------------------------------------ 9. options without range checks

@pytest.mark.parametrize('extra, message', [
    (['--seed', '-1'], '--seed -1'),
    (['--boot', '10000000000'], 'at most 1000000'),
])
def test_compare_bounds_its_seed_and_resamples(tmp_path, capsys, extra, message):
    registry = _registry_with_two(tmp_path)
    assert main(['compare', 'e0', 'e1', '--registry', str(registry), *extra]) == 2
    _one_line(capsys, message)


@pytest.mark.parametrize('n_check', ['0', '-1'])
def test_eval_refuses_an_n_check_below_one(capsys, n_check):
    assert main(['eval', '--model', NAME, '--dataset', 'fashion-mnist-bundled', '--attacks', 'pgd10', '--n-examples', '4',
                 '--no-per-expert', '--no-progress', '--n-check', n_check]) == 2
    _one_line(capsys, f'--n-check {n_check}')


def test_a_torchcompile_backend_that_does_not_import_is_refused_and_not_listed(capsys):
    import importlib.util
    from bench.core.compile import check_torchcompile
    if importlib.util.find_spec('tvm') is not None:
        pytest.skip('tvm is installed here')
    with pytest.raises(UserError, match="'tvm' needs the package tvm, which is not installed") as e:
        check_torchcompile('tvm', None)
    assert 'choose one of' in str(e.value) and 'tvm,' not in str(e.value).split('choose one of')[1]
    assert main(['eval', '--model', NAME, '--torchcompile', 'tvm']) == 2
    _one_line(capsys, 'tvm')


# ------------------------------------------------------------------ 10. silent surprises

def test_compare_json_keeps_an_existing_file_without_overwrite(tmp_path, capsys):
    registry = _registry_with_two(tmp_path)
    out = tmp_path / 'c.json'
    out.write_text('mine\n')
    argv = ['compare', 'e0', 'e1', '--registry', str(registry), '--json', str(out)]
    assert main(argv) == 2
    _one_line(capsys, str(out), '--overwrite')
    assert out.read_text() == 'mine\n'
    assert main(argv + ['--overwrite']) == 0
    assert json.loads(out.read_text())['metric']


def test_compare_refuses_one_entry_twice(tmp_path, capsys):
    registry = _registry_with_two(tmp_path)
    path = registry / 'fashion-mnist-bundled' / 'Linf' / 'e0.json'
    for a, b in (('e0', 'e0'), ('e0', str(path))):
        assert main(['compare', a, b, '--registry', str(registry)]) == 2
        _one_line(capsys, 'the same entry')


@pytest.mark.parametrize('tag', ['123', 'x y.z', 'a/b', 'Upper', 'a.b', '', 7])
def test_a_tag_that_timm_cannot_name_is_refused_when_the_spec_loads(tmp_path, capsys, tag):
    configs = {'d': {'model': 'resnet18_dense', 'tag': tag}}
    spec = _study(tmp_path, configs=configs, autoattack=None, first_seed_eval={})
    for verb in (['grid', str(spec), '--dry-run'], ['ship', str(spec), '--out', str(tmp_path / 'tags')]):
        assert main(verb) == 2
        _one_line(capsys, "config 'd'", 'tag')


def _flip_two_bits(entry: dict) -> None:
    """Move one correct point of the clean bits to a wrong one: the count, and so the accuracy, stay the same."""
    from bench.core.stats import decode_bits, encode_bits
    block = entry['per_sample']
    bits = decode_bits(block['bits']['clean'], block['n'])
    right, wrong = int(bits.argmax()), int((~bits).argmax())
    bits[right], bits[wrong] = False, True
    block['bits']['clean'] = encode_bits(bits)


def test_per_sample_bits_carry_a_checksum_that_catches_a_flip_keeping_the_count(tmp_path, capsys):
    from bench.results.registry import load_entry, write_entry
    from registry_fakes import make_entry
    path = write_entry(make_entry(entry_id='e0'), tmp_path / 'registry')
    entry = json.loads(path.read_text())
    assert len(entry['per_sample']['sha256']) == 64
    _flip_two_bits(entry)
    path.write_text(json.dumps(entry))
    with pytest.raises(UserError, match=r"e0.*per_sample.*sha256"):
        load_entry(path)
    assert main(['compare', str(path), 'e0', '--registry', str(tmp_path / 'registry')]) == 2
    _one_line(capsys, 'sha256')


def test_an_entry_written_before_the_checksum_still_loads(tmp_path):
    from bench.results.registry import load_entry, write_entry
    from registry_fakes import make_entry
    path = write_entry(make_entry(entry_id='e0'), tmp_path / 'registry')
    entry = json.loads(path.read_text())
    del entry['per_sample']['sha256']
    path.write_text(json.dumps(entry))
    assert load_entry(path)['per_sample']['n'] == 200


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    import subprocess
    import sys
    from bench.core.atomic import atomic_open
    target = tmp_path / 'LEADERBOARD.md'
    kill = ('import os, sys; from bench.core.atomic import atomic_open\n'
            'with atomic_open(sys.argv[1]) as f:\n    f.write("half"); f.flush(); os.kill(os.getpid(), 9)\n')
    assert subprocess.run([sys.executable, '-c', kill, str(target)]).returncode == -9
    orphans = [p for p in tmp_path.iterdir() if p.name.endswith('.tmp')]
    assert len(orphans) == 1 and not target.exists()
    with atomic_open(tmp_path / 'other.md') as f:  # another target: its orphans are not this writer's business
        f.write('x')
    assert orphans[0].exists()
    with atomic_open(target) as f:  # this target's next write removes its dead writer's file
        f.write('whole')
    assert target.read_text() == 'whole' and sorted(p.name for p in tmp_path.iterdir()) == ['LEADERBOARD.md', 'other.md']


def test_a_live_writers_temporary_file_is_left_alone(tmp_path):
    from bench.core.atomic import atomic_open
    target = tmp_path / 'entry.json'
    with atomic_open(target) as outer:  # this process is alive: its temporary file must survive a second write
        outer.write('outer')
        with atomic_open(target) as inner:
            inner.write('inner')
    assert target.read_text() == 'outer'


def test_an_atomic_write_error_names_the_target_not_the_temporary_file(read_only):
    from bench.core.atomic import write_json_atomic
    target = read_only.on() / 'result.json'
    with pytest.raises(OSError) as e:
        write_json_atomic({}, target)
    assert e.value.errno == errno.EROFS and e.value.filename == str(target)


@pytest.mark.parametrize('option', ['--num-classes', '--in-chans'])
@pytest.mark.parametrize('value', ['-5', '0'])
def test_eval_reports_a_class_or_channel_count_below_one_as_a_range_error(run, capsys, option, value):
    assert main(['eval', '--model', NAME, '--checkpoint', str(run / 'model.pth'), '--dataset', 'fashion-mnist-bundled',
                 f'{option}={value}']) == 2
    _one_line(capsys, f'{option} {value}', 'at least 1')


def test_json_lines_write_non_finite_numbers_as_null():
    from bench.core.atomic import finite_json
    record = {'loss': float('nan'), 'routing': {'load': [0.5, float('inf')]}, 'step': 3, 'lr': (0.1, -float('inf'))}
    assert finite_json(record) == {'loss': None, 'routing': {'load': [0.5, None]}, 'step': 3, 'lr': [0.1, None]}


# ------------------------------------------------------------------ 11. file modes follow the umask

@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_export_folder_and_its_files_follow_the_umask(run, tmp_path, umask):
    from bench.pipeline.export import export_run
    out = export_run(run, tmp_path / 'hub', registry_dir=tmp_path / 'none')
    assert _mode(out) == 0o777 & ~umask
    assert {p.name: _mode(p) for p in out.iterdir()} == {p.name: 0o666 & ~umask for p in out.iterdir()}


def test_shipped_tags_follow_the_umask(tmp_path, monkeypatch, umask):
    from types import SimpleNamespace
    from bench.pipeline import grid
    from bench.pipeline.ship import ship
    import test_pretrained_tags as tags
    study = tags.study.__wrapped__(tmp_path, monkeypatch)
    out, _ = ship(study.spec, tmp_path / 'pretrained', dtype='float16')
    assert _mode(out) == 0o777 & ~umask
    assert {p.name: _mode(p) for p in out.iterdir()} == {p.name: 0o666 & ~umask for p in out.iterdir()}


def test_atomic_writes_follow_the_umask(tmp_path, umask):
    import torch
    from bench.core.atomic import atomic_save, atomic_save_safetensors, write_json_atomic
    write_json_atomic({}, tmp_path / 'a.json')
    atomic_save({'w': torch.zeros(1)}, tmp_path / 'b.pth')
    atomic_save_safetensors({'w': torch.zeros(1)}, tmp_path / 'c.safetensors')
    assert {_mode(p) for p in tmp_path.iterdir()} == {0o666 & ~umask}

"""`timm-moe`'s error handling: bad input is one line and exit 2; a bug keeps its traceback and exits 1."""
from __future__ import annotations

import errno

import pytest

import bench.cli.leaderboard
import bench.cli.train
from bench.cli import USER_ERRORS, main
from bench.core.errors import UserError


def _raising(exc: BaseException):
    def run(args):
        raise exc
    return run


@pytest.mark.parametrize('exc', [
    UserError("--sort 'x' is not a sort key"),
    FileNotFoundError(errno.ENOENT, 'No such file or directory', 'missing.yaml'),
    FileExistsError(errno.EEXIST, 'File exists', 'out'),
    PermissionError(errno.EACCES, 'Permission denied', '/root/x'),
    IsADirectoryError(errno.EISDIR, 'Is a directory', 'runs'),
    NotADirectoryError(errno.ENOTDIR, 'Not a directory', 'a/b'),
])
def test_bad_input_is_one_line_exit_2(exc, monkeypatch, capsys):
    monkeypatch.setattr(bench.cli.leaderboard, 'run', _raising(exc))
    assert main(['leaderboard']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('timm-moe leaderboard: error: ') and 'Traceback' not in err
    assert str(exc).splitlines()[0] in err


@pytest.mark.parametrize('exc', [
    ValueError('operands could not be broadcast together'),  # a plain ValueError is a bug, not bad input
    KeyError('clean_acc'),
    RuntimeError('expected all tensors to be on the same device'),
    TypeError("unsupported operand type(s) for +: 'int' and 'str'"),
])
def test_an_internal_error_shows_its_traceback_and_exits_1(exc, monkeypatch, capsys):
    monkeypatch.setattr(bench.cli.leaderboard, 'run', _raising(exc))
    assert main(['leaderboard']) == 1
    err = capsys.readouterr().err
    assert 'Traceback (most recent call last)' in err and f'{type(exc).__name__}: ' in err
    assert 'internal error (a bug in timm-moe, not bad input)' in err


@pytest.mark.parametrize('exc, code', [
    (OSError(errno.EIO, 'Input/output error', 'model.pth'), 1),  # an OSError of the code or the disk: a bug to report
    (ConnectionError('connection reset'), 1),
    (OSError(errno.ENOSPC, 'No space left on device', 'runs'), 2),  # the user's file system refuses: bad input
    (OSError(errno.EROFS, 'Read-only file system', 'runs'), 2),
])
def test_of_the_other_os_errors_only_the_file_systems_refusals_are_bad_input(exc, code, monkeypatch, capsys):
    monkeypatch.setattr(bench.cli.leaderboard, 'run', _raising(exc))
    assert main(['leaderboard']) == code
    err = capsys.readouterr().err
    assert ('Traceback' in err) == (code == 1) and (err.count('\n') == 1) == (code == 2)


def test_every_error_class_counted_as_bad_input_is_one_line_exit_2(monkeypatch, capsys):
    # USER_ERRORS is read here, not restated: whatever it holds must behave as bad input does, and nothing wider
    for cls in USER_ERRORS:
        assert not issubclass(ValueError, cls) and not issubclass(OSError, cls), cls
        monkeypatch.setattr(bench.cli.leaderboard, 'run', _raising(cls('the message')))
        assert main(['leaderboard']) == 2, cls
        assert capsys.readouterr().err == 'timm-moe leaderboard: error: the message\n'


def test_keyboard_interrupt_exits_130(monkeypatch, capsys):
    monkeypatch.setattr(bench.cli.leaderboard, 'run', _raising(KeyboardInterrupt()))
    assert main(['leaderboard']) == 130
    assert 'interrupted' in capsys.readouterr().err


def test_report_bad_registry_is_one_line(tmp_path, capsys):
    assert main(['report', '--registry', '/nonexistent/registry', '--out', str(tmp_path / 'r')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and '/nonexistent/registry' in err and 'Traceback' not in err


def test_train_bool_options_take_the_no_spelling_of_the_other_verbs(monkeypatch):
    # eval, grid and quickstart spell it --no-progress; train's bool options take that spelling too
    seen = []

    def load_config(path, overrides):
        seen.append(overrides)
        raise UserError('stop here')

    monkeypatch.setattr(bench.cli.train, 'load_config', load_config)
    for argv, want in ((['--no-progress'], 'false'), (['--progress'], 'true'), (['--progress', 'false'], 'false'),
                       (['--no-deterministic'], 'false')):
        assert main(['train', *argv]) == 2
        name = argv[0].removeprefix('--no-').removeprefix('--')
        assert seen.pop() == [f'--{name}', want]

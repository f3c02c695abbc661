"""Reading a registry, a grid spec's names, and someone else's files (issue 25, sections 1 to 3): names are names
(one pattern, so that a config cannot put a run or a restart's cleanup outside the grid's folder), a registry holds
no links (one rule for every verb), a read that found nothing never erases LEADERBOARD.md, and an entry is read
only from a regular file of bounded size, with its numbers in Python's limits. Every test here failed before its
fix."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.cli import main
from bench.results.registry import entry_path, write_entry
from registry_fakes import make_entry
from contract import one_line as _one_line

STUDY = Path(__file__).resolve().parents[1] / 'fixtures' / 'study_tiny.yaml'


@pytest.fixture
def registry(tmp_path):
    """A registry of two entries and the LEADERBOARD.md `timm-moe leaderboard` wrote for it."""
    root = tmp_path / 'registry'
    for i, lr in enumerate((0.1, 0.2)):
        write_entry(make_entry(f'run-{i}', lr=lr), root)
    assert main(['leaderboard', '--registry', str(root)]) == 0
    return root


# ------------------------------------------------------------------ names

@pytest.mark.parametrize('name', ['../../../escaped', '/tmp/abs', '.hidden', 'a/b', 'Dense'])
def test_a_grid_config_name_must_be_a_name(tmp_path, capsys, name):
    data = yaml.safe_load(STUDY.read_text())
    data['configs'] = {name: {'model': 'resnet18_dense'}}
    data.pop('autoattack')
    data['out'] = str(tmp_path / 'a' / 'b' / 'c' / 'study')
    spec = tmp_path / 'spec.yaml'
    spec.write_text(yaml.safe_dump(data))
    capsys.readouterr()
    assert main(['grid', str(spec), '--dry-run']) == 2
    _one_line(capsys, repr(name), 'is not a name')
    assert not (tmp_path / 'escaped').exists() and not (tmp_path / 'a').exists()


# ------------------------------------------------------------------ links: one rule, in every verb

def test_a_linked_dataset_folder_is_refused_by_every_verb(registry, tmp_path, capsys):
    page = (registry / 'LEADERBOARD.md').read_text()
    elsewhere = tmp_path / 'elsewhere'
    shutil.move(registry / 'fashion-mnist-bundled', elsewhere)
    (registry / 'fashion-mnist-bundled').symlink_to(elsewhere, target_is_directory=True)
    capsys.readouterr()
    assert main(['leaderboard', '--registry', str(registry)]) == 2
    _one_line(capsys, 'fashion-mnist-bundled', 'symbolic link')
    assert (registry / 'LEADERBOARD.md').read_text() == page  # not rewritten to "No entries yet"
    assert main(['compare', 'run-0', 'run-1', '--registry', str(registry), '--boot', '10']) == 2
    _one_line(capsys, 'fashion-mnist-bundled', 'symbolic link')
    assert main(['report', '--registry', str(registry), '--out', str(tmp_path / 'plots')]) == 2
    _one_line(capsys, 'symbolic link')


def test_a_read_that_finds_nothing_leaves_the_page(registry, capsys):
    page = (registry / 'LEADERBOARD.md').read_text()
    shutil.rmtree(registry / 'fashion-mnist-bundled')  # a folder moved away, or not mounted
    capsys.readouterr()
    assert main(['leaderboard', '--registry', str(registry)]) == 2
    _one_line(capsys, 'has no entries', 'LEADERBOARD.md')
    assert (registry / 'LEADERBOARD.md').read_text() == page
    (registry / 'LEADERBOARD.md').unlink()  # as the message says: then it is regenerated empty
    assert main(['leaderboard', '--registry', str(registry)]) == 0
    assert 'No entries yet' in (registry / 'LEADERBOARD.md').read_text()


# ------------------------------------------------------------------ what an entry file may be

def test_a_5000_digit_integer_is_one_line(registry, capsys):
    path = entry_path(make_entry('run-0'), registry)
    text = path.read_text()
    path.write_text(text.replace('"n_examples": 200', '"n_examples": ' + '1' * 5000, 1))
    capsys.readouterr()
    assert main(['leaderboard', '--registry', str(registry), '--no-write']) == 2
    err = _one_line(capsys, str(path), 'number too long')
    assert len(err) < 400


def test_an_entry_too_large_to_be_one_is_refused(registry, capsys):
    """A valid entry padded with 17 MiB of whitespace (valid JSON): read whole, as a link to /dev/zero would be."""
    path = entry_path(make_entry('run-0'), registry)
    with open(path, 'a') as f:
        f.write(' ' * (17 * 2 ** 20))
    capsys.readouterr()
    assert main(['leaderboard', '--registry', str(registry), '--no-write']) == 2
    _one_line(capsys, str(path), 'larger than')


def _leaderboard_in_a_process(registry: Path):
    """The CLI in a child process, so that a read that blocks fails the test instead of hanging it."""
    import bench
    env = dict(os.environ, PYTHONPATH=str(Path(bench.__file__).resolve().parents[1]))  # this bench
    return subprocess.run([sys.executable, '-m', 'bench.cli', 'leaderboard', '--registry', str(registry),
                           '--no-write'], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize('kind', ['fifo', 'link to a fifo'])
def test_an_entry_that_is_a_fifo_is_refused_not_waited_on(registry, tmp_path, kind):
    path = entry_path(make_entry('run-0'), registry)
    path.unlink()
    if kind == 'fifo':
        os.mkfifo(path)
    else:
        os.mkfifo(tmp_path / 'fifo')
        path.symlink_to(tmp_path / 'fifo')
    done = _leaderboard_in_a_process(registry)
    assert done.returncode == 2 and done.stderr.count('\n') == 1, done.stderr
    assert str(path) in done.stderr
    assert ('not a regular file' if kind == 'fifo' else 'symbolic link') in done.stderr

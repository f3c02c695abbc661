"""`timm-moe leaderboard --html OUT` writes only its own page (issue 25, section 2): never over a special file or
a link, never inside a registry (its entries, its page, another registry's folder), never over a file it did not
write unless --overwrite; the page and its `entries/` copies are made in a temporary folder and renamed into place,
so a failed write leaves no partial copies. Every test here failed before its fix."""
from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.results.leaderboard import html as page_html
from bench.results.registry import entry_path, load_entries, write_entry
from registry_fakes import make_entry
from contract import one_line as _one_line


@pytest.fixture(scope='module')
def source(tmp_path_factory):
    """A registry of three entries (read only by the tests)."""
    root = tmp_path_factory.mktemp('src') / 'registry'
    for i, lr in enumerate((0.1, 0.2, 0.3)):
        write_entry(make_entry(f'run-{i}', lr=lr), root)
    return root


def _html(source: Path, out: Path, *more: str) -> int:
    return main(['leaderboard', '--registry', str(source), '--no-write', '--html', str(out), *more])


def _left_in(folder: Path):
    return sorted(p.name for p in folder.iterdir())


def test_a_fifo_is_not_replaced(source, tmp_path, capsys):
    fifo = tmp_path / 'page.html'
    os.mkfifo(fifo)
    assert _html(source, fifo) == 2
    _one_line(capsys, str(fifo), 'not a regular file')
    assert fifo.is_fifo() and _left_in(tmp_path) == ['page.html']
    assert _html(source, fifo, '--overwrite') == 2  # not even with --overwrite
    assert fifo.is_fifo()


def test_a_link_is_not_replaced(source, tmp_path, capsys):
    target = tmp_path / 'notes.txt'
    target.write_text('mine')
    (tmp_path / 'page.html').symlink_to(target)
    assert _html(source, tmp_path / 'page.html') == 2
    _one_line(capsys, 'symbolic link')
    assert (tmp_path / 'page.html').is_symlink() and target.read_text() == 'mine'


def test_a_file_it_did_not_write_needs_overwrite(source, tmp_path, capsys):
    mine = tmp_path / 'index.html'
    mine.write_text('<p>my own page</p>')
    assert _html(source, mine) == 2
    _one_line(capsys, str(mine), '--overwrite')
    assert mine.read_text() == '<p>my own page</p>' and not (tmp_path / 'entries').exists()
    assert _html(source, mine, '--overwrite') == 0
    assert page_html.MARKER in mine.read_text()
    assert _html(source, mine) == 0  # its own page: rewritten without --overwrite
    # an entries/ folder that no page of ours made is not replaced either
    other = tmp_path / 'other'
    (other / 'entries').mkdir(parents=True)
    (other / 'entries' / 'keep.txt').write_text('mine')
    capsys.readouterr()
    assert _html(source, other / 'index.html') == 2
    _one_line(capsys, 'entries', '--overwrite')
    assert _left_in(other) == ['entries'] and (other / 'entries' / 'keep.txt').read_text() == 'mine'


def test_nothing_is_written_inside_a_registry(source, tmp_path, capsys):
    mine = tmp_path / 'mine'
    shutil.copytree(source, mine)
    entry = entry_path(make_entry('run-0'), mine)
    before = entry.read_bytes()
    assert _html(mine, entry) == 2  # over one of its own entries
    _one_line(capsys, 'inside the registry')
    assert _html(mine, entry, '--overwrite') == 2  # not even with --overwrite
    _one_line(capsys, 'inside the registry')
    assert entry.read_bytes() == before
    assert _html(mine, mine / 'LEADERBOARD.html') == 2  # beside them: its copies would be entries too
    _one_line(capsys, 'inside the registry')
    # another registry's folder: its copies would make that registry fail to load ('misplaced')
    assert main(['leaderboard', '--registry', str(mine)]) == 0
    assert _html(source, mine / 'site' / 'index.html') == 2
    _one_line(capsys, 'inside the registry', str(mine))
    assert not (mine / 'site').exists() and len(load_entries(mine)) == 3


def test_a_failed_write_leaves_no_partial_copies(source, tmp_path, capsys, monkeypatch):
    """The disk fills up on the third entry copy: nothing of the new page is left, the old page stays."""
    site = tmp_path / 'site'
    assert _html(source, site / 'index.html') == 0
    old_page, old_copies = (site / 'index.html').read_text(), sorted((site / 'entries').rglob('*'))
    calls = []
    real_copy = shutil.copyfile

    def copy_until_full(src, dst, *args, **kwargs):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, 'No space left on device', str(dst))
        return real_copy(src, dst, *args, **kwargs)
    monkeypatch.setattr(shutil, 'copyfile', copy_until_full)
    new = tmp_path / 'new'
    assert _html(source, new / 'index.html') == 2
    _one_line(capsys, 'No space left on device')
    assert len(calls) == 3 and _left_in(new) == []
    calls.clear()
    assert _html(source, site / 'index.html') == 2
    assert _left_in(site) == ['entries', 'index.html']  # no temporary folder left behind
    assert (site / 'index.html').read_text() == old_page and sorted((site / 'entries').rglob('*')) == old_copies


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (8_000, 8_000))  # the entries (4 kB) pass, the page (14 kB) does not
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG


def test_a_file_size_limit_leaves_no_partial_copies(source, tmp_path):
    """`ulimit -f`, for real, in a child process."""
    import bench
    env = dict(os.environ, PYTHONPATH=str(Path(bench.__file__).resolve().parents[1]))
    site = tmp_path / 'site'
    done = subprocess.run([sys.executable, '-m', 'bench.cli', 'leaderboard', '--registry', str(source), '--no-write',
                           '--html', str(site / 'index.html')], capture_output=True, text=True, timeout=120, env=env,
                          preexec_fn=_limit_file_size)
    assert done.returncode == 2 and done.stderr.count('\n') == 1 and 'too large' in done.stderr, done.stderr
    assert _left_in(site) == []


def test_a_killed_writes_temporary_folder_is_removed_by_the_next(source, tmp_path):
    out = tmp_path / 'site' / 'index.html'
    assert _html(source, out) == 0
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    orphan = page_html.temp_dir_beside(out)  # named after this process: rename it after the one that has exited
    killed = orphan.with_name(orphan.name.replace(f'-{os.getpid()}.', f'-{int(dead.stdout)}.'))
    orphan.rename(killed)
    (killed / 'entries').mkdir()
    assert _html(source, out) == 0
    assert _left_in(out.parent) == ['entries', 'index.html']

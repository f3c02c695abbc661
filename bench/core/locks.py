"""A lock file per job, so that two processes never run the same job into one folder (two `timm-moe grid`
processes given the same spec or shard, say).

The lock is `filelock.FileLock` (flock): the kernel drops it when its process ends, however it ends, so a killed
job's lock is free again without any stale-lock check. Its holder writes '<host> <pid>' into the file, which is only
what a busy lock is reported as.
"""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Optional, Union

from filelock import FileLock, Timeout

PathLike = Union[str, os.PathLike]
# `holder` takes the lock for an instant to see whether it is free: an `acquire` that meets such a probe waits it
# out, where a real holder keeps the lock for a whole job
_PROBE_GRACE_S = 1.0
_HELD: Dict[Path, FileLock] = {}  # the locks this process took with `acquire`, by path


def _me() -> str:
    return f'{socket.gethostname()} {os.getpid()}'


def _sign(fd: int) -> None:
    """Write this process into the lock file it just locked (a dead holder's text may be there)."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, (_me() + '\n').encode(), 0)


def _read(path: Path) -> str:
    try:
        text = path.read_text(encoding='utf-8', errors='replace').strip()
    except FileNotFoundError:
        text = ''
    return text or 'another process'  # a holder between its lock and its `_sign`


def _take(path: Path, timeout: float, sign: bool) -> Optional[FileLock]:
    lock = FileLock(path, timeout=timeout, on_acquired=_sign if sign else None)
    try:
        lock.acquire()
    except Timeout:
        return None
    return lock


def _drop(lock: FileLock) -> None:
    # unlinked while still held, so no lock file is left in the job's folder; filelock re-checks that the file it
    # locked still has a name, so a waiter that opened this one retries on a new file instead of sharing a dead one
    Path(lock.lock_file).unlink(missing_ok=True)
    lock.release()


def acquire(path: PathLike) -> Optional[str]:
    """Take the lock at `path` (its folder must exist); None when taken, else its live holder ('<host> <pid>')."""
    path = Path(path)
    lock = _take(path, _PROBE_GRACE_S, sign=True)
    if lock is None:
        return _read(path)
    _HELD[path] = lock
    return None


def release(path: PathLike) -> None:
    """Drop the lock at `path` if this process holds it."""
    lock = _HELD.pop(Path(path), None)
    if lock is not None:
        _drop(lock)


def holder(path: PathLike) -> Optional[str]:
    """The live process holding the lock at `path` ('<host> <pid>'), or None."""
    path = Path(path)
    if not path.exists():
        return None  # the probe below would create the file
    probe = _take(path, 0, sign=False)
    if probe is None:
        return _read(path)
    _drop(probe)
    return None


@contextmanager
def held(path: PathLike) -> Iterator[Optional[str]]:
    """`with held(path) as busy:` the lock taken for the block (busy None), or its live holder (busy '<host> <pid>',
    nothing taken)."""
    busy = acquire(path)
    try:
        yield busy
    finally:
        if busy is None:
            release(path)

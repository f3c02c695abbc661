"""A lock file per job, so that two processes never run the same job into one folder (two `timm-moe grid`
processes given the same spec or shard, say).

`acquire(path)` creates `path` with O_EXCL, which of several racing processes exactly one wins, and writes
'<host> <pid>' into it. A lock whose process is gone (the same host, a pid that no longer runs: a killed job) is
stale and is reclaimed; a lock of another host is taken as live, since its process cannot be checked from here.
"""
from __future__ import annotations

import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union

PathLike = Union[str, os.PathLike]
_RECLAIM_TIMEOUT_S = 60.0  # a reclaimer killed mid-way leaves its guard file; after this, it is ignored


def _me() -> str:
    return f'{socket.gethostname()} {os.getpid()}'


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text(encoding='utf-8', errors='replace').strip()
    except FileNotFoundError:
        return None


def _alive(holder: str, path: Path) -> bool:
    """Whether the process named in a lock may still run."""
    parts = holder.split()
    if len(parts) != 2 or not parts[1].isdigit():
        # being written this instant, or not ours: live unless it is old
        try:
            return time.time() - path.stat().st_mtime < _RECLAIM_TIMEOUT_S
        except FileNotFoundError:
            return False
    host, pid = parts[0], int(parts[1])
    return host != socket.gethostname() or process_alive(pid)


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _reclaim(path: Path, stale: str) -> None:
    """Remove a stale lock, unless another process reclaimed (and re-took) it first."""
    guard = path.with_name(path.name + '.reclaim')
    try:
        os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        try:
            if time.time() - guard.stat().st_mtime > _RECLAIM_TIMEOUT_S:
                guard.unlink()
        except FileNotFoundError:
            pass
        return
    try:
        if _read(path) == stale:
            path.unlink()
    finally:
        guard.unlink()


def acquire(path: PathLike) -> Optional[str]:
    """Take the lock at `path` (its folder must exist); None when taken, else its live holder ('<host> <pid>')."""
    path = Path(path)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is not None and _alive(holder, path):
                return holder
            if holder is not None:
                _reclaim(path, holder)
            continue
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            f.write(_me() + '\n')
        return None
    return _read(path) or 'another process'


def release(path: PathLike) -> None:
    """Drop the lock at `path` if this process holds it."""
    path = Path(path)
    if _read(path) == _me():
        path.unlink(missing_ok=True)


def holder(path: PathLike) -> Optional[str]:
    """The live process holding the lock at `path` ('<host> <pid>'), or None."""
    path = Path(path)
    text = _read(path)
    return text if text is not None and _alive(text, path) else None


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

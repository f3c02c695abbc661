"""Files that appear whole or not at all, for checkpoints, results, registry entries and the leaderboard.

The content goes to a temporary file in the target's directory, is fsynced, then renamed into place:
a rename within one file system is atomic, so a reader, or a resume after SIGKILL, sees either the old
complete file or the new one, never a torn one.
"""
from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Union


@contextmanager
def atomic_open(path: Union[str, Path], mode: str = 'w', exclusive: bool = False) -> Iterator[IO]:
    """Open a temporary file that replaces `path` when the `with` block ends without an exception.

    Args:
        path: The target file; its directory must exist.
        mode: 'w' (text, UTF-8) or 'wb'.
        exclusive: Put the file in place only if nothing is at `path` yet, raising FileExistsError
            otherwise; of several concurrent writers exactly one wins.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        with os.fdopen(fd, mode, encoding=None if 'b' in mode else 'utf-8') as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; these are ordinary outputs
        if exclusive:
            _link_exclusive(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _link_exclusive(tmp: str, path: Path) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        # file systems without hard links: reserve the name with O_EXCL, then move the content over it
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        os.replace(tmp, path)

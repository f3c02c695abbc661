"""Files that appear whole or not at all, for checkpoints, results, registry entries and the leaderboard.

The content goes to a temporary file in the target's directory, is fsynced, then renamed into place:
a rename within one file system is atomic, so a reader, or a resume after SIGKILL, sees either the old
complete file or the new one, never a torn one. A writer killed mid-write leaves its temporary file (named after
the target, the host and the pid); the next write of the same target removes it once that process is gone.
"""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Iterator, Mapping, Optional, Union

if TYPE_CHECKING:  # torch is imported where a tensor is saved: registry readers (leaderboard) start without it
    import torch


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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
    _remove_orphans(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path) + f'{os.getpid()}.', suffix='.tmp')
    except OSError as e:
        raise _about(e, path) from None
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
    except OSError as e:
        if tmp not in (e.filename, e.filename2):
            raise
        raise _about(e, path) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _tmp_prefix(path: Path) -> str:
    # the writer's host and pid in the name: the next write of `path` can tell a killed writer's file from a live one's
    return f'.{path.name}.{socket.gethostname()}-'


def _remove_orphans(path: Path) -> None:
    """Remove the temporary files (or folders, `temp_dir_beside`) of `path` that writers killed mid-write left
    behind: this host's, whose process is gone. Another host's cannot be judged from here and are left."""
    prefix = _tmp_prefix(path)
    try:
        names = os.listdir(path.parent)
    except OSError:
        return  # the write itself will report the folder
    for name in names:
        pid = name[len(prefix):].split('.', 1)[0] if name.startswith(prefix) and name.endswith('.tmp') else ''
        if pid.isdigit() and not process_alive(int(pid)):
            try:
                _remove(path.parent / name)
            except OSError:
                pass  # another writer removed it first, or the folder is read-only: the write will say so


def temp_dir_beside(target: Union[str, Path]) -> Path:
    """A new empty folder beside `target`, on its file system, to fill and then put in place with `replace_dir`
    (whole or not at all); makes `target`'s parent. Named like `atomic_open`'s files, after the host and pid, so
    that `recover_dir` can remove it once its writer is gone. An error names `target`, not the temporary folder."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target) + f'{os.getpid()}.', suffix='.tmp', dir=target.parent))
    except OSError as e:
        raise _about(e, target) from None
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; it becomes an ordinary output folder
    return tmp


def _remove(path: Path) -> None:
    """Remove a file, a link (not what it points to) or a folder with its content."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _old_dir(target: Path) -> Path:
    return target.with_name(f'.{target.name}.old')


def recover_dir(target: Union[str, Path]) -> None:
    """Finish or roll back a `replace_dir` of `target` that was killed, and remove the temporary folders of its
    writers that are gone. Call it before reading `target`: a kill between `replace_dir`'s two renames leaves no
    `target`, only its old content aside, and a new write that did not look would lose that content for good."""
    target = Path(target)
    _finish_swap(target)
    _remove_orphans(target)


def _finish_swap(target: Path) -> None:
    old = _old_dir(target)
    if os.path.lexists(old):
        if os.path.lexists(target):  # the new folder is in place: only the removal of the old one was left
            _remove(old)
        else:  # killed between the renames: the old folder goes back (the new one may not be whole)
            os.rename(old, target)


def replace_dir(tmp: Union[str, Path], target: Union[str, Path]) -> None:
    """Put the finished folder `tmp` (from `temp_dir_beside`) at `target`, replacing what is there.

    `target` is renamed aside to `.<name>.old`, `tmp` to `target`, then the old folder is removed: a failure rolls
    back, and a kill at any point leaves a state that `recover_dir` finishes or rolls back.
    """
    tmp, target = Path(tmp), Path(target)
    _finish_swap(target)
    old = _old_dir(target)
    moved = os.path.lexists(target)
    if moved:
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        if moved:
            os.rename(old, target)
        raise
    if moved:
        _remove(old)


def _about(e: OSError, path: Path) -> OSError:
    """The same error about the user's `path` instead of the writer's temporary file (which the user never named)."""
    return type(e)(e.errno, e.strerror, str(path))


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


def write_json_atomic(obj: Any, path: Union[str, Path], exclusive: bool = False, **dump_kwargs: Any) -> None:
    """Write `obj` as JSON that readers see whole or not at all; makes the parent directory.

    Args:
        obj: JSON-able object.
        path: The target file.
        exclusive: Refuse (FileExistsError) if the file already exists (see `atomic_open`).
        **dump_kwargs: For `json.dump` (indent 1 unless given; e.g. default=str).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, exclusive=exclusive) as f:
        json.dump(obj, f, **{'indent': 1, **dump_kwargs})


def finite_json(obj: Any) -> Any:
    """`obj` with every NaN or infinity as None (null): JSON has none, and one bare NaN makes a file unreadable."""
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj


def atomic_save(obj: Any, path: Union[str, Path]) -> None:
    """torch.save that a kill at any moment leaves either the previous or the new complete file."""
    import torch
    with atomic_open(path, 'wb') as f:
        torch.save(obj, f)


def atomic_save_safetensors(state_dict: Mapping[str, torch.Tensor], path: Union[str, Path],
                            metadata: Optional[Mapping[str, str]] = None) -> None:
    """A state_dict as a safetensors file, whole or not at all (timm loads it by its `.safetensors` suffix), with
    `metadata` in its header (default {'format': 'pt'})."""
    from safetensors.torch import save as safetensors_bytes
    # safetensors stores dense row-major buffers: channels_last or sliced tensors must be made contiguous
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    data = safetensors_bytes(tensors, metadata=dict(metadata) if metadata is not None else {'format': 'pt'})
    with atomic_open(path, 'wb') as f:
        f.write(data)

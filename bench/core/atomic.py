"""Files that appear whole or not at all, for checkpoints, results, registry entries and the leaderboard.

The content goes to a temporary file in the target's directory, is fsynced, then renamed into place:
a rename within one file system is atomic, so a reader, or a resume after SIGKILL, sees either the old
complete file or the new one, never a torn one.
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Iterator, Mapping, Union

if TYPE_CHECKING:  # torch is imported where a tensor is saved: registry readers (leaderboard) start without it
    import torch


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


def atomic_save(obj: Any, path: Union[str, Path]) -> None:
    """torch.save that a kill at any moment leaves either the previous or the new complete file."""
    import torch
    with atomic_open(path, 'wb') as f:
        torch.save(obj, f)


def atomic_save_safetensors(state_dict: Mapping[str, torch.Tensor], path: Union[str, Path]) -> None:
    """A state_dict as a safetensors file, whole or not at all (timm loads it by its `.safetensors` suffix)."""
    from safetensors.torch import save as safetensors_bytes
    # safetensors stores dense row-major buffers: channels_last or sliced tensors must be made contiguous
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    data = safetensors_bytes(tensors, metadata={'format': 'pt'})
    with atomic_open(path, 'wb') as f:
        f.write(data)

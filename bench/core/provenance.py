"""Where a result came from: code version, software, hardware, command, seed, date, checkpoint hash.

Every measured registry entry carries `provenance(...)`, so that a number can be traced back to
the exact code and weights that produced it (the nanoGPT/airbench habit).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

from bench.core.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
_CHUNK = 1 << 20  # hash checkpoints in 1 MiB pieces: they can be far larger than memory allows


def sha256_file(path: Union[str, os.PathLike]) -> str:
    """sha256 hex digest of a file, streamed.

    Args:
        path: the file (e.g. a checkpoint).

    Raises:
        UserError: the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f'checkpoint {path} does not exist or is not a file')
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(_CHUNK), b''):
            h.update(chunk)
    return h.hexdigest()


def package_version() -> Optional[str]:
    """The installed `timm-moe` version (None when not installed, e.g. run from a bare checkout)."""
    from importlib import metadata

    try:
        return metadata.version('timm-moe')
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str, cwd: Path = REPO_ROOT) -> Optional[str]:
    try:
        out = subprocess.run(['git', *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


# the folders of tracked results in this repository: what the harness writes there changes no code
RESULT_DIRS = ('registry', 'docs')


def git_commit(repo: Union[str, os.PathLike] = REPO_ROOT) -> Optional[str]:
    """HEAD of the source tree, with '-dirty' if tracked files differ from it; None if not a git checkout.

    Untracked files do not count as dirty (like `git describe --dirty`): run directories and other
    outputs live in the tree, and they do not change the code that ran. Nor do the tracked results the harness
    itself rewrites (`RESULT_DIRS`: registry entries, the leaderboard, generated reports): a grid that finished
    rewrites LEADERBOARD.md, and every entry of a second grid still running beside it read '-dirty'.

    Args:
        repo: a directory inside the checkout (default: the one this package is imported from).
    """
    repo = Path(repo)
    commit = _git('rev-parse', 'HEAD', cwd=repo)
    if not commit:
        return None
    status = _git('status', '--porcelain', '--untracked-files=no', '--', ':/',
                  *(f':(top,exclude){d}' for d in RESULT_DIRS), cwd=repo)
    return f'{commit}-dirty' if status else commit


def device_string() -> str:
    """The GPU's name when CUDA is available, else the CPU model, the core count and torch's CPU kernel path
    (AVX2, AVX512, ...: one seed trains other weights on another path; bench/core/portable_cpu.py)."""
    kernels = None
    try:
        import torch

        if torch.cuda.is_available():
            i = torch.cuda.current_device()
            return f'cuda:{i} {torch.cuda.get_device_name(i)}'
        kernels = torch.backends.cpu.get_cpu_capability()
    except Exception:  # provenance must never break a run that already finished
        pass
    cpu = None
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.lower().startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine() or 'unknown CPU'
    return f'cpu {cpu} ({os.cpu_count() or "?"} cores' + (f', {kernels} kernels)' if kernels else ')')


def _module_version(name: str) -> Optional[str]:
    try:
        return __import__(name).__version__
    except Exception:
        return None


def command_line(argv: Optional[Sequence[str]] = None) -> str:
    """The command as a shell would re-run it: argv shlex-quoted; the console script by its name."""
    argv = list(sys.argv if argv is None else argv)
    if argv and argv[0].endswith(('bench/cli.py', 'timm-moe')):
        argv[0] = 'timm-moe'
    return ' '.join(shlex.quote(a) for a in argv)


def utc_now() -> str:
    """The current time in UTC, ISO 8601 with seconds and a 'Z'."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace('+00:00', 'Z')


def provenance(seed: Optional[int] = None, checkpoint: Optional[Union[str, os.PathLike]] = None,
               command: Optional[str] = None) -> Dict[str, Any]:
    """The provenance block of a measured registry entry.

    Args:
        seed: the run's random seed (None if it had none).
        checkpoint: the weights that were evaluated; hashed so the entry pins them (None: no file).
        command: the command line; default: this process's `sys.argv`, shlex-quoted.

    Returns:
        dict with package_version, git_commit, torch, timm, device, command, seed, date, checkpoint_sha256.
    """
    return dict(
        package_version=package_version(),
        git_commit=git_commit(),
        torch=_module_version('torch'),
        timm=_module_version('timm'),
        device=device_string(),
        command=command if command is not None else command_line(),
        seed=None if seed is None else int(seed),
        date=utc_now(),
        checkpoint_sha256=None if checkpoint is None else sha256_file(checkpoint),
    )

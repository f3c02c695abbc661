"""YAML files the user names: a path, or the name of a file shipped in `bench/configs` (training recipes, grid
specs); run directories' config.yaml is read the same way."""
from __future__ import annotations

import difflib
import os
import stat
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from bench.core.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[1] / 'configs'
# top-level keys that only a grid spec has (a training recipe's keys are TrainConfig fields)
GRID_SPEC_KEYS = frozenset({'configs', 'arch', 'train', 'train_config'})
RECIPE, GRID_SPEC = 'recipe', 'grid spec'


def read_utf8(path: str | Path, what: str = 'file', max_bytes: Optional[int] = None) -> str:
    """The text of a file the user gave; one that is not UTF-8 is a UserError naming it and the first bad byte.

    Args:
        max_bytes: read only a regular file of at most this many bytes (UserError otherwise): for files found in a
            folder rather than named by the user (registry entries), where a FIFO would block the read forever and
            a link to a device or a huge file would fill the memory.
    """
    data = Path(path).read_bytes() if max_bytes is None else _read_regular(Path(path), what, max_bytes)
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError as e:
        raise UserError(f'{what} {path} is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); '
                        'save it as UTF-8') from None


def _read_regular(path: Path, what: str, max_bytes: int) -> bytes:
    # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then judges the file that was opened
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, 'rb') as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f'{what} {path} is not a regular file (a FIFO, device or socket): only regular files are read')
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UserError(f'{what} {path} is larger than {max_bytes:,} bytes (it has {st.st_size:,}): too large to be '
                        f'a {what}')
    return data


def shipped(kind: str) -> List[str]:
    """The names of the shipped files of one kind: training recipes or grid specs (told apart by their keys)."""
    names = []
    for p in sorted(CONFIG_DIR.glob('*.yaml')):
        data = yaml.safe_load(p.read_text()) or {}
        if (GRID_SPEC if GRID_SPEC_KEYS & set(data) else RECIPE) == kind:
            names.append(p.stem)
    return names


def not_found(what: str, name: str, choices: List[str]) -> str:
    """'config 'x' not found; did you mean y? give ... or one of: ...', the closest choices first (difflib)."""
    stem = Path(name).with_suffix('').name if name.endswith(('.yaml', '.yml')) else Path(name).name
    close = difflib.get_close_matches(stem, choices, n=3, cutoff=0.6)
    hint = f'did you mean {" or ".join(close)}? ' if close else ''
    return f'{what} {name!r} not found; {hint}give a YAML path or one of: {", ".join(choices)}'


def read_yaml_mapping(path: str | Path, what: str, kind: Optional[str] = None) -> Dict[str, Any]:
    """The mapping in a YAML file, given as a path or as the name of a file shipped in `bench/configs`.

    Args:
        path: A file path, or a shipped file's name with or without `.yaml`.
        what: What the file is, for error messages ('config', 'grid spec').
        kind: Which shipped files to suggest when `path` is not found (RECIPE or GRID_SPEC; None: all).
    """
    file = Path(path)
    if not file.exists() and (CONFIG_DIR / file.with_suffix('.yaml').name).exists():
        file = CONFIG_DIR / file.with_suffix('.yaml').name
    if not file.exists():
        choices = shipped(kind) if kind else sorted(p.stem for p in CONFIG_DIR.glob('*.yaml'))
        raise UserError(not_found(what, str(path), choices))
    try:
        data = yaml.safe_load(read_utf8(file, what)) or {}
    except yaml.YAMLError as e:
        raise UserError(f'{file} is not valid YAML: {str(e).splitlines()[0]}') from None
    except RecursionError:
        raise UserError(f'{file} is nested too deep to be a {what}') from None
    if not isinstance(data, dict):
        raise UserError(f'{file} must hold a mapping of {what} keys, not {type(data).__name__}')
    return data

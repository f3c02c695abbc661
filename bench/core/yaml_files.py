"""YAML files the user names: a path, or the name of a file shipped in `bench/configs` (training recipes, grid
specs); run directories' config.yaml is read the same way."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import yaml

from bench.core.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[1] / 'configs'


def read_utf8(path: str | Path, what: str = 'file') -> str:
    """The text of a file the user gave; one that is not UTF-8 is a UserError naming it and the first bad byte."""
    data = Path(path).read_bytes()
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError as e:
        raise UserError(f'{what} {path} is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); '
                        'save it as UTF-8') from None


def read_yaml_mapping(path: str | Path, what: str, shipped_glob: str = '*.yaml') -> Dict[str, Any]:
    """The mapping in a YAML file, given as a path or as the name of a file shipped in `bench/configs`.

    Args:
        path: A file path, or a shipped file's name with or without `.yaml`.
        what: What the file is, for error messages ('config', 'grid spec').
        shipped_glob: Which shipped files to suggest when `path` is not found.
    """
    file = Path(path)
    if not file.exists() and (CONFIG_DIR / file.with_suffix('.yaml').name).exists():
        file = CONFIG_DIR / file.with_suffix('.yaml').name
    if not file.exists():
        shipped = ', '.join(sorted(p.stem for p in CONFIG_DIR.glob(shipped_glob)))
        raise UserError(f'{what} {str(path)!r} not found; give a YAML path or one of: {shipped}')
    try:
        data = yaml.safe_load(read_utf8(file, what)) or {}
    except yaml.YAMLError as e:
        raise UserError(f'{file} is not valid YAML: {str(e).splitlines()[0]}') from None
    except RecursionError:
        raise UserError(f'{file} is nested too deep to be a {what}') from None
    if not isinstance(data, dict):
        raise UserError(f'{file} must hold a mapping of {what} keys, not {type(data).__name__}')
    return data

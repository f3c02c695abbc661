"""Values the command line hands to several verbs, parsed once into typed objects.

Each parser raises `UserError` naming the value and what is allowed, so every verb reports bad input alike.
"""
from __future__ import annotations

import math
import re
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import yaml

from bench.core.errors import UserError


def parse_number(text: Union[str, float], what: str = '--eps') -> float:
    """'8/255', '0.03' or a finite number -> float; anything else is a UserError naming `what` and the value."""
    try:
        value = float(Fraction(text)) if isinstance(text, str) else float(text)
    except (ValueError, ZeroDivisionError):
        raise UserError(f'{what} {text!r} is not a number or a fraction like 8/255') from None
    except OverflowError:  # 1e400, or a fraction of 400-digit numbers
        raise UserError(f'{what} {_short(text)} is too large for a float') from None
    if not math.isfinite(value):
        raise UserError(f'{what} {_short(text)} is not a finite number')
    return value


def _short(text: Any, limit: int = 40) -> str:
    """repr(text), cut to about `limit` characters, so that an error line stays one short line."""
    text = repr(text)
    return text if len(text) <= limit else f'{text[:limit // 2]}...{text[-10:]} ({len(text) - 2} characters)'


def parse_eps(text: Union[str, float], norm: str = 'Linf', what: str = '--eps') -> float:
    """THE eps parser: '8/255' or '0.03' (or a number) -> float; L-inf radii must lie in [0, 1], L2 radii be >= 0.

    The CLI's --eps, attack construction and the training config's eps all come through here. Anything else is a
    UserError naming the value and what is allowed.
    """
    eps = parse_number(text, what)
    given = f'{what} {text!r} = {eps:g}' if isinstance(text, str) else f'{what}={text!r}'
    if norm == 'Linf' and not 0.0 <= eps <= 1.0:
        raise UserError(f'{given} is outside [0, 1]: eps is in [0, 1] pixel units (8/255 = 0.0314)')
    if not eps >= 0.0:  # also catches nan
        raise UserError(f'{given} is negative; an L2 radius must be >= 0 (e.g. 0.5)')
    return eps


# A value given on the command line is a few words: longer text is a mistake (or an attack), and echoing it back
# would make the one-line error as long. Bounded before YAML sees it, so the parse is bounded too.
MAX_VALUE_CHARS = 2000


class _StrictLoader(yaml.SafeLoader):
    """YAML for command-line values: no anchors or aliases (a handful of characters can stand for gigabytes, the
    'billion laughs'), and no key given twice (YAML keeps the last silently: `{width: 4, width: 6}`)."""

    def compose_node(self, parent, index):  # noqa: ANN001, ANN201 - PyYAML's signature
        if self.check_event(yaml.AliasEvent) or getattr(self.peek_event(), 'anchor', None):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, 'anchors and aliases (&name, *name) are not taken here',
                                              event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # noqa: ANN001, ANN201 - PyYAML's signature
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        twice = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
        if twice is not None:
            raise yaml.constructor.ConstructorError(None, None, f'key {_short(twice)} is given twice',
                                                    node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _check_length(what: str, text: str) -> None:
    if len(text) > MAX_VALUE_CHARS:
        raise UserError(f'{what}={_short(text, 100)} is longer than {MAX_VALUE_CHARS} characters; give a short value')


def _load(what: str, text: str) -> Any:
    """`text` parsed by `_StrictLoader`; YAML errors and too deep nesting are UserErrors naming `what`."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        reason = str(getattr(e, 'problem', None) or e).splitlines()[0]
        raise UserError(f'{what}={_short(text, 100)} is not a YAML value ({reason[:120]})') from None
    except RecursionError:
        raise UserError(f'{what}={_short(text)} is nested too deep') from None


def parse_yaml_value(what: str, text: str) -> Any:
    """One value written as YAML ('16', '[1, 2]', 'conv_gap'); text that is not YAML is a UserError naming `what`."""
    _check_length(what, text)
    return _load(what, text)


def parse_mapping(key: str, text: str) -> Dict[str, Any]:
    """'width=16,gate=conv_gap' or a YAML mapping such as '{width: 16}' -> dict (values parsed as YAML scalars).

    A key given twice is refused, not silently replaced by its last value.

    Args:
        key: How to name the value in errors, e.g. '--model-kwargs'.
        text: The text given.
    """
    _check_length(key, text)
    if '=' in text and not text.lstrip().startswith('{'):
        pairs = [p.split('=', 1) for p in text.split(',') if p.strip()]
        if any(len(p) != 2 for p in pairs):
            raise UserError(f'{key}={_short(text, 100)}: write k=v pairs separated by commas')
        names = [k.strip() for k, _ in pairs]
        twice = next((k for i, k in enumerate(names) if k in names[:i]), None)
        if twice is not None:
            raise UserError(f'{key}={_short(text, 100)} gives {twice} twice; give each key once')
        return {k.strip(): parse_yaml_value(f'{key} {k.strip()}', v) for k, v in pairs}
    value = _load(key, text)
    if not isinstance(value, dict):
        raise UserError(f'{key}={_short(text, 100)} is not a mapping; write k=v,k=v or {{k: v}}')
    return value


def check_out_apart(out: Union[str, Path], sources: Mapping[str, Optional[Union[str, Path]]],
                    flag: str = '--out') -> None:
    """Refuse an output folder that is, contains or lies inside a folder the verb reads from.

    Replacing such a folder (export --overwrite, ship) would delete the very run or registry being read, and
    writing into one mixes outputs with its files. Paths are compared resolved, so links and `..` do not hide it.

    Args:
        out: The output folder the user gave.
        sources: {what it is, e.g. 'the run': its folder}; None values are skipped.
        flag: How to name `out` in the message.
    """
    target = Path(out).resolve()
    for what, source in sources.items():
        if source is None:
            continue
        src = Path(source).resolve()
        if target == src or src in target.parents or target in src.parents:
            raise UserError(f'{flag} {out} overlaps {what} {source}: it would be written over what it is made '
                            f'from; give a folder outside {source}')


# THE pattern of a name that becomes a file or folder name (an entry id, a grid config, a pretrained tag's
# base): one path component, lower-case (so that two names cannot collide on a case-insensitive file system),
# starting with a letter or digit (so never '.', '..' or a hidden file), at most 160 characters.
NAME_PATTERN = re.compile(r'[a-z0-9][a-z0-9_.-]{0,159}')


def check_name(value: Any, what: str) -> str:
    """`value` if it is a name (`NAME_PATTERN`), else a UserError naming `what`, the value and what is allowed.

    Names are read from files the user may have got from someone else (grid specs, registry entries); a name
    like '../../x' would otherwise put a run, and a restart's cleanup of it, outside the folder it belongs in.
    """
    if not (isinstance(value, str) and NAME_PATTERN.fullmatch(value)):
        raise UserError(f'{what} {_short(value)} is not a name: use lower-case letters, digits, _ . and -, '
                        'starting with a letter or digit, at most 160 characters')
    return value


# characters that act on a terminal or split a line instead of showing: C0 and C1 controls (ESC, BEL, NUL,
# newline, ...), DEL, the Unicode line and paragraph separators and the bidirectional overrides
_CONTROL = re.compile('[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]')


def find_control(text: str) -> Optional[int]:
    """The index of the first control character in `text` (see `printable`), or None."""
    found = _CONTROL.search(text)
    return found.start() if found else None


def printable(text: Any) -> str:
    """`str(text)` with every control character written out as its escape (`\\x1b`, `\\n`, `\\u202e`), so that text
    from a file shows as text on a terminal, in Markdown or in a page, and never moves the cursor, retitles or
    clears the terminal, or starts a new line."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(text))

"""The CLI's argument parser: argparse, through its public API only, with one-line errors that name the verb and
suggest the closest option or choice, and help that states every default.

argparse offers no public way to list a parser's options (`_actions` is private), so `Parser` keeps each option
that its `add_argument` (or a mutually exclusive group's) returns in `arguments`, and the top parser keeps each
verb's parser that `Verbs.add_parser` returns in `verbs`.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, List, Optional, Sequence


class Parser(argparse.ArgumentParser):
    """One parser of `timm-moe` (the top one, or a verb's)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.arguments: List[argparse.Action] = []  # set before argparse's __init__, which adds --help
        self.verbs: Dict[str, Parser] = {}  # the top parser's: each verb's parser
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        return self.noted(super().add_argument(*args, **kwargs))

    def add_mutually_exclusive_group(self, **kwargs: Any) -> Group:
        return Group(self, super().add_mutually_exclusive_group(**kwargs))

    def noted(self, action: argparse.Action) -> argparse.Action:
        """Keep `action` in `arguments`, and add '(default: X)' to its help unless the help says its default
        (None and False have none to say; a hidden option stays hidden)."""
        self.arguments.append(action)
        text = action.help or ''
        if action.option_strings and action.help != argparse.SUPPRESS \
                and action.default not in (None, False, argparse.SUPPRESS) \
                and 'default' not in text and '%(default)' not in text:
            action.help = text + ' (default: %(default)s)'
        return action

    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        self.exit(2, f'{self.prog}: error: {message}{suggestion(self, message)}\n')

    def parse_args(self, args: Optional[Sequence[str]] = None,  # type: ignore[override] - argparse's overloads
                   namespace: Optional[argparse.Namespace] = None) -> argparse.Namespace:
        # argparse reports unknown options from the top parser ('timm-moe: error: ...'); report them from the
        # verb's parser instead, which knows the verb and its options
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.verbs.get(getattr(parsed, 'verb', None), self).error(f'unrecognized arguments: {" ".join(extras)}')
        return parsed


class Group:
    """A mutually exclusive group of a `Parser`, whose options the parser keeps too."""

    def __init__(self, parser: Parser, group: Any) -> None:
        self._parser, self._group = parser, group

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        return self._parser.noted(self._group.add_argument(*args, **kwargs))


class Verbs:
    """What a verb module's `add_cli` is given: `add_parser(name, ...)` adds the verb's `Parser`."""

    def __init__(self, parser: Parser, dest: str) -> None:
        self._parser = parser
        self._sub = parser.add_subparsers(dest=dest, metavar=dest.upper(), parser_class=Parser)

    def add_parser(self, name: str, **kwargs: Any) -> Parser:
        verb = self._parser.verbs[name] = self._sub.add_parser(name, **kwargs)
        return verb


def suggestion(parser: Parser, message: str) -> str:
    """'; did you mean --checkpoint?' for a mistyped option or choice (difflib's closest), else ''."""
    import difflib
    import re
    if message.startswith('unrecognized arguments:'):
        known = [s for a in parser.arguments for s in a.option_strings]
        typed = [t.split('=', 1)[0] for t in message.split(':', 1)[1].split() if t.startswith('--')]
    else:
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if not m:
            return ''
        known = re.findall(r"'([^']*)'", m.group(2)) or [c.strip() for c in m.group(2).split(',')]
        typed = [m.group(1)]
    hints = [close[0] for t in typed for close in [difflib.get_close_matches(t, known, n=1, cutoff=0.6)] if close]
    return f'; did you mean {" / ".join(hints)}?' if hints else ''

"""`timm-moe` command line: a thin dispatcher over the verb modules in `bench/`.

Each verb module exposes `add_cli(subparsers)`, which adds its sub-parser and sets
`func=run` on it, where `run(args) -> int` returns the exit code.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# verb -> module that implements it; imported lazily so `timm-moe --help` stays fast
VERBS = {
    'quickstart': 'bench.quickstart',
    'train': 'bench.train',
    'eval': 'bench.evaluate',
    'audit': 'bench.audit',
    'leaderboard': 'bench.leaderboard',
    'grid': 'bench.grid',
    'report': 'bench.report',
    'models': 'bench.models_cmd',
    'compare': 'bench.compare',
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        self.exit(2, f'{self.prog}: error: {message}\n')


def build_parser(verb: Optional[str] = None) -> argparse.ArgumentParser:
    parser = _Parser(prog='timm-moe', description='BlockMoE ResNets for timm: train, attack, audit, rank.')
    sub = parser.add_subparsers(dest='verb', metavar='VERB', parser_class=_Parser)
    for name, module in VERBS.items():
        if verb is not None and name != verb:
            # still list the verb in --help without importing its module
            sub.add_parser(name, help=f'see `timm-moe {name} --help`')
            continue
        importlib.import_module(module).add_cli(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = next((a for a in argv if not a.startswith('-')), None)
    parser = build_parser(verb if verb in VERBS else None)
    args = parser.parse_args(argv)
    if not getattr(args, 'func', None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError) as e:
        # bad input: one line, no traceback (UserError is a ValueError)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f'timm-moe {args.verb}: error: {msg}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'timm-moe {args.verb}: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())

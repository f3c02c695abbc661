"""`timm-moe` command line: a thin dispatcher over the verb modules (one per verb, `bench/cli/<verb>.py`).

Each verb module exposes `add_cli(subparsers)`, which adds its sub-parser and sets
`func=run` on it, where `run(args) -> int` returns the exit code.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from typing import List, Optional

from bench.core.errors import UserError

# Errors that are the user's to fix: a bad value (UserError) or a path that cannot be used. They print as one
# line with exit status 2. Any other exception, a plain ValueError included, is a bug in timm-moe: it keeps its
# traceback and exits 1, so that it is never mistaken for bad input.
USER_ERRORS = (UserError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)

# verb -> (module that implements it, its line in `timm-moe --help`). A module is imported only when its verb
# runs (or shows its own --help): `timm-moe --help` and a mistyped verb import none, so neither waits for torch.
VERBS = {
    'quickstart': ('bench.cli.quickstart', 'train, attack, audit and rank small dense and BlockMoE models on the '
                                           'bundled data (CPU, offline, a few minutes)'),
    'train': ('bench.cli.train', 'train a model (normal, PGD or TRADES adversarial training)'),
    'eval': ('bench.cli.eval', 'clean and robust accuracy (PGD, APGD, AutoAttack) with sanity checks'),
    'audit': ('bench.cli.audit', 'FLOPs (fvcore), parameters, latency and memory of models over their dense '
                                 'baselines'),
    'leaderboard': ('bench.cli.leaderboard', 'rank the registry and regenerate registry/LEADERBOARD.md'),
    'grid': ('bench.cli.grid', 'run a sweep from a YAML spec: train, attack, audit, register each cell'),
    'report': ('bench.cli.report', 'draw PNG plots from the registry (or a study report: --study)'),
    'models': ('bench.cli.models', 'list every registered model (experts, parameters) and the pretrained tags'),
    'export': ('bench.cli.export', 'a hub-style folder (config.json, model.safetensors, model card) from a '
                                   'training run'),
    'compare': ('bench.cli.compare', 'paired comparison of two registry entries on their shared test points'),
    'import-paper': ('bench.cli.import_paper', "rebuild the registry's paper and RobustBench entries"),
    'ship': ('bench.cli.ship', "a finished study's tagged configs as timm pretrained tags"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        self.exit(2, f'{self.prog}: error: {message}\n')


def build_parser(verb: Optional[str] = None) -> argparse.ArgumentParser:
    parser = _Parser(prog='timm-moe', description='BlockMoE ResNets for timm: train, attack, audit, rank.')
    sub = parser.add_subparsers(dest='verb', metavar='VERB', parser_class=_Parser)
    for name, (module, summary) in VERBS.items():
        if name == verb:
            importlib.import_module(module).add_cli(sub)
        else:  # listed in --help without importing its module
            sub.add_parser(name, help=summary)
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
    except USER_ERRORS as e:
        print(f'timm-moe {args.verb}: error: {_one_line(e)}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # one Ctrl-C: the verb has stopped its workers; say what is kept, in one line
        hint = getattr(args, 'interrupted', None)
        print(f'timm-moe {args.verb}: interrupted' + (f'; {hint(args)}' if hint else ''), file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - a bug: show where it happened, and say it is not the user's input
        traceback.print_exc()
        print(f'timm-moe {args.verb}: internal error (a bug in timm-moe, not bad input): please report the '
              'traceback above', file=sys.stderr)
        return 1


def _one_line(e: BaseException) -> str:
    """The first line of the message; for an OSError without one, the error and the path."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


"""`timm-moe report`: PNG plots drawn from the registry (see `bench.results.report` for what each shows)."""
from __future__ import annotations

import argparse
from pathlib import Path

from bench.cli.options import add_registry_args
from bench.results.registry import check_filters
from bench.results.report import write_report


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser('report', help='draw PNG plots from the registry',
                              description='PNG plots drawn from the registry (never from numbers typed anywhere '
                                          'else).')
    add_registry_args(p)
    p.add_argument('--out', required=True, type=Path, help='directory for the PNG files (created if missing)')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_filters(args.dataset, args.threat_model)
    for path in write_report(Path(args.registry), args.out, args.dataset, args.threat_model):
        print(f'wrote {path}')
    return 0

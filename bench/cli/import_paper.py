"""`timm-moe import-paper`: rebuild the registry's reported entries (the paper code's table, RobustBench points).

The import is reproducible (`bench.results.import_paper`): the same CSV gives byte-identical files.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bench.cli.parser import Verbs
from bench.results.import_paper import DEFAULT_CSV, import_all
from bench.results.registry import default_text, default_write_registry


def add_cli(verbs: Verbs) -> None:
    p = verbs.add_parser('import-paper', help="rebuild the registry's paper and RobustBench entries from "
                                                   'the shipped sources',
                              description='Import reported numbers into the registry: the paper code\'s CIFAR-100 '
                                          'table and RobustBench points.')
    p.add_argument('--csv', type=Path, default=DEFAULT_CSV, help=f'the paper CSV (default: the shipped copy, {DEFAULT_CSV})')
    p.add_argument('--registry', type=Path, default=default_write_registry(),
                   help=f'registry root to write to (default: {default_text(write=True)})')
    p.add_argument('--overwrite', action='store_true', help='replace existing entries whose content changed')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    res = import_all(args.csv, args.registry, args.overwrite)
    print(f"import-paper: {len(res['written'])} written, {len(res['unchanged'])} unchanged in {args.registry}")
    return 0

"""Options that several verbs share, added the same way everywhere."""
from __future__ import annotations

import argparse

from bench.results.registry import DEFAULT_REGISTRY


def add_registry_args(parser: argparse.ArgumentParser, filter_help: str = 'only these') -> None:
    """The --registry, --dataset and --threat-model options that every registry reader takes."""
    parser.add_argument('--registry', default=str(DEFAULT_REGISTRY), help="registry root (default: the repo's registry/)")
    parser.add_argument('--dataset', nargs='+', help=f'{filter_help} data sets')
    parser.add_argument('--threat-model', nargs='+', help=f'{filter_help} threat models (Linf, L2)')

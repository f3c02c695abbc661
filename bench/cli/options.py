"""Options that several verbs share, added the same way everywhere."""
from __future__ import annotations

import argparse

from bench.results.registry import default_registry, default_text


def add_registry_args(parser: argparse.ArgumentParser, filter_help: str = 'only these') -> None:
    """The --registry, --dataset and --threat-model options that every registry reader takes."""
    add_registry_option(parser)
    parser.add_argument('--dataset', nargs='+', help=f'{filter_help} data sets')
    parser.add_argument('--threat-model', nargs='+', help=f'{filter_help} threat models (Linf, L2)')


def add_registry_option(parser: argparse.ArgumentParser, what: str = 'registry root') -> None:
    """--registry for a verb that reads entries; its help names the default exactly (docs/REGISTRY.md)."""
    parser.add_argument('--registry', default=str(default_registry()), help=f'{what} (default: {default_text()})')

"""`timm-moe leaderboard`: rank the registry's entries and regenerate its `LEADERBOARD.md`.

The printed tables show what was asked (--dataset, --threat-model, --sort, --limit); the file always holds
every entry, ranked by `auto` (see `bench.results.leaderboard`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bench.cli.options import add_registry_args
from bench.cli.parser import Verbs
from bench.core.errors import UserError
from bench.results.leaderboard import DEFAULT_SORT, check_sort, print_table, write_leaderboard
from bench.results.leaderboard.render import REPORTED_TOP
from bench.results.registry import check_filters, is_read_only, load_entries


def add_cli(verbs: Verbs) -> None:
    p = verbs.add_parser('leaderboard', help="rank the registry and regenerate its LEADERBOARD.md",
                              description=__doc__.split('\n\n')[0])
    add_registry_args(p, 'show only these')  # LEADERBOARD.md always has every entry
    p.add_argument('--sort', default=DEFAULT_SORT,
                   help="the ranking metric: auto (per section, the attack configuration measured on most rows, "
                        "the strongest among ties), clean, a column label such as PGD-20, APGD-CE-20 or "
                        "AutoAttack, or an accuracy key such as pgd20; the file always uses auto")
    p.add_argument('--limit', type=int, default=None,
                   help='ranked rows per table on the console (0 = all; default: all of the tables measured here, '
                        f'the top {REPORTED_TOP} of those only reported elsewhere, such as the paper\'s)')
    p.add_argument('--no-group', action='store_true',
                   help='one row per run, instead of one per configuration over its seeds')
    p.add_argument('--html', metavar='OUT', type=Path, default=None,
                   help='also write the leaderboard as one self-contained web page to OUT (every entry, sortable '
                        'columns, filters, seed groups that expand; links to each entry JSON, copied to entries/ '
                        'beside OUT); OUT may not lie inside a registry')
    p.add_argument('--overwrite', action='store_true',
                   help='let --html replace an existing file (or entries/ folder) that is not a page this command '
                        'wrote')
    p.add_argument('--no-write', action='store_true',
                   help='print only; leave LEADERBOARD.md as it is (always so for the read-only shipped registry of '
                        'an installed package)')
    p.add_argument('--wide', action='store_true',
                   help='every column of LEADERBOARD.md (entry ids included), one line per row; default: a compact '
                        'view for a terminal about 110 columns wide')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_filters(args.dataset, args.threat_model)
    if args.limit is not None and args.limit < 0:
        raise UserError(f'--limit {args.limit} is negative: use 0 for all rows or a positive count')
    registry = Path(args.registry)
    everything = load_entries(registry)
    shown = [e for e in everything if (not args.dataset or e['dataset'] in args.dataset)
             and (not args.threat_model or e['threat_model'] in args.threat_model)]
    check_sort(shown, args.sort)
    print_table(shown, args.sort, args.limit, group=not args.no_group, wide=args.wide)
    if args.html is not None:
        from bench.results.leaderboard.html import write_html

        print(f'wrote {write_html(args.html, registry, everything, args.overwrite)} ({len(everything)} entries)')
    if not args.no_write and is_read_only(registry):
        print(f'{registry} is the read-only registry shipped in the package: its LEADERBOARD.md is left as it is')
    elif not args.no_write:
        path = write_leaderboard(registry, everything)
        print(f'wrote {path} ({len(everything)} entries)')
    return 0

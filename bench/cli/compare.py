"""`timm-moe compare A B`: is model A more accurate than model B on the same test points?

A and B are registry entry ids or paths to entry JSON files (see `bench.results.compare`, docs/STATISTICS.md).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.cli.parser import Verbs
from bench.core.atomic import atomic_open
from bench.core.errors import UserError
from bench.results.compare import compare_entries, format_result, resolve_entry
from bench.cli.options import add_registry_option


def add_cli(verbs: Verbs) -> None:
    p = verbs.add_parser(
        'compare', help='paired comparison of two registry entries on their shared test points',
        description=('Difference in accuracy of A and B on the test points both cover, with its paired bootstrap '
                     'interval and the exact McNemar p-value. Both entries need per-sample results. '
                     'See docs/STATISTICS.md.'))
    p.add_argument('a', metavar='A', help='entry id in --registry, or path to an entry JSON file')
    p.add_argument('b', metavar='B', help='the entry to compare A with (id or path)')
    p.add_argument('--metric', default=None,
                   help="clean, pgd20, apgd-ce, autoattack, worst_case, ... (default: the strongest both store: "
                        "autoattack > worst_case > apgd-ce > ... > pgd20 > pgd10 > clean)")
    add_registry_option(p, 'registry root for entry ids')
    p.add_argument('--boot', type=int, default=10000, help='bootstrap resamples (default 10000)')
    p.add_argument('--seed', type=int, default=0, help="the bootstrap's seed (default 0)")
    p.add_argument('--confidence', type=float, default=0.95, help='coverage of every interval (default 0.95)')
    p.add_argument('--allow-different-settings', action='store_true',
                   help="compare even when the metric's attack settings, eps or threat model differ (flagged)")
    p.add_argument('--json', metavar='OUT', default=None, help="also write the result as JSON to OUT ('-': stdout only)")
    p.add_argument('--overwrite', action='store_true', help='replace an existing --json file')
    p.set_defaults(func=run)


MAX_BOOT = 1_000_000  # about 30 MB and a second; a million resamples put the interval's ends to +-0.01 points


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.boot <= MAX_BOOT:
        raise UserError(f'--boot {args.boot} must be at least 1 and at most {MAX_BOOT} (10000 is usual)')
    if not 0 <= args.seed < 2 ** 63:
        raise UserError(f'--seed {args.seed} must be an integer from 0 to 2**63 - 1')
    if not 0 < args.confidence < 1:
        raise UserError(f'--confidence {args.confidence} must lie strictly between 0 and 1 (e.g. 0.95)')
    if args.json not in (None, '-'):
        if Path(args.json).is_dir():
            raise UserError(f'--json {args.json} is a directory; give a file name such as {Path(args.json) / "compare.json"}')
        if Path(args.json).exists() and not args.overwrite:
            raise UserError(f'--json {args.json} already exists; pass --overwrite to replace it, or choose another file')
    (a, where_a), (b, where_b) = (resolve_entry(ref, args.registry) for ref in (args.a, args.b))
    if Path(where_a).resolve() == Path(where_b).resolve() or a == b:
        raise UserError(f'A ({args.a}) and B ({args.b}) are the same entry ({where_a}): compare two different entries')
    result = compare_entries(a, b, metric=args.metric, n_boot=args.boot, seed=args.seed,
                             confidence=args.confidence, allow_different_settings=args.allow_different_settings)
    result['a']['source'], result['b']['source'] = where_a, where_b
    if args.json == '-':
        print(json.dumps(result, indent=2))
        return 0
    print(format_result(result))
    if args.json:
        with atomic_open(Path(args.json)) as f:
            f.write(json.dumps(result, indent=2) + '\n')
    return 0

"""`timm-moe quickstart`: train, attack, audit and rank small dense and BlockMoE models on the bundled data.

What it runs and writes: `bench.pipeline.quickstart`. Exit status 1 if adversarial training did not raise
PGD accuracy by 20 points for both models (default plan only: the smoke plan is too small to tell).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from bench.cli.parser import Verbs
from bench.core.errors import UserError
from bench.pipeline.quickstart_plans import PLANS


def add_cli(verbs: Verbs) -> None:
    p = verbs.add_parser('quickstart', help='train, attack, audit and rank small dense and BlockMoE models '
                                                 'on the bundled data (CPU, offline, a few minutes)')
    p.add_argument('--out', type=Path, default=Path('runs/quickstart'), help='output directory')
    p.add_argument('--plan', default='default', help=f'run size: {", ".join(PLANS)}')
    p.add_argument('--procs', type=int, default=2, help='parallel worker processes')
    p.add_argument('--resume', action='store_true', help='reuse the finished trainings in --out')
    p.add_argument('--overwrite', action='store_true', help='replace whatever is in --out')
    p.add_argument('--no-progress', action='store_true', help="hide each run's stage and ETA (shown on stderr)")
    p.set_defaults(func=run, interrupted=lambda args: f'finished trainings are kept in {args.out}; rerun with '
                                                      '--resume to reuse them')


def run(args: argparse.Namespace) -> int:
    if args.plan not in PLANS:
        raise UserError(f'--plan {args.plan!r} is unknown; choose one of {", ".join(PLANS)}')
    from bench.pipeline.quickstart import run_quickstart  # torch: imported by the verb, not by --help
    console = Console(width=200) if not sys.stdout.isatty() else Console()
    summary = run_quickstart(args.out, PLANS[args.plan], args.procs, args.resume, args.overwrite, console,
                             progress=not args.no_progress)
    return 0 if summary['method_works'] or args.plan != 'default' else 1

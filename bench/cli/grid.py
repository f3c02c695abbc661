"""`timm-moe grid SPEC`: run a sweep from YAML; every cell trains, attacks, audits and registers one entry.

`--shard I/N` runs only the I-th (from 0) of N slices of the cells, so that N processes (a Slurm array job)
fill one registry; see `bench.pipeline.grid`.
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import Optional, Tuple

from rich.console import Console

from bench.cli.parser import Verbs
from bench.core.errors import UserError


def parse_shard(text: Optional[str]) -> Optional[Tuple[int, int]]:
    """'2/8' -> (2, 8): the third of eight slices. None stays None (every cell)."""
    if text is None:
        return None
    m = re.fullmatch(r'\s*(\d+)\s*/\s*(\d+)\s*', text)
    if not m or int(m[2]) < 1 or int(m[1]) >= int(m[2]):
        raise UserError(f'--shard {text!r}: expected I/N with N >= 1 and 0 <= I < N, e.g. 0/4 '
                        '(Slurm: --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with --array=0-3)')
    return int(m[1]), int(m[2])


def add_cli(verbs: Verbs) -> None:
    p = verbs.add_parser('grid', help='run a sweep from a YAML spec: train, attack, audit, register each cell')
    p.add_argument('spec', help='grid YAML, or a shipped one: grid_tiny, grid_paper_cifar100')
    p.add_argument('--dry-run', action='store_true', help='list the cells and their status, run nothing')
    p.add_argument('--procs', type=int, default=1, help='cells run in parallel')
    p.add_argument('--out', help='override the spec\'s output directory')
    p.add_argument('--registry', help="where entries are written (default: the spec's registry: key, else registry/ "
                                      "in its output directory)")
    p.add_argument('--only', help='run only the cells (and AutoAttack follow-ups) whose id contains this text')
    p.add_argument('--shard', metavar='I/N', help='run only the I-th (from 0) of N slices of the cells; N '
                   'processes with I = 0..N-1 run every cell once and fill one registry')
    p.add_argument('--no-progress', action='store_true',
                   help="hide the board of running cells, their stages and ETA (shown on stderr)")
    p.set_defaults(func=run, interrupted=lambda args: 'finished cells are kept; rerun the same command to resume')


def run(args: argparse.Namespace) -> int:
    shard = parse_shard(args.shard)
    if args.procs < 1:
        raise UserError(f'--procs {args.procs} must be at least 1')
    from bench.pipeline.grid import load_spec, run_grid  # torch: imported once the options are checked
    spec = load_spec(args.spec)
    if args.out:
        spec.out = args.out
    if args.registry:
        spec.registry = args.registry
    console = Console(width=200) if not sys.stdout.isatty() else Console()
    outcome = run_grid(spec, args.procs, args.dry_run, console, args.only, shard,
                       progress=not args.no_progress)
    return 1 if outcome['failed'] else 0

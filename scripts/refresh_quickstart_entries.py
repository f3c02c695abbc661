"""Regenerate the quickstart entries shipped in registry/ (and registry/LEADERBOARD.md) from a fresh quickstart.

    python scripts/refresh_quickstart_entries.py [--out runs/quickstart] [--procs 2]

Runs `timm-moe quickstart` (the default plan, about 10 minutes on two cores) into --out, replaces the shipped
quickstart entries (measured entries whose attack note is the quickstart's) by the new ones, and regenerates
LEADERBOARD.md. Run it whenever a change moves the quickstart's numbers (tests/test_quickstart.py's pinned
smoke numbers tell: regenerate that fixture too, with the command its failure message gives).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bench.pipeline.quickstart import PLANS, evaluation, run_quickstart
from bench.results.leaderboard import write_leaderboard
from bench.results.registry import DEFAULT_REGISTRY, entry_path, load_entries, write_entry

QUICKSTART_NOTE = evaluation(PLANS['default']).attack_note


def is_quickstart_entry(entry: dict) -> bool:
    return entry['source'] == 'measured' and entry.get('attack_note') == QUICKSTART_NOTE and not entry.get('grid')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', type=Path, default=Path('runs/quickstart'), help='quickstart output (replaced)')
    parser.add_argument('--procs', type=int, default=2, help='parallel worker processes (default: 2)')
    parser.add_argument('--registry', type=Path, default=DEFAULT_REGISTRY, help='registry to update (default: the repo\'s)')
    args = parser.parse_args()
    run_quickstart(args.out, PLANS['default'], args.procs, overwrite=True)
    fresh = [e for e in load_entries(args.out / 'registry') if is_quickstart_entry(e)]
    if len(fresh) != 4:
        raise SystemExit(f'expected 4 quickstart entries in {args.out / "registry"}, found {len(fresh)}')
    for old in (e for e in load_entries(args.registry) if is_quickstart_entry(e)):
        entry_path(old, args.registry).unlink()
    for e in fresh:
        print(f'wrote {write_entry(e, args.registry)}')
    print(f'wrote {write_leaderboard(args.registry)}')


if __name__ == '__main__':
    main()

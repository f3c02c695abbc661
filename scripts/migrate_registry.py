"""Rewrite every entry of a registry with today's field names (`bench.results.registry.migrate`), and
regenerate its LEADERBOARD.md.

    python scripts/migrate_registry.py [--registry registry]

Reading an entry already migrates it, so old files keep loading without this; it brings the stored files
themselves up to date after a rename (e.g. `ensemble` -> `worst_case`), so that what a reader of the JSON
sees is what the code calls it. Each entry is validated and written back atomically in its canonical text,
so an entry with no old name comes out byte for byte the same.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bench.results.leaderboard import write_leaderboard
from bench.results.registry import DEFAULT_REGISTRY, load_entries, write_entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--registry', type=Path, default=DEFAULT_REGISTRY, help="registry to rewrite (default: the repo's)")
    args = parser.parse_args()
    entries = load_entries(args.registry)  # every file, migrated and validated, before anything is written
    for entry in entries:
        write_entry(entry, args.registry, overwrite=True)
    print(f'rewrote {len(entries)} entries under {args.registry}; wrote {write_leaderboard(args.registry)}')


if __name__ == '__main__':
    main()

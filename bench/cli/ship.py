"""`timm-moe ship SPEC`: a finished study's tagged configs as timm pretrained tags (package data).

The logic is `bench.pipeline.ship`; the folder's format is `timm_moe.models.pretrained` (docs/ECOSYSTEM.md).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bench.cli.parser import Verbs

# `bench.pipeline.ship.DTYPE_CHOICES`, which imports torch, written out so that the parser checks --dtype at once;
# tests/test_startup.py keeps the two equal
DTYPE_CHOICES = ('float32', 'float16', 'auto')


def add_cli(verbs: Verbs) -> None:
    p = verbs.add_parser('ship', help="a finished study's tagged configs as timm pretrained tags",
                              description="Write the first seed (or --seed) of each tagged config of a finished study "
                              "(weights + manifest.json) into the pretrained-tags folder, so that "
                              "timm.create_model('<model>.<tag>', pretrained=True) loads it offline. The "
                              "tags this spec shipped before are replaced; other specs' tags are kept.")
    p.add_argument('spec', help='the study\'s grid YAML (configs with a tag), or a shipped grid_*.yaml name')
    p.add_argument('--out', type=Path, default=None,
                   help="the pretrained-tags folder (default: the package's timm_moe/pretrained/)")
    p.add_argument('--registry', type=Path, default=None,
                   help="where the study's entries are (default: the spec's registry), as given to `grid --registry`")
    p.add_argument('--seed', type=int, default=None,
                   help="ship this seed's runs instead of each tagged config's first (when the first seed's "
                        "weights are gone with the machine that trained them)")
    p.add_argument('--dtype', default='auto', choices=DTYPE_CHOICES,
                   help="weights precision; auto: float32 unless the folder's files would reach 18 MB, then float16")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bench.pipeline.ship import MB, ship
    out, manifest = ship(args.spec, args.out, args.dtype, args.seed, args.registry)
    for key, record in sorted(manifest.items()):
        print(f'{key}: {record["file"]} ({record["dtype"]}, registry entry {record["entry_id"]})')
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f'shipped {len(manifest)} tags to {out} ({size / MB:.2f} MB with the tags other specs shipped)')
    return 0

"""`timm-moe export --checkpoint RUN --out DIR`: a training run as a hub-style folder that timm loads.

The run is read by `bench.pipeline.export`; the folder's format is `bench.results.export` (docs/ECOSYSTEM.md).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bench.cli.parser import Verbs
from bench.results.registry import default_text


def add_cli(verbs: Verbs) -> None:
    p = verbs.add_parser('export', help='a hub-style folder (config.json, model.safetensors, model card) '
                              'from a training run',
                              description='Export a training run as a hub-style folder that timm loads.')
    p.add_argument('--checkpoint', required=True, type=Path,
                   help='training run directory (config.yaml + model.pth), or a weights file inside one')
    p.add_argument('--out', required=True, type=Path, help='folder to write (empty or missing)')
    p.add_argument('--entry', default=None, help='registry entry id or JSON file for the model card '
                   "(default: the entry whose checkpoint_sha256 matches the run's weights, if any)")
    p.add_argument('--registry', type=Path, default=None,
                   help='registry root to search (default: the registry beside the run, as quickstart and grid '
                        f'write it: OUT/registry for the run OUT/runs/RUN; then {default_text()})')
    p.add_argument('--ema', action='store_true', help="export the run's EMA weights (model_ema.pth)")
    p.add_argument('--overwrite', action='store_true', help='replace a non-empty --out')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bench.pipeline.export import export_run  # torch: imported by the verb, not by --help
    out = export_run(args.checkpoint, args.out, entry=args.entry, registry_dir=args.registry, ema=args.ema,
                     overwrite=args.overwrite)
    print(f'wrote {out}: {", ".join(sorted(p.name for p in out.iterdir()))}')
    return 0

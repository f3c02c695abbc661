"""`timm-moe train`: every config key (`bench.training.config.TrainConfig`) is an option; `--config` loads a YAML recipe
first. The trainer is `bench.training.trainer`."""
from __future__ import annotations

import argparse
import dataclasses
import os

from bench.core.compile import TORCHCOMPILE_DEFAULT
from bench.training.config import FIELD_HELP, TrainConfig, load_config
from bench.training.trainer import run_training

_FIELDS = dataclasses.fields(TrainConfig)


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser('train', help='train a model (normal, or PGD, TRADES, Fast or Free adversarial training)',
                              description='Train with timm components. Every config key is an option; '
                                          '--config loads a YAML recipe first (e.g. cifar100_resnet18_pgd).')
    p.add_argument('--config', help='YAML file or shipped recipe name (bench/configs)')
    p.add_argument('--resume', action='store_true', help='continue the run in --out')
    p.add_argument('--overwrite', action='store_true', help='delete --out first if it holds a run')
    for f in _FIELDS:
        flag = '--' + f.name.replace('_', '-')
        if f.type in ('bool', bool):
            p.add_argument(flag, dest=f'cfg_{f.name}', nargs='?', const='true', default=None, metavar='BOOL')
        elif f.name == 'torchcompile':  # timm's flag: an optional backend, inductor when bare
            p.add_argument(flag, dest=f'cfg_{f.name}', nargs='?', const=TORCHCOMPILE_DEFAULT, default=None,
                           metavar='BACKEND', help=f'compile with torch.compile (bare: {TORCHCOMPILE_DEFAULT})')
        else:
            p.add_argument(flag, dest=f'cfg_{f.name}', default=None, metavar=f.name.upper(),
                           help='k=v,k=v or a YAML mapping' if f.name == 'model_kwargs' else FIELD_HELP.get(f.name))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides: list = []
    for f in _FIELDS:
        value = getattr(args, f'cfg_{f.name}')
        if value is not None:
            overrides += [f'--{f.name}', value]
    cfg = load_config(args.config, overrides)
    result = run_training(cfg, resume=args.resume, overwrite=args.overwrite)
    last = result['history'][-1] if result['history'] else {}
    if int(os.environ.get('RANK', 0)) == 0:
        print(f'done: {result["steps"]} steps, {result["img_per_s"] or 0:.1f} img/s, '
              f'clean acc {last.get("clean_acc")}, weights {result["checkpoint"]}')
    return 0

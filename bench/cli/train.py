"""`timm-moe train`: every config key (`bench.training.config.TrainConfig`) is an option; `--config` loads a YAML recipe
first. The trainer is `bench.training.trainer`."""
from __future__ import annotations

import argparse
import dataclasses
import os

from bench.core.compile import TORCHCOMPILE_DEFAULT
from bench.training.config import TrainConfig, field_help, load_config

_FIELDS = dataclasses.fields(TrainConfig)


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser('train', help='train a model (normal, or PGD, TRADES, Fast or Free adversarial training)',
                              description='Train with timm components. Every config key is an option; '
                                          '--config loads a YAML recipe first (e.g. cifar100_resnet18_pgd).')
    p.add_argument('--config', help='YAML file or shipped recipe name (bench/configs); its keys are the defaults '
                                    'that the options below override (default: none, the built-in defaults shown)')
    p.add_argument('--resume', action='store_true', help='continue the run in --out')
    p.add_argument('--overwrite', action='store_true', help='delete --out first if it holds a run')
    helps = field_help()  # the config's own description of each key: one place, shown here
    for f in _FIELDS:
        flag = '--' + f.name.replace('_', '-')
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        text = f'{helps[f.name]} (default: {_shown(default)})'.replace('%', '%%')
        if f.type in ('bool', bool):
            p.add_argument(flag, dest=f'cfg_{f.name}', nargs='?', const='true', default=None, metavar='BOOL',
                           help=f'{text}; a bare flag means true, --no-{flag[2:]} false')
            # --no-progress is how eval, grid and quickstart spell it: the same spelling works here
            p.add_argument('--no-' + flag[2:], dest=f'cfg_{f.name}', action='store_const', const='false',
                           help=argparse.SUPPRESS)
        elif f.name == 'torchcompile':  # timm's flag: an optional backend, inductor when bare
            p.add_argument(flag, dest=f'cfg_{f.name}', nargs='?', const=TORCHCOMPILE_DEFAULT, default=None,
                           metavar='BACKEND', help=f'{text}; bare: {TORCHCOMPILE_DEFAULT}')
        else:
            p.add_argument(flag, dest=f'cfg_{f.name}', default=None, metavar=f.name.upper(),
                           help=f'{text}; k=v,k=v or a YAML mapping' if f.name in ('model_kwargs', 'convert')
                           else text)
    p.set_defaults(func=run)


def _shown(value: object) -> str:
    """A default as the YAML recipes write it: 8/255 for eps, true/false, none."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float) and value not in (0.0, 1.0) and abs(value * 255 - round(value * 255)) < 1e-9 and value < 1:
        return f'{round(value * 255)}/255'
    return str(value)


def run(args: argparse.Namespace) -> int:
    overrides: list = []
    for f in _FIELDS:
        value = getattr(args, f'cfg_{f.name}')
        if value is not None:
            overrides += [f'--{f.name}', value]
    cfg = load_config(args.config, overrides)  # checks every value before torch is imported
    from bench.training.trainer import run_training
    result = run_training(cfg, resume=args.resume, overwrite=args.overwrite)
    last = result.history[-1] if result.history else {}
    if int(os.environ.get('RANK', 0)) == 0:
        print(f'done: {result.steps} steps, {result.img_per_s or 0:.1f} img/s, '
              f'clean acc {last.get("clean_acc")}, weights {result.checkpoint}')
    return 0

"""`timm-moe models`: build every registered variant and show its experts, parameters and routing."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List

import timm
import torch
from rich.console import Console
from rich.table import Table

import timm_moe
from bench.core.errors import UserError
from bench.models import create_model, param_counts


def summarize(name: str, width: int, batch: int, seed: int = 0) -> Dict[str, Any]:
    """Build `name`, route one random batch through it in eval mode and summarise."""
    torch.manual_seed(seed)
    model = create_model(name, dict(width=width), '--width').eval()
    with torch.no_grad():
        model(torch.rand(batch, *model.pretrained_cfg['input_size']))
    stats = timm_moe.routing_stats(model)
    layers = timm_moe.moe_layers(model)
    return dict(
        model=name, experts=timm_moe.num_experts(model), k=layers[0][1].k if layers else 0,
        moe_layers=[n for n, _ in layers], **{f'params_{k}': v for k, v in param_counts(model).items()},
        load={n: [round(v, 3) for v in s['load']] for n, s in stats.items()},
        collapse={n: round(s['collapse'], 3) for n, s in stats.items()},
    )


def run(args: argparse.Namespace) -> int:
    names: List[str] = timm.list_models(args.filter)
    ours = set(timm_moe.model_names())
    names = [n for n in names if n in ours]
    if not names:
        raise UserError(f'--filter {args.filter!r} matches no timm-moe model: try "*blockmoe*", "*convmoe*" or '
                        '"resnet18_*"')
    table = Table(title=f'timm-moe models (width {args.width}; routing of {args.batch} random images, untrained)')
    for col in ('model', 'E', 'k', 'MoE layers', 'params', 'active/image', 'expert load', 'collapse'):
        table.add_column(col, justify='right' if col in ('E', 'k', 'params', 'active/image', 'collapse') else 'left')
    for name in names:
        s = summarize(name, args.width, args.batch)
        load = '; '.join(' '.join(f'{v:.2f}' for v in l) for l in s['load'].values()) or '-'
        collapse = ' '.join(f'{v:.2f}' for v in s['collapse'].values()) or '-'
        table.add_row(name, str(s['experts']), str(s['k']), ','.join(s['moe_layers']) or '-',
                      f"{s['params_total'] / 1e6:.2f}M", f"{s['params_active'] / 1e6:.2f}M", load, collapse)
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser('models', help='list every registered model with its experts, parameters and routing')
    p.add_argument('--filter', default='resnet*', help='timm wildcard over model names')
    p.add_argument('--width', type=int, default=64, help='base width (64 = the paper; smaller is faster)')
    p.add_argument('--batch', type=int, default=32, help='random images routed to show the expert load')
    p.set_defaults(func=run)

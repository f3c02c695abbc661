"""`timm-moe models`: every model the plugin registers in timm, its experts and parameters, and the pretrained tags.

Parameters are counted on models built on the meta device: the parameters have shapes but no storage, so the
paper's width costs no memory and no initialisation, and the whole list answers in seconds.
"""
from __future__ import annotations

import argparse
import contextlib
import re
import sys
from typing import Any, Dict, Iterator, List

from bench.cli.parser import Verbs
from bench.core.errors import UserError

PLUGIN = 'timm_moe'  # the package whose registered models are listed, whatever their names


def plugin_models(pattern: str = '*') -> List[str]:
    """The timm names (no tags) matching `pattern` that this plugin registers."""
    import timm
    import timm_moe  # noqa: F401 - registers the models
    return [n for n in timm.list_models(pattern)
            if timm.models.model_entrypoint(n).__module__.split('.')[0] == PLUGIN]


# torch.nn.init's in-place initialisers: on the meta device each still runs through torch's reference
# implementations (about 3 ms a call, most of the time of a meta build), for values a meta tensor does not hold
_INITIALISERS = ('uniform_', 'normal_', 'trunc_normal_', 'constant_', 'ones_', 'zeros_', 'xavier_uniform_',
                 'xavier_normal_', 'kaiming_uniform_', 'kaiming_normal_', 'orthogonal_')


@contextlib.contextmanager
def _without_initialisers() -> Iterator[None]:
    """torch.nn.init's initialisers as no-ops (for a build on the meta device, where there are no values)."""
    from torch.nn import init
    saved = {n: getattr(init, n) for n in _INITIALISERS if hasattr(init, n)}
    try:
        for n in saved:
            setattr(init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, f in saved.items():
            setattr(init, n, f)


def summarize(names: List[str], width: int) -> List[Dict[str, Any]]:
    """Experts, top-k, MoE layers and parameter counts of each of `names` at `width`.

    Each model is built on the meta device (shapes only: no storage and no initialisation), and names that differ
    only in k are built once: k changes no parameter, only how many experts an image runs, so a sibling's active
    count is the built model's total minus all but its k largest experts per layer (as `param_counts` counts it).
    """
    import torch

    import timm_moe
    from bench.models import create_model, param_counts
    built: Dict[str, Any] = {}  # name without its k -> (layers, expert sizes per layer (largest first), total)
    out = []
    for name in names:
        spec = timm_moe.ModelSpec.from_name(name)
        key = re.sub(rf'_k{spec.k}$', '', name) if spec.k else name
        if key not in built:
            with torch.device('meta'), _without_initialisers():
                model = create_model(name, dict(width=width), '--width')
            layers = timm_moe.moe_layers(model)
            sizes = [sorted((sum(p.numel() for p in e.parameters()) for e in layer.experts), reverse=True)
                     for _, layer in layers]
            built[key] = ([n for n, _ in layers], sizes, param_counts(model)['total'])
        layers, sizes, total = built[key]
        k = spec.k or 0
        active = total - sum(sum(s[k:]) for s in sizes)
        out.append(dict(model=name, experts=spec.experts, k=k, moe_layers=layers, params_total=total,
                        params_active=active))
    return out


def pretrained_tags(names: List[str]) -> List[Dict[str, Any]]:
    """The shipped pretrained tags of `names`: tag, data set, training, and the accuracies its manifest records."""
    import timm

    from timm_moe.models.pretrained import tag_record
    rows = []
    for name in names:
        for tagged in timm.list_pretrained(f'{name}.*'):
            record = tag_record(tagged) or {}
            train = record.get('training', {})
            rows.append(dict(tag=tagged, dataset=record.get('dataset', '?'), training=train.get('training', '?'),
                             width=record.get('model_kwargs', {}).get('width'), clean_acc=train.get('clean_acc'),
                             robust_acc=train.get('robust_acc', {}), eps=train.get('eps'),
                             n_examples=train.get('n_examples')))
    return rows


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    names = plugin_models(args.filter)
    if not names:
        raise UserError(f'--filter {args.filter!r} matches no timm-moe model: try "*blockmoe*", "*convmoe*" or "resnet18_*"')
    console = Console(width=None if sys.stdout.isatty() else 200)
    table = Table(title=f'timm-moe models (width {args.width}; parameters counted on the meta device)')
    for col in ('model', 'E', 'k', 'MoE layers', 'params', 'active/image'):
        table.add_column(col, justify='left' if col in ('model', 'MoE layers') else 'right')
    for s in summarize(names, args.width):
        table.add_row(s['model'], str(s['experts']), str(s['k']), ','.join(s['moe_layers']) or '-',
                      f"{s['params_total'] / 1e6:.2f}M", f"{s['params_active'] / 1e6:.2f}M")
    console.print(table)
    tags = pretrained_tags(names)
    if tags:
        t = Table(title='pretrained tags (timm.create_model(TAG, pretrained=True); shipped, load offline)',
                  caption='accuracy % on the first N test images; PGD-20 at the eps the tag was trained with')
        for col in ('tag', 'data set', 'training', 'width', 'clean %', 'PGD-20 %', 'eps', 'N'):
            t.add_column(col, justify='left' if col in ('tag', 'data set', 'training') else 'right')
        for r in tags:
            pgd = r['robust_acc'].get('pgd20')
            t.add_row(r['tag'], r['dataset'], r['training'], str(r['width'] or '-'),
                      '-' if r['clean_acc'] is None else f"{r['clean_acc']:.1f}", '-' if pgd is None else f'{pgd:.1f}',
                      '-' if r['eps'] is None else f"{r['eps']:.4g}", str(r['n_examples'] or '-'))
        console.print(t)
    return 0


def add_cli(verbs: Verbs) -> None:
    p = verbs.add_parser('models', help='list every registered model (experts, parameters) and the pretrained '
                                             'tags')
    p.add_argument('--filter', default='*', help='timm wildcard over model names, e.g. "resnet18_*"')
    p.add_argument('--width', type=int, default=64, help='base width the parameters are counted at (64 = the paper)')
    p.set_defaults(func=run)

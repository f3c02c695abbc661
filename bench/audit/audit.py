"""`timm-moe audit`: does the MoE add capacity without inference cost? FLOPs, parameters, latency, memory.

Per model, against its dense baseline with the identical stem and widths (`timm_moe.dense_name`):

- FLOPs per image by fvcore, in fvcore's unit (1 FLOP = 1 multiply-accumulate; 0.557 G for the dense
  CIFAR ResNet-18): **active** (gate + the experts each image of a routed batch really ran, averaged),
  **worst** (the k costliest experts), **total** (every expert runs), and the dense count. See
  `bench.audit.flops` for how the sparse dispatch is counted on purpose rather than left to one trace.
- Every total cross-checked with torch's `FlopCounterMode` (halved: it counts 2 FLOPs per MAC). It does
  not count batch-norm or pooling, which fvcore does, so a small difference is expected (0.2% on the
  paper's ResNet-18); the multiply-accumulate ops alone must agree exactly.
- Parameters: total, and active per image (everything but the experts, plus k experts per layer).
- Latency (batch 1 and 128 by default) and peak memory of one forward, over the dense baseline,
  interleaved in one process (`bench.audit.latency`).

`--max-flops-ratio R` turns the audit into a CI gate: exit 1, naming each model whose active/dense FLOP
ratio exceeds R. With default (full-width) experts only k=1 can pass R = 1.001; k=2 honestly costs
+13.6% on the CIFAR ResNet-18. The set that should pass is `--all --k 1` plus
`--all --expert-width matched`.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

import timm_moe

from bench.core.errors import UserError
from bench.audit.flops import FlopReport, flop_table, mac_flops, moe_flops, relative_difference

# kwargs only an MoE model takes: the dense baseline is built with all the others (stem, width, ...)
MOE_ONLY_KWARGS = ('gate', 'moe_blocks', 'aux_loss', 'aux_weight', 'noisy_gating', 'expert_width', 'num_experts', 'k')
AGREEMENT_TOLERANCE = 0.01  # fvcore vs FlopCounterMode: differences above 1% are reported
FLOPS_UNIT = 'fvcore convention: 1 FLOP = 1 multiply-accumulate (torch FlopCounterMode counts 2; halved here)'
ROUTING_NOTE = ('routing of a seeded batch of uniform-noise images through the untrained model, in eval mode; '
                'with identical experts (every registered variant) active FLOPs do not depend on it')

# dense baselines are built and counted once per (name, kwargs, input) in a process: --all reuses them
_DENSE_CACHE: Dict[Tuple[Any, ...], Tuple[nn.Module, FlopReport, FlopReport]] = {}


def timm_moe_models() -> List[str]:
    """Every name timm-moe registers with timm: the BlockMoE variants and the dense baselines."""
    names = timm.list_models('*blockmoe*') + timm.list_models('resnet*_dense')
    return sorted(n for n in set(names) if n.startswith(('resnet18_', 'resnet50_')))


def param_counts(model: nn.Module) -> Dict[str, int]:
    """Total parameters, and the parameters one image uses.

    Active = everything outside the experts (gate included) + the k largest experts of each layer (all
    experts of a registered variant are the same size, so this is exact there and an upper bound else).
    """
    total = sum(p.numel() for p in model.parameters())
    idle = 0
    for _, layer in timm_moe.moe_layers(model):
        sizes = sorted((sum(p.numel() for p in e.parameters()) for e in layer.experts), reverse=True)
        idle += sum(sizes[layer.k:])
    return dict(total=total, active=total - idle)


def _check_name(name: str) -> None:
    known = timm_moe_models()
    if name not in known:
        close = [n for n in known if n.startswith(name.split('_k')[0])][:3] or known[:2]
        raise UserError(
            f'unknown model {name!r}: expected a timm-moe model such as {", ".join(close)} '
            f'(`timm-moe models` lists all {len(known)})')


def _dense(dense: str, dense_kwargs: Dict[str, Any], images: torch.Tensor, seed: int
           ) -> Tuple[nn.Module, FlopReport, FlopReport]:
    key = (dense, tuple(sorted((k, repr(v)) for k, v in dense_kwargs.items())), tuple(images.shape), seed)
    if key not in _DENSE_CACHE:
        torch.manual_seed(seed)
        model = timm.create_model(dense, **dense_kwargs).eval()
        _DENSE_CACHE.clear()  # one baseline at a time: --all walks the names arch by arch
        _DENSE_CACHE[key] = (model, moe_flops(model, images[:1]), moe_flops(model, images[:1], counter='torch'))
    return _DENSE_CACHE[key]


def audit_model(
        name: str,
        input_size: Optional[Sequence[int]] = None,
        batch: int = 32,
        latency: bool = True,
        batch_sizes: Sequence[int] = (1, 128),
        repeats: int = 7,
        warmup: int = 2,
        memory: bool = True,
        device: Optional[str] = None,
        seed: int = 0,
        images: Optional[torch.Tensor] = None,
        table: bool = False,
        table_depth: int = 3,
        **model_kwargs: Any,
) -> Dict[str, Any]:
    """Audit one timm-moe model against its dense baseline (the issue-5 JSON object).

    Args:
        name: A timm-moe model name, e.g. 'resnet18_blockmoe_e8_k2' (a dense name audits against itself).
        input_size: (C, H, W) of one image; default (in_chans, 32, 32).
        batch: Images in the routing batch that weights the experts (ignored if `images` is given).
        latency: Also time both models (slow on CPU at batch 128); False gives FLOPs and parameters only.
        batch_sizes: Batch sizes to time.
        repeats: Timed forwards of each model per batch size (medians are reported).
        warmup: Untimed forwards first.
        memory: Also measure the peak memory of one forward per batch size (with `latency`).
        device: Where latency and memory are measured; default CUDA if present, else CPU. FLOPs are
            counted on the CPU.
        seed: Seeds the weights of both models and the random routing batch.
        images: A real routing batch (B, C, H, W) to use instead of seeded uniform noise.
        table: Also return fvcore's per-module table (active FLOPs per image) under 'flop_table'.
        table_depth: Depth of that table.
        **model_kwargs: Passed to `timm.create_model` (stem, width, num_classes, in_chans, gate, k...);
            the dense baseline gets the non-MoE ones.
    """
    _check_name(name)
    for n, v in (('batch', batch), ('repeats', repeats)):
        if not isinstance(v, int) or v < 1:
            raise UserError(f'{n}={v!r}: expected an integer >= 1')
    if warmup < 0:
        raise UserError(f'warmup={warmup!r}: expected an integer >= 0')
    if not batch_sizes or any(not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise UserError(f'batch_sizes={list(batch_sizes)!r}: expected positive integers, e.g. 1,128')
    is_dense = 'blockmoe' not in name
    if is_dense:  # a dense model takes no MoE kwargs; auditing it against itself is a valid no-op check
        model_kwargs = {k: v for k, v in model_kwargs.items() if k not in MOE_ONLY_KWARGS}
    dense_name = timm_moe.dense_name(name)
    dense_kwargs = {k: v for k, v in model_kwargs.items() if k not in MOE_ONLY_KWARGS}
    in_chans = int(model_kwargs.get('in_chans', 3))
    if images is not None:
        input_size = tuple(images.shape[1:])
    input_size = tuple(input_size) if input_size is not None else (in_chans, 32, 32)
    if len(input_size) != 3 or input_size[0] != in_chans or min(input_size) < 1:
        raise UserError(f'input_size={input_size!r}: expected (C, H, W) with C = in_chans = {in_chans}')
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')

    t0 = time.perf_counter()
    given_images = images is not None
    if images is None:
        images = torch.rand((batch, *input_size), generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    model = timm.create_model(name, **model_kwargs).eval()
    dense, dense_fv, dense_tc = _dense(dense_name, dense_kwargs, images, seed)

    try:
        fv = moe_flops(model, images)
    except RuntimeError as e:  # e.g. a gate's unpadded 3x3 conv on a 1x1 map: the input is too small
        raise UserError(f'{name} with {model_kwargs} cannot run on input {list(input_size)}: '
                        f'{str(e).strip().splitlines()[0]} (try --input-size 3,224,224 for the imagenet stem)') from e
    tc = moe_flops(model, images, counter='torch')
    params, params_dense = param_counts(model), param_counts(dense)

    # every total, by both counters, in the same unit
    quantities = {
        'dense': (dense_fv.total, dense_tc.total), 'active': (fv.active, tc.active),
        'active_worst': (fv.active_worst, tc.active_worst), 'total': (fv.total, tc.total)}
    rel = {q: relative_difference(a, b) for q, (a, b) in quantities.items()}
    mac_rel = {'model': relative_difference(mac_flops(fv), mac_flops(tc)),
               'dense': relative_difference(mac_flops(dense_fv), mac_flops(dense_tc))}
    notes: List[str] = []
    worst_q = max(rel, key=rel.get)
    if rel[worst_q] > AGREEMENT_TOLERANCE:
        why = ('the multiply-accumulate ops agree exactly, so the gap is the batch-norm/pooling FLOPs fvcore '
               'counts and FlopCounterMode does not' if max(mac_rel.values()) < 1e-6 else
               'the multiply-accumulate ops disagree too: a counting error')
        notes.append(f'fvcore and FlopCounterMode differ by {rel[worst_q]:.2%} on {worst_q} FLOPs (> 1%): {why}')

    layers = timm_moe.moe_layers(model)
    result: Dict[str, Any] = dict(
        model=name,
        model_kwargs=dict(model_kwargs),
        dense_model=dense_name,
        dense_kwargs=dense_kwargs,
        experts=timm_moe.num_experts(model),
        k=layers[0][1].k if layers else None,
        input_size=list(input_size),
        flops_unit=FLOPS_UNIT,
        flops_active=fv.active,
        flops_active_worst=fv.active_worst,
        flops_total=fv.total,
        flops_dense=dense_fv.total,
        flops_ratio=fv.active / dense_fv.total,
        flops_ratio_worst=fv.active_worst / dense_fv.total,
        flops_total_ratio=fv.total / dense_fv.total,
        flops_non_expert=fv.non_expert,  # stem, dense blocks, gates, head: paid by every image
        flop_counter_agreement=rel[worst_q],
        flop_counter=dict(
            counter='torch.utils.flop_counter.FlopCounterMode, halved to MACs',
            flops_dense=dense_tc.total, flops_active=tc.active, flops_active_worst=tc.active_worst,
            flops_total=tc.total, relative_difference=rel, mac_ops_relative_difference=mac_rel,
            fvcore_only_ops={op: v for op, v in fv.traced.by_operator.items() if op in ('batch_norm', 'adaptive_avg_pool2d')},
        ),
        unsupported_ops=dict(fv.traced.unsupported),
        unsupported_ops_dense=dict(dense_fv.traced.unsupported),
        params_total=params['total'],
        params_active=params['active'],
        params_dense=params_dense['total'],
        routing=dict(
            note='routing of the images passed in, in eval mode' if given_images else ROUTING_NOTE,
            batch=int(images.shape[0]),
            layers={n: dict(counts=l.counts, slots=l.slots, forced=l.forced, expert_flops=l.expert_flops)
                    for n, l in fv.layers.items()},
        ),
        latency_ms=None, latency_dense_ms=None, latency_ratio=None,
        peak_memory_mb=None, peak_memory_dense_mb=None, memory_ratio=None, memory_method=None,
        latency_device=None,
        notes=notes,
    )
    if table:
        result['flop_table'] = flop_table(model, fv, 'active', max_depth=table_depth)

    if latency:
        from bench.audit.latency import MEMORY_METHOD, latency_vs_dense

        dev = torch.device(device)
        model.to(dev)
        dense.to(dev)
        try:
            lat = latency_vs_dense(model, dense, input_size, batch_sizes, repeats=repeats, warmup=warmup,
                                   device=dev, memory=memory, seed=seed)
        finally:
            dense.to('cpu')  # the cached baseline stays where FLOPs are counted
        result.update(lat)
        result['latency_device'] = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else (
            f'cpu, torch threads={torch.get_num_threads()}')
        if memory:
            result['memory_method'] = MEMORY_METHOD[dev.type]
        result['latency_settings'] = dict(batch_sizes=list(batch_sizes), repeats=repeats, warmup=warmup,
                                          timing='interleaved medians (bench.core.timing)')
    result['seconds'] = time.perf_counter() - t0
    return result


# ----------------------------------------------------------------------------------------------------
# CLI


def _int_list(text: str, what: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(',') if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise UserError(f'{what} {text!r}: expected comma-separated positive integers, e.g. 1,128')
    return values


def _targets(args: argparse.Namespace) -> List[Tuple[str, str]]:
    """(model name, expert_width) pairs to audit, in order."""
    widths = {'full': ['full'], 'matched': ['matched'], 'both': ['full', 'matched']}
    if args.all:
        names = [n for n in timm.list_models('*blockmoe*') if fnmatch.fnmatch(n, args.filter)]
        if args.k:
            ks = _int_list(args.k, '--k')
            names = [n for n in names if int(n.rsplit('_k', 1)[1]) in ks]
        if not names:
            raise UserError(f'--all with --filter {args.filter!r} and --k {args.k!r} matches no model: '
                            f'try --filter "resnet18_*" or --k 1')
        return [(n, w) for n in names for w in widths[args.expert_width or 'both']]
    if args.k or args.filter != '*blockmoe*':
        raise UserError('--k and --filter select among --all; with --model name the models directly')
    for name in args.model:
        _check_name(name)
    return [(n, w) for n in args.model for w in widths[args.expert_width or 'full']]


def _model_kwargs(args: argparse.Namespace, expert_width: str) -> Dict[str, Any]:
    kwargs: Dict[str, Any] = dict(expert_width=expert_width)
    for key in ('stem', 'width', 'num_classes', 'in_chans', 'gate', 'moe_blocks'):
        value = getattr(args, key)
        if value is not None:
            kwargs[key] = value
    return kwargs


def _fmt_ratio(value: Optional[float], limit: Optional[float] = None) -> str:
    if value is None:
        return '-'
    text = f'{value:.4f}'
    return f'[red]{text}[/red]' if limit is not None and value > limit else text


def render(results: Sequence[Dict[str, Any]], limit: Optional[float] = None) -> Table:
    """The audit as a rich table (FLOPs in G of MACs per image)."""
    table = Table(title='timm-moe audit: per image, over the dense baseline with the identical stem '
                        '(GFLOPs = 1e9 multiply-accumulates, fvcore convention)')
    cols = ['model', 'experts', 'active G', 'dense G', 'active/dense', 'worst/dense', 'total/dense',
            'params M (active)', 'latency b1', 'latency b128', 'memory b128', 'fvcore~torch', 'unsupported']
    for c in cols:
        table.add_column(c, justify='left' if c in ('model', 'experts') else 'right')
    for r in results:
        kw = r['model_kwargs']
        lat = r.get('latency_ratio') or {}
        mem = r.get('memory_ratio') or {}
        table.add_row(
            r['model'], f"{kw.get('expert_width', 'full')}" if r['experts'] else 'dense',
            f"{r['flops_active'] / 1e9:.4f}", f"{r['flops_dense'] / 1e9:.4f}",
            _fmt_ratio(r['flops_ratio'], limit), _fmt_ratio(r['flops_ratio_worst']), _fmt_ratio(r['flops_total_ratio']),
            f"{r['params_total'] / 1e6:.2f} ({r['params_active'] / 1e6:.2f})",
            _fmt_ratio(lat.get('1')), _fmt_ratio(lat.get('128')), _fmt_ratio(mem.get('128')),
            f"{r['flop_counter_agreement']:.2%}" + (' [red]>1%[/red]' if r['flop_counter_agreement'] > AGREEMENT_TOLERANCE else ''),
            str(len(r['unsupported_ops'])),
        )
    return table


def run(args: argparse.Namespace) -> int:
    if args.max_flops_ratio is not None and not args.max_flops_ratio > 0:
        raise UserError(f'--max-flops-ratio {args.max_flops_ratio!r}: expected a ratio > 0, e.g. 1.001')
    if args.table and args.all:
        raise UserError('--table prints one model\'s per-module table: use it with --model, not --all')
    batch_sizes = _int_list(args.batch_sizes, '--batch-sizes')
    for flag, value in (('--repeats', args.repeats), ('--batch', args.batch), ('--width', args.width)):
        if value is not None and value < 1:
            raise UserError(f'{flag} {value}: expected an integer >= 1')
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device cuda: no CUDA device is available here; use --device cpu')
    input_size = _int_list(args.input_size, '--input-size') if args.input_size else None
    if input_size is not None and len(input_size) != 3:
        raise UserError(f'--input-size {args.input_size!r}: expected C,H,W, e.g. 3,224,224')
    targets = _targets(args)

    err = Console(stderr=True, width=200)
    out = Console(width=None if sys.stdout.isatty() else 220)
    results: List[Dict[str, Any]] = []
    errors: List[str] = []
    for i, (name, expert_width) in enumerate(targets, 1):
        kwargs = _model_kwargs(args, expert_width)
        label = f'{name} ({", ".join(f"{k}={v}" for k, v in kwargs.items())})'
        err.print(f'[{i}/{len(targets)}] {label}', highlight=False)
        try:
            r = audit_model(
                name, input_size=input_size, batch=args.batch, latency=not args.no_latency, batch_sizes=batch_sizes,
                repeats=args.repeats, warmup=args.warmup, memory=not args.no_memory, device=args.device,
                seed=args.seed, table=args.table, table_depth=args.table_depth, **kwargs)
        except ValueError as e:
            if len(targets) == 1:
                raise  # the CLI prints it as one line and exits 2
            # in a sweep, one model that cannot be built (e.g. matched experts that cannot fit) must not
            # hide the others' results: report it, go on, and exit 2 at the end
            errors.append(f'timm-moe audit: error: {label}: {str(e).strip().splitlines()[0]}')
            print(errors[-1], file=sys.stderr)
            continue
        results.append(r)
        for note in r['notes']:
            err.print(f'  note: {note}', highlight=False)
        if args.table:
            out.print(f'per-module FLOPs of {name}, active per image (experts weighted by the routing of '
                      f'{r["routing"]["batch"]} images):', highlight=False)
            out.print(r['flop_table'], highlight=False, markup=False)

    out.print(render(results, args.max_flops_ratio))
    out.print(f'FLOPs: {FLOPS_UNIT}. Active = gate + the experts each image runs, averaged over a routed batch; '
              f'worst = the k costliest experts; total = every expert. fvcore~torch: largest relative difference '
              f'to FlopCounterMode (which skips batch-norm and pooling). Latency and memory: model / dense.',
              highlight=False)
    ops: Dict[str, int] = {}
    for r in results:
        for op, n in r['unsupported_ops'].items():
            ops[op] = max(ops.get(op, 0), n)
    if ops:
        out.print('Unsupported ops (fvcore has no handle; none is a multiply-accumulate, the experts are counted '
                  'through their modules instead; most calls in any one model): '
                  + ', '.join(f'{op} x{n}' for op, n in sorted(ops.items())), highlight=False)
    if results and results[0].get('memory_method'):
        out.print(f'Memory: {results[0]["memory_method"]}. Latency device: {results[0]["latency_device"]}.',
                  highlight=False)
    if args.json:
        path = Path(args.json)
        if not path.parent.exists():
            raise UserError(f'--json {args.json}: folder {str(path.parent)!r} does not exist')
        clean = [{k: v for k, v in r.items() if k != 'flop_table'} for r in results]
        path.write_text(json.dumps(clean, indent=2) + '\n')
        err.print(f'wrote {len(clean)} audit(s) to {path}', highlight=False)

    for line in errors:  # again at the end, where a CI log is read
        print(line, file=sys.stderr)
    if args.max_flops_ratio is not None:
        failed = [r for r in results if r['flops_ratio'] > args.max_flops_ratio]
        for r in failed:
            print(f"timm-moe audit: FAIL {r['model']} (expert_width={r['model_kwargs'].get('expert_width', 'full')}): "
                  f"active/dense FLOPs {r['flops_ratio']:.4f} > --max-flops-ratio {args.max_flops_ratio}",
                  file=sys.stderr)
        if failed:
            return 1
        if not errors:
            err.print(f'PASS: all {len(results)} model(s) have active/dense FLOPs <= {args.max_flops_ratio}',
                      highlight=False)
    return 2 if errors else 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        'audit', help='FLOPs (fvcore), parameters, latency and memory of models over their dense baselines',
        description=('Audit BlockMoE models against their dense baselines. FLOPs follow fvcore\'s convention '
                     '(1 FLOP = 1 multiply-accumulate). Gate a CI job with --max-flops-ratio; the set that should '
                     'pass 1.001 is `--all --k 1` and `--all --expert-width matched`.'))
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument('--model', action='append', metavar='NAME', help='a model to audit (repeatable)')
    which.add_argument('--all', action='store_true',
                       help="every timm.list_models('*blockmoe*') name, with full and matched experts")
    p.add_argument('--filter', default='*blockmoe*', help='with --all: wildcard over names, e.g. "resnet18_*"')
    p.add_argument('--k', default=None, help='with --all: only these k, comma-separated, e.g. 1')
    p.add_argument('--expert-width', choices=('full', 'matched', 'both'), default=None,
                   help='experts as full copies, compute-matched, or both (default: both with --all, else full)')
    p.add_argument('--json', metavar='OUT', help='write one JSON object per audited model (a list) to OUT')
    p.add_argument('--max-flops-ratio', type=float, default=None, metavar='R',
                   help='exit 1, naming them, if any model\'s active/dense FLOPs exceed R (e.g. 1.001)')
    p.add_argument('--no-latency', action='store_true', help='FLOPs and parameters only (fast)')
    p.add_argument('--no-memory', action='store_true', help='skip the peak-memory measurement')
    p.add_argument('--batch-sizes', default='1,128', help='batch sizes to time, comma-separated')
    p.add_argument('--repeats', type=int, default=7, help='timed forwards per model and batch size (medians)')
    p.add_argument('--warmup', type=int, default=2, help='untimed forwards first')
    p.add_argument('--batch', type=int, default=32, help='images in the routing batch that weights the experts')
    p.add_argument('--device', choices=('cpu', 'cuda'), default=None, help='latency device (default: cuda if present)')
    p.add_argument('--seed', type=int, default=0, help='seeds weights and the routing batch')
    p.add_argument('--width', type=int, default=None, help='base width (64 = the paper; 16 for quick CPU runs)')
    p.add_argument('--stem', choices=('cifar', 'imagenet'), default=None, help='stem of model and baseline')
    p.add_argument('--gate', choices=('gap_fc', 'conv_gap'), default=None, help='gate type')
    p.add_argument('--moe-blocks', choices=('last', 'all'), default=None, help='MoE at the last layer4 block or all')
    p.add_argument('--num-classes', type=int, default=None, help='classifier outputs (default 100)')
    p.add_argument('--in-chans', type=int, default=None, help='input channels (default 3)')
    p.add_argument('--input-size', default=None, metavar='C,H,W',
                   help='one image (default: in_chans,32,32; use 3,224,224 with --stem imagenet)')
    p.add_argument('--table', action='store_true', help="print fvcore's per-module FLOP table (with --model)")
    p.add_argument('--table-depth', type=int, default=3, help='depth of that table')
    p.set_defaults(func=run)

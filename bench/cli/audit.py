"""`timm-moe audit`: FLOPs, parameters, latency and memory of MoE models (BlockMoE, ConvMoE) over dense.

The measuring is `bench.audit.audit.audit_model`; this module picks the models, prints the table, writes the JSON
and turns `--max-flops-ratio` into an exit status.
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bench.cli.parser import Verbs
from bench.core.atomic import write_json_atomic
from bench.core.errors import UserError
from bench.core.values import parse_mapping

if TYPE_CHECKING:  # bench.audit imports torch and fvcore
    from bench.audit.result import AuditResult

# timm, timm_moe, torch and fvcore load in the functions that build models, after the options are checked


def _int_list(text: str, what: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(',') if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise UserError(f'{what} {text!r}: expected comma-separated positive integers, e.g. 1,128')
    return values


def moe_names() -> List[str]:
    """Every registered MoE name (every family: BlockMoE and ConvMoE of each arch), in timm's order."""
    import timm

    import timm_moe
    from timm_moe import ModelSpec
    return [n for n in timm.list_models(timm_moe.model_names()) if ModelSpec.from_name(n).is_moe]


def _targets(args: argparse.Namespace) -> List[Tuple[str, str]]:
    """(model name, expert_width) pairs to audit, in order."""
    from bench.audit.audit import check_model_name, is_ours
    from timm_moe import ModelSpec
    if args.convert is not None and (args.all or len(args.model) > 1):
        raise UserError('--convert names module paths of one architecture: give it with one --model (audit each '
                        'converted model in its own call)')
    widths = {'full': ['full'], 'matched': ['matched'], 'both': ['full', 'matched']}
    if args.all:
        names = [n for n in moe_names() if fnmatch.fnmatch(n, args.filter or '*')]
        if args.k:
            ks = _int_list(args.k, '--k')
            names = [n for n in names if ModelSpec.from_name(n).k in ks]
        if args.expert_width == 'matched':
            # only a BlockMoE has compute-matched experts: a ConvMoE's would be audited at full width, which
            # is not what `--expert-width matched` asks (nor what its 1.001 gate is for)
            skipped = [n for n in names if ModelSpec.from_name(n).kind != 'block']
            names = [n for n in names if ModelSpec.from_name(n).kind == 'block']
            if skipped:
                print(f'timm-moe audit: --expert-width matched skips {len(skipped)} ConvMoE name(s) (e.g. '
                      f'{skipped[0]}): their experts are convolutions of the dense width', file=sys.stderr)
        if not names:
            raise UserError(f'--all with --filter {args.filter!r} and --k {args.k!r} matches no model: '
                            f'try --filter "resnet18_*" or --k 1')
        return [(n, w) for n in names for w in _widths(n, widths[args.expert_width or 'both'])]
    if args.k or args.filter is not None:
        raise UserError('--k and --filter select among --all; with --model name the models directly')
    for name in args.model:
        check_model_name(name)
        if not is_ours(name):
            if args.expert_width not in (None, 'full'):
                raise UserError(f'--expert-width {args.expert_width} with {name}: a plain timm model\'s experts are '
                                'set by --convert (e.g. expert_width=matched for residual blocks)')
            continue
        if args.convert is not None:
            raise UserError(f'--convert with {name}: it is already a timm-moe model; --convert converts a plain timm '
                            f'model (e.g. {ModelSpec.from_name(name).arch})')
        if args.expert_width == 'matched' and ModelSpec.from_name(name).kind not in ('block', None):
            raise UserError(f'--expert-width matched with {name}: a ConvMoE has no compute-matched experts (its '
                            f'experts are convolutions of the dense width); expected --expert-width full')
    return [(n, w) for n in args.model for w in _widths(n, widths[args.expert_width or 'full'])]


def _widths(name: str, widths: List[str]) -> List[str]:
    # only a BlockMoE has compute-matched experts; another model is audited once, at full width
    from bench.audit.audit import is_ours
    from timm_moe import ModelSpec
    return widths if is_ours(name) and ModelSpec.from_name(name).kind == 'block' else ['full']



def model_kwargs_of(args: argparse.Namespace) -> Dict[str, Any]:
    """--model-kwargs, --num-classes and --in-chans: the model kwargs of every audited model and its baseline."""
    kwargs = parse_mapping('--model-kwargs', args.model_kwargs) if args.model_kwargs else {}
    if 'expert_width' in kwargs:
        raise UserError('--model-kwargs expert_width=...: give it as --expert-width full, matched or both '
                        '(audit compares the two)')
    for key in ('num_classes', 'in_chans'):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    if kwargs.get('width') is not None and (not isinstance(kwargs['width'], int) or kwargs['width'] < 1):
        raise UserError(f'--model-kwargs width={kwargs["width"]!r}: expected an integer >= 1')
    return kwargs


def _fmt_ratio(value: Optional[float], limit: Optional[float] = None) -> str:
    if value is None:
        return '-'
    text = f'{value:.4f}'
    return f'[red]{text}[/red]' if limit is not None and value > limit else text


# what `--max-flops-ratio` divides the active FLOPs by: the record's field of each choice
BASELINES = {'dense': 'flops_ratio', 'dense+gates': 'flops_ratio_dense_plus_gates'}
BASELINES_COLUMN = {'dense': 'active/dense', 'dense+gates': 'active/(d+g)'}


COLUMNS = ('model', 'experts', 'active G', 'dense G', 'gates M', 'active/dense', 'active/(d+g)', 'worst/dense',
           'total/dense', 'params M (active)', 'latency b1', 'latency b128', 'memory b128', 'fvcore~torch',
           'unsupported')
# which columns make way first when the table is wider than the terminal (they stay in --wide and --json); the
# model, its experts and the ratio --max-flops-ratio gates on never do
GIVE_WAY = ('unsupported', 'total/dense', 'worst/dense', 'gates M', 'dense G', 'fvcore~torch', 'memory b128',
            'latency b128', 'params M (active)', 'active G', 'latency b1', 'active/(d+g)', 'active/dense')


def _least(header: str, cells: Sequence[str]) -> int:
    """The narrowest a column can be without cutting a cell or a word of its header (cells hold rich markup)."""
    return max([max(map(len, header.split()))] + [Text.from_markup(c).cell_len for c in cells])


def render(results: Sequence[AuditResult], limit: Optional[float] = None, baseline: str = 'dense',
           width: Optional[int] = None) -> Table:
    """The audit as a rich table (FLOPs in G of MACs per image; the gates' in M).

    Args:
        width: the terminal's: a column with no value on any row is left out, then columns (`GIVE_WAY`) until
            the table fits without cutting a number; the caption names them. None: every column (--wide).
    """
    rows = [_cells(r, limit, baseline) for r in results]
    keep = list(range(len(COLUMNS)))
    notes = []
    if width is not None:
        empty = [i for i in keep if rows and all(row[i] == '-' for row in rows)]
        keep = [i for i in keep if i not in empty]
        fixed = {'model', 'experts', BASELINES_COLUMN[baseline]}
        dropped = []
        # a column already left out as empty has nothing to give
        for name in (n for n in GIVE_WAY if n not in fixed and COLUMNS.index(n) in keep):
            need = sum(_least(COLUMNS[i], [row[i] for row in rows]) for i in keep) + 3 * len(keep) + 1
            if need <= width:
                break
            keep.remove(COLUMNS.index(name))
            dropped.append(name)
        if empty:
            notes.append(f'no value on any row: {", ".join(COLUMNS[i] for i in empty)}')
        if dropped:
            notes.append(f'not shown here (too narrow): {", ".join(n for n in COLUMNS if n in dropped)}')
        if notes:
            notes.append('--wide or --json: every column')
    table = Table(title='timm-moe audit: per image, over the dense baseline with the identical stem '
                        '(GFLOPs = 1e9 multiply-accumulates, fvcore convention)', caption='; '.join(notes) or None)
    for i in keep:
        # a number is never cut, nor a word of a header: only the headers wrap, at their spaces
        table.add_column(COLUMNS[i], justify='left' if COLUMNS[i] in ('model', 'experts') else 'right',
                         width=_least(COLUMNS[i], [row[i] for row in rows]))
    for row in rows:
        table.add_row(*[row[i] for i in keep])
    return table


def _cells(r: AuditResult, limit: Optional[float], baseline: str) -> List[str]:
    """One audited model's row, in COLUMNS order ('-': not measured)."""
    from bench.audit.audit import AGREEMENT_TOLERANCE
    kw = r.model_kwargs
    lat = r.latency_ratio or {}
    mem = r.memory_ratio or {}
    return [
        r.model, f"{kw.get('expert_width', 'full')}" if r.experts else 'dense',
        f"{r.flops_active / 1e9:.4f}", f"{r.flops_dense / 1e9:.4f}", f"{r.flops_gates / 1e6:.3f}",
        _fmt_ratio(r.flops_ratio, limit if baseline == 'dense' else None),
        _fmt_ratio(r.flops_ratio_dense_plus_gates, limit if baseline == 'dense+gates' else None),
        _fmt_ratio(r.flops_ratio_worst), _fmt_ratio(r.flops_total_ratio),
        f"{r.params_total / 1e6:.2f} ({r.params_active / 1e6:.2f})",
        _fmt_ratio(lat.get('1')), _fmt_ratio(lat.get('128')), _fmt_ratio(mem.get('128')),
        f"{r.flop_counter_agreement:.2%}" + (' [red]>1%[/red]' if r.flop_counter_agreement > AGREEMENT_TOLERANCE else ''),
        str(len(r.unsupported_ops)),
    ]


def run(args: argparse.Namespace) -> int:
    if args.max_flops_ratio is not None and not args.max_flops_ratio > 0:
        raise UserError(f'--max-flops-ratio {args.max_flops_ratio!r}: expected a ratio > 0, e.g. 1.001')
    if args.table and args.all:
        raise UserError('--table prints one model\'s per-module table: use it with --model, not --all')
    batch_sizes = _int_list(args.batch_sizes, '--batch-sizes')
    given = model_kwargs_of(args)
    for flag, value in (('--repeats', args.repeats), ('--batch', args.batch)):
        if value is not None and value < 1:
            raise UserError(f'{flag} {value}: expected an integer >= 1')
    convert = parse_mapping('--convert', args.convert) if args.convert else None
    input_size = _int_list(args.input_size, '--input-size') if args.input_size else None
    if input_size is not None and len(input_size) != 3:
        raise UserError(f'--input-size {args.input_size!r}: expected C,H,W, e.g. 3,224,224')

    from bench.audit.audit import FLOPS_UNIT, audit_model, is_ours
    from bench.core.devices import choose_device
    from bench.models import check_convert
    from timm_moe import ModelSpec
    device = choose_device(args.device) if args.device else None
    targets = _targets(args)
    check_convert(convert)  # before the first model is built

    err = Console(stderr=True, width=200)
    # a pipe with $COLUMNS set (a CI log, `script`) gets that width, as a terminal would
    out = Console(width=None if sys.stdout.isatty() or os.environ.get('COLUMNS') else 220)
    results: List[AuditResult] = []
    errors: List[str] = []
    for i, (name, expert_width) in enumerate(targets, 1):
        # expert_width is a BlockMoE kwarg: a ConvMoE's experts are convolutions of the dense width
        block = is_ours(name) and ModelSpec.from_name(name).kind == 'block'
        kwargs = dict(given, expert_width=expert_width) if block else dict(given)
        label = f'{name} ({", ".join(f"{k}={v}" for k, v in kwargs.items())})'
        if convert is not None:
            label += f' converted ({",".join(f"{k}={v}" for k, v in convert.items())})'
        err.print(f'[{i}/{len(targets)}] {label}', highlight=False)
        try:
            r = audit_model(
                name, input_size=input_size, batch=args.batch, latency=not args.no_latency, batch_sizes=batch_sizes,
                repeats=args.repeats, warmup=args.warmup, memory=not args.no_memory, device=device,
                seed=args.seed, table=args.table, table_depth=args.table_depth, convert=convert, **kwargs)
        except UserError as e:
            if len(targets) == 1:
                raise  # the CLI prints it as one line and exits 2
            # in a sweep, one model that cannot be built (e.g. matched experts that cannot fit) must not
            # hide the others' results: report it, go on, and exit 2 at the end
            errors.append(f'timm-moe audit: error: {label}: {str(e).strip().splitlines()[0]}')
            print(errors[-1], file=sys.stderr)
            continue
        results.append(r)
        for note in r.notes:
            err.print(f'  note: {note}', highlight=False)
        if args.table:
            out.print(f'per-module FLOPs of {name}, active per image (experts weighted by the routing of '
                      f'{r.routing["batch"]} images through the untrained model):', highlight=False)
            out.print(r.flop_table, highlight=False, markup=False)

    table = render(results, args.max_flops_ratio, args.flops_baseline, width=None if args.wide else out.width)
    if args.wide:  # every column, one line per model however narrow the terminal: wider than it, never cut
        Console(width=max(out.width, Console(width=1 << 16).measure(table).maximum)).print(table)
    else:
        out.print(table)
    out.print(f'FLOPs: {FLOPS_UNIT}. Active = gate + the experts each image runs, averaged over a routed batch; '
              f'gates = every MoE layer\'s gate; active/(d+g) = active / (dense + gates), 1 at k=1 with '
              f'full-width experts; '
              f'worst = the k costliest experts; total = every expert. fvcore~torch: largest relative difference '
              f'to FlopCounterMode (which skips batch-norm and pooling). Latency and memory: model / dense.',
              highlight=False)
    ops: Dict[str, int] = {}
    for r in results:
        for op, n in r.unsupported_ops.items():
            ops[op] = max(ops.get(op, 0), n)
    if ops:
        out.print('Unsupported ops (fvcore has no handle; none is a multiply-accumulate, the experts are counted '
                  'through their modules instead; most calls in any one model): '
                  + ', '.join(f'{op} x{n}' for op, n in sorted(ops.items())), highlight=False)
    if results and results[0].memory_method:
        out.print(f'Memory: {results[0].memory_method}. Latency device: {results[0].latency_device}.',
                  highlight=False)
    if args.json:
        path = Path(args.json)
        if not path.parent.exists():
            raise UserError(f'--json {args.json}: folder {str(path.parent)!r} does not exist')
        write_json_atomic([r.to_json() for r in results], path, indent=2)
        err.print(f'wrote {len(results)} audit(s) to {path}', highlight=False)

    for line in errors:  # again at the end, where a CI log is read
        print(line, file=sys.stderr)
    if args.max_flops_ratio is not None:
        key = BASELINES[args.flops_baseline]
        over = 'active/dense' if args.flops_baseline == 'dense' else 'active/(dense+gates)'
        failed = [r for r in results if getattr(r, key) > args.max_flops_ratio]
        for r in failed:
            print(f"timm-moe audit: FAIL {r.model} (expert_width={r.model_kwargs.get('expert_width', 'full')}): "
                  f"{over} FLOPs {getattr(r, key):.4f} > --max-flops-ratio {args.max_flops_ratio}", file=sys.stderr)
        if failed:
            return 1
        if not errors:
            err.print(f'PASS: all {len(results)} model(s) have {over} FLOPs <= {args.max_flops_ratio}',
                      highlight=False)
    return 2 if errors else 0


def add_cli(verbs: Verbs) -> None:
    p = verbs.add_parser(
        'audit', help='FLOPs (fvcore), parameters, latency and memory of models over their dense baselines',
        description=('Audit MoE models (BlockMoE, ConvMoE) against their dense baselines. FLOPs follow '
                     'fvcore\'s convention (1 FLOP = 1 multiply-accumulate). Gate a CI job with --max-flops-ratio; the set that should '
                     'pass 1.001 at the default width and gate is `--all --k 1` (BlockMoE and ConvMoE) and '
                     '`--all --expert-width matched` (BlockMoE). At k=1, full-width experts cost exactly their '
                     'gates over dense: with --flops-baseline dense+gates every k=1 model passes 1.0 at any '
                     'width and gate.'))
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument('--model', action='append', metavar='NAME',
                       help='a model to audit (repeatable): a timm-moe name, audited against its dense baseline, or '
                            'any timm model\'s, audited against itself (or converted by --convert)')
    which.add_argument('--all', action='store_true',
                       help='every registered MoE name (BlockMoE with full and matched experts, ConvMoE; '
                            'ResNet-18, ResNet-50, WideResNet-50-2)')
    p.add_argument('--filter', default=None, help='with --all: wildcard over names, e.g. "resnet18_*" or "*convmoe*"')
    p.add_argument('--k', default=None, help='with --all: only these k, comma-separated, e.g. 1')
    p.add_argument('--expert-width', choices=('full', 'matched', 'both'), default=None,
                   help='experts as full copies, compute-matched, or both (default: both with --all, else full)')
    p.add_argument('--json', metavar='OUT', help='write one JSON object per audited model (a list) to OUT')
    p.add_argument('--max-flops-ratio', type=float, default=None, metavar='R',
                   help='exit 1, naming them, if any model\'s active FLOPs over --flops-baseline exceed R '
                        '(e.g. 1.001)')
    p.add_argument('--flops-baseline', choices=tuple(BASELINES), default='dense',
                   help='what --max-flops-ratio divides the active FLOPs by: the dense model, or the dense model '
                        'plus the MoE layers\' gates as fvcore counts them (the exact cost of k=1 at any width '
                        'and gate; default: dense)')
    p.add_argument('--no-latency', action='store_true', help='FLOPs and parameters only (fast)')
    p.add_argument('--wide', action='store_true',
                   help='every column of the table, wider than the terminal if need be; by default the columns '
                        'that fit it (the caption names the others; --json has them all)')
    p.add_argument('--no-memory', action='store_true', help='skip the peak-memory measurement')
    p.add_argument('--batch-sizes', default='1,128', help='batch sizes to time, comma-separated')
    p.add_argument('--repeats', type=int, default=7, help='timed forwards per model and batch size (medians)')
    p.add_argument('--warmup', type=int, default=2, help='untimed forwards first')
    p.add_argument('--batch', type=int, default=32, help='images in the routing batch that weights the experts')
    p.add_argument('--device', choices=('cpu', 'cuda'), default=None, help='latency device (default: cuda if present)')
    p.add_argument('--seed', type=int, default=0, help='seeds weights and the routing batch')
    p.add_argument('--model-kwargs', default=None, metavar='K=V,...',
                   help='model kwargs for every audited model and its dense baseline, as train and eval take them '
                        '(e.g. width=16,gate=conv_gap,stem=imagenet; default: the models\' defaults)')
    p.add_argument('--convert', default=None, metavar='K=V,...',
                   help='make the plain timm --model an MoE, audited against its unconverted self: '
                        'timm_moe.convert\'s arguments, e.g. targets=stages.3.blocks.*,num_experts=4,k=1')
    p.add_argument('--num-classes', type=int, default=None, help='classifier outputs (default: the model\'s, 100 for timm-moe\'s)')
    p.add_argument('--in-chans', type=int, default=None, help='input channels (default 3)')
    p.add_argument('--input-size', default=None, metavar='C,H,W',
                   help='one image (default: in_chans,32,32; use 3,224,224 with --stem imagenet)')
    p.add_argument('--table', action='store_true', help="print fvcore's per-module FLOP table (with --model)")
    p.add_argument('--table-depth', type=int, default=3, help='depth of that table')
    p.set_defaults(func=run)

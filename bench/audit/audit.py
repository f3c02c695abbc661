"""The audit behind `timm-moe audit` (`bench.cli.audit`): does the MoE add capacity without inference cost? FLOPs, parameters, latency, memory.

Per model, against its dense baseline with the identical stem and widths (`ModelSpec.dense()`):

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
+13.6% on the CIFAR ResNet-18. The set that should pass is `--all --k 1` (BlockMoE and ConvMoE) plus
`--all --expert-width matched` (BlockMoE: a ConvMoE has no compute-matched experts).

At k=1 an MoE of full-width experts costs exactly its gates over dense (`flops_gates`, by fvcore on the trace):
the one expert an image runs is a copy of the dense module. At the default width 64 and `gap_fc` gate that is
at most +0.04% (ResNet-50 ConvMoE E=32: 5 gates), inside 1.001; a `conv_gap` gate or a small width costs more
(ResNet-18 ConvMoE E=32 with conv_gap: +1.3%; at width 8, up to +20%). `flops_ratio_dense_plus_gates`
= active / (dense + gates) is the bound that holds for every gate and width: 1 at k=1.
"""
from __future__ import annotations

import dataclasses
import difflib
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
import torch
from torch import nn

import timm_moe
from bench.audit.flops import FlopReport, flop_table, mac_flops, moe_flops, relative_difference
from bench.audit.result import AuditResult
from bench.core.devices import choose_device
from bench.core.errors import UserError
from bench.models import check_input_size, create_model, param_counts
from timm_moe import ModelSpec
from timm_moe.spec import MOE_KWARGS

AGREEMENT_TOLERANCE = 0.01  # fvcore vs FlopCounterMode: differences above 1% are reported
FLOPS_UNIT = 'fvcore convention: 1 FLOP = 1 multiply-accumulate (torch FlopCounterMode counts 2; halved here)'
# the audit builds its own model from the name (seeded weights): a trained run's weights would route otherwise
UNTRAINED = ('through the freshly built, untrained model (seeded weights, not a trained run\'s), in eval mode; with '
             'identical experts (every registered variant) active FLOPs do not depend on it')
ROUTING_NOTE = f'routing of a seeded batch of uniform-noise images {UNTRAINED}'
ROUTING_NOTE_GIVEN = f'routing of the images passed in {UNTRAINED}'

# dense baselines are built and counted once per (name, kwargs, input) in a process: --all reuses them
_DENSE_CACHE: Dict[Tuple[Any, ...], Tuple[nn.Module, FlopReport, FlopReport]] = {}


def timm_moe_models() -> List[str]:
    """Every name timm-moe registers with timm: the MoE variants and the dense baselines."""
    return sorted(timm_moe.model_names())


def check_model_name(name: str) -> None:
    """Refuse a name timm does not know (any timm model is audited: ours against their dense baselines, another
    against itself, or converted with `convert` against its unconverted self)."""
    if timm.is_model(name):
        return
    known = timm_moe_models()
    close = difflib.get_close_matches(name, known, n=3) or difflib.get_close_matches(name, timm.list_models(), n=3)
    raise UserError(
        f'unknown model {name!r}: expected a timm model name such as {", ".join(close or known[:2])} '
        f'(`timm-moe models` lists all {len(known)} of timm-moe\'s, timm.list_models() all of timm\'s)')


def is_ours(name: str) -> bool:
    """Whether `name` is a timm-moe name (audited against `ModelSpec.dense()`), not any other timm model's."""
    return name in timm_moe_models()


def _dense(dense: str, dense_kwargs: Dict[str, Any], images: torch.Tensor, seed: int
           ) -> Tuple[nn.Module, FlopReport, FlopReport]:
    key = (dense, tuple(sorted((k, repr(v)) for k, v in dense_kwargs.items())), tuple(images.shape), seed)
    if key not in _DENSE_CACHE:
        torch.manual_seed(seed)
        model = create_model(dense, dense_kwargs, 'model kwargs').eval()
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
        convert: Optional[Dict[str, Any]] = None,
        **model_kwargs: Any,
) -> AuditResult:
    """Audit one model against its dense baseline; `timm-moe audit --json` writes a list of these.

    Args:
        name: A timm-moe model name, e.g. 'resnet18_blockmoe_e8_k2' (a dense name audits against itself), or any
            timm model's: the dense baseline is the plain timm model, and `convert` makes the audited one an MoE
            (at k=1 with full-width experts it costs exactly the dense FLOPs plus the gates).
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
        images: A real routing batch (B, C, H, W) to use instead of seeded uniform noise; it is routed through the
            freshly built model all the same (untrained: the audit builds its own model from `name`).
        table: Also return fvcore's per-module table (active FLOPs per image) under 'flop_table'.
        table_depth: Depth of that table.
        convert: `timm_moe.convert`'s arguments (`timm_moe.Conversion`) for a plain timm model; not for ours.
        **model_kwargs: Passed to `timm.create_model` (stem, width, num_classes, in_chans, gate, k...);
            the dense baseline gets the non-MoE ones.

    Returns:
        The `AuditResult` (`bench.audit.result`, field by field): FLOPs per image in fvcore's unit, their ratios
        to dense and the cross-check with FlopCounterMode, parameters, the routing batch, and latency and
        memory per batch size (None without `latency`); `flop_table` with `table`.
    """
    check_model_name(name)
    for n, v in (('batch', batch), ('repeats', repeats)):
        if not isinstance(v, int) or v < 1:
            raise UserError(f'{n}={v!r}: expected an integer >= 1')
    if warmup < 0:
        raise UserError(f'warmup={warmup!r}: expected an integer >= 0')
    if not batch_sizes or any(not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise UserError(f'batch_sizes={list(batch_sizes)!r}: expected positive integers, e.g. 1,128')
    if is_ours(name):
        if convert is not None:
            raise UserError(f'convert with {name}: it is already a timm-moe model; convert a plain timm model '
                            f'(e.g. {ModelSpec.from_name(name).arch})')
        named = ModelSpec.from_name(name)
        if not named.is_moe:  # a dense model takes no MoE kwargs; auditing it against itself is a valid no-op check
            model_kwargs = {k: v for k, v in model_kwargs.items() if k not in MOE_KWARGS}
        dense_name = named.dense().name
        dense_kwargs = {k: v for k, v in model_kwargs.items() if k not in MOE_KWARGS}
    else:  # any timm model: its unconverted self is the baseline, with the very same kwargs
        dense_name, dense_kwargs = name, dict(model_kwargs)
    in_chans = int(model_kwargs.get('in_chans', 3))
    if images is not None:
        input_size = tuple(images.shape[1:])
    input_size = tuple(input_size) if input_size is not None else (in_chans, 32, 32)
    if len(input_size) != 3 or input_size[0] != in_chans or min(input_size) < 1:
        raise UserError(f'input_size={input_size!r}: expected (C, H, W) with C = in_chans = {in_chans}')
    device = choose_device(device, 'device')

    t0 = time.perf_counter()
    given_images = images is not None
    if images is None:
        images = torch.rand((batch, *input_size), generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    model = create_model(name, model_kwargs, 'model kwargs', convert=convert).eval()
    if not is_ours(name):  # ours take any CIFAR or ImageNet size; a too-small input is caught where it fails
        check_input_size(model, in_chans, min(input_size[1:]), name, 'audit --input-size C,{need},{need}')
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
    result = AuditResult(
        model=name,
        model_kwargs=dict(model_kwargs),
        dense_model=dense_name,
        dense_kwargs=dense_kwargs,
        convert=getattr(model, 'moe_conversion', None),
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
        # what a k=1 MoE with full-width experts costs over dense: its gates, exactly (the bound of
        # `timm-moe audit --flops-baseline dense+gates`)
        flops_gates=fv.gates,
        flops_ratio_dense_plus_gates=fv.active / (dense_fv.total + fv.gates),
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
            note=ROUTING_NOTE_GIVEN if given_images else ROUTING_NOTE,
            batch=int(images.shape[0]),
            layers={n: dict(counts=l.counts, slots=l.slots, forced=l.forced, expert_flops=l.expert_flops)
                    for n, l in fv.layers.items()},
        ),
        notes=notes,
        flop_table=flop_table(model, fv, 'active', max_depth=table_depth) if table else None,
    )

    if latency:
        from bench.audit.latency import MEMORY_METHOD, latency_vs_dense

        dev = device
        model.to(dev)
        dense.to(dev)
        try:
            lat = latency_vs_dense(model, dense, input_size, batch_sizes, repeats=repeats, warmup=warmup,
                                   device=dev, memory=memory, seed=seed)
        finally:
            dense.to('cpu')  # the cached baseline stays where FLOPs are counted
        result = dataclasses.replace(result, **lat)
        result.latency_device = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else (
            f'cpu, torch threads={torch.get_num_threads()}')
        if memory:
            result.memory_method = MEMORY_METHOD[dev.type]
        result.latency_settings = dict(batch_sizes=list(batch_sizes), repeats=repeats, warmup=warmup,
                                          timing='interleaved medians (bench.core.timing)')
    result.seconds = time.perf_counter() - t0
    return result

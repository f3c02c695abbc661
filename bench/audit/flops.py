"""FLOPs of models with MoE layers (BlockMoE, ConvMoE, any `timm_moe.convert`) with fvcore, on the routing that
really happens, cross-checked with torch.

Unit: fvcore's convention, one FLOP per multiply-accumulate (MAC). That is how the paper's 0.557 GFLOPs
for a dense CIFAR ResNet-18 is counted. `torch.utils.flop_counter.FlopCounterMode` counts two per
MAC; its numbers are halved here so that both counters speak the same unit.

Why the model is not simply handed to fvcore: fvcore traces one input, so the experts it sees are the
ones that one image was routed to, and it ignores the gather/index ops of the dispatch. So the count is
taken apart on purpose (`moe_flops`):

1. trace the whole model on one image; everything outside the experts (stem, dense blocks, gate, head)
   costs the same for every image, so `non_expert = traced total - FLOPs of the experts the trace ran`;
2. count every expert module on its own, on a one-image input of the shape its layer receives (experts
   of identical structure are counted once);
3. route a real batch through the model and weight each expert's cost by how many of the batch's
   (image, slot) assignments it received: `active = non_expert + sum_e count_e * F_e / B`.

`worst` takes the k most expensive experts of each layer, `total` runs every expert. fvcore's
unsupported ops (the residual `add_`, the dispatch's softmax/topk/argsort/index ops, ...) are listed,
never silenced: none of them is a multiply-accumulate, so the MAC count does not depend on them.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

import timm_moe
from bench.core.modes import eval_mode

# fvcore op names that are multiply-accumulate heavy and that FlopCounterMode counts too; the
# agreement on these alone must be exact, the rest (batch_norm, pooling) only fvcore counts
MAC_OPS = ('conv', 'linear', 'matmul', 'addmm', 'bmm', 'einsum')


@dataclass
class Counted:
    """One counter's verdict on one module and input.

    Attributes:
        total: FLOPs (MACs) of the whole forward.
        by_module: Qualified module name ('' = the root) -> FLOPs, parents including their children.
        by_operator: Operator kind -> FLOPs (fvcore's names; the torch counter gives aten names).
        unsupported: Operator -> times it ran without a FLOP handle (fvcore only).
    """
    total: int
    by_module: Dict[str, int]
    by_operator: Dict[str, int]
    unsupported: Dict[str, int] = field(default_factory=dict)


@dataclass
class LayerFlops:
    """FLOPs of one MoE layer's experts, and the routing that weights them.

    Attributes:
        expert_flops: FLOPs per image of each expert.
        counts: (image, slot) assignments each expert received on the routing batch.
        slots: Experts each image runs (k; 1 when the layer is forced to one expert).
        forced: The forced expert, or None.
        expert_by_module: Per expert, its own `by_module` (names relative to the expert).
        gate_flops: FLOPs per image of the layer's gate (0 when forced: a forced layer skips its gate).
    """
    expert_flops: List[int]
    counts: List[int]
    slots: int
    forced: Optional[int]
    expert_by_module: List[Dict[str, int]]
    gate_flops: int = 0

    @property
    def images(self) -> int:
        return sum(self.counts) // self.slots

    def active(self) -> float:
        """Mean expert FLOPs per image on the routing batch."""
        return sum(c * f for c, f in zip(self.counts, self.expert_flops)) / max(self.images, 1)

    def worst(self) -> int:
        """Expert FLOPs of the most expensive image possible: its `slots` costliest experts."""
        if self.forced is not None:
            return self.expert_flops[self.forced]
        return sum(sorted(self.expert_flops, reverse=True)[:self.slots])

    def total(self) -> int:
        """Expert FLOPs per image if every expert ran."""
        return sum(self.expert_flops)


@dataclass
class FlopReport:
    """FLOPs per image of a (MoE or dense) model, by one counter.

    Attributes:
        counter: 'fvcore' or 'torch'.
        non_expert: FLOPs outside the experts (the gate included), per image.
        layers: Qualified name -> LayerFlops of each MoE layer.
        traced: The counter's result on the one-image trace of the whole model.
    """
    counter: str
    non_expert: int
    layers: Dict[str, LayerFlops]
    traced: Counted

    @property
    def active(self) -> float:
        """Mean FLOPs per image with the routing of the batch."""
        return self.non_expert + sum(l.active() for l in self.layers.values())

    @property
    def gates(self) -> int:
        """FLOPs per image of every MoE layer's gate (part of `non_expert`): what a k=1 MoE adds to dense."""
        return sum(l.gate_flops for l in self.layers.values())

    @property
    def active_worst(self) -> int:
        """FLOPs of an image routed to the costliest k experts of every layer."""
        return self.non_expert + sum(l.worst() for l in self.layers.values())

    @property
    def total(self) -> int:
        """FLOPs per image if every expert ran."""
        return self.non_expert + sum(l.total() for l in self.layers.values())


# ----------------------------------------------------------------------------------------------------
# the two counters


def _fvcore() -> Any:
    """`fvcore.nn`, imported when first counted (the CLI answers --help without it)."""
    with warnings.catch_warnings():
        # fvcore scripts a helper at import, which torch now flags as deprecated: not ours to fix
        warnings.filterwarnings('ignore', message='.*torch.jit.script.*', category=FutureWarning)
        import fvcore.nn
    return fvcore.nn


def count_fvcore(module: nn.Module, x: torch.Tensor) -> Counted:
    """fvcore's `FlopCountAnalysis` of `module(x)`, in MACs.

    Args:
        module: Module to trace (in the mode it is in; callers put it in eval).
        x: Its input.
    """
    analysis = _fvcore().FlopCountAnalysis(module, x)
    # the unsupported ops are returned (and shown by the audit) instead of logged once per trace
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)  # unrouted experts are uncalled by design
    analysis.tracer_warnings('none')  # the dispatch's .tolist() is a constant in a trace, on purpose
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*torch.jit.*', category=FutureWarning)
        total = int(analysis.total())
        by_module = {k: int(v) for k, v in analysis.by_module().items()}
        by_operator = {k: int(v) for k, v in analysis.by_operator().items()}
        unsupported = dict(analysis.unsupported_ops())
    return Counted(total, by_module, by_operator, unsupported)


def count_torch(module: nn.Module, x: torch.Tensor) -> Counted:
    """torch's `FlopCounterMode` on `module(x)`, halved to MACs (it counts 2 FLOPs per MAC).

    Args:
        module: Module to run.
        x: Its input.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(x)
    by_module: Dict[str, int] = {}
    by_operator: Dict[str, int] = {}
    for key, ops in counter.get_flop_counts().items():
        flops = sum(int(v) for v in ops.values()) // 2
        if key == 'Global':
            for op, v in ops.items():
                by_operator[str(op)] = int(v) // 2
            continue
        # keys are '<RootClass>.<qualified name>'; the root alone is '<RootClass>'
        by_module[key.split('.', 1)[1] if '.' in key else ''] = flops
    return Counted(int(counter.get_total_flops()) // 2, by_module, by_operator)


COUNTERS: Dict[str, Callable[[nn.Module, torch.Tensor], Counted]] = {'fvcore': count_fvcore, 'torch': count_torch}


# ----------------------------------------------------------------------------------------------------
# routing and shapes


def _join(*parts: str) -> str:
    return '.'.join(p for p in parts if p)


def layer_input_shapes(model: nn.Module, x: torch.Tensor) -> Dict[str, Tuple[int, ...]]:
    """Shape of the input each MoE layer receives when `model` runs on `x`."""
    shapes: Dict[str, Tuple[int, ...]] = {}
    handles = []
    for name, layer in timm_moe.moe_layers(model):
        def hook(mod: nn.Module, args: Tuple[Any, ...], name: str = name) -> None:
            shapes[name] = tuple(args[0].shape)
        handles.append(layer.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return shapes


def routing_counts(model: nn.Module, images: torch.Tensor) -> Dict[str, Tuple[List[int], int, Optional[int]]]:
    """Route `images` through `model` and count, per MoE layer, the images each expert received.

    A layer forced with `timm_moe.force_expert` skips its gate and records no routing; every image then
    counts for the forced expert.

    Args:
        model: The model, in the mode it should be audited in (eval).
        images: A batch (B, C, H, W).

    Returns:
        Layer name -> (count per expert, slots per image, forced expert or None). Counts add up to
        B * slots.
    """
    layers = timm_moe.moe_layers(model)
    with torch.no_grad():  # every layer the forward reaches replaces its `last_routing` (None when forced)
        model(images)
    routed = timm_moe.last_routing(model)
    batch = images.shape[0]
    out: Dict[str, Tuple[List[int], int, Optional[int]]] = {}
    for name, layer in layers:
        if layer.forced_expert is not None:
            counts = [0] * layer.num_experts
            counts[layer.forced_expert] = batch
            out[name] = (counts, 1, layer.forced_expert)
            continue
        indices = routed[name]['indices']
        counts = torch.bincount(indices.flatten().cpu(), minlength=layer.num_experts).tolist()
        out[name] = (counts, int(indices.shape[1]), None)
    return out


def _structure_key(module: nn.Module) -> Tuple[str, Tuple[Tuple[str, Tuple[int, ...]], ...]]:
    # two experts with the same repr (kernel, stride, widths) and parameter shapes cost the same
    return repr(module), tuple((n, tuple(p.shape)) for n, p in module.named_parameters())


# ----------------------------------------------------------------------------------------------------
# the count


def moe_flops(model: nn.Module, images: torch.Tensor, counter: str = 'fvcore') -> FlopReport:
    """FLOPs per image of `model` on the routing `images` really get.

    Works for dense models too (no MoE layer: active = worst = total = the traced total). The model is
    counted in eval mode (and put back in its mode after); its routing statistics see the batch.

    Args:
        model: A timm-moe model, a bare MoE layer, or any model with MoE layers (`timm_moe.convert`).
        images: The routing batch (B, C, H, W); its first image is the one traced.
        counter: 'fvcore' or 'torch'.
    """
    if counter not in COUNTERS:
        raise ValueError(f'counter={counter!r}: expected one of {sorted(COUNTERS)}')
    count = COUNTERS[counter]
    one = images[:1]
    with eval_mode(model):
        shapes = layer_input_shapes(model, one)
        traced = count(model, one)
        routed = routing_counts(model, images)
        non_expert = traced.total
        layers: Dict[str, LayerFlops] = {}
        for name, layer in timm_moe.moe_layers(model):
            cache: Dict[Any, Counted] = {}
            expert_flops, expert_by_module = [], []
            expert_input = torch.zeros(shapes[name], dtype=one.dtype, device=one.device)
            for j, expert in enumerate(layer.experts):
                key = _structure_key(expert)
                if key not in cache:
                    cache[key] = count(expert, expert_input)
                expert_flops.append(cache[key].total)
                expert_by_module.append(cache[key].by_module)
                # whatever the traced image ran in this expert is expert cost, not shared cost
                non_expert -= traced.by_module.get(_join(name, 'experts', str(j)), 0)
            counts, slots, forced = routed[name]
            layers[name] = LayerFlops(expert_flops, counts, slots, forced, expert_by_module,
                                      traced.by_module.get(_join(name, 'gate'), 0))
    return FlopReport(counter, non_expert, layers, traced)


def relative_difference(a: float, b: float) -> float:
    """|a - b| / max(|a|, |b|), 0 when both are 0."""
    scale = max(abs(a), abs(b))
    return abs(a - b) / scale if scale else 0.0


def mac_flops(report: FlopReport) -> int:
    """The traced total restricted to multiply-accumulate ops (conv, linear, matmul)."""
    return sum(v for op, v in report.traced.by_operator.items() if any(m in op for m in MAC_OPS))


# ----------------------------------------------------------------------------------------------------
# per-module table


def per_image_by_module(report: FlopReport, mode: str = 'active') -> Dict[str, float]:
    """Module name -> FLOPs per image, each expert weighted by the routing ('active') or by 1 ('total').

    Args:
        report: An fvcore FlopReport.
        mode: 'active' (mean over the routing batch) or 'total' (every expert runs).
    """
    if mode not in ('active', 'total'):
        raise ValueError(f'mode={mode!r}: expected "active" or "total"')
    out: Dict[str, float] = dict(report.traced.by_module)
    for name, layer in report.layers.items():
        for j, (flops, rel) in enumerate(zip(layer.expert_flops, layer.expert_by_module)):
            weight = 1.0 if mode == 'total' else layer.counts[j] / max(layer.images, 1)
            root = _join(name, 'experts', str(j))
            delta = weight * flops - report.traced.by_module.get(root, 0)
            for sub, v in rel.items():
                out[_join(root, sub)] = weight * v
            parts = root.split('.')
            for depth in range(len(parts) - 1, -1, -1):  # every ancestor, the root module ('') included
                ancestor = '.'.join(parts[:depth])
                out[ancestor] = out.get(ancestor, 0) + delta
    return out


def flop_table(model: nn.Module, report: FlopReport, mode: str = 'active', max_depth: int = 3) -> str:
    """fvcore's `flop_count_table` with the per-image counts of `per_image_by_module`.

    Args:
        model: The model the report was made on.
        report: Its fvcore FlopReport.
        mode: 'active' or 'total'.
        max_depth: Depth of submodules shown.
    """
    fv = _fvcore()
    counts = {k: int(round(v)) for k, v in per_image_by_module(report, mode).items()}

    class PerImage(fv.FlopCountAnalysis):
        """fvcore's analysis of `model` with our per-image counts in place of one trace's (which sees only the
        experts one image was routed to). `flop_count_table` reads the counts through these two public methods
        (and the model's parameters), so nothing is traced: the analysis is given no input."""

        def by_module(self) -> Dict[str, int]:
            return dict(counts)

        def uncalled_modules(self) -> set:
            # an unrouted expert shows 0 per image, which is the truth here, not a tracing gap
            return set()

    return fv.flop_count_table(PerImage(model, ()), max_depth=max_depth)

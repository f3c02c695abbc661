"""`AuditResult`: what `bench.audit.audit.audit_model` returns for one model against its dense baseline.

A typed record between the layers: the pipeline, the CLI table and the registry's entry builder read its
attributes; `to_json()` is the one place it becomes a dict (`timm-moe audit --json`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

# `{batch size as a string: number}`, one per measured batch size
PerBatch = Dict[str, float]


@dataclass(kw_only=True)
class AuditResult:
    """FLOPs per image (fvcore's unit, `flops_unit`), parameters, latency and memory of one model over dense.

    Args:
        model: The audited timm name (a timm-moe name, or any timm model's).
        model_kwargs: Its `timm.create_model` kwargs.
        dense_model: The dense baseline's name (identical stem and widths; a plain timm model's own name).
        dense_kwargs: The baseline's kwargs (the non-MoE ones).
        convert: The MoE conversion of a plain timm model (`timm_moe.Conversion.to_dict()`), None if none; in
            the JSON only where given.
        experts: Experts per MoE layer (0 when dense).
        k: Experts each image runs (None when dense).
        input_size: (C, H, W) of one image.
        flops_unit: What one FLOP is (1 multiply-accumulate).
        flops_active: Gate + the experts each image of the routed batch ran, averaged.
        flops_active_worst: With the k costliest experts.
        flops_total: Every expert runs.
        flops_dense: The dense baseline.
        flops_ratio: flops_active / flops_dense.
        flops_ratio_worst: flops_active_worst / flops_dense.
        flops_total_ratio: flops_total / flops_dense.
        flops_non_expert: Stem, dense blocks, gates, head: paid by every image.
        flops_gates: Every MoE layer's gate (0 when dense).
        flops_ratio_dense_plus_gates: flops_active / (flops_dense + flops_gates): exactly 1 at k=1 with
            full-width experts.
        flop_counter_agreement: Largest relative difference to torch's FlopCounterMode.
        flop_counter: That cross-check in full.
        unsupported_ops: Ops fvcore has no handle for, with their counts (never hidden).
        unsupported_ops_dense: The same for the baseline.
        params_total: Every parameter.
        params_active: Everything but the experts, plus k experts per layer.
        params_dense: The baseline's parameters.
        routing: The batch that weighted the experts and each layer's counts.
        latency_ms: Median forward time per batch size (None without latency).
        latency_dense_ms: The baseline's.
        latency_ratio: Ratio of the medians.
        peak_memory_mb: Peak memory of one forward per batch size (None without memory).
        peak_memory_dense_mb: The baseline's.
        memory_ratio: Their ratio.
        memory_method: How memory was measured.
        latency_device: Where latency ran.
        latency_settings: Batch sizes, repeats, warm-up and timing method (None without latency).
        notes: What the reader must know (e.g. the two counters disagree).
        seconds: Wall time of the audit.
        flop_table: fvcore's per-module table, for the console only (with `table=True`); not in the JSON.
    """
    # what was audited, against what
    model: str
    model_kwargs: Dict[str, Any]
    dense_model: str
    dense_kwargs: Dict[str, Any]
    convert: Optional[Dict[str, Any]] = None
    experts: int
    k: Optional[int]
    input_size: List[int]
    # FLOPs per image
    flops_unit: str
    flops_active: float
    flops_active_worst: float
    flops_total: float
    flops_dense: float
    flops_ratio: float
    flops_ratio_worst: float
    flops_total_ratio: float
    flops_non_expert: float
    flops_gates: float
    flops_ratio_dense_plus_gates: float
    flop_counter_agreement: float
    flop_counter: Dict[str, Any]
    unsupported_ops: Dict[str, int]
    unsupported_ops_dense: Dict[str, int]
    # parameters, and the routing batch that weighted the experts
    params_total: int
    params_active: int
    params_dense: int
    routing: Dict[str, Any]
    # latency and memory per batch size
    latency_ms: Optional[PerBatch] = None
    latency_dense_ms: Optional[PerBatch] = None
    latency_ratio: Optional[PerBatch] = None
    peak_memory_mb: Optional[PerBatch] = None
    peak_memory_dense_mb: Optional[PerBatch] = None
    memory_ratio: Optional[PerBatch] = None
    memory_method: Optional[str] = None
    latency_device: Optional[str] = None
    latency_settings: Optional[Dict[str, Any]] = None
    notes: List[str] = field(default_factory=list)
    seconds: Optional[float] = None
    flop_table: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        """The record as `timm-moe audit --json` writes it: every field but the console's `flop_table`."""
        out = dataclasses.asdict(self)
        del out['flop_table']
        if out['convert'] is None:  # so that the record of every other model reads as before
            del out['convert']
        return out

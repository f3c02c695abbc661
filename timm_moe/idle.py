"""Idle experts: give an expert that received no image in an optimisation step no gradient at all.

MoE ties every idle expert into the graph with weight 0 (its "idle anchor"), so that DDP runs
without `find_unused_parameters` and every parameter has a `.grad`. That grad is exactly zero, but
SGD momentum, Nesterov and weight decay still move a parameter whose grad is zero. In the paper's
code an unused expert's grad is None and the optimizer skips it; `drop_idle_expert_grads` restores
that behaviour after backward, once DDP has synchronised the (zero) grads.
"""
from __future__ import annotations

from typing import Dict, List

import torch
import torch.distributed as dist
from torch import nn

from .introspection import moe_layers

__all__ = ['drop_idle_expert_grads']


def _world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def drop_idle_expert_grads(model: nn.Module) -> Dict[str, List[int]]:
    """Set `.grad = None` on every parameter of each expert that received no image since the last call.

    "Received no image" is judged over the counted training forwards since the previous call (training
    mode, grad enabled, outside `paused_routing_stats`, no forced expert), summed over all ranks when a
    process group with world size > 1 is initialised. So with gradient accumulation or DDP, an expert
    used by any micro-batch on any rank keeps its grad. A layer that ran no counted forward since the
    previous call (e.g. only forced-expert forwards) has nothing to judge by and keeps all its grads.
    The counters are reset.

    Call it on every rank (it does one all-reduce), after the backward of the last micro-batch and
    before `optimizer.step()` (and before `GradScaler.unscale_`/clipping, which skip None grads).

    Args:
        model: A model with or without MoE layers (DDP / wrapper modules included).

    Returns:
        {layer name: ids of the experts whose grads were dropped}, one key per MoE layer.
    """
    layers = moe_layers(model)
    if not layers:
        return {}
    usages = [m.usage() for _, m in layers]
    device = usages[0][0].device
    # one (L, E + 1) tensor so that a single all-reduce (and a single host sync) serves every layer;
    # the last column counts the forwards, to tell "idle" from "not run at all"
    table = torch.stack([
        torch.cat([u.to(device), torch.tensor([n], dtype=u.dtype, device=device)]) for u, n in usages])
    if _world_size() > 1:
        dist.all_reduce(table)
    rows = table.tolist()

    dropped: Dict[str, List[int]] = {}
    for (name, layer), row in zip(layers, rows):
        counts, forwards = row[:-1], row[-1]
        idle = [e for e, c in enumerate(counts) if c == 0] if forwards > 0 else []
        for e in idle:
            for p in layer.experts[e].parameters():
                p.grad = None
        layer.reset_usage()
        dropped[name] = idle
    return dropped

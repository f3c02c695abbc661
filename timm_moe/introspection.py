"""One-call introspection of the MoE layers in a model: losses, routing, statistics, forcing."""
from __future__ import annotations

import contextlib
import warnings
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .layers import MoE


def moe_layers(model: nn.Module) -> List[Tuple[str, MoE]]:
    """All MoE layers of `model` (any wrapper included), with their qualified names."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MoE)]


def num_experts(model: nn.Module) -> int:
    """Experts per MoE layer (0 for a dense model)."""
    layers = moe_layers(model)
    return layers[0][1].num_experts if layers else 0


def aux_loss(model: nn.Module) -> torch.Tensor:
    """Weighted sum of every MoE layer's auxiliary loss from the last forward (a scalar with grad).

    Zero for a dense model, before the first forward, and for layers whose last forward was forced
    (`force_expert`: no gate ran). Only a forward in train mode with grad keeps the loss's graph: otherwise it is
    a detached value (for logging), and asking for it with grad enabled warns, whatever mode the model is in now
    (what counts is the forward the loss came from).
    """
    layers = [m for _, m in moe_layers(model)]
    losses = [m.last_aux for m in layers if m.last_aux is not None]
    if torch.is_grad_enabled() and any(m.aux_lacks_grad() for m in layers):
        # a loss built from this would silently not train the gates
        warnings.warn('timm_moe.aux_loss: the last forward ran in eval mode or without grad, so its aux loss has '
                      'no gradient and cannot train the gates; run the forward whose aux loss you train on with '
                      'model.train() and grad enabled', RuntimeWarning, stacklevel=2)
    if not losses:
        p = next(model.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None)
    return torch.stack([l.float() for l in losses]).sum()


def last_routing(model: nn.Module) -> Dict[str, Dict[str, torch.Tensor]]:
    """Per MoE layer, the last forward's top-k expert indices, weights (B, k) and probabilities (B, E)."""
    out = {}
    for name, m in moe_layers(model):
        r = m.last_routing
        if r is not None:
            out[name] = dict(indices=r.indices, weights=r.weights, probs=r.probs)
    return out


def routing_stats(model: nn.Module) -> Dict[str, Dict[str, object]]:
    """Per MoE layer, expert load, importance and collapse since the last `reset_routing_stats`."""
    return {name: m.stats() for name, m in moe_layers(model)}


def reset_routing_stats(model: nn.Module) -> None:
    """Start accumulating routing statistics afresh in every MoE layer."""
    for _, m in moe_layers(model):
        m.reset_stats()


@contextlib.contextmanager
def paused_routing_stats(model: nn.Module) -> Iterator[nn.Module]:
    """Forwards inside the block leave `routing_stats` untouched (`routing` still shows the last forward).

    For forwards that are not the data's own, such as the steps of an attack crafting a training example.

    Args:
        model: A model with or without MoE layers.
    """
    layers = [m for _, m in moe_layers(model)]
    previous = [m.record_stats for m in layers]
    for m in layers:
        m.record_stats = False
    try:
        yield model
    finally:
        for m, p in zip(layers, previous):
            m.record_stats = p


@contextlib.contextmanager
def force_expert(model: nn.Module, expert: int, layers: Optional[Union[str, Sequence[str]]] = None) -> Iterator[nn.Module]:
    """Bypass the gates and send every image through expert `expert` (its "subpath").

    A forced layer routes nothing: each forward clears its `last_routing` and aux loss (`last_routing` leaves it
    out, `aux_loss` counts it as zero).

    Args:
        model: A model with MoE layers.
        expert: Index in [0, E).
        layers: The MoE layers to force, by path (e.g. 'layer4.1' or ['layer4.0']); None forces every layer
            ("expert e in every layer"). The other layers keep routing.
    """
    found = moe_layers(model)
    if not found:
        raise ValueError('force_expert: the model has no MoE layer')
    if layers is not None:
        wanted = [layers] if isinstance(layers, str) else list(layers)
        names = [name for name, _ in found]
        unknown = [w for w in wanted if w not in names]
        if unknown or not wanted:
            raise ValueError(f'layers={layers!r}: expected MoE layer paths of the model, some of {names}')
        found = [(name, m) for name, m in found if name in wanted]
    for name, m in found:
        if isinstance(expert, bool) or not isinstance(expert, int) or not 0 <= expert < m.num_experts:
            raise ValueError(f'expert={expert!r}: expected an integer in [0, {m.num_experts}) for {name}')
    previous: List[Optional[int]] = [m.forced_expert for _, m in found]
    for _, m in found:
        m.forced_expert = expert
    try:
        yield model
    finally:
        for (_, m), prev in zip(found, previous):
            m.forced_expert = prev

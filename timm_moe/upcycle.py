"""Start an MoE from a dense checkpoint: every expert begins as a noisy copy of the dense block."""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Union

import timm
import torch
from torch import nn

from .introspection import moe_layers

_EXPERT_KEY = re.compile(r'^(?P<block>.+)\.experts\.\d+\.(?P<rest>.+)$')


def upcycle(
        dense: Union[nn.Module, Mapping[str, torch.Tensor]],
        name: str,
        noise: float = 0.01,
        seed: int = 0,
        **kwargs: Any,
) -> nn.Module:
    """Build `name` and initialise it from a dense model or state_dict of the same architecture.

    Every parameter outside the MoE layers is copied. Each expert copies the dense block it replaces,
    plus Gaussian noise of `noise` times each weight tensor's std, so that experts can diverge. Gates
    keep their fresh initialisation.

    Args:
        dense: A dense timm-moe ResNet (e.g. `resnet18_dense`) or its state_dict.
        name: The MoE model to build, e.g. 'resnet18_blockmoe_e8_k1'.
        noise: Relative noise added to the copied expert weights (0 for exact copies).
        seed: Seed of that noise.
        **kwargs: Passed to `timm.create_model` (num_classes, width, stem, ... must match the dense model).
    """
    state = dense.state_dict() if isinstance(dense, nn.Module) else dict(dense)
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    model = timm.create_model(name, **kwargs)
    if not moe_layers(model):
        raise ValueError(f'upcycle: {name!r} has no BlockMoE layer')
    if kwargs.get('expert_width', 'full') != 'full':
        raise ValueError("upcycle: expert_width must be 'full' so experts have the dense block's shapes")

    gen = torch.Generator().manual_seed(seed)
    target = model.state_dict()
    new_state: Dict[str, torch.Tensor] = {}
    missing = []
    for key, value in target.items():
        m = _EXPERT_KEY.match(key)
        src_key = f"{m['block']}.{m['rest']}" if m else key
        if '.gate.' in key:
            new_state[key] = value
            continue
        if src_key not in state:
            missing.append(src_key)
            continue
        src = state[src_key]
        if src.shape != value.shape:
            raise ValueError(f'upcycle: {src_key} has shape {tuple(src.shape)} in the dense model, '
                             f'{tuple(value.shape)} expected for {key}')
        src = src.clone()
        if m and noise > 0 and src.is_floating_point() and src.ndim > 1:
            src += noise * src.std() * torch.randn(src.shape, generator=gen).to(src)
        new_state[key] = src
    if missing:
        raise ValueError(f'upcycle: the dense state_dict lacks {len(missing)} keys, e.g. {missing[:3]}')
    model.load_state_dict(new_state)
    return model

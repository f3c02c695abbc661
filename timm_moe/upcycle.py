"""Start an MoE from a dense checkpoint: `convert` with copied weights, applied to the trained dense model."""
from __future__ import annotations

from typing import Any, Mapping, Union

import torch
from torch import nn

from .convert import convert
from .introspection import moe_layers
from .layers import MoEConfig
from .spec import ModelSpec


def upcycle(
        dense: Union[nn.Module, Mapping[str, torch.Tensor]],
        name: str,
        noise: float = 0.01,
        seed: int = 0,
        **kwargs: Any,
) -> nn.Module:
    """The timm-moe model `name`, made from a dense model or state_dict of its dense baseline.

    The dense baseline of `name` (same arch, stem, width, timm kwargs) is built, the dense weights are loaded
    into it, and its placement is converted with `copy_weights=True`: every expert is an exact copy of the
    module it replaces, plus Gaussian noise of `noise` times each weight tensor's std (conv weights only), so
    that experts can diverge. Gates keep their fresh initialisation. At noise 0 and k=1 the MoE computes the
    dense function exactly; at k>1 too, since the selected weights sum to 1.

    Args:
        dense: A dense timm-moe ResNet (e.g. `resnet18_dense`) or its state_dict.
        name: The MoE model to build, e.g. 'resnet18_blockmoe_e8_k1' or 'resnet18_convmoe_e4_k1'.
        noise: Relative noise added to the copied expert weights (0 for exact copies).
        seed: Seed of that noise.
        **kwargs: Model kwargs of `name` (placement, gate, ...) and timm kwargs (num_classes, width, stem, ...
            must match the dense model).
    """
    state = dense.state_dict() if isinstance(dense, nn.Module) else dict(dense)
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    spec, timm_kwargs = ModelSpec.from_timm_kwargs(name, kwargs)
    if not spec.is_moe:
        raise ValueError(f'upcycle: {name!r} has no MoE layer')
    if spec.expert_width not in (None, 'full'):
        raise ValueError("upcycle: expert_width must be 'full' so experts have the dense block's shapes")
    model = spec.dense().create(**timm_kwargs)
    _load_dense(model, state)
    convert(model, spec.targets(), spec.experts, spec.k, kind=spec.kind, copy_weights=True,
            **{key: getattr(spec, key) for key in MoEConfig.model_kwargs(spec.kind)})
    # the model is now `name`'s architecture: it takes that name's settings and pretrained_cfg (shapes only)
    built = spec.create(**timm_kwargs, device='meta')
    model.moe_config = dict(built.moe_config)
    model.pretrained_cfg = model.default_cfg = dict(built.pretrained_cfg)

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in moe_layers(model):
            for p in layer.experts.parameters():
                if noise > 0 and p.is_floating_point() and p.ndim > 1:
                    p += noise * p.std() * torch.randn(p.shape, generator=gen).to(p)
    return model


def _load_dense(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load `state` into the dense baseline, refusing in one line a state_dict of another shape or model."""
    own = model.state_dict()
    for key, value in own.items():
        if key in state and state[key].shape != value.shape:
            raise ValueError(f'upcycle: {key} has shape {tuple(state[key].shape)} in the dense model, '
                             f'{tuple(value.shape)} expected')
    missing = [k for k in own if k not in state]
    if missing:
        raise ValueError(f'upcycle: the dense state_dict lacks {len(missing)} keys, e.g. {missing[:3]}')
    extra = [k for k in state if k not in own]
    if extra:
        raise ValueError(f'upcycle: the state_dict has {len(extra)} keys a dense model lacks, e.g. {extra[:3]}')
    model.load_state_dict(state)

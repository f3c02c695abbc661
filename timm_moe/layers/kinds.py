"""The MoE kinds: which modules a kind's experts are, written once.

'block' (BlockMoE: the experts are residual blocks) and 'conv' (ConvMoE: the experts are convolutions) are
registered here; `register_kind` adds another (docs/EXTENDING.md). `timm_moe.convert(..., kind=)` selects the
modules of a kind under each target path, the registered model families name their MoE models after their kinds
(`{arch}_{kind}moe_e{E}_k{K}`), and `MoEConfig.model_kwargs(kind)` lists the model kwargs of a kind's models.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple, Type

from torch import nn
from timm.models.resnet import BasicBlock, Bottleneck

__all__ = ['KINDS', 'expert_kind', 'register_kind']

# kind -> the module classes its experts are (isinstance); 'block' first: a module of no kind is labelled a block
KINDS: Dict[str, Tuple[Type[nn.Module], ...]] = {
    'block': (BasicBlock, Bottleneck),
    'conv': (nn.Conv2d,),
}


def register_kind(name: str, types: Sequence[Type[nn.Module]]) -> None:
    """Add the MoE kind `name`, whose experts are modules of `types` (classes, matched with isinstance).

    A kind's name becomes part of model names (`resnet18_{name}moe_e4_k1`), so it is lower-case letters and
    digits; a registered name is refused, so that no kind silently changes what another selects.
    """
    if not isinstance(name, str) or not name.isalnum() or not name.islower() or not name[0].isalpha():
        raise ValueError(f'kind name {name!r}: expected lower-case letters and digits, starting with a letter')
    if name in KINDS:
        raise ValueError(f'kind {name!r} is registered already (kinds: {list(KINDS)})')
    types = tuple(types) if isinstance(types, (list, tuple)) else (types,)
    if not types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types):
        raise ValueError(f'kind {name!r}: types={types!r}: expected one or more nn.Module subclasses')
    KINDS[name] = types


def expert_kind(expert: nn.Module) -> str:
    """The kind of an expert module: the first registered kind it is an instance of; 'block' for any other."""
    return next((kind for kind, types in KINDS.items() if isinstance(expert, types)), 'block')

"""timm-moe: sparse Mixture-of-Experts ResNets (BlockMoE) for timm.

Importing this package registers `resnet{18,50}_blockmoe_e{E}_k{K}` and the dense baselines
`resnet{18,50}_dense` with timm.
"""
import importlib
import warnings
from typing import Any

from .introspection import (aux_loss, force_expert, last_routing, moe_layers, num_experts, paused_routing_stats,
                            reset_routing_stats, routing_stats)
from .idle import drop_idle_expert_grads
from .layers import BlockMoE
from .models import ResNetBlockMoE, dense_name
from .spec import MODEL_DEFAULTS, ModelSpec
from .upcycle import upcycle

__version__ = '0.1.0'

__all__ = ['MODEL_DEFAULTS', 'BlockMoE', 'ModelSpec', 'ResNetBlockMoE', 'aux_loss', 'dense_name',
           'drop_idle_expert_grads', 'force_expert', 'last_routing', 'moe_layers', 'num_experts',
           'paused_routing_stats', 'reset_routing_stats', 'routing_stats', 'upcycle']

# Renamed after 0.1.0, kept for one release: old name -> (new name, what it is now). `timm_moe.inspect` shadowed the
# standard library's `inspect`; `timm_moe.routing` was a function while `timm_moe.layers.routing` is a module.
_DEPRECATED = {
    'routing': ('last_routing', 'the function timm_moe.last_routing'),
    'inspect': ('introspection', 'the module timm_moe.introspection'),
}


def __getattr__(name: str) -> Any:
    if name not in _DEPRECATED:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    new, what = _DEPRECATED[name]
    warnings.warn(f'timm_moe.{name} is deprecated and will be removed in the next release; use {what}',
                  DeprecationWarning, stacklevel=2)
    if new == 'introspection':
        return importlib.import_module('.introspection', __name__)
    return globals()[new]

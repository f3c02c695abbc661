"""timm-moe: sparse Mixture-of-Experts ResNets (BlockMoE) for timm.

Importing this package registers `resnet{18,50}_blockmoe_e{E}_k{K}` and the dense baselines
`resnet{18,50}_dense` with timm.
"""
from .inspect import (aux_loss, force_expert, moe_layers, num_experts, paused_routing_stats, reset_routing_stats,
                      routing, routing_stats)
from .idle import drop_idle_expert_grads
from .layers import BlockMoE
from .models import ResNetBlockMoE, dense_name
from .spec import MODEL_DEFAULTS, ModelSpec
from .upcycle import upcycle

__version__ = '0.1.0'

__all__ = ['MODEL_DEFAULTS', 'BlockMoE', 'ModelSpec', 'ResNetBlockMoE', 'aux_loss', 'dense_name',
           'drop_idle_expert_grads', 'force_expert', 'moe_layers', 'num_experts', 'paused_routing_stats',
           'reset_routing_stats', 'routing', 'routing_stats', 'upcycle']

"""timm-moe: sparse Mixture-of-Experts ResNets (BlockMoE, ConvMoE) for timm.

Importing this package registers `resnet{18,50}_blockmoe_e{E}_k{K}`, `resnet{18,50}_convmoe_e{E}_k{K}`,
`wide_resnet50_2_blockmoe_e{E}_k{K}` and the dense baselines `resnet18_dense`, `resnet50_dense`,
`wide_resnet50_2_dense` with timm. `convert` turns modules of any built model into MoE layers; `create_model`
builds any timm model, converted as a `Conversion` record says.
"""
from .conversion import Conversion, create_model
from .convert import convert
from .idle import drop_idle_expert_grads
from .introspection import (aux_loss, force_expert, last_routing, moe_layers, num_experts, paused_routing_stats,
                            reset_routing_stats, routing_stats)
from .layers import MoE
from .models import CIFAR100_MEAN, CIFAR100_STD, MODEL_DEFAULTS, model_names
from .spec import ModelSpec
from .upcycle import upcycle

__version__ = '0.1.0'

__all__ = ['CIFAR100_MEAN', 'CIFAR100_STD', 'Conversion', 'MODEL_DEFAULTS', 'MoE', 'ModelSpec', 'aux_loss',
           'convert', 'create_model', 'drop_idle_expert_grads', 'force_expert', 'last_routing', 'model_names', 'moe_layers', 'num_experts',
           'paused_routing_stats', 'reset_routing_stats', 'routing_stats', 'upcycle']

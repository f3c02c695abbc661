from .registry import (ARCHS, ENTRYPOINTS, FAMILIES, GRID, Entry, model_names, register_family,
                       unregister_family)
from .resnet_moe import (CIFAR100_MEAN, CIFAR100_STD, KIND_KWARGS, MODEL_DEFAULTS, PLACEMENTS, RESNETS, STEMS,
                         base_model, default_placement, placement_targets, pool_size_of, register_resnet,
                         register_tags)
from ..layers import KINDS

__all__ = ['ARCHS', 'CIFAR100_MEAN', 'CIFAR100_STD', 'ENTRYPOINTS', 'FAMILIES', 'GRID', 'KIND_KWARGS', 'KINDS',
           'MODEL_DEFAULTS', 'PLACEMENTS', 'RESNETS', 'STEMS', 'Entry', 'base_model', 'default_placement',
           'model_names', 'placement_targets', 'pool_size_of', 'register_family', 'register_resnet', 'register_tags',
           'unregister_family']

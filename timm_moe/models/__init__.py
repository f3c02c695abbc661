from .resnet_moe import (ARCHS, CIFAR100_MEAN, CIFAR100_STD, ENTRYPOINTS, FAMILIES, GRID, KIND_KWARGS, KINDS,
                         MODEL_DEFAULTS, PLACEMENTS, STEMS, Entry, base_model, default_placement, model_names,
                         placement_targets, pool_size_of, register_tags)

__all__ = ['ARCHS', 'CIFAR100_MEAN', 'CIFAR100_STD', 'ENTRYPOINTS', 'FAMILIES', 'GRID', 'KIND_KWARGS', 'KINDS',
           'MODEL_DEFAULTS', 'PLACEMENTS', 'STEMS', 'Entry', 'base_model', 'default_placement', 'model_names',
           'placement_targets', 'pool_size_of', 'register_tags']

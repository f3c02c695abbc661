"""The data sets as plain data, without torch: names, classes, channels, input size and split sizes.

What a parser, a config check or a report needs to know about a data set, answered before torch is imported.
`bench.data` adds the normalisation and loads the images; this module is the one place the names are defined.
"""
from __future__ import annotations

from typing import Dict

from bench.core.errors import UserError

DATASET_SIZES: Dict[str, dict] = {
    'cifar100': dict(num_classes=100, in_chans=3, input_size=(3, 32, 32), train_images=50000, test_images=10000),
    'cifar10': dict(num_classes=10, in_chans=3, input_size=(3, 32, 32), train_images=50000, test_images=10000),
    'fashion-mnist': dict(num_classes=10, in_chans=1, input_size=(1, 28, 28), train_images=60000, test_images=10000),
    # the real Fashion-MNIST subset in bench/assets, for offline use
    'fashion-mnist-bundled': dict(num_classes=10, in_chans=1, input_size=(1, 28, 28), train_images=10000,
                                  test_images=2000),
}
DATASETS = tuple(DATASET_SIZES)


def check_dataset_name(name: str) -> str:
    """`name` if it is one of `DATASETS`, else a one-line UserError listing them."""
    if name not in DATASET_SIZES:
        raise UserError(f'unknown data set {name!r}; choose one of {", ".join(DATASETS)}')
    return name

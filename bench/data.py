"""Data sets as [0, 1] image tensors: CIFAR-100/10 and Fashion-MNIST through torchvision or idx files,
and the real Fashion-MNIST subset bundled in `bench/assets` for offline use.

Normalisation lives inside the model (`bench.models`), so every loader here stops at [0, 1].
Augmentation randomness is a pure function of (seed, epoch, sample index): a resumed or distributed
run draws exactly the same crops and flips as an uninterrupted single-process one, whatever the
number of loader workers.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import struct
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from timm_moe import CIFAR100_MEAN, CIFAR100_STD  # the models' default preprocessing: one definition

from bench.core.errors import UserError
from bench.core.rng import forked_rng, key_seed
from bench.dataset_table import DATASET_SIZES, DATASETS, check_dataset_name  # noqa: F401 - DATASETS re-exported

ASSETS = Path(__file__).resolve().parent / 'assets'
DEBIAN_FMNIST = Path('/usr/share/datasets/fashion-mnist')

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)

# the models' normalisation of each data set (images stay in [0, 1]; the model normalises inside)
_NORMALIZATION = {'cifar100': (CIFAR100_MEAN, CIFAR100_STD), 'cifar10': (CIFAR10_MEAN, CIFAR10_STD),
                  'fashion-mnist': (FMNIST_MEAN, FMNIST_STD), 'fashion-mnist-bundled': (FMNIST_MEAN, FMNIST_STD)}
_INFO: Dict[str, dict] = {name: dict(DATASET_SIZES[name], mean=_NORMALIZATION[name][0], std=_NORMALIZATION[name][1])
                          for name in DATASETS}
_IDX_NAMES = {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
              'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}


def _check_split(split: str) -> None:
    if split not in _IDX_NAMES:
        raise UserError(f'unknown split {split!r}; choose train or test')


def dataset_info(name: str) -> dict:
    """Classes, channels, input size and normalisation of a data set.

    Args:
        name: One of `DATASETS`.
    """
    check_dataset_name(name)
    return dict(_INFO[name], name=name)


def model_kwargs_for(name: str, model_kwargs: Mapping[str, Any], what: str = 'model_kwargs') -> Dict[str, Any]:
    """`model_kwargs` for a model trained on data set `name`: its classes and channels unless the kwargs name them.

    Named ones must fit the data: the same channels, and at least as many classes as its labels (more only leave
    logits unused). Anything else is a UserError naming the value, before a model is built.

    Args:
        name: One of `DATASETS`.
        model_kwargs: The kwargs the user gave (a config's model_kwargs, --model-kwargs).
        what: How to name the kwargs in errors.
    """
    info = dataset_info(name)
    kwargs = dict(num_classes=info['num_classes'], in_chans=info['in_chans'], **{
        k: v for k, v in model_kwargs.items() if k not in ('num_classes', 'in_chans')})
    for key, least in (('in_chans', info['in_chans']), ('num_classes', info['num_classes'])):
        value = model_kwargs.get(key, least)
        fits = isinstance(value, int) and not isinstance(value, bool) and (
            value >= least if key == 'num_classes' else value == least)
        if not fits:
            has, allowed = ((f'has {least} classes', f'{least} or more') if key == 'num_classes' else
                            (f'has {least}-channel images', str(least)))
            raise UserError(f'{what} {key}={value!r} does not fit {name}, which {has}: give {allowed}, or leave '
                            'it out (the data set sets it)')
        kwargs[key] = value
    return kwargs


class ImageTensors(Dataset):
    """uint8 images held in memory, served as float [0, 1] CHW tensors with optional augmentation.

    Args:
        images: uint8 tensor (N, C, H, W).
        labels: int64 tensor (N,).
        transform: Optional callable on one float CHW image; it may draw from torch's global RNG,
            which is forked and seeded per sample from (seed, epoch, index) so that augmentation is
            reproducible and the caller's stream is left alone.
        seed: Base seed of the augmentation.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor,
                 transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, seed: int = 0) -> None:
        self.images, self.labels, self.transform, self.seed, self.epoch = images, labels, transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        img = self.images[index].float().div_(255)
        if self.transform is not None:
            with forked_rng(seed=key_seed(self.seed, self.epoch, index)):
                img = self.transform(img)
        return img, int(self.labels[index])


def _augment(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    from torchvision.transforms import v2
    if name.startswith('cifar'):
        # the paper's CIFAR recipe; ColorJitter works on float tensors in [0, 1]
        return v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(),
                           v2.ColorJitter(0.3, 0.3, 0.3, 0.3)])
    # grey-scale clothes: a small shift and a mirror, no colour to jitter
    return v2.Compose([v2.RandomCrop(28, padding=2), v2.RandomHorizontalFlip()])


def _read_idx(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    if path.suffix == '.gz':
        raw = gzip.decompress(raw)
    if raw[:2] != b'\x00\x00' or raw[2] != 0x08:
        raise UserError(f'{path} is not an unsigned-byte idx file')
    ndim = raw[3]
    dims = struct.unpack(f'>{ndim}I', raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_idx(directory: Path, stem: str) -> Optional[Path]:
    for candidate in (directory / stem, directory / f'{stem}.gz', directory / 'FashionMNIST' / 'raw' / stem,
                      directory / 'FashionMNIST' / 'raw' / f'{stem}.gz'):
        if candidate.exists():
            return candidate
    return None


def _bundled(split: str) -> Tuple[torch.Tensor, torch.Tensor]:
    manifest = json.loads((ASSETS / 'fashion_mnist_subset.json').read_text())
    arrays = []
    for stem in _IDX_NAMES[split]:
        path = ASSETS / f'fashion-mnist-subset-{stem}.gz'
        expected = manifest['files'][path.name]['sha256']
        if hashlib.sha256(path.read_bytes()).hexdigest() != expected:
            raise UserError(f'{path} does not match its sha256 in fashion_mnist_subset.json; reinstall timm-moe '
                            'or rebuild it with scripts/make_fashion_mnist_subset.py')
        arrays.append(_read_idx(path))
    return torch.from_numpy(arrays[0].copy()).unsqueeze(1), torch.from_numpy(arrays[1].astype(np.int64))


def _fashion_mnist(split: str, data_dir: Optional[Path], download: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    dirs = [data_dir] if data_dir is not None else [DEBIAN_FMNIST]
    for d in dirs:
        paths = [_find_idx(d, stem) for stem in _IDX_NAMES[split]]
        if all(paths):
            images, labels = (_read_idx(p) for p in paths)
            return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
    if download:
        from torchvision.datasets import FashionMNIST
        root = data_dir or Path('data')
        ds = FashionMNIST(str(root), train=split == 'train', download=True)
        return ds.data.unsqueeze(1), ds.targets.long()
    where = data_dir or DEBIAN_FMNIST
    raise UserError(f'Fashion-MNIST not found in {where}: apt-get install dataset-fashion-mnist (idx files in '
                    f'{DEBIAN_FMNIST}), pass --data-dir with the idx files, add --download, or use the offline '
                    'subset --dataset fashion-mnist-bundled')


def _cifar(name: str, split: str, data_dir: Optional[Path], download: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import CIFAR10, CIFAR100
    cls = CIFAR100 if name == 'cifar100' else CIFAR10
    root = data_dir or Path('data')
    try:
        ds = cls(str(root), train=split == 'train', download=download)
    except RuntimeError as e:
        # torchvision says "Dataset not found or corrupted"; say what to do instead
        raise UserError(f'{name} not found in {root}: pass --data-dir with the extracted torchvision folder '
                        f'({cls.base_folder}/), or add --download on a machine with internet ({e})') from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(ds.targets, dtype=torch.int64)


def load_tensors(name: str, split: str = 'test', data_dir: Optional[str | Path] = None,
                 download: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """All images of a split as uint8 (N, C, H, W) and labels as int64 (N,).

    Args:
        name: One of `DATASETS`.
        split: 'train' or 'test'.
        data_dir: Where the data set lives (torchvision's layout, or idx files for Fashion-MNIST).
        download: Let torchvision download it if missing (needs internet).
    """
    check_dataset_name(name)
    _check_split(split)
    data_dir = Path(data_dir) if data_dir is not None else None
    if name == 'fashion-mnist-bundled':
        return _bundled(split)
    if name == 'fashion-mnist':
        return _fashion_mnist(split, data_dir, download)
    return _cifar(name, split, data_dir, download)


def build_dataset(name: str, split: str = 'train', data_dir: Optional[str | Path] = None, download: bool = False,
                  augment: bool = False, seed: int = 0, limit: Optional[int] = None) -> ImageTensors:
    """A map-style data set of (float CHW image in [0, 1], int label).

    Args:
        name: One of `DATASETS`.
        split: 'train' or 'test'.
        data_dir: See `load_tensors`.
        download: See `load_tensors`.
        augment: Apply the training augmentation of this data set.
        seed: Base seed of the augmentation.
        limit: Keep only the first `limit` images.
    """
    images, labels = load_tensors(name, split, data_dir, download)
    if limit is not None:
        if limit < 1 or limit > len(labels):
            raise UserError(f'limit={limit} images asked of {name} {split}, which has {len(labels)}; '
                            f'choose 1..{len(labels)}')
        images, labels = images[:limit], labels[:limit]
    return ImageTensors(images, labels, _augment(name) if augment else None, seed)


def eval_tensors(name: str, n_examples: int, data_dir: Optional[str | Path] = None,
                 download: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first `n_examples` test images as float [0, 1] (N, C, H, W) and their labels, as RobustBench takes them.

    Args:
        name: One of `DATASETS`.
        n_examples: How many, from the start of the test split.
        data_dir: See `load_tensors`.
        download: See `load_tensors`.
    """
    images, labels = load_tensors(name, 'test', data_dir, download)
    if n_examples < 1 or n_examples > len(labels):
        raise UserError(f'--n-examples {n_examples} is out of range: the {name} test set has {len(labels)} images; '
                        f'choose 1..{len(labels)}')
    return images[:n_examples].float().div_(255), labels[:n_examples].clone()

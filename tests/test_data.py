"""Data: the bundled Fashion-MNIST subset, its checksums, reproducible augmentation, and clear errors."""
import gzip
import shutil

import pytest
import torch

from bench import data


def test_bundled_subset_shapes_and_range():
    ds = data.build_dataset('fashion-mnist-bundled', 'train')
    assert len(ds) == 10000
    x, y = ds[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert isinstance(y, int)
    xt, yt = data.eval_tensors('fashion-mnist-bundled', 2000)
    assert xt.shape == (2000, 1, 28, 28) and set(yt.tolist()) == set(range(10))
    # real Fashion-MNIST: the first test image is an ankle boot (class 9), as in the original files
    assert int(yt[0]) == 9


def test_bundled_matches_debian_files_when_present():
    if not (data.DEBIAN_FMNIST / 't10k-labels-idx1-ubyte.gz').exists():
        pytest.skip('dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)')
    full_x, full_y = data.load_tensors('fashion-mnist', 'test')
    sub_x, sub_y = data.load_tensors('fashion-mnist-bundled', 'test')
    assert torch.equal(full_x[:len(sub_y)], sub_x) and torch.equal(full_y[:len(sub_y)], sub_y)


def test_augmentation_is_a_function_of_seed_epoch_index():
    ds = data.build_dataset('fashion-mnist-bundled', 'train', augment=True, seed=3, limit=8)
    a = ds[5][0]
    torch.rand(10)  # global RNG use elsewhere must not matter
    assert torch.equal(a, ds[5][0])
    ds.set_epoch(1)
    assert not torch.equal(a, ds[5][0])


def test_checksum_mismatch_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / 'assets'
    shutil.copytree(data.ASSETS, fake)
    path = fake / 'fashion-mnist-subset-t10k-labels-idx1-ubyte.gz'
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[-1] = (raw[-1] + 1) % 10
    path.write_bytes(gzip.compress(bytes(raw)))
    monkeypatch.setattr(data, 'ASSETS', fake)
    with pytest.raises(ValueError, match='does not match its sha256'):
        data.load_tensors('fashion-mnist-bundled', 'test')


def test_idx_directory_layout(tmp_path):
    for stem in ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'):
        shutil.copy(data.ASSETS / f'fashion-mnist-subset-{stem}.gz', tmp_path / f'{stem}.gz')
    x, y = data.load_tensors('fashion-mnist', 'test', data_dir=tmp_path)
    assert x.shape == (2000, 1, 28, 28) and len(y) == 2000


@pytest.mark.parametrize('call, message', [
    (lambda tmp: data.dataset_info('imagenet'), "unknown data set 'imagenet'"),
    (lambda tmp: data.load_tensors('fashion-mnist', 'test', data_dir=tmp), 'apt-get install dataset-fashion-mnist'),
    (lambda tmp: data.load_tensors('cifar100', 'test', data_dir=tmp), 'add --download'),
    (lambda tmp: data.eval_tensors('fashion-mnist-bundled', 2001), 'has 2000 images; choose 1..2000'),
    (lambda tmp: data.build_dataset('fashion-mnist-bundled', 'val'), "unknown split 'val'"),
])
def test_errors_say_what_to_do(tmp_path, call, message):
    with pytest.raises(ValueError, match=message.replace('.', r'\.').replace('(', r'\(')):
        call(tmp_path)

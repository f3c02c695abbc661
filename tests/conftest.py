import os

import pytest
import torch

# two cores: keep torch from oversubscribing when pytest-xdist or helpers run beside it
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope='module')
def one_thread():
    """Attacks run many tiny ops: one thread avoids OpenMP spin-waits on a shared 2-core machine (5x there)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='session')
def tiny_trained(request, tmp_path_factory):
    """A small BlockMoE ResNet trained for 150 steps on the bundled Fashion-MNIST (weights cached on disk)."""
    from benchmarks.bench_attacks import train_tiny
    cache = getattr(request.config, 'cache', None)
    return train_tiny(steps=150, cache=cache.mkdir('timm-moe-tiny') if cache else tmp_path_factory.mktemp('tiny'))

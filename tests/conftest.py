import os

import pytest
import torch

# CI runs the suite in pytest-xdist workers, one per core: each takes its share of the cores, so that the workers
# do not oversubscribe them (tiny models gain little from intra-op threads, and OpenMP spin-waits cost). Without
# xdist, at most 2. OMP_NUM_THREADS, when set, wins (torch has read it already), so that the suite can be run at
# 1 and at 2 threads.
if not os.environ.get('OMP_NUM_THREADS'):
    workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
    torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // workers)))

# pytest-xdist's workers inherit COLUMNS=80 from their terminal set-up, and the CLI honours COLUMNS on a pipe (as
# a CI log asks): without this, what a test sees of a table would depend on whether it ran under xdist. A test
# that checks a width sets COLUMNS itself (monkeypatch.setenv).
os.environ.pop('COLUMNS', None)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Each test starts from the same torch seed and leaves torch's thread count as it found it.

    Some tests run a script's `main()` in-process, and scripts set their own thread count (`--threads 1`): without
    the restore, every test after such a one, in whatever order they run, would run at that count.
    """
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:  # only when a test changed it: resizing OpenMP's pool under inductor's
        torch.set_num_threads(threads)      # compiled kernels aborts the process


@pytest.fixture(scope='module')
def one_thread():
    """Attacks run many tiny ops: one thread avoids OpenMP spin-waits on a shared 2-core machine (5x there)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# a trained MoE that ships with the package: resnet18_blockmoe_e4_k1 at width 8, 2 epochs of normal training on the
# bundled Fashion-MNIST (79% clean on its first 1,000 test images, 0.4% under PGD-20 at eps 0.1)
TINY_TRAINED_TAG = 'resnet18_blockmoe_e4_k1.fmnist_normal'


@pytest.fixture(scope='session')
def tiny_trained():
    """A small trained BlockMoE ResNet, normalising its own [0, 1] input, in eval mode.

    Fixed weights loaded offline from the shipped pretrained tag, so nothing trains in the suite and every run,
    order and thread count sees the same model (training it here took about a minute of a fresh clone's CI).
    Session-scoped: a test that changes it must restore it (mode, weights).
    """
    import timm
    from bench.models import normalized
    return normalized(timm.create_model(TINY_TRAINED_TAG, pretrained=True)).eval()

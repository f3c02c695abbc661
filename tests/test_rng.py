"""bench.core.rng: a seeded fork draws what a freshly seeded torch draws, leaves the caller's stream alone, and
costs no more than its seeding (the data loader forks once per image)."""
import torch

from bench.core.rng import forked_rng, key_seed


def test_a_seeded_fork_draws_as_torch_manual_seed_and_leaves_the_stream_alone():
    torch.manual_seed(7)
    expected_after = torch.rand(3)
    torch.manual_seed(123)
    expected_inside = torch.rand(5)
    torch.manual_seed(7)
    with forked_rng(seed=123):
        inside = torch.rand(5)
    assert torch.equal(inside, expected_inside)  # the same numbers as before: augmentation keeps its bits
    assert torch.equal(torch.rand(3), expected_after)


def test_a_seeded_fork_seeds_no_accelerator(monkeypatch):
    """`torch.manual_seed` also seeds CUDA (and the other accelerators); where CUDA is not initialised, that call
    is deferred with a captured stack trace, 0.13 ms per image in the data loader, which forks once per image.
    The fork seeds only the generators it forks: the CPU's, and a CUDA device's when it is given one."""
    seeded = []
    monkeypatch.setattr(torch.cuda, 'manual_seed_all', lambda seed: seeded.append(seed))
    for index in range(5):
        with forked_rng(seed=key_seed(1, 0, index)):
            torch.rand(1)
    assert seeded == []

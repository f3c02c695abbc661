"""The training batches: one global shuffle per epoch, sliced per rank, so N processes see one run's batches."""
from __future__ import annotations

from typing import Iterator, List

import torch
from torch.utils.data import Sampler

from bench.core.rng import key_seed


class ShardedBatches(Sampler[List[int]]):
    """This rank's share of each global batch of one epoch, from a permutation seeded by (seed, epoch).

    Global batch i is perm[i*B:(i+1)*B]; rank r takes every world_size-th image of it, starting at r.
    Micro-batches split a rank's batch the same way, so N ranks and N micro-batches agree image for image.

    Args:
        n: Images in the data set.
        batch_size: Global batch size B (the last incomplete batch is dropped).
        seed: Run seed.
        epoch: Epoch whose order to draw.
        rank: This process's rank.
        world_size: Number of processes.
        start: First global batch to yield (resuming mid-epoch).
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                 start: int = 0) -> None:
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, epoch
        self.rank, self.world_size, self.start = rank, world_size, start

    def __len__(self) -> int:
        return self.n // self.batch_size - self.start

    def __iter__(self) -> Iterator[List[int]]:
        g = torch.Generator().manual_seed(key_seed(self.seed, self.epoch, -1))
        perm = torch.randperm(self.n, generator=g).tolist()
        for i in range(self.start, self.n // self.batch_size):
            yield perm[i * self.batch_size:(i + 1) * self.batch_size][self.rank::self.world_size]

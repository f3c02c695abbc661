"""Worker processes that share the machine's cores instead of each grabbing all of them."""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Tuple

import torch


def _limit_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def process_pool(procs: int) -> Tuple[ProcessPoolExecutor, int]:
    """A pool of `procs` spawned workers with cores/procs torch threads each; returns (pool, threads).

    Args:
        procs: Number of worker processes.
    """
    threads = max(1, (os.cpu_count() or 2) // procs)
    # spawn: no forked copies of torch's thread pools; each worker sets its own thread count
    pool = ProcessPoolExecutor(max_workers=procs, mp_context=get_context('spawn'), initializer=_limit_threads,
                               initargs=(threads,))
    return pool, threads

"""Wall-clock timing that survives noisy machines: interleaved repeats after warm-up, medians."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, List, Mapping

import torch


def _timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    if device.type == 'cuda':
        def cuda_time(fn: Callable[[], Any]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end) / 1000.0
        return cuda_time

    def cpu_time(fn: Callable[[], Any]) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return cpu_time


def interleaved_times(
        fns: Mapping[str, Callable[[], Any]],
        repeats: int = 7,
        warmup: int = 2,
        device: torch.device | str = 'cpu',
) -> Dict[str, List[float]]:
    """Seconds per call of each function, measured in turns (A B C A B C ...) so that drift in the
    machine's speed hits every candidate alike. CUDA events time GPU work on a CUDA device.

    Args:
        fns: Name -> zero-argument callable.
        repeats: Timed calls of each.
        warmup: Untimed calls of each first (allocator, caches, cuDNN autotuning).
        device: Where the work runs.
    """
    timer = _timer(torch.device(device))
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        # rotate the order too, so no candidate always runs right after the same neighbour
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(timer(fns[name]))
    return times


def median_ratio(times: Mapping[str, List[float]], num: str, den: str) -> float:
    """Median of `num` over median of `den`."""
    return statistics.median(times[num]) / statistics.median(times[den])

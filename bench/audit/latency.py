"""Forward latency of a model over its dense baseline, and the peak memory of one forward.

Latency: `bench.core.timing.interleaved_times` runs the model and its baseline in turns (after warm-up) in
the same process, so drift in a shared machine's speed hits both alike; we report medians and the ratio
of medians. CUDA work is timed with CUDA events when the device is a GPU.

Peak memory, and why it is measured this way:
- CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, minus what was allocated
  before the forward (weights and input), i.e. the activations and workspace one forward needs.
- CPU: tracemalloc cannot see torch's allocator and `ru_maxrss` is a process-wide high-water mark that
  never goes down (a second model would hide under the first's peak). torch's profiler, with
  `profile_memory=True`, records every allocation and free of the CPU allocator; replaying them in time
  order gives the peak of bytes live during the forward above its start, which has the same meaning as
  the CUDA number. The profiler adds time, so memory is measured in a separate, untimed forward.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
from typing import Dict, Iterator, Sequence

import torch
from torch import nn

from bench.core.timing import interleaved_times, median_ratio

MEMORY_METHOD = {
    'cuda': 'torch.cuda.max_memory_allocated during one forward, minus the memory allocated before it',
    'cpu': 'torch.profiler(profile_memory=True): peak of bytes allocated and still live during one forward, '
           'replayed from its allocation events (weights and input excluded)',
}


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence C-level stderr (kineto prints start/stop lines and a 'no GPU' error on CPU machines)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # pytest capture without a real file descriptor
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def peak_forward_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Peak bytes allocated above the starting point during one inference forward of `model(x)`.

    Args:
        model: The model, in the mode to measure (eval).
        x: Its input, on the model's device.
    """
    if x.device.type == 'cuda':
        torch.cuda.synchronize(x.device)
        base = torch.cuda.memory_allocated(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        with torch.inference_mode():
            model(x)
        torch.cuda.synchronize(x.device)
        return int(torch.cuda.max_memory_allocated(x.device) - base)

    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        model(x)  # allocator caches, lazy init: not part of the forward's own need
        with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            model(x)
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == '[memory]' and e.device_type() == torch.autograd.DeviceType.CPU]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()  # negative for a free
        peak = max(peak, live)
    return int(peak)


def latency_vs_dense(
        model: nn.Module,
        dense: nn.Module,
        input_size: Sequence[int],
        batch_sizes: Sequence[int] = (1, 128),
        repeats: int = 7,
        warmup: int = 2,
        device: torch.device | str = 'cpu',
        memory: bool = True,
        seed: int = 0,
) -> Dict[str, Dict[str, float]]:
    """Median forward time and peak memory of `model` and `dense`, per batch size, and their ratios.

    Both models are put in eval mode and run under `torch.inference_mode`, interleaved.

    Args:
        model: The model audited, on `device`.
        dense: Its dense baseline, on `device`.
        input_size: (C, H, W) of one image.
        batch_sizes: Batch sizes to time.
        repeats: Timed forwards of each model per batch size.
        warmup: Untimed forwards of each first.
        device: Where both run.
        memory: Also measure the peak memory of one forward.
        seed: Seed of the random input (routing depends on it, FLOPs do not).

    Returns:
        Dict with 'latency_ms', 'latency_dense_ms', 'latency_ratio', and, if `memory`, 'peak_memory_mb',
        'peak_memory_dense_mb', 'memory_ratio'; each maps the batch size as a string to a number.
    """
    device = torch.device(device)
    model.eval()
    dense.eval()
    gen = torch.Generator().manual_seed(seed)
    out: Dict[str, Dict[str, float]] = {k: {} for k in ('latency_ms', 'latency_dense_ms', 'latency_ratio')}
    if memory:
        out.update({k: {} for k in ('peak_memory_mb', 'peak_memory_dense_mb', 'memory_ratio')})
    for b in batch_sizes:
        x = torch.rand((b, *input_size), generator=gen).to(device)
        with torch.inference_mode():
            times = interleaved_times(
                {'model': lambda: model(x), 'dense': lambda: dense(x)}, repeats=repeats, warmup=warmup, device=device)
        t_model, t_dense = statistics.median(times['model']), statistics.median(times['dense'])
        key = str(b)
        out['latency_ms'][key] = t_model * 1e3
        out['latency_dense_ms'][key] = t_dense * 1e3
        out['latency_ratio'][key] = median_ratio(times, 'model', 'dense')
        if memory:
            m_model, m_dense = peak_forward_bytes(model, x), peak_forward_bytes(dense, x)
            out['peak_memory_mb'][key] = m_model / 2 ** 20
            out['peak_memory_dense_mb'][key] = m_dense / 2 ** 20
            out['memory_ratio'][key] = m_model / m_dense if m_dense else float('nan')
    return out

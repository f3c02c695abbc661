"""What the benchmarks share: the interleaved timing of named callables and its record, the options that
size it, and writing the record (`--json`)."""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import torch

from bench.core.timing import interleaved_times


def add_timing_options(p: argparse.ArgumentParser, repeats: int, warmup: int) -> None:
    """--repeats, --warmup, --threads, --device and --json, as every benchmark takes them."""
    p.add_argument('--repeats', type=int, default=repeats)
    p.add_argument('--warmup', type=int, default=warmup)
    p.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    p.add_argument('--device', default='cpu')
    p.add_argument('--json', type=Path)


def timed(fns: Mapping[str, Callable[[], Any]], repeats: int, warmup: int,
          device: torch.device) -> Dict[str, Any]:
    """Seconds of each callable, run in turns after warm-up (`bench.core.timing.interleaved_times`), with the
    medians and what the numbers depend on (repeats, warm-up, device, torch, threads)."""
    times = interleaved_times(fns, repeats=repeats, warmup=warmup, device=device)
    return dict(times_s=times, median_s={k: statistics.median(v) for k, v in times.items()}, repeats=repeats,
                warmup=warmup, device=str(device), torch=torch.__version__, threads=torch.get_num_threads())


def write_record(res: Mapping[str, Any], path: Optional[Path]) -> int:
    """Write the benchmark's record as JSON to `path` (if given); the exit status of a benchmark that ran."""
    if path:
        path.write_text(json.dumps(res, indent=1))
    return 0

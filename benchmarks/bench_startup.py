"""Benchmark: how long `timm-moe` takes to answer, as whole processes, against `python -c pass`.

    python -m benchmarks.bench_startup [--repeats 5] [--skip-models]

Each command runs as `python -m bench.cli ...` from the repo root (what the `timm-moe` script runs), in turns
with the baseline, after one warm-up round; the median wall time of the repeats is reported, with the time
over the baseline (the interpreter's own start) and the ratio. `--help`, argument errors and `leaderboard`
should answer in about a second: they must not import torch, timm or the attack libraries (the names the
parsers list live in torch-free modules: bench/attacks/names.py, bench/dataset_table.py).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

ROOT = Path(__file__).resolve().parents[1]
BASELINE = 'python -c pass'
COMMANDS: Dict[str, List[str]] = {
    '--help': ['--help'],
    'eval --help': ['eval', '--help'],
    'grid argument error': ['grid', '--no-such-flag'],
    'eval argument error': ['eval', '--no-such-flag'],
    'eval --eps 2 (bad value)': ['eval', '--model', 'resnet18_dense', '--eps', '2'],
    'train --help': ['train', '--help'],
    'audit --help': ['audit', '--help'],
    'ship --help': ['ship', '--help'],
    'leaderboard --no-write': ['leaderboard', '--no-write'],
    'models': ['models'],
}


def _time(argv: Sequence[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0


def run_benchmark(names: Sequence[str], repeats: int = 5, warmup: int = 1) -> Dict[str, float]:
    """Median seconds per command (and for the baseline), the commands interleaved round by round."""
    argvs = {BASELINE: [sys.executable, '-c', 'pass'],
             **{n: [sys.executable, '-m', 'bench.cli', *COMMANDS[n]] for n in names}}
    times: Dict[str, List[float]] = {k: [] for k in argvs}
    for r in range(warmup + repeats):
        for name, argv in argvs.items():
            t = _time(argv)
            if r >= warmup:
                times[name].append(t)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--skip-models', action='store_true', help='leave out `timm-moe models` (it imports torch)')
    p.add_argument('--commands', nargs='+', choices=list(COMMANDS), default=None)
    args = p.parse_args(argv)
    names = args.commands or [n for n in COMMANDS if not (args.skip_models and n == 'models')]
    med = run_benchmark(names, repeats=args.repeats)
    base = med[BASELINE]
    print(f'{sys.executable}; median of {args.repeats} after a warm-up, whole processes')
    print(f'{"command":<28} {"seconds":>8} {"over baseline":>14} {"ratio":>7}')
    for name, t in med.items():
        print(f'{name:<28} {t:8.3f} {t - base:14.3f} {t / base:7.1f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

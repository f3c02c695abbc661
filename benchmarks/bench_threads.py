"""Benchmark: what a second torch thread buys a PGD-7 training step, on a quiet machine and beside a busy process.

Each measurement is a fresh process (`benchmarks.bench_throughput` on the dense model, fp32): OpenMP reads its
environment when torch loads, so a wait policy can only be tried in a new process. Settings run in turns, `--rounds`
times, first on the machine as it is ('quiet') and then with one busy process (a Python loop) pinned to core 0 by
`taskset` ('busy'); the result is each setting's median images/s over the 1-thread run's in the same scenario.

The settings: 1 thread; 2 threads (`--threads`) with libgomp's default wait (threads spin ~300,000 turns for work
before they sleep), passive (OMP_WAIT_POLICY=PASSIVE: they sleep at once) and with a short spin
(GOMP_SPINCOUNT=10000); the table marks the one `timm-moe` sets (`bench.core.threads`).

    python -m benchmarks.bench_threads                          # widths 8 and 64, 3 rounds
    python -m benchmarks.bench_threads --widths 8 --rounds 2 --scenarios busy
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

from bench.core.threads import OPENMP_ENV, WAIT_VARS

REPO = Path(__file__).resolve().parents[1]


def settings(threads: int) -> Dict[str, Dict[str, Any]]:
    """The settings by name; the two that `timm-moe` picks by the machine's load (bench/core/threads.py) say so."""
    out = {'1 thread': dict(threads=1, env={}),
           f'{threads} threads, spin (libgomp default)': dict(threads=threads, env={}),
           f'{threads} threads, spin 10k turns': dict(threads=threads, env=dict(GOMP_SPINCOUNT='10000')),
           f'{threads} threads, passive': dict(threads=threads, env=dict(OMP_WAIT_POLICY='PASSIVE'))}

    def tag(s: Dict[str, Any]) -> str:
        if s['threads'] == 1:
            return ''
        return ' = timm-moe default, busy' if s['env'] == OPENMP_ENV else ' = timm-moe default, quiet' if not s['env'] \
            else ''
    return {name + tag(s): s for name, s in out.items()}


def _img_per_s(width: int, threads: int, env: Dict[str, str], batch_size: int, repeats: int) -> float:
    with tempfile.TemporaryDirectory(prefix='timm-moe-bench-threads-') as tmp:
        record = Path(tmp) / 'r.json'
        # the setting's wait only: the libgomp default unless it sets one
        base = {k: v for k, v in os.environ.items() if k not in WAIT_VARS and k != 'OMP_NUM_THREADS'}
        subprocess.run([sys.executable, '-m', 'benchmarks.bench_throughput', '--threads', str(threads), '--widths',
                        str(width), '--variants', 'dense', '--paths', 'fp32', '--batch-size', str(batch_size),
                        '--repeats', str(repeats), '--json', str(record)],
                       env={**base, 'PYTHONPATH': str(REPO), **env}, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        return json.loads(record.read_text())['tables'][0]['rows'][0]['img_per_s']


def run_benchmark(widths=(8, 64), scenarios=('quiet', 'busy'), rounds: int = 3, threads: int = 2,
                  batch_size: int = 32, repeats: int = 2) -> Dict[str, Any]:
    results: Dict[str, Any] = {}
    for scenario in scenarios:
        busy = None
        if scenario == 'busy':  # one core taken: a pure-Python loop pinned to core 0
            busy = subprocess.Popen(['taskset', '-c', '0', sys.executable, '-c', 'while True: pass'])
        try:
            for width in widths:
                img: Dict[str, List[float]] = {name: [] for name in settings(threads)}
                for _ in range(rounds):  # settings in turns, so that drift in the load hits each alike
                    for name, s in settings(threads).items():
                        img[name].append(_img_per_s(width, s['threads'], s['env'], batch_size, repeats))
                        print(f'{scenario} width {width} {name}: {img[name][-1]:.1f} img/s', file=sys.stderr,
                              flush=True)
                med = {k: statistics.median(v) for k, v in img.items()}
                results[f'{scenario} width {width}'] = dict(
                    img_per_s=img, median_img_per_s=med,
                    over_1_thread={k: v / med['1 thread'] for k, v in med.items()})
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
    return dict(results=results, rounds=rounds, batch_size=batch_size, cores=os.cpu_count(),
                load_before=os.getloadavg())


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--widths', type=int, nargs='+', default=[8, 64])
    p.add_argument('--scenarios', nargs='+', default=['quiet', 'busy'], choices=['quiet', 'busy'])
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--threads', type=int, default=os.cpu_count() or 2, help='the many-thread setting')
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--repeats', type=int, default=2, help='timed steps per process')
    p.add_argument('--json', type=Path)
    args = p.parse_args(argv)
    res = run_benchmark(tuple(args.widths), tuple(args.scenarios), args.rounds, args.threads, args.batch_size,
                        args.repeats)
    print(f'dense ResNet-18, PGD-7, batch {args.batch_size}, {res["cores"]} cores, load before '
          f'{res["load_before"][0]:.1f}; median of {args.rounds} rounds, a fresh process each')
    for key, r in res['results'].items():
        for name, ratio in r['over_1_thread'].items():
            print(f'{key:<16} {name:<40} {r["median_img_per_s"][name]:8.1f} img/s {ratio:6.2f}x')
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())

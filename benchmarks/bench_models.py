"""Benchmark: forward latency of each MoE variant over its dense baseline, in one run.

    python -m benchmarks.bench_models [--arch resnet18] [--batch 1 128] [--repeats 7] [--models NAME ...]

For every model the MoE and its dense baseline (same stem and widths) are timed in turns, after a
warm-up, and the median of the repeats is reported with the ratio MoE/dense. This shows the cost of
routing and sparse dispatch; FLOPs are the audit's business (`timm-moe audit`).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from typing import Dict, List

import timm
import torch

import timm_moe

from bench.core.timing import interleaved_times


def bench_model(name: str, batches: List[int], repeats: int, input_size: int = 32,
                device: str = 'cpu', **kwargs) -> Dict[int, Dict[str, float]]:
    """Median seconds per forward of `name` and of its dense baseline, and their ratio, per batch size."""
    torch.manual_seed(0)
    models = {
        'moe': timm.create_model(name, **kwargs).eval().to(device),
        'dense': timm.create_model(timm_moe.ModelSpec.from_name(name).dense().name, **kwargs).eval().to(device),
    }
    out = {}
    for batch in batches:
        x = torch.rand(batch, 3, input_size, input_size, device=device)

        def runner(m: torch.nn.Module):
            def run() -> None:
                with torch.inference_mode():
                    m(x)
            return run

        times = interleaved_times({k: runner(m) for k, m in models.items()}, repeats=repeats, warmup=2, device=device)
        med = {k: statistics.median(v) for k, v in times.items()}
        out[batch] = dict(moe_ms=med['moe'] * 1e3, dense_ms=med['dense'] * 1e3, ratio=med['moe'] / med['dense'])
    return out


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--arch', default='resnet18', choices=['resnet18', 'resnet50'])
    p.add_argument('--models', nargs='*', default=None, help='model names (default: every variant of --arch)')
    p.add_argument('--batch', nargs='+', type=int, default=[1, 128])
    p.add_argument('--repeats', type=int, default=7)
    p.add_argument('--width', type=int, default=64, help='base width (64 = the paper)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = p.parse_args(argv)
    names = args.models or timm.list_models(f'{args.arch}_blockmoe*')
    print(f'torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, '
          f'median of {args.repeats} after warm-up, width {args.width}, 32x32 input')
    head = ' '.join(f"{'b' + str(b) + ' moe ms':>12} {'dense ms':>9} {'ratio':>6}" for b in args.batch)
    print(f"{'model':<28} {head}")
    for name in names:
        res = bench_model(name, args.batch, args.repeats, device=args.device, width=args.width)
        cols = ' '.join(f"{r['moe_ms']:12.2f} {r['dense_ms']:9.2f} {r['ratio']:6.3f}" for r in res.values())
        print(f'{name:<28} {cols}', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())

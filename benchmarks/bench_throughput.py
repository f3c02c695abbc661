"""Benchmark: how close a PGD-7 training step comes to this CPU's own limit.

For each model (dense, BlockMoE-last and ConvMoE-all, E=4, k=1), width and precision, one
`bench.training.trainer.Trainer` times `train_step` on one minibatch of the bundled Fashion-MNIST (PGD-7: the
attack, the forward, the backward and the update), interleaved after warm-up (`bench.core.timing`), medians.
Beside it, in the same process, thread count and precision, a large matrix product measures the machine's peak.

Unit: multiply-accumulates (MACs), fvcore's convention (`bench.audit.flops`), for the model and the matrix product
alike, so the ratio is unit-free. How a PGD-7 step is counted, per image, from fvcore's forward count F (active
experts, the routing of a real batch): each of the 7 attack steps is a forward and a backward to the input only
(`torch.autograd.grad` w.r.t. the image computes no weight gradients: ~1 F), the training step a forward and a
full backward (input and weight gradients: ~2 F), so 7 x 2F + 3F = 17F. The counts of the backward are the usual
approximation (the first convolution's input gradient, batch norm and the optimizer are left out).

    python -m benchmarks.bench_throughput                              # 1 thread and all cores, fp32 and bf16
    python -m benchmarks.bench_throughput --threads 1 --widths 8 --repeats 2 --variants dense
    python -m benchmarks.bench_throughput --paths fp32 bf16 channels_last batch128 compile   # the fast paths
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

import timm_moe  # noqa: F401 - registers the models
from timm_moe import ModelSpec

from bench.audit.flops import moe_flops
from bench.pipeline.cell import training_config
from bench.training.trainer import Trainer
from benchmarks.timed import timed, write_record

DATASET = 'fashion-mnist-bundled'
# forward passes' worth of MACs in one PGD-7 training step per image (module docstring)
PASSES_PER_STEP = {'attack_step': 2, 'train_step': 3}
# the fast paths: trainer settings over the plain fp32 step at the benchmark's batch size
PATHS: Dict[str, Dict[str, Any]] = {
    'fp32': {},
    'bf16': dict(amp=True),  # CPU autocast to bfloat16 (`--amp`); the attack stays fp32 (attack_precision)
    'bf16_attack': dict(amp=True, attack_precision='amp'),  # the attack under autocast too
    'channels_last': dict(channels_last=True),
    'batch128': dict(batch_size=128),  # images/s at four times the batch (a recipe change: the LR schedule)
    'compile': dict(torchcompile='inductor'),  # `--torchcompile` (compiles on the first call: warm-up)
}


def variants(width: int) -> Dict[str, ModelSpec]:
    moe = dict(arch='resnet18', experts=4, k=1, width=width)
    return {'dense': ModelSpec(arch='resnet18', width=width),
            'blockmoe-last': ModelSpec(kind='block', placement='last', **moe),
            'convmoe-all': ModelSpec(kind='conv', placement='all', **moe)}


def bf16_supported() -> bool:
    """Whether this CPU has native bfloat16 instructions (AVX-512 BF16 or AMX), which oneDNN uses."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def peak_macs_per_s(dtype: torch.dtype, n: int = 2048, repeats: int = 3) -> float:
    """MACs per second of an n x n matrix product in `dtype` at the current thread count (best of `repeats`)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)  # warm-up: packing buffers, threads
    best = min(_seconds(lambda: torch.mm(a, b)) for _ in range(repeats))
    return n ** 3 / best


def _seconds(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def step_macs_per_image(trainer: Trainer, x: torch.Tensor, attack_steps: int) -> float:
    """fvcore MACs of one PGD training step per image (module docstring), on the routing of the batch `x`."""
    net = trainer.net
    was = net.training
    report = moe_flops(net.eval(), x.to(trainer.device))
    net.train(was)
    return report.active * (attack_steps * PASSES_PER_STEP['attack_step'] + PASSES_PER_STEP['train_step'])


def run_benchmark(widths=(8, 64), names=('dense', 'blockmoe-last', 'convmoe-all'), paths=('fp32', 'bf16'),
                  batch_size: int = 32, attack_steps: int = 7, repeats: int = 3, warmup: int = 1
                  ) -> Dict[str, Any]:
    """Images/s, MACs/s and fraction of the matrix-product peak of a PGD training step, per model, width and path,
    at the current thread count."""
    rows: List[Dict[str, Any]] = []
    peaks = {'fp32': peak_macs_per_s(torch.float32)}
    if any(PATHS[p].get('amp') for p in paths):
        peaks['bf16'] = peak_macs_per_s(torch.bfloat16)
    with tempfile.TemporaryDirectory(prefix='timm-moe-bench-throughput-') as tmp:
        for width in widths:
            for name in names:
                spec = variants(width)[name]
                trainers: Dict[str, Trainer] = {}
                try:
                    for path in paths:
                        settings = {'batch_size': batch_size, **PATHS[path]}  # a path may set its own batch
                        cfg = training_config(spec, dataset=DATASET, training='pgd', attack_steps=attack_steps,
                                              train_limit=settings['batch_size'], epochs=1000, eval_limit=0,
                                              workers=0, progress=False, out=str(Path(tmp) / f'{name}-{width}-{path}'),
                                              **settings)
                        trainers[path] = Trainer(cfg)
                    some = trainers[paths[0]]
                    n = max(t.cfg.batch_size for t in trainers.values())
                    items = [some.train_set[i % len(some.train_set)] for i in range(n)]
                    x, y = torch.stack([it[0] for it in items]), torch.tensor([int(it[1]) for it in items])
                    macs = step_macs_per_image(some, x[:batch_size], attack_steps)
                    run = timed({p: (lambda t=t: t.train_step(x[:t.cfg.batch_size], y[:t.cfg.batch_size]))
                                 for p, t in trainers.items()}, repeats, warmup, some.device)
                finally:
                    for t in trainers.values():
                        t.close()
                for path, t in trainers.items():
                    img_s = t.cfg.batch_size / run['median_s'][path]
                    peak = peaks['bf16' if t.amp_dtype == torch.bfloat16 else 'fp32']
                    rows.append(dict(model=name, width=width, path=path, batch_size=t.cfg.batch_size,
                                     img_per_s=img_s, gmacs_per_s=img_s * macs / 1e9, macs_per_image=macs,
                                     fraction_of_peak=img_s * macs / peak,
                                     speed_over_fp32=(run['median_s']['fp32'] * t.cfg.batch_size / batch_size
                                                      / run['median_s'][path]) if 'fp32' in run['median_s']
                                     else None))
    return dict(rows=rows, peak_gmacs_per_s={k: v / 1e9 for k, v in peaks.items()}, threads=torch.get_num_threads(),
                torch=torch.__version__, cpu_capability=torch.backends.cpu.get_cpu_capability(),
                bf16_supported=bf16_supported(), attack_steps=attack_steps, repeats=repeats, warmup=warmup,
                macs_counted=f'{attack_steps} x 2F + 3F per image, F = fvcore forward MACs (active experts)')


def print_table(res: Dict[str, Any]) -> None:
    peaks = ', '.join(f'{k} {v:.1f}' for k, v in res['peak_gmacs_per_s'].items())
    print(f'{res["threads"]} thread(s), torch {res["torch"]}, kernels {res["cpu_capability"]}; matmul peak GMAC/s: '
          f'{peaks}; median of {res["repeats"]} interleaved repeats after {res["warmup"]} warm-up')
    print(f"{'model':<14} {'width':>5} {'path':<14} {'batch':>5} {'img/s':>8} {'GMAC/s':>7} {'of peak':>8} "
          f"{'vs fp32':>8}")
    for r in res['rows']:
        vs = '-' if r['speed_over_fp32'] is None else f'{r["speed_over_fp32"]:.2f}x'
        print(f'{r["model"]:<14} {r["width"]:>5} {r["path"]:<14} {r["batch_size"]:>5} {r["img_per_s"]:8.1f} '
              f'{r["gmacs_per_s"]:7.2f} {100 * r["fraction_of_peak"]:7.1f}% {vs:>8}')


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--widths', type=int, nargs='+', default=[8, 64])
    p.add_argument('--variants', nargs='+', default=['dense', 'blockmoe-last', 'convmoe-all'],
                   choices=['dense', 'blockmoe-last', 'convmoe-all'])
    p.add_argument('--paths', nargs='+', default=None, choices=list(PATHS),
                   help='trainer settings to time (default: fp32, and bf16 where the CPU has it)')
    p.add_argument('--threads', type=int, nargs='+', default=None,
                   help='torch thread counts, one table each (default: 1 and every core)')
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--attack-steps', type=int, default=7)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--json', type=Path)
    args = p.parse_args(argv)
    paths = args.paths or (['fp32', 'bf16'] if bf16_supported() else ['fp32'])
    if 'fp32' not in paths:
        p.error('--paths must include fp32: every speed-up is a ratio against it')
    threads = args.threads or sorted({1, os.cpu_count() or 1})
    tables = []
    for n in threads:
        torch.set_num_threads(n)
        res = run_benchmark(tuple(args.widths), tuple(args.variants), tuple(paths), args.batch_size,
                            args.attack_steps, args.repeats, args.warmup)
        print_table(res)
        tables.append(res)
    return write_record(dict(tables=tables), args.json)


if __name__ == '__main__':
    sys.exit(main())

"""Benchmark: torch.compile against eager, dense and BlockMoE (k=1, k=2), side by side in one run.

    python -m benchmarks.bench_compile [--arch resnet18] [--width 64] [--batch 1 128] [--repeats 7]

Six candidates per batch size: {dense, MoE k=1, MoE k=2} x {eager, compiled}, timed in turns
(`bench.core.timing.interleaved_times`) after a warm-up that also pays every compilation, on a few
different random batches in rotation, so that a routing-dependent recompilation happens in the
warm-up and not in the timed calls. Each row prints the median ms per forward (inference mode) and
its ratio to eager dense at the same batch size: the number that says what routing costs, and what
compilation wins back. BlockMoE splits the compiled graph at each MoE layer (docs/ECOSYSTEM.md), so
the MoE gains less from compilation than the dense model does.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import timm
import torch

import timm_moe  # noqa: F401 - registers the models

from bench.core.compile import torchcompile_settings
from bench.core.timing import interleaved_times

VARIANTS = ('dense', 'moe_k1', 'moe_k2')


def build_models(arch: str, experts: int, width: int) -> Dict[str, torch.nn.Module]:
    """The dense baseline and the k=1 / k=2 BlockMoE of `arch`, same seed, eval mode."""
    names = {'dense': f'{arch}_dense', 'moe_k1': f'{arch}_blockmoe_e{experts}_k1',
             'moe_k2': f'{arch}_blockmoe_e{experts}_k2'}
    models = {}
    for key, name in names.items():
        torch.manual_seed(0)
        models[key] = timm.create_model(name, width=width).eval()
    return models


def _runner(model: Callable, inputs: List[torch.Tensor]) -> Callable[[], None]:
    state = {'i': 0}

    def run() -> None:
        x = inputs[state['i'] % len(inputs)]
        state['i'] += 1
        with torch.inference_mode():
            model(x)
    return run


def bench(models: Dict[str, torch.nn.Module], batch: int, input_size: int, repeats: int, warmup: int,
          n_inputs: int = 3, mode: Optional[str] = None) -> Dict[str, Dict[str, float]]:
    """Median ms per forward of every (variant, eager | compiled) at one batch size, and compile seconds."""
    torch._dynamo.reset()  # each batch size compiles afresh: no shape guards or dynamic dims from the last one
    g = torch.Generator().manual_seed(batch)
    inputs = [torch.rand(batch, 3, input_size, input_size, generator=g) for _ in range(n_inputs)]
    fns, compile_s = {}, {}
    for key, model in models.items():
        fns[f'{key} eager'] = _runner(model, inputs)
        compiled = torch.compile(model, mode=mode)
        t0 = time.perf_counter()
        for x in inputs:  # compilation, and any recompilation for another routing, happen here
            with torch.inference_mode():
                compiled(x)
        compile_s[key] = time.perf_counter() - t0
        fns[f'{key} compiled'] = _runner(compiled, inputs)
    # one untimed pass in the timed order first: with graph breaks inside nested modules, dynamo compiles
    # some inner frames (a block's forward) only when they are reached from another model's resume path
    interleaved_times(fns, repeats=1, warmup=0)
    # a recompilation inside the timed calls would time the compiler: make it an error instead
    with torch._dynamo.config.patch(error_on_recompile=True):
        times = interleaved_times(fns, repeats=repeats, warmup=warmup)
    base = statistics.median(times['dense eager'])
    out = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        out[name] = dict(ms=med * 1e3, vs_dense_eager=med / base, images_per_s=batch / med,
                         compile_s=compile_s[name.split()[0]] if name.endswith('compiled') else 0.0)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--arch', default='resnet18', choices=['resnet18', 'resnet50'])
    p.add_argument('--experts', type=int, default=4, help='E of the MoE variants (k=1 and k=2)')
    p.add_argument('--width', type=int, default=64, help='base width (64 = the paper)')
    p.add_argument('--input-size', type=int, default=32)
    p.add_argument('--batch', nargs='+', type=int, default=[1, 128])
    p.add_argument('--repeats', type=int, default=7, help='timed calls per candidate (the median is shown)')
    p.add_argument('--warmup', type=int, default=2, help='untimed calls per candidate after compilation')
    p.add_argument('--mode', default=None, help="torch.compile mode (default; 'max-autotune', ...)")
    p.add_argument('--threads', type=int, default=None, help='torch threads (default: torch\'s choice)')
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = build_models(args.arch, args.experts, args.width)
    print(f'torch {torch.__version__}, timm {timm.__version__}, cpu, {torch.get_num_threads()} threads; '
          f'{args.arch} width {args.width}, E={args.experts}, {args.input_size}x{args.input_size}; '
          f'median of {args.repeats} after {args.warmup} warm-up calls; compile mode {args.mode or "default"}')
    print(f"{'batch':>5} {'model':<18} {'ms':>9} {'img/s':>9} {'x eager dense':>14} {'compile s':>10}")
    # the settings `--torchcompile` uses: BlockMoE's Python-int counters dynamic, so that counting images
    # does not recompile every forward until the limit and then run eagerly (bench/core/compile.py)
    with torchcompile_settings(args.experts, cpu=True):  # this benchmark runs on the CPU
        for batch in args.batch:
            res = bench(models, batch, args.input_size, args.repeats, args.warmup, mode=args.mode)
            for variant in VARIANTS:
                for kind in ('eager', 'compiled'):
                    r = res[f'{variant} {kind}']
                    compile_col = f"{r['compile_s']:10.1f}" if kind == 'compiled' else f"{'':>10}"
                    print(f"{batch:>5} {variant + ' ' + kind:<18} {r['ms']:9.2f} {r['images_per_s']:9.1f} "
                          f"{r['vs_dense_eager']:14.3f} {compile_col}", flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())

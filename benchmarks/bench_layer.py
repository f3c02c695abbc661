"""Benchmark: one MoE layer against its ideal cost and against the paper's public MoE layer.

    python -m benchmarks.bench_layer [--experts 8 --k 2 --batch 128] [--reference-src DIR]

* ideal: k dense blocks, each on the whole batch: what k active experts would cost if splitting the
  batch over E experts were free.
* experts: the E experts run on exactly the chunks that ours routes to them, with no gate and no
  dispatch. ours/experts is the overhead of gating and dispatch alone; experts/ideal is the price of
  splitting the batch (E experts' weights are read instead of k, and each conv runs on fewer images).
* reference: `MOELayer` + `TopKGate` from KASTEL-MobilityLab/robust-sparse-moes
  (src/models/nn/moe/layer.py), loaded from a local checkout given by --reference-src (the folder
  holding `src/`; needs `einops`). It is not part of this project; without it that column is skipped.

Shapes are those of CIFAR ResNet-18 layer4.1: 512 channels, 4x4. Eval is a no-grad forward; train
is forward + backward in train mode. Figures are medians of interleaved repeats after warm-up.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
from typing import Callable, Dict

import torch
from torch import nn
from timm.models.resnet import BasicBlock

from timm_moe.layers import MoE

from bench.core.timing import interleaved_times


def _reference_layer(src: str, experts: nn.ModuleList, in_chs: int, k: int) -> nn.Module:
    sys.path.insert(0, src)
    from src.models.nn.moe.gate.topk import TopKGate  # noqa: E402  (the paper's code, not ours)
    from src.models.nn.moe.layer import MOELayer
    from src.models.nn.moe.routing import GlobalAvgLinearRoutingNetwork
    # the paper's best setting: entropy balancing, which routes without capacity reassignment
    gate = TopKGate(GlobalAvgLinearRoutingNetwork(in_chs, len(experts)), k=k, balancing_loss_type='entropy',
                    use_straight_through_estimator=(k == 1))
    return MOELayer(gate, experts)


def timm_moe_routed_chunks(layer: MoE, x: torch.Tensor) -> list:
    """(expert, its images) pairs as routed by the layer's last forward."""
    indices = layer.last_routing.indices
    return [(e, x[(indices == e).any(dim=1)]) for e in range(layer.num_experts) if (indices == e).any()]


def _step(layer: nn.Module, x: torch.Tensor, train: bool) -> Callable[[], None]:
    def run() -> None:
        if train:
            layer(x).sum().backward()
        else:
            with torch.no_grad():
                layer(x)
    return run


def run_benchmark(experts: int, k: int, batch: int, channels: int, size: int, repeats: int,
                  reference_src: str | None) -> Dict[str, Dict[str, float]]:
    torch.manual_seed(0)
    block = BasicBlock(channels, channels)
    x = torch.randn(batch, channels, size, size)
    ours = MoE([copy.deepcopy(block) for _ in range(experts)], channels, k=k)
    ideal_fn = nn.ModuleList([copy.deepcopy(block) for _ in range(k)])
    with torch.no_grad():
        ours.eval()(x)
    routed = timm_moe_routed_chunks(ours, x)
    candidates: Dict[str, nn.Module] = {'ours': ours}
    if reference_src:
        candidates['reference'] = _reference_layer(reference_src, copy.deepcopy(ours.experts), channels, k)

    results = {}
    for mode in ('eval', 'train'):
        train = mode == 'train'
        fns = {}
        for name, layer in candidates.items():
            layer.train(train)
            fns[name] = _step(layer, x, train)
        ideal_fn.train(train)

        def ideal_run(train: bool = train) -> None:
            # k blocks on the full batch each: what k active experts cost with zero routing overhead
            with torch.set_grad_enabled(train):
                outs = [b(x) for b in ideal_fn]
                if train:
                    sum(o.sum() for o in outs).backward()
        fns['ideal'] = ideal_run

        def experts_run(train: bool = train) -> None:
            with torch.set_grad_enabled(train):
                outs = [ours.experts[e](chunk) for e, chunk in routed]
                if train:
                    sum(o.sum() for o in outs).backward()
        fns['experts'] = experts_run
        times = interleaved_times(fns, repeats=repeats, warmup=2)
        med = {name: statistics.median(t) for name, t in times.items()}
        results[mode] = med
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--experts', type=int, default=8)
    p.add_argument('--k', type=int, default=2)
    p.add_argument('--batch', type=int, default=128)
    p.add_argument('--channels', type=int, default=512)
    p.add_argument('--size', type=int, default=4)
    p.add_argument('--repeats', type=int, default=15)
    p.add_argument('--threads', type=int, default=None, help='torch threads (default: torch default)')
    p.add_argument('--reference-src', default=None, help='checkout of robust-sparse-moes (the folder with src/)')
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run_benchmark(args.experts, args.k, args.batch, args.channels, args.size, args.repeats, args.reference_src)
    print(f'MoE E={args.experts} k={args.k} batch={args.batch} C={args.channels} {args.size}x{args.size}, '
          f'torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}')
    print(f"{'mode':<6} {'ours ms':>8} {'ideal ms':>9} {'experts ms':>11} {'ref ms':>8} "
          f"{'ours/ideal':>11} {'ours/experts':>13} {'experts/ideal':>14} {'ref/ours':>9} {'ref/ideal':>10}")
    for mode, med in res.items():
        ref = med.get('reference')
        print(f'{mode:<6} {med["ours"] * 1e3:8.1f} {med["ideal"] * 1e3:9.1f} {med["experts"] * 1e3:11.1f} '
              f'{ref * 1e3 if ref else float("nan"):8.1f} {med["ours"] / med["ideal"]:11.3f} '
              f'{med["ours"] / med["experts"]:13.3f} {med["experts"] / med["ideal"]:14.3f} '
              f'{ref / med["ours"] if ref else float("nan"):9.3f} {ref / med["ideal"] if ref else float("nan"):10.3f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

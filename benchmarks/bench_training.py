"""Benchmark: the cost of Fast-AT, Free-AT and PGD-7 adversarial training per epoch, against normal training.

One `bench.training.trainer.Trainer` per method, on the same model and the same minibatch, each timed per call
of `train_step` (one minibatch: the attack, the forward, the backward and the optimizer update; Free-AT's
`free_replays` updates) in turns after warm-up (`bench.core.timing`); the result is the median of the repeats.
Cost per epoch is time per minibatch x minibatches per epoch, so against normal training in the same run:

- normal, pgd (PGD-7), fast: time per minibatch / normal's;
- free, per effective epoch: time per minibatch / free_replays / normal's. An epoch of Free-AT replays every
  minibatch m times, so it makes the optimizer updates of m epochs; the reference runs epochs / m of them for
  the same budget (docs/TRAINING.md). Per data pass, free costs m times that.

    python -m benchmarks.bench_training                     # width-8 ResNet-18 BlockMoE, batch 64, Fashion-MNIST
    python -m benchmarks.bench_training --width 64 --batch-size 128 --dataset cifar100 --data-dir data --device cuda
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import torch

import timm_moe  # noqa: F401 - registers the models
from bench.core.timing import median_ratio
from bench.training.config import load_config
from bench.training.trainer import Trainer
from benchmarks.timed import add_timing_options, timed, write_record

METHODS = ('normal', 'pgd', 'fast', 'free')


def run_benchmark(model: str = 'resnet18_blockmoe_e4_k1', width: int = 8, dataset: str = 'fashion-mnist-bundled',
                  data_dir: Optional[str] = None, batch_size: int = 64, free_replays: int = 4, attack_steps: int = 7,
                  repeats: int = 5, warmup: int = 1, device: str = 'cpu', methods=METHODS) -> Dict[str, object]:
    """Median seconds per minibatch of each method's `train_step`, and its cost per epoch over normal training's."""
    trainers: Dict[str, Trainer] = {}
    with tempfile.TemporaryDirectory(prefix='timm-moe-bench-training-') as tmp:
        try:
            for method in methods:
                cfg = load_config(None, model=model, model_kwargs=dict(width=width), dataset=dataset, data_dir=data_dir,
                                  training=method, batch_size=batch_size, train_limit=batch_size, epochs=1000,
                                  free_replays=free_replays, attack_steps=attack_steps, eval_limit=0, workers=0,
                                  progress=False, device=device, out=str(Path(tmp) / method))
                trainers[method] = Trainer(cfg)
            some = next(iter(trainers.values()))
            items = [some.train_set[i] for i in range(batch_size)]
            x, y = torch.stack([it[0] for it in items]), torch.tensor([int(it[1]) for it in items])
            run = timed({m: (lambda t=t: t.train_step(x, y)) for m, t in trainers.items()}, repeats, warmup,
                        some.device)
        finally:
            for t in trainers.values():
                t.close()
    times = run['times_s']
    per_epoch = {m: median_ratio(times, m, 'normal') / (free_replays if m == 'free' else 1) for m in times}
    return dict(run, model=model, width=width, dataset=dataset, batch_size=batch_size, free_replays=free_replays,
                attack_steps=attack_steps, median_s_per_minibatch=run['median_s'],
                cost_per_epoch_over_normal=per_epoch)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='resnet18_blockmoe_e4_k1')
    p.add_argument('--width', type=int, default=8, help='base width (64 = the paper)')
    p.add_argument('--dataset', default='fashion-mnist-bundled')
    p.add_argument('--data-dir')
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--free-replays', type=int, default=4, help='Free-AT replays m (the reference: 4)')
    p.add_argument('--attack-steps', type=int, default=7, help='PGD-AT steps (the paper: 7)')
    p.add_argument('--methods', nargs='+', default=list(METHODS), choices=METHODS)
    add_timing_options(p, repeats=5, warmup=1)
    args = p.parse_args(argv)
    if 'normal' not in args.methods:
        p.error('--methods must include normal: every cost is a ratio against it')
    torch.set_num_threads(args.threads)
    res = run_benchmark(args.model, args.width, args.dataset, args.data_dir, args.batch_size, args.free_replays,
                        args.attack_steps, args.repeats, args.warmup, args.device, tuple(args.methods))
    print(f'{args.model} width {args.width}, {args.dataset}, batch {args.batch_size}, {res["device"]}, '
          f'{res["threads"]} thread(s), torch {res["torch"]}; median of {args.repeats} interleaved repeats after '
          f'{args.warmup} warm-up')
    print(f"{'training':<18} {'ms/minibatch':>12} {'cost/epoch vs normal':>21}")
    names = dict(normal='normal', pgd=f'pgd-{args.attack_steps}', fast='fast',
                 free=f'free (m={args.free_replays})')
    for m in args.methods:
        note = ' per effective epoch' if m == 'free' else ''
        print(f'{names[m]:<18} {res["median_s_per_minibatch"][m] * 1e3:12.1f} '
              f'{res["cost_per_epoch_over_normal"][m]:21.2f}{note}')
    return write_record(res, args.json)


if __name__ == '__main__':
    sys.exit(main())

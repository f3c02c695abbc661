"""Benchmark: our PGD-20 against the reference APGD (pyautoattack's APGDAttack, 20 steps), time per batch.

Both attack the same trained model, on the same batch, timed in turns after warm-up (`bench.core.timing`), and the
result is the median ratio PGD / APGD. Equal step counts make this a cost-per-step comparison: APGD does a
little more book-keeping per step (momentum, step-size schedule, checkpoints), so a ratio near or below 1
says our PGD adds no overhead. It also reports both attacks' robust accuracy on the batch (APGD should be
at least as strong).

    python -m benchmarks.bench_attacks                      # trains a tiny MoE on the bundled Fashion-MNIST first
    python -m benchmarks.bench_attacks --checkpoint tiny.pth --model-kwargs width=8 --batch-size 128 --repeats 9

`train_tiny()` trains the default model. (The tests' small trained model is the same architecture, shipped as
the pretrained tag `resnet18_blockmoe_e4_k1.fmnist_normal`: nothing trains in the suite.)
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional

import torch
from torch import nn

import timm
import timm_moe  # noqa: F401 - registers the models
from bench.attacks import APGD, PGD, accuracy, predict
from bench.data import dataset_info, load_tensors
from bench.models import normalized
from bench.core.rng import forked_rng
from bench.core.timing import median_ratio
from benchmarks.timed import add_timing_options, timed, write_record

TINY_MODEL = 'resnet18_blockmoe_e4_k1'
TINY_KWARGS = dict(width=8, in_chans=1, num_classes=10)
TINY_DATASET = 'fashion-mnist-bundled'


def train_tiny(steps: int = 300, seed: int = 0, batch_size: int = 64, adversarial_steps: int = 0,
               eps: float = 8 / 255, cache: Optional[Path] = None) -> nn.Module:
    """A small BlockMoE ResNet (width 8, 4 experts, k=1) trained by `bench.training` on the bundled Fashion-MNIST.

    Deterministic for a given (steps, seed, batch_size, adversarial_steps, eps); the caller's RNG is untouched.

    Args:
        steps: SGD steps (the trainer's poly schedule over the epochs these steps span, lr 0.05).
        seed: Seed of initialisation, batch order and augmentation.
        batch_size: Images per step.
        adversarial_steps: If > 0, PGD adversarial training with this many steps (step eps / 4, random start).
        eps: Radius of the adversarial training.
        cache: A directory to keep the run in: its weights are reused if present.

    Returns:
        The trained model wrapped with its normalisation (takes [0, 1] images), in eval mode.
    """
    from bench.training.config import load_config
    from bench.training.trainer import run_training
    root = Path(cache) if cache is not None else Path(tempfile.mkdtemp(prefix='timm-moe-tiny-'))
    run_dir = root / f'tiny-{steps}-{seed}-{batch_size}-{adversarial_steps}-{eps:.6f}'
    weights = run_dir / 'model.pth'
    if not weights.exists():
        n_train = len(load_tensors(TINY_DATASET, 'train')[1])
        cfg = load_config(None, model=TINY_MODEL, model_kwargs=dict(width=TINY_KWARGS['width']),
                          dataset=TINY_DATASET, epochs=math.ceil(steps * batch_size / n_train), max_steps=steps,
                          batch_size=batch_size, lr=0.05, training='pgd' if adversarial_steps else 'normal',
                          attack_steps=max(adversarial_steps, 1), eps=eps, attack_step=eps / 4, seed=seed,
                          eval_limit=0, workers=0, progress=False, out=str(run_dir))
        with forked_rng():
            run_training(cfg, overwrite=True)
    model = timm.create_model(TINY_MODEL, **TINY_KWARGS)
    model.load_state_dict(torch.load(weights, map_location='cpu', weights_only=True))
    info = dataset_info(TINY_DATASET)
    return normalized(model, info['mean'], info['std']).eval()


def run_benchmark(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 8 / 255, repeats: int = 7,
                  warmup: int = 2) -> Dict[str, object]:
    """Median seconds per batch of PGD-20 and APGD-CE-20, their ratio, and their robust accuracy on the batch."""
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    pgd, apgd = PGD(eps, steps=20), APGD(eps, steps=20)
    run = timed({'pgd20': lambda: pgd(model, x, y), 'apgd20': lambda: apgd(model, x, y)}, repeats, warmup, device)
    acc = {k: accuracy(predict(model, a(model, x, y)) == y)
           for k, a in (('pgd20', pgd), ('apgd20', apgd))}
    return dict(run, batch_size=len(x), eps=eps, ratio_pgd_over_apgd=median_ratio(run['times_s'], 'pgd20', 'apgd20'),
                clean_acc=accuracy(predict(model, x) == y), robust_acc=acc)


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--checkpoint', type=Path, help=f'weights of {TINY_MODEL}; default: train one ({TINY_DATASET})')
    p.add_argument('--model-kwargs', default='width=8', help='k=v,k=v for timm.create_model')
    p.add_argument('--train-steps', type=int, default=300)
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--eps', type=float, default=8 / 255)
    add_timing_options(p, repeats=7, warmup=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = dataset_info(TINY_DATASET)
    if args.checkpoint:
        from bench.core.values import parse_mapping
        from bench.models import build_model
        kw = {**TINY_KWARGS, **(parse_mapping('--model-kwargs', args.model_kwargs) if args.model_kwargs else {})}
        model = build_model(TINY_MODEL, kw.pop('num_classes'), kw.pop('in_chans'), kw, args.checkpoint)
        net = normalized(model, info['mean'], info['std']).eval()
    else:
        t0 = time.perf_counter()
        net = train_tiny(args.train_steps)
        print(f'trained {TINY_MODEL} for {args.train_steps} steps in {time.perf_counter() - t0:.0f}s', file=sys.stderr)
    net = net.to(args.device)
    images, labels = load_tensors(TINY_DATASET, 'test')
    x, y = images[:args.batch_size].float().div_(255), labels[:args.batch_size]
    res = run_benchmark(net, x, y, args.eps, args.repeats, args.warmup)
    print(f'PGD-20 {res["median_s"]["pgd20"] * 1e3:.1f} ms/batch, APGD-20 (pyautoattack) '
          f'{res["median_s"]["apgd20"] * 1e3:.1f} ms/batch, median ratio PGD/APGD = '
          f'{res["ratio_pgd_over_apgd"]:.3f} (batch {res["batch_size"]}, {res["repeats"]} interleaved repeats '
          f'after {res["warmup"]} warm-up, {res["device"]}, {res["threads"]} thread(s)); robust accuracy '
          f'PGD-20 {res["robust_acc"]["pgd20"]:.1f}%, APGD-20 {res["robust_acc"]["apgd20"]:.1f}%, '
          f'clean {res["clean_acc"]:.1f}%')
    return write_record(res, args.json)


if __name__ == '__main__':
    sys.exit(main())

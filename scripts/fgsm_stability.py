"""Stability run: FGSM adversarial training of a full-width BlockMoE ResNet-18 must stay finite.

Saturated gates once made every gate gradient NaN: the entropy loss sharpens routing, the gate logits
grow, the float32 softmax underflows to exact zeros once a logit gap passes ~104, and xlogy(p, p) has a
NaN gradient there (a full-width resnet18_blockmoe_e4_k1 FGSM loop went NaN at step 51). This script
repeats that setting with a plain PyTorch loop and checks that weights and gradients stay finite.

    python scripts/fgsm_stability.py            # ~10 min on two CPU cores; exit 1 on failure

Setting: `resnet18_blockmoe_e4_k1` at width 64 (in_chans=1, 10 classes), the default entropy aux loss
through `timm_moe.aux_loss`, SGD lr 0.05 momentum 0.9, batch 64, 2 epochs on the first 3,000 images of
the bundled Fashion-MNIST subset. Training examples come from FGSM with a random start (Wong et al.,
"Fast is better than free", 2020): delta ~ U(-eps, eps), one signed-gradient step of 1.25 * eps, projected
back to the eps-ball and to [0, 1]; eps = 0.1. As in the paper's code, the attack is crafted with the
model in train mode (its probes are kept out of the routing statistics). Idle experts get no gradient
(`timm_moe.drop_idle_expert_grads`), as in the paper's code.

Reported per epoch: the largest gate-logit gap (max - min logit of one image) seen, the loss, whether any
weight or gradient was non-finite; at the end, clean accuracy on the first 1,000 test images.
Exit status 1 if a weight is non-finite or clean accuracy is <= 50 %.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Dict, List, Optional, Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn

import timm_moe
from bench.data import dataset_info, load_tensors

DATASET = 'fashion-mnist-bundled'


def _normalizer(name: str):
    info = dataset_info(name)
    mean = torch.tensor(info['mean']).view(1, -1, 1, 1)
    std = torch.tensor(info['std']).view(1, -1, 1, 1)
    return lambda x: (x - mean) / std


def _fgsm_random_start(model: nn.Module, norm, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    delta = torch.empty_like(x).uniform_(-eps, eps)
    delta = ((x + delta).clamp(0, 1) - x).requires_grad_()
    with timm_moe.paused_routing_stats(model):
        loss = F.cross_entropy(model(norm(x + delta)), y)
    grad, = torch.autograd.grad(loss, delta)
    delta = (delta.detach() + 1.25 * eps * grad.sign()).clamp(-eps, eps)
    return (x + delta).clamp(0, 1)


def _gate_logit_gap(model: nn.Module) -> float:
    gaps = [(m.last_routing.logits.amax(1) - m.last_routing.logits.amin(1)).max().item()
            for _, m in timm_moe.moe_layers(model) if m.last_routing is not None]
    return max(gaps, default=0.0)


def _all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if t is not None)


def _accuracy(model: nn.Module, norm, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += (model(norm(x[i:i + batch_size])).argmax(1) == y[i:i + batch_size]).sum().item()
    return 100.0 * correct / len(x)


def run(width: int = 64, n_train: int = 3000, n_test: int = 1000, epochs: int = 2, batch_size: int = 64,
        eps: float = 0.1, lr: float = 0.05, seed: int = 0, log=print) -> Dict[str, object]:
    """Train as described in the module docstring; returns the report (a JSON-able dict)."""
    torch.manual_seed(seed)
    x_train, y_train = load_tensors(DATASET, 'train')
    x_test, y_test = load_tensors(DATASET, 'test')
    x_train, y_train = x_train[:n_train].float() / 255, y_train[:n_train]
    x_test, y_test = x_test[:n_test].float() / 255, y_test[:n_test]
    info = dataset_info(DATASET)
    norm = _normalizer(DATASET)
    model = timm.create_model('resnet18_blockmoe_e4_k1', width=width, in_chans=info['in_chans'],
                              num_classes=info['num_classes'])
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    history: List[Dict[str, object]] = []
    start = time.time()
    step = 0
    weights_finite = True
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train))
        gap, losses, grads_finite, first_bad_step = 0.0, [], True, None
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            x, y = x_train[idx], y_train[idx]
            x_adv = _fgsm_random_start(model, norm, x, y, eps)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(norm(x_adv)), y) + timm_moe.aux_loss(model)
            gap = max(gap, _gate_logit_gap(model))
            loss.backward()
            timm_moe.drop_idle_expert_grads(model)
            step_finite = math.isfinite(loss.item()) and _all_finite(p.grad for p in model.parameters())
            if not step_finite and first_bad_step is None:
                first_bad_step = step
            grads_finite &= step_finite
            opt.step()
            losses.append(loss.item())
            step += 1
        weights_finite = _all_finite(model.parameters())
        row = dict(epoch=epoch + 1, steps=step, max_gate_logit_gap=gap, mean_loss=sum(losses) / len(losses),
                   grads_finite=grads_finite, first_non_finite_step=first_bad_step, weights_finite=weights_finite,
                   seconds=round(time.time() - start, 1))
        history.append(row)
        log(json.dumps(row))
    clean_acc = _accuracy(model, norm, x_test, y_test, batch_size=256) if weights_finite else float('nan')
    return dict(history=history, clean_acc=clean_acc, weights_finite=weights_finite,
                grads_finite=all(h['grads_finite'] for h in history), seconds=round(time.time() - start, 1),
                settings=dict(model='resnet18_blockmoe_e4_k1', width=width, n_train=n_train, n_test=n_test,
                              epochs=epochs, batch_size=batch_size, eps=eps, lr=lr, momentum=0.9, seed=seed,
                              attack='FGSM, random start U(-eps, eps), step 1.25*eps', aux_loss='entropy',
                              aux_weight=0.5, torch=torch.__version__, timm=timm.__version__))


def failures(report: Dict[str, object], min_acc: float = 50.0) -> List[str]:
    """Why the run failed (empty if it passed): non-finite weights, or clean accuracy <= min_acc."""
    reasons = []
    if not report['weights_finite']:
        reasons.append('non-finite weights')
    acc = report['clean_acc']
    if not (isinstance(acc, float) and acc > min_acc):
        reasons.append(f'clean accuracy {acc} <= {min_acc} %')
    return reasons


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--width', type=int, default=64)
    parser.add_argument('--train-images', type=int, default=3000)
    parser.add_argument('--test-images', type=int, default=1000)
    parser.add_argument('--epochs', type=int, default=2)
    parser.add_argument('--min-acc', type=float, default=50.0, help='fail at or below this clean accuracy (%%)')
    parser.add_argument('--threads', type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = run(width=args.width, n_train=args.train_images, n_test=args.test_images, epochs=args.epochs)
    reasons = failures(report, args.min_acc)
    print(json.dumps(dict(report, passed=not reasons, failures=reasons)))
    return 1 if reasons else 0


if __name__ == '__main__':
    sys.exit(main())

"""`timm-moe train` leaves an expert that no image reached in a step exactly where it was: weights and
SGD momentum bit for bit, with micro-batches, with GradScaler, and across DDP ranks.

The gate's output is overridden by a forward hook so that routing follows a fixed plan per (step, shard),
where shard = rank * accum_steps + micro-batch, as in the trainer. Attack forwards (inside
`paused_routing_stats`) all go to expert 3: they must not count as use.

Run as a script (under torch.distributed.run) this file is also the DDP worker of the test below.
"""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import timm_moe
from bench.training.config import load_config
from bench.training.trainer import Trainer
from free_port import free_port

REPO = Path(__file__).resolve().parent.parent
ATTACK_EXPERT = 3
# step 0: both shards use expert 2, so it has a momentum buffer afterwards; step 1: shard 0 uses expert 0,
# shard 1 uses expert 1, and experts 2 (with momentum) and 3 (attack forwards only) are idle
PLAN = {0: (2, 2), 1: (0, 1)}
TINY = dict(model='resnet18_blockmoe_e4_k1', model_kwargs=dict(width=4), dataset='fashion-mnist-bundled',
            batch_size=16, train_limit=64, eval_limit=0, workers=0, lr=0.05, progress=False, log_every=1,
            training='pgd', attack_steps=1, max_steps=2, deterministic=True)


def _route_by_plan(trainer: Trainer) -> None:
    """Make the gate of layer4.1 send every image of a counted forward to the plan's expert."""
    layer = dict(timm_moe.moe_layers(trainer.model))['layer4.1']
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    accum, counted = trainer.cfg.accum_steps, [0]

    def hook(module, inputs, out):
        if layer.record_stats and layer.training and torch.is_grad_enabled():
            step, micro = divmod(counted[0], accum)
            counted[0] += 1
            target = PLAN[step][rank * accum + micro]
        else:
            target = ATTACK_EXPERT
        logits = torch.full_like(out, -20.0)
        logits[:, target] = 0.0
        return out * 0 + logits  # still a function of the gate, so the graph is the usual one

    layer.gate.register_forward_hook(hook)


def _expert_state(trainer: Trainer) -> list:
    """Per expert of layer4.1: (weights, momentum buffers or None), cloned."""
    layer = dict(timm_moe.moe_layers(trainer.model))['layer4.1']
    state = trainer.optimizer.state
    return [([p.detach().clone() for p in e.parameters()],
             [state[p]['momentum_buffer'].clone() if 'momentum_buffer' in state.get(p, {}) else None
              for p in e.parameters()]) for e in layer.experts]


def train_two_steps(out: Path, accum_steps: int = 1, drop: bool = True, grad_scaler: bool = False) -> dict:
    """Two planned steps; the experts' state before and after each, and each step's metrics."""
    cfg = load_config(None, **{**TINY, 'out': str(out), 'accum_steps': accum_steps})
    trainer = Trainer(cfg)
    try:
        _route_by_plan(trainer)
        if grad_scaler:  # the CUDA float16 path's GradScaler, run on the CPU in float32
            trainer.scaler = torch.amp.GradScaler('cpu')
        if not drop:  # the control: BlockMoE's zero grads reach the optimizer
            timm_moe_drop, timm_moe.drop_idle_expert_grads = timm_moe.drop_idle_expert_grads, lambda m: {}
        snaps, metrics, step = [], [], trainer.train_step

        def recorded_step(x, y):
            snaps.append(_expert_state(trainer))
            metrics.append(step(x, y))
            return metrics[-1]

        trainer.train_step = recorded_step
        try:
            trainer.fit()
        finally:
            if not drop:
                timm_moe.drop_idle_expert_grads = timm_moe_drop
        snaps.append(_expert_state(trainer))
        return dict(snaps=snaps, metrics=metrics, rank=trainer.rank)
    finally:
        trainer.close()


def _same(a: list, b: list) -> bool:
    return all((u is None and v is None) or (u is not None and v is not None and torch.equal(u, v))
               for u, v in zip(a, b))


def _check_idle_still(run: dict) -> None:
    before, after = run['snaps'][1], run['snaps'][2]  # around step 1
    for e in (2, 3):
        assert _same(before[e][0], after[e][0]), f'idle expert {e} moved'
        assert _same(before[e][1], after[e][1]), f'idle expert {e} momentum changed'
    assert all(m is not None for m in before[2][1]), 'expert 2 should carry momentum from step 0'
    assert all(m is None for m in after[3][1]), 'expert 3 only saw attack forwards: never a gradient'
    for e in (0, 1):  # expert 1 is used by the second shard only: another micro-batch, or another rank
        assert not _same(before[e][0], after[e][0]), f'used expert {e} did not move'
    assert [m['idle_experts'] for m in run['metrics']] == [3, 2]


@pytest.mark.parametrize('accum_steps, grad_scaler', [(2, False), (2, True)], ids=['accum', 'accum-gradscaler'])
def test_idle_experts_stay_still(tmp_path, accum_steps, grad_scaler):
    _check_idle_still(train_two_steps(tmp_path / 'run', accum_steps, grad_scaler=grad_scaler))


def test_without_dropping_idle_experts_move(tmp_path):
    # the control: without the call, momentum and weight decay move both idle experts in step 1
    run = train_two_steps(tmp_path / 'run', accum_steps=2, drop=False)
    before, after = run['snaps'][1], run['snaps'][2]
    assert not _same(before[2][0], after[2][0]) and not _same(before[3][0], after[3][0])


def test_idle_experts_stay_still_under_ddp(tmp_path):
    # two gloo ranks, one shard each: expert 1 is used on rank 1 only, so rank 0 must keep its gradient
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
                           f'--master_port={free_port()}', __file__, '--out', str(tmp_path / 'ddp')],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [torch.load(tmp_path / f'rank{r}.pt', weights_only=False) for r in range(2)]
    for run in runs:
        _check_idle_still(run)
    for (w0, m0), (w1, m1) in zip(runs[0]['snaps'][2], runs[1]['snaps'][2]):
        assert _same(w0, w1) and _same(m0, m1), 'the ranks disagree after the step'


if __name__ == '__main__':  # the DDP worker
    parser = argparse.ArgumentParser()
    parser.add_argument('--out', type=Path, required=True)
    args = parser.parse_args()
    result = train_two_steps(args.out)
    torch.save(result, args.out.parent / f'rank{result["rank"]}.pt')

"""Profile: where one quickstart MoE cell's evaluation spends its time, in CPU seconds at one thread.

The default quickstart plan's evaluation (`bench.pipeline.quickstart.evaluation`: PGD-20 and APGD-CE-20, the
sanity checks, the per-expert analysis) of the shipped width-8 BlockMoE `resnet18_blockmoe_e4_k1.fmnist_normal`,
the quickstart's architecture, under cProfile timed by process CPU time: the proportions do not depend on the
load of a shared machine.

    python -m benchmarks.profile_evaluation                  # the plan's per-expert images (Plan.n_expert)
    python -m benchmarks.profile_evaluation --n-expert 300   # the per-expert analysis on all 300, as before
"""
from __future__ import annotations

import argparse
import dataclasses
import cProfile
import pstats
import sys
import time
from typing import List, Optional

import timm
import torch

import timm_moe  # noqa: F401 - registers the models and their pretrained tags
from bench.data import dataset_info, eval_tensors
from bench.evaluation.loop import evaluate_model
from bench.pipeline.quickstart import DATASET, Plan, evaluation

TAG = 'resnet18_blockmoe_e4_k1.fmnist_normal'


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--n-expert', type=int, default=Plan().n_expert, help='images of the per-expert analysis')
    p.add_argument('--n-eval', type=int, default=Plan().n_eval, help='images attacked')
    p.add_argument('--top', type=int, default=25, help='functions listed, by cumulative time')
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    plan = dataclasses.replace(Plan(), n_eval=args.n_eval, n_check=min(Plan().n_check, args.n_eval))
    ev = evaluation(plan)
    info = dataset_info(DATASET)
    model = timm.create_model(TAG, pretrained=True).eval()
    x, y = eval_tensors(DATASET, plan.n_eval)
    profile = cProfile.Profile(time.process_time)
    t0 = time.process_time()
    profile.enable()
    evaluate_model(model, x, y, attacks=ev.attacks, eps=ev.eps, batch_size=ev.batch_size, per_expert=True, seed=0,
                   mean=info['mean'], std=info['std'], n_check=ev.n_check, per_expert_examples=args.n_expert)
    profile.disable()
    print(f'{TAG}: evaluation of {plan.n_eval} images, per-expert analysis on {args.n_expert}: '
          f'{time.process_time() - t0:.1f} CPU s at 1 thread')
    pstats.Stats(profile).sort_stats('cumulative').print_stats(args.top)
    return 0


if __name__ == '__main__':
    sys.exit(main())

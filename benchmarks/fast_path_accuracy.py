"""Benchmark: what each fast path does to the numbers: clean and PGD-20 accuracy over training seeds.

For each path (the trainer settings of `benchmarks.bench_throughput.PATHS`: fp32, bf16 autocast, channels_last,
batch 128, a compiled step) and each seed, trains the quickstart's adversarial dense model through the real
training path (`bench.training.trainer.run_training`, the code behind `timm-moe train --amp / --channels-last /
--torchcompile`) with the default plan's sizes (`bench.pipeline.quickstart_plans.Plan`: width 8, PGD-7, one epoch
of the bundled 10,000 images at batch 64, lr 0.05), then attacks it with PGD-20 (eps 8/255, seed 0) on the first
test images. The model is evaluated in fp32 eager whatever path trained it: only training differs.

A seed fixes the initialisation and the data order, so a path's run and fp32's run with the same seed differ
only by the path: each path is compared with fp32 by the paired difference over seeds, with its t-interval.
A difference is within seed noise when that interval includes 0 and its size is at most fp32's own seed sd.

batch128 keeps the recipe's lr (0.05) and its per-epoch schedule: one epoch then takes half as many updates;
batch128_lr2x (not in the default paths) scales the lr with the batch (0.1).

Runs go `--procs` at a time, each in a process of its own with `--threads` torch threads. Each finished run
is written to OUT/<path>-seed<seed>.json and reused by a rerun with the same sizes (`--resume`).

    python -m benchmarks.fast_path_accuracy --out /tmp/fpa --json fast_path_accuracy.json
    python -m benchmarks.fast_path_accuracy --paths fp32 compile --seeds 0 --out /tmp/fpa   # one seed
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from bench.pipeline.quickstart_plans import Plan

DATASET = 'fashion-mnist-bundled'
METRICS = ('clean', 'pgd20')
DEFAULT_PATHS = ('fp32', 'bf16', 'channels_last', 'batch128', 'compile')
# batch 128 with the lr scaled with the batch (linear scaling: 0.05 x 128/64), so that one epoch's half as many
# updates take twice the step; as fast as batch128 (the lr costs nothing), so only here, not in the speed benchmark
LR_SCALED = {'batch128_lr2x': 128}


def path_settings(path: str, sizes: Mapping[str, Any]) -> Dict[str, Any]:
    """The trainer settings of `path` over the recipe's batch size and lr (a path may set its own)."""
    from benchmarks.bench_throughput import PATHS
    if path in LR_SCALED:
        batch = LR_SCALED[path]
        return dict(batch_size=batch, lr=sizes['lr'] * batch / sizes['batch_size'])
    return {'batch_size': sizes['batch_size'], 'lr': sizes['lr'], **PATHS[path]}


def sizes_of(plan: Plan = Plan(), **override: Any) -> Dict[str, Any]:
    """The recipe of the quickstart's adversarial runs (`plan`), with `override` (smaller runs, tests)."""
    sizes = dict(width=plan.width, train_limit=plan.train_limit, epochs=plan.adv_epochs,
                 batch_size=plan.adv_batch_size, lr=plan.lr, attack_steps=7, n_eval=1000, eval_batch=250)
    unknown = set(override) - set(sizes)
    if unknown:
        raise ValueError(f'unknown sizes {sorted(unknown)}')
    return {**sizes, **override}


def train_and_evaluate(path: str, seed: int, sizes: Mapping[str, Any], out: str, threads: int) -> Dict[str, Any]:
    """Train the dense model along `path` with `seed`, attack it; the run's record (counts, time, throughput)."""
    import torch

    from timm_moe import ModelSpec

    from bench.core.atomic import write_json_atomic
    from bench.core.provenance import device_string
    from bench.data import dataset_info, eval_tensors
    from bench.evaluation.loop import evaluate_model
    from bench.models import build_model
    from bench.pipeline.cell import training_config
    from bench.training.trainer import run_training

    torch.set_num_threads(threads)
    spec = ModelSpec(arch='resnet18', width=sizes['width'])
    settings = path_settings(path, sizes)
    cfg = training_config(spec, dataset=DATASET, training='pgd', epochs=sizes['epochs'],
                          attack_steps=sizes['attack_steps'], train_limit=sizes['train_limit'], eval_limit=0,
                          workers=0, progress=False, seed=seed, out=str(Path(out) / f'{path}-seed{seed}'),
                          **settings)
    t0 = time.perf_counter()
    train = run_training(cfg, overwrite=True)
    train_s = time.perf_counter() - t0
    info = dataset_info(DATASET)
    model = build_model(spec, info['num_classes'], info['in_chans'], {}, train.checkpoint)
    x, y = eval_tensors(DATASET, sizes['n_eval'])
    res = evaluate_model(model, x, y, attacks='pgd20', eps=8 / 255, batch_size=sizes['eval_batch'],
                         per_expert=False, seed=0, mean=info['mean'], std=info['std'], sanity_checks=False)
    rec = dict(path=path, seed=seed, n_eval=res.n_examples, counts={m: int(res.counts[m]) for m in METRICS},
               acc={m: 100.0 * res.counts[m] / res.n_examples for m in METRICS},
               train_loss=train.history[-1]['train_loss'], steps=train.steps, train_s=train_s,
               img_per_s=train.img_per_s, batch_size=cfg.batch_size, lr=cfg.lr,
               settings={k: v for k, v in cfg.to_dict().items() if k in ('amp', 'channels_last', 'torchcompile',
                                                                          'attack_precision', 'batch_size')},
               threads=torch.get_num_threads(), device=device_string(), sizes=dict(sizes))
    # written as soon as it is finished, so that a run cut short keeps it for --resume
    write_json_atomic(rec, _run_file(Path(out), path, seed))
    return rec


def paired_difference(path_values: Sequence[float], fp32_values: Sequence[float], fp32_sd: Optional[float],
                      confidence: float = 0.95) -> Dict[str, Any]:
    """The path's accuracy minus fp32's over the same seeds: mean, sd, t-interval over seeds, and whether it is
    within seed noise (the interval includes 0 and |mean| <= fp32's seed sd: '<=' so that a path that changes no
    run's count is within noise even where fp32's runs agree too). One seed: no interval, no verdict."""
    from bench.core.stats import seed_summary
    diffs = [a - b for a, b in zip(path_values, fp32_values, strict=True)]
    s = seed_summary(diffs, confidence)
    within = None if s['std'] is None or fp32_sd is None else bool(
        s['lo'] <= 0 <= s['hi'] and abs(s['mean']) <= fp32_sd)
    return dict(mean=s['mean'], sd=s['std'], lo=s['lo'], hi=s['hi'], n=s['n'], diffs=diffs, within_noise=within)


def summarise(runs: Sequence[Mapping[str, Any]], paths: Sequence[str], seeds: Sequence[int]) -> Dict[str, Any]:
    """Per path: each metric's seed summary and Wilson interval of each run; paired differences against fp32 and
    the verdict ('within seed noise' only if clean and PGD-20 both are)."""
    from bench.core.stats import seed_summary, wilson_interval
    by = {(r['path'], r['seed']): r for r in runs}
    out: Dict[str, Any] = {}
    fp32 = {m: [by['fp32', s]['acc'][m] for s in seeds] for m in METRICS}
    fp32_sd = {m: seed_summary(fp32[m])['std'] for m in METRICS}
    for path in paths:
        row: Dict[str, Any] = {}
        for m in METRICS:
            values = [by[path, s]['acc'][m] for s in seeds]
            wilson = [list(wilson_interval(by[path, s]['counts'][m], by[path, s]['n_eval'])) for s in seeds]
            row[m] = dict(seed_summary(values), values=values, wilson=wilson)
            if path != 'fp32':
                row[m]['vs_fp32'] = paired_difference(values, fp32[m], fp32_sd[m])
        if path != 'fp32':
            verdicts = [row[m]['vs_fp32']['within_noise'] for m in METRICS]
            row['verdict'] = ('not decided (one seed)' if None in verdicts else
                              'within seed noise' if all(verdicts) else 'beyond seed noise')
        row['train_s'] = [by[path, s]['train_s'] for s in seeds]
        row['img_per_s'] = [by[path, s]['img_per_s'] for s in seeds]
        out[path] = row
    return out


def _run_file(out: Path, path: str, seed: int) -> Path:
    return out / f'{path}-seed{seed}.json'


def run(paths: Sequence[str], seeds: Sequence[int], sizes: Mapping[str, Any], out: Path, procs: int = 2,
        threads: int = 1, resume: bool = False, progress: bool = True) -> Dict[str, Any]:
    """Train and attack every (path, seed) not already finished in `out` (with `resume`); the summary."""
    from bench.core.parallel import run_parallel
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    done: Dict[Any, Dict[str, Any]] = {}
    for path in paths:
        for seed in seeds:
            f = _run_file(out, path, seed)
            if resume and f.exists():
                rec = json.loads(f.read_text())
                if rec.get('sizes') == dict(sizes):
                    done[path, seed] = rec
    # seed by seed, so that a run cut short leaves whole seeds, each with every path to pair with fp32; the
    # compiled path (its C++ compilation makes it the slowest) on the first seed only, its other seeds last
    order = [(p, s) for s in seeds for p in paths if p != 'compile' or s == seeds[0]]
    order += [('compile', s) for s in seeds[1:] if 'compile' in paths]
    todo = [(f'{p} seed {s}', (p, s, dict(sizes), str(out), threads)) for p, s in order if (p, s) not in done]
    for rec in run_parallel(train_and_evaluate, todo, procs, 'fast paths: train and attack', progress=progress):
        done[rec['path'], rec['seed']] = rec
    runs = [done[p, s] for p in paths for s in seeds]
    return dict(sizes=dict(sizes), paths=list(paths), seeds=list(seeds), procs=procs, threads=threads,
                wall_s=time.perf_counter() - t0, loadavg_before=list(load_before), loadavg_after=list(os.getloadavg()),
                cpu=platform.processor() or platform.machine(), cores=os.cpu_count(), runs=runs,
                summary=summarise(runs, paths, seeds),
                noise_rule='within seed noise: the paired difference\'s 95% t-interval over seeds includes 0 and '
                           '|mean difference| <= fp32\'s seed sd, for clean and PGD-20 both')


def _pm(s: Mapping[str, Any]) -> str:
    return f'{s["mean"]:.1f}' + ('' if s['std'] is None else f' ± {s["std"]:.1f}')


def _diff(d: Mapping[str, Any]) -> str:
    return f'{d["mean"]:+.1f}' + ('' if d['lo'] is None else f' [{d["lo"]:+.1f}, {d["hi"]:+.1f}]')


def print_table(res: Mapping[str, Any]) -> None:
    s = res['sizes']
    print(f'dense width {s["width"]}, PGD-{s["attack_steps"]} {s["epochs"]} epoch(s) on {s["train_limit"]} images, '
          f'lr {s["lr"]}; clean and PGD-20 on the first {s["n_eval"]} test images; seeds {res["seeds"]}; '
          f'{res["procs"]} process(es) x {res["threads"]} thread(s); load {res["loadavg_before"][0]:.1f} -> '
          f'{res["loadavg_after"][0]:.1f}; {res["wall_s"]:.0f} s')
    print('| path | batch | train s (per seed) | clean % | PGD-20 % | clean vs fp32 | PGD-20 vs fp32 | verdict |')
    print('|---|---:|---|---:|---:|---:|---:|---|')
    for path, row in res['summary'].items():
        batch = next(r['batch_size'] for r in res['runs'] if r['path'] == path)
        vs = [_diff(row[m]['vs_fp32']) if 'vs_fp32' in row[m] else '-' for m in METRICS]
        train_s = ', '.join(f'{t:.0f}' for t in row['train_s'])
        print(f'| {path} | {batch} | {train_s} | {_pm(row["clean"])} | {_pm(row["pgd20"])} | {vs[0]} | {vs[1]} | '
              f'{row.get("verdict", "(reference)")} |')


def main(argv: Optional[List[str]] = None) -> int:
    from benchmarks.bench_throughput import PATHS
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--paths', nargs='+', default=list(DEFAULT_PATHS), choices=[*PATHS, *LR_SCALED])
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--train-limit', type=int, help='training images (default: the plan\'s 10,000)')
    p.add_argument('--n-eval', type=int, help='test images attacked (default 1000)')
    p.add_argument('--attack-steps', type=int, help='PGD steps of the training attack (default 7)')
    p.add_argument('--procs', type=int, default=2, help='runs at a time, each in its own process')
    p.add_argument('--threads', type=int, default=1, help='torch threads per run')
    p.add_argument('--out', type=Path, required=True, help='run directories and one JSON per finished run')
    p.add_argument('--resume', action='store_true', help='reuse the finished runs in --out with the same sizes')
    p.add_argument('--no-progress', dest='progress', action='store_false')
    p.add_argument('--json', type=Path)
    args = p.parse_args(argv)
    if 'fp32' not in args.paths:
        p.error('--paths must include fp32: every path is compared with it')
    for name in ('procs', 'threads', 'train_limit', 'n_eval', 'attack_steps'):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f'--{name.replace("_", "-")} {value} must be at least 1')
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f'--seeds {" ".join(map(str, args.seeds))} repeats a seed')
    override = {k: v for k, v in dict(train_limit=args.train_limit, n_eval=args.n_eval,
                                      attack_steps=args.attack_steps).items() if v is not None}
    res = run(list(dict.fromkeys(args.paths)), args.seeds, sizes_of(**override), args.out, args.procs,
              args.threads, args.resume, args.progress)
    print_table(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""`timm-moe quickstart`: the whole method on a laptop, offline, in a few minutes.

Trains a dense ResNet-18 and a BlockMoE ResNet-18 (E=4, k=1, at layer4.1: the paper's best layout, at
width 8 so that it fits a CPU budget), each normally and with PGD adversarial training, on the real
Fashion-MNIST subset bundled with the package. Then it attacks all four (PGD-20 and APGD-CE, plus every
expert's own subpath), audits FLOPs against the dense baseline, and writes registry entries, a
leaderboard, plots and `summary.json` into `--out`.

Small convolutions use two cores badly, so jobs run in parallel processes with one thread each
instead of one after another with two threads each: about 1.5x sooner on a 2-core machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench import checkpoint as ckpt
from bench.errors import UserError
from bench.parallel import process_pool

DATASET = 'fashion-mnist-bundled'
PGD, APGD = 'pgd20', 'apgd-ce20'  # the accuracy keys of the 'paper' attack preset: PGD-20 and APGD-CE-20


@dataclass(frozen=True)
class Plan:
    width: int = 8  # base channels (the paper's ResNet-18 has 64); same depth and stage layout
    experts: int = 4  # the reference trains 4 experts
    k: int = 1  # k=1 keeps inference FLOPs at the dense model's
    train_limit: int = 10000  # the whole bundled training subset
    normal_epochs: int = 2
    adv_epochs: int = 1  # PGD-7 costs 8 forward/backward passes per image
    batch_size: int = 128
    adv_batch_size: int = 64  # more, smaller steps: one adversarial epoch then learns as much as two at 128
    lr: float = 0.05
    n_eval: int = 300  # first test images attacked
    n_check: int = 100  # images used by the gradient-masking checks
    eval_batch: int = 250


PLANS = {
    'default': Plan(),
    # a minute-long pass through every stage, for tests and smoke checks; its numbers mean little
    'smoke': Plan(width=4, train_limit=512, normal_epochs=1, adv_epochs=1, batch_size=64, adv_batch_size=64,
                  n_eval=64, n_check=32, eval_batch=64),
}


def _jobs(plan: Plan, out: Path) -> List[Dict[str, Any]]:
    moe = f'resnet18_blockmoe_e{plan.experts}_k{plan.k}'
    jobs = []
    # the two adversarial runs first, side by side: they are the long ones and equally long
    for method in ('pgd', 'normal'):
        for model in ('resnet18_dense', moe):
            jobs.append(dict(
                model=model, model_kwargs=dict(width=plan.width), dataset=DATASET, method=method,
                epochs=plan.adv_epochs if method == 'pgd' else plan.normal_epochs,
                batch_size=plan.adv_batch_size if method == 'pgd' else plan.batch_size,
                lr=plan.lr, train_limit=plan.train_limit, eval_limit=0, workers=0, progress=False, log_every=10,
                out=str(out / 'runs' / f'{model}-{method}')))
    return jobs


def _train_job(values: Dict[str, Any], resume: bool) -> Dict[str, Any]:
    from bench.config import load_config
    from bench.train import run_training
    run_dir = Path(values['out'])
    if resume and (run_dir / 'result.json').exists():
        return json.loads((run_dir / 'result.json').read_text())
    return run_training(load_config(None, **values), overwrite=True)


def _eval_job(train: Dict[str, Any], plan: Plan) -> Dict[str, Any]:
    import timm_moe
    from bench.data import dataset_info, eval_tensors
    from bench.evaluate import build_model, evaluate_model
    info = dataset_info(DATASET)
    kwargs = {k: v for k, v in train['model_kwargs'].items() if k not in ('num_classes', 'in_chans')}
    model = build_model(train['model'], info['num_classes'], info['in_chans'], kwargs, train['checkpoint'])
    x, y = eval_tensors(DATASET, plan.n_eval)
    timm_moe.reset_routing_stats(model)
    # result['correct'] (per-sample 0/1 per attack) goes into the registry entry and the paired test of the gain
    return evaluate_model(model, x, y, attacks='paper', eps=8 / 255, batch_size=plan.eval_batch,
                          per_expert=True, mean=info['mean'], std=info['std'], n_check=plan.n_check)


def _audit(plan: Plan) -> Dict[str, Dict[str, Any]]:
    from bench.audit import audit_model
    from bench.data import eval_tensors
    x, _ = eval_tensors(DATASET, 64)
    audits = {}
    for name in ('resnet18_dense', f'resnet18_blockmoe_e{plan.experts}_k{plan.k}'):
        audits[name] = audit_model(name, input_size=tuple(x.shape[1:]), latency=False, images=x,
                                   width=plan.width, in_chans=1, num_classes=10)
    return audits


def _entry(train: Dict[str, Any], result: Dict[str, Any], audit: Dict[str, Any], plan: Plan) -> Dict[str, Any]:
    from bench.provenance import provenance
    from bench.results.registry import measured_entry
    cfg = json.loads(json.dumps(dict(train.get('config') or {}), default=str))
    name = train['model']
    experts = int(name.split('_e')[1].split('_')[0]) if '_blockmoe_' in name else 0
    return measured_entry(
        model_name=name, model_kwargs=train['model_kwargs'], dataset=DATASET,
        method='pgd' if train['run_dir'].endswith('-pgd') else 'normal', eval_result=result,
        provenance=provenance(seed=12345, checkpoint=train['checkpoint']), arch='resnet18',
        experts=experts, k=plan.k if experts else None, training_config=cfg or None,
        config_path=str(Path(train['run_dir']) / 'config.yaml'),
        epochs=plan.adv_epochs if train['run_dir'].endswith('-pgd') else plan.normal_epochs,
        flops=dict(active=audit['flops_active'], total=audit['flops_total'], dense=audit['flops_dense'],
                   ratio=audit['flops_ratio']),
        params=dict(total=audit['params_total'], active=audit['params_active']),
        attack_note='quickstart: PGD-20 and APGD-CE-20 on the first test images, not AutoAttack')


def _intervals(result: Dict[str, Any]) -> Dict[str, List[float]]:
    """95% Wilson interval of each printed accuracy (n_eval points is far fewer than 10,000)."""
    from bench.results.stats import wilson_interval
    n = result['n_examples']
    return {key: list(wilson_interval(result['counts'][key], n)) for key in ('clean', PGD, APGD)}


def _gain(adv: Dict[str, Any], normal: Dict[str, Any]) -> Dict[str, float]:
    """PGD-20 gain of adversarial over normal training, in points, with its paired 95% bootstrap interval.

    Both models are attacked on the same test points, so the paired interval (per point: which model got it
    right) is the right one, and far narrower than two separate intervals.
    """
    from bench.results.stats import paired_bootstrap
    diff, lo, hi = paired_bootstrap(adv['correct'][PGD], normal['correct'][PGD])
    return dict(points=diff, lo=lo, hi=hi)


def run_quickstart(out: Path, plan: Plan = Plan(), procs: int = 2, resume: bool = False,
                   overwrite: bool = False, console: Console | None = None) -> Dict[str, Any]:
    """Train, attack, audit and rank the four quickstart models; returns the summary written to summary.json.

    Args:
        out: Output directory.
        plan: Sizes of the run (see `PLANS`).
        procs: Parallel worker processes.
        resume: Reuse finished trainings in `out`.
        overwrite: Replace whatever is in `out`.
        console: Where to print progress.
    """
    console = console or Console()
    if procs < 1:
        raise UserError(f'--procs {procs} must be at least 1')
    ckpt.prepare_run_dir(out, resume, overwrite)
    t_start = time.perf_counter()
    jobs = _jobs(plan, out)
    pool, threads = process_pool(procs)
    with pool:
        console.print(f'[bold]quickstart[/]: training {len(jobs)} models on {DATASET} '
                      f'({procs} processes x {threads} threads)')
        t0 = time.perf_counter()
        trains = list(pool.map(_train_job, jobs, [resume] * len(jobs)))
        for job, train in zip(jobs, trains):
            train['config'] = job
        t_train = time.perf_counter() - t0
        console.print(f'trained in {t_train:.0f} s; attacking (PGD-20, APGD-CE, each expert) ...')
        t0 = time.perf_counter()
        # the MoE evaluations attack every expert too: start them first
        order = sorted(range(len(trains)), key=lambda i: '_blockmoe_' not in trains[i]['model'])
        futures = {i: pool.submit(_eval_job, trains[i], plan) for i in order}
        audits = _audit(plan)
        results = [futures[i].result() for i in range(len(trains))]
        t_eval = time.perf_counter() - t0

    from bench.results.leaderboard import write_leaderboard
    from bench.results.registry import write_entry
    from bench.results.report import write_report
    registry_dir = out / 'registry'
    rows, entries = [], []
    for job, train, result in zip(jobs, trains, results):
        audit = audits[job['model']]
        entry = _entry(train, result, audit, plan)
        write_entry(entry, registry_dir, overwrite=True)
        entries.append(entry)
        rows.append(dict(model=job['model'], training='adversarial' if job['method'] == 'pgd' else 'normal',
                         clean_acc=result['clean_acc'], pgd_acc=result['robust_acc'][PGD],
                         apgd_acc=result['robust_acc'][APGD], intervals=_intervals(result),
                         flops_ratio=audit['flops_ratio'],
                         train_img_per_s=train['img_per_s'], flags=result['flags'],
                         per_expert=[dict(expert=p['expert'], clean_acc=p['clean_acc'], robust_acc=p['robust_acc'])
                                     for p in result['per_expert'] or []],
                         entry_id=entry['entry_id']))
    write_leaderboard(registry_dir)
    plots = write_report(registry_dir, out / 'plots')

    def result_of(model_kind: str, training: str) -> Dict[str, Any]:
        return next(res for r, res in zip(rows, results) if (('_blockmoe_' in r['model']) == (model_kind == 'moe'))
                    and r['training'] == training)

    def speed(model_kind: str) -> float:
        return next(r['train_img_per_s'] for r in rows if (('_blockmoe_' in r['model']) == (model_kind == 'moe'))
                    and r['training'] == 'adversarial')

    gains = {kind: _gain(result_of(kind, 'adversarial'), result_of(kind, 'normal')) for kind in ('dense', 'moe')}
    summary = dict(
        rows=rows, dataset=DATASET, n_eval=plan.n_eval, eps=8 / 255, plan=dataclasses.asdict(plan),
        pgd_gain_points={k: g['points'] for k, g in gains.items()},
        pgd_gain_interval={k: [g['lo'], g['hi']] for k, g in gains.items()},
        method_works=all(g['points'] >= 20 for g in gains.values()),
        adv_train_img_per_s_moe_over_dense=speed('moe') / speed('dense'),
        seconds=dict(train=t_train, evaluate_and_audit=t_eval, total=time.perf_counter() - t_start),
        processes=procs, threads_per_process=threads, plots=[str(p) for p in plots],
        leaderboard=str(registry_dir / 'LEADERBOARD.md'))
    (out / 'summary.json').write_text(json.dumps(summary, indent=2) + '\n')
    _print_summary(console, summary)
    return summary


def fmt_interval(value: float, interval: List[float]) -> str:
    """'61.3 [55.7, 66.7]': an accuracy and its 95% interval."""
    return f'{value:.1f} [{interval[0]:.1f}, {interval[1]:.1f}]'


def _print_summary(console: Console, summary: Dict[str, Any]) -> None:
    table = Table(title=f'quickstart on {summary["dataset"]}: first {summary["n_eval"]} test images, eps 8/255',
                  caption=escape('accuracy % [95% Wilson interval over the test points]'))
    for col in ('model', 'training', 'clean %', 'PGD-20 %', 'APGD-CE-20 %', 'FLOPs / dense', 'train img/s', 'flags'):
        table.add_column(col, justify='left' if col in ('model', 'training', 'flags') else 'right')
    for r in summary['rows']:
        ci = r['intervals']
        table.add_row(r['model'], r['training'], escape(fmt_interval(r['clean_acc'], ci['clean'])),
                      escape(fmt_interval(r['pgd_acc'], ci[PGD])), escape(fmt_interval(r['apgd_acc'], ci[APGD])),
                      f'{r["flops_ratio"]:.4f}', f'{r["train_img_per_s"]:.0f}', ', '.join(r['flags']) or '-')
    console.print(table)
    gains, ci = summary['pgd_gain_points'], summary['pgd_gain_interval']
    verdict = '[green]works[/]' if summary['method_works'] else '[red]did not reach +20 points[/]'
    console.print(escape('adversarial training gain in PGD-20 accuracy, points [95% paired bootstrap interval]: '
                         f'dense {gains["dense"]:+.1f} [{ci["dense"][0]:+.1f}, {ci["dense"][1]:+.1f}], '
                         f'BlockMoE {gains["moe"]:+.1f} [{ci["moe"][0]:+.1f}, {ci["moe"][1]:+.1f}]: ') + verdict)
    console.print(f'adversarial training speed, BlockMoE / dense: '
                  f'{summary["adv_train_img_per_s_moe_over_dense"]:.2f}x; '
                  f'wall time {summary["seconds"]["total"]:.0f} s')
    console.print(f'leaderboard: {summary["leaderboard"]}; plots: {", ".join(Path(p).name for p in summary["plots"])}')


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser('quickstart', help='train, attack, audit and rank small dense and BlockMoE models '
                                                 'on the bundled data (CPU, offline, a few minutes)')
    p.add_argument('--out', type=Path, default=Path('runs/quickstart'), help='output directory')
    p.add_argument('--plan', default='default', help=f'run size: {", ".join(PLANS)}')
    p.add_argument('--procs', type=int, default=2, help='parallel worker processes')
    p.add_argument('--resume', action='store_true', help='reuse the finished trainings in --out')
    p.add_argument('--overwrite', action='store_true', help='replace whatever is in --out')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.plan not in PLANS:
        raise UserError(f'--plan {args.plan!r} is unknown; choose one of {", ".join(PLANS)}')
    console = Console(width=200) if not sys.stdout.isatty() else Console()
    summary = run_quickstart(args.out, PLANS[args.plan], args.procs, args.resume, args.overwrite, console)
    return 0 if summary['method_works'] or args.plan != 'default' else 1

"""The quickstart (`timm-moe quickstart`): the whole method on a laptop, offline, in a few minutes.

Trains a dense ResNet-18 and a BlockMoE ResNet-18 (E=4, k=1, at layer4.1: the paper's best layout, at
width 8 so that it fits a CPU budget), each normally and with PGD adversarial training, on the real
Fashion-MNIST subset bundled with the package. Then it attacks all four (PGD-20 and APGD-CE, plus every
expert's own subpath), audits FLOPs against the dense baseline, and writes registry entries, a
leaderboard, plots and `summary.json` into `--out`. Each model is one cell of the pipeline
(`bench.pipeline.cell.run_cell`), as in `timm-moe grid`.

Small convolutions use two cores badly, so jobs run in parallel processes with one thread each
instead of one after another with two threads each: about 1.5x sooner on a 2-core machine.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Dict, List

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from timm_moe import ModelSpec

from bench.core.atomic import write_json_atomic
from bench.core.errors import UserError
from bench.core.parallel import run_parallel, threads_per_process
from bench.core.provenance import device_string
from bench.evaluation.result import EvalResult
from bench.checkpoints import prepare_run_dir
from bench.pipeline.cell import CellResult, Evaluation, Output, run_cell, training_config
from bench.pipeline.quickstart_plans import PLANS, Plan  # noqa: F401 - PLANS: the plans by name, here too
from bench.results.leaderboard import write_leaderboard
from bench.results.report import write_report
from bench.core.stats import paired_bootstrap, wilson_interval

DATASET = 'fashion-mnist-bundled'
PGD, APGD = 'pgd20', 'apgd-ce20'  # the accuracy keys of the 'paper' attack preset: PGD-20 and APGD-CE-20
TRAININGS = {'pgd': 'adversarial', 'normal': 'normal'}  # training method -> how the summary names it


def specs(plan: Plan) -> Dict[str, ModelSpec]:
    """The two architectures: the dense baseline and the BlockMoE (E experts, top-k), both at the plan's width."""
    moe = ModelSpec(arch='resnet18', experts=plan.experts, k=plan.k, width=plan.width)
    return {'dense': moe.dense(), 'moe': moe}


def cells(plan: Plan, out: Path) -> List[Dict[str, Any]]:
    """(kind, spec, training config) of the four runs, adversarial first: they are the long ones, and the
    two run side by side."""
    out_cells = []
    for method in ('pgd', 'normal'):
        for kind, spec in specs(plan).items():
            adv = method == 'pgd'
            # the training attack's settings only where there is one: a normal run's config keeps the defaults
            attack = dict(attack_steps=plan.adv_attack_steps, attack_step=plan.adv_attack_step) if adv else {}
            cfg = training_config(spec, dataset=DATASET, training=method,
                                  epochs=plan.adv_epochs if adv else plan.normal_epochs,
                                  batch_size=plan.adv_batch_size if adv else plan.batch_size, lr=plan.lr,
                                  train_limit=plan.adv_train_limit or plan.train_limit if adv else plan.train_limit,
                                  eval_limit=0, workers=0, progress=False, log_every=10,
                                  out=str(out / 'runs' / f'{spec.name}-{method}'), **attack)
            out_cells.append(dict(kind=kind, spec=spec, training=cfg))
    return out_cells


def longest_first(todo: List[Dict[str, Any]]) -> List[int]:
    """The order in which to start the cells (indices into `todo`): the longest first, so that two processes end
    together. Adversarial training costs several times normal training, and a BlockMoE's evaluation (each
    expert attacked) about twice a dense one's: so the adversarial BlockMoE, the adversarial dense, then the
    normal BlockMoE, which follows the adversarial dense on the process that frees first, and the normal dense,
    the shortest, last. In the order of `todo` (dense first) the two MoE runs, the longest of each pair, met on
    one process and the other one idled for the last minute."""
    return sorted(range(len(todo)), key=lambda i: (todo[i]['training'].training == 'normal', todo[i]['kind'] != 'moe'))


def evaluation(plan: Plan) -> Evaluation:
    """PGD-20 and APGD-CE-20 (the 'paper' preset) on the first test images, every expert too (on the first
    `plan.n_expert` of them); seed 0."""
    return Evaluation(attacks='paper', n_examples=plan.n_eval, batch_size=plan.eval_batch, eps=8 / 255,
                      n_check=plan.n_check, per_expert=True, per_expert_examples=plan.n_expert, seed=0,
                      attack_note='quickstart: PGD-20 and APGD-CE-20 on the first test images, not AutoAttack')


def _intervals(result: EvalResult) -> Dict[str, List[float]]:
    """95% Wilson interval of each printed accuracy (n_eval points is far fewer than 10,000)."""
    return {key: list(wilson_interval(result.counts[key], result.n_examples)) for key in ('clean', PGD, APGD)}


def _gain(adv: EvalResult, normal: EvalResult) -> Dict[str, float]:
    """PGD-20 gain of adversarial over normal training, in points, with its paired 95% bootstrap interval.

    Both models are attacked on the same test points, so the paired interval (per point: which model got it
    right) is the right one, and far narrower than two separate intervals.
    """
    diff, lo, hi = paired_bootstrap(adv.correct[PGD], normal.correct[PGD])
    return dict(points=diff, lo=lo, hi=hi)


def _row(cell: Dict[str, Any], res: CellResult) -> Dict[str, Any]:
    result = res.evaluation
    return dict(model=cell['spec'].name, training=TRAININGS[cell['training'].training],
                clean_acc=result.clean_acc, pgd_acc=result.robust_acc[PGD],
                apgd_acc=result.robust_acc[APGD], intervals=_intervals(result),
                flops_ratio=res.audit.flops_ratio, train_img_per_s=res.training.img_per_s,
                flags=result.flags,
                per_expert=[dict(expert=p['expert'], clean_acc=p['clean_acc'], robust_acc=p['robust_acc'])
                            for p in result.per_expert or []],
                entry_id=res.entry['entry_id'])


def run_quickstart(out: Path, plan: Plan = Plan(), procs: int = 2, resume: bool = False,
                   overwrite: bool = False, console: Console | None = None, progress: bool = True) -> Dict[str, Any]:
    """Train, attack, audit and rank the four quickstart models; returns the summary written to summary.json.

    Args:
        out: Output directory.
        plan: Sizes of the run (see `PLANS`).
        procs: Parallel worker processes.
        resume: Reuse finished trainings in `out`.
        overwrite: Replace whatever is in `out`.
        console: Where to print the summary.
        progress: Show each run's stage and the ETA on stderr (`bench.core.progress.RunBoard`).
    """
    console = console or Console()
    if procs < 1:
        raise UserError(f'--procs {procs} must be at least 1')
    prepare_run_dir(out, resume, overwrite)
    t_start = time.perf_counter()
    todo = cells(plan, out)
    registry_dir = out / 'registry'
    target = Output(registry=registry_dir, reuse_training=resume, overwrite_entry=True)
    threads = threads_per_process(procs)
    console.print(f'[bold]quickstart[/]: training, attacking (PGD-20, APGD-CE, each expert) and auditing '
                  f'{len(todo)} models on {DATASET} ({procs} processes x {threads} threads)')
    order = longest_first(todo)
    jobs = [(Path(todo[i]['training'].out).name, (todo[i]['spec'], todo[i]['training'], evaluation(plan), target))
            for i in order]
    finished = dict(zip(order, run_parallel(run_cell, jobs, procs, 'quickstart', progress=progress)))
    done = [finished[i] for i in range(len(todo))]  # back in the order of `todo`, which the summary shows
    rows = [_row(c, res) for c, res in zip(todo, done)]
    write_leaderboard(registry_dir)
    plots = write_report(registry_dir, out / 'plots')

    def find(kind: str, method: str) -> CellResult:
        return next(res for c, res in zip(todo, done) if c['kind'] == kind and c['training'].training == method)

    gains = {kind: _gain(find(kind, 'pgd').evaluation, find(kind, 'normal').evaluation) for kind in ('dense', 'moe')}
    summary = dict(
        rows=rows, dataset=DATASET, n_eval=plan.n_eval, eps=8 / 255, plan=dataclasses.asdict(plan),
        pgd_gain_points={k: g['points'] for k, g in gains.items()},
        pgd_gain_interval={k: [g['lo'], g['hi']] for k, g in gains.items()},
        method_works=all(g['points'] >= 20 for g in gains.values()),
        adv_train_img_per_s_moe_over_dense=(find('moe', 'pgd').training.img_per_s
                                            / find('dense', 'pgd').training.img_per_s),
        # per stage, summed over the four cells (which run `procs` at a time); total is the wall time
        seconds=dict(train=sum(r.seconds['train'] for r in done),
                     evaluate_and_audit=sum(r.seconds['evaluate'] + r.seconds['audit'] for r in done),
                     total=time.perf_counter() - t_start),
        processes=procs, threads_per_process=threads, plots=[str(p) for p in plots], device=device_string(),
        leaderboard=str(registry_dir / 'LEADERBOARD.md'))
    write_json_atomic(summary, out / 'summary.json', indent=2)
    _print_summary(console, summary)
    return summary


def fmt_interval(value: float, interval: List[float], sep: str = ' ') -> str:
    """'61.3 [55.7, 66.7]': an accuracy and its 95% interval."""
    return f'{value:.1f}{sep}[{interval[0]:.1f}, {interval[1]:.1f}]'


def _print_summary(console: Console, summary: Dict[str, Any]) -> None:
    table = Table(title=f'quickstart on {summary["dataset"]}: first {summary["n_eval"]} test images, eps 8/255',
                  caption=escape('accuracy % above its [95% Wilson interval over the test points]; wall img/s: '
                                 'training images per wall-clock second while the runs shared the cores, a load '
                                 'figure, not a speed comparison (timm-moe audit times the models)'))
    # each accuracy above its interval: the table fits a terminal about 100 columns wide without breaking a word
    for col in ('model', 'training', 'clean %', 'PGD-20 %', 'APGD-CE-20 %', 'FLOPs×', 'wall img/s', 'flags'):
        table.add_column(col, justify='left' if col in ('model', 'training', 'flags') else 'right',
                         no_wrap=col != 'flags')
    for r in summary['rows']:
        ci = r['intervals']
        table.add_row(r['model'], r['training'], escape(fmt_interval(r['clean_acc'], ci['clean'], '\n')),
                      escape(fmt_interval(r['pgd_acc'], ci[PGD], '\n')),
                      escape(fmt_interval(r['apgd_acc'], ci[APGD], '\n')),
                      f'{r["flops_ratio"]:.4f}', f'{r["train_img_per_s"]:.0f}', '\n'.join(r['flags']) or '-')
    console.print(table)
    gains, ci = summary['pgd_gain_points'], summary['pgd_gain_interval']
    verdict = '[green]works[/]' if summary['method_works'] else '[red]did not reach +20 points[/]'
    if not summary['method_works'] and summary['plan'] != dataclasses.asdict(PLANS['default']):
        verdict += ' (expected of this small plan, which checks that every stage runs; only the default plan ' \
                   'exits 1 for it)'
    console.print(escape('adversarial training gain in PGD-20 accuracy, points [95% paired bootstrap interval]: '
                         f'dense {gains["dense"]:+.1f} [{ci["dense"][0]:+.1f}, {ci["dense"][1]:+.1f}], '
                         f'BlockMoE {gains["moe"]:+.1f} [{ci["moe"][0]:+.1f}, {ci["moe"][1]:+.1f}]: ') + verdict)
    console.print(f'adversarial training wall throughput under shared load, BlockMoE / dense: '
                  f'{summary["adv_train_img_per_s_moe_over_dense"]:.2f}x (depends on which runs overlapped); '
                  f'wall time {summary["seconds"]["total"]:.0f} s')
    console.print(f'leaderboard: {summary["leaderboard"]}; plots: {", ".join(Path(p).name for p in summary["plots"])}')
    console.print(escape(kernel_path_note(summary['device'])))


def kernel_path_note(device: str) -> str:
    """Why these numbers may differ from the quickstart entries shipped in registry/: the CPU kernel path."""
    return (f'measured on {device}. Comparing with the quickstart entries shipped in registry/? They were trained '
            'on the AVX2 kernel path; one seed trains other weights on another CPU kernel path, so the numbers '
            'differ, by several points on these few test images (README, "Comparing with the shipped numbers"). '
            'For the shipped ones, run with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=AVX2 '
            '(docs/TRAINING.md, "Reproducibility")')

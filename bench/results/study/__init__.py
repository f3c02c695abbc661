"""`timm-moe report --study SPEC --out DIR`: the study's report, `DIR/STUDY.md` and its plots in `DIR/study/`,
written from the registry entries of the study's grid (never from numbers typed anywhere else).

A rerun on the same entries writes the same bytes: configs in the spec's order, seeds and entries sorted,
fixed bootstrap seeds, fixed number formats, PNGs without a version stamp, and no date, host or absolute path.

The parts: `claims` (the paper's claims, read from its claims file, and their effects in its table), `analysis`
(runs by config and seed, what each config is, which pairs a claim compares, the statistics and the verdict
rules), `render` (the data of the claims, the other tables, protocol and sizing), `document` (their text: the
Jinja2 templates in `templates/`), and here the plots and `write_study`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from bench.core.errors import UserError
from bench.results.report import KIND_COLORS, empty_figure, label_column, new_figure, save_figure
from bench.results.study import analysis as an
from bench.results.study.analysis import Study, collect
from bench.results.study import document
from bench.results.study.render import TABLES, claim_sections, preregistration, protocol, subpath_comparison, summary

# ------------------------------------------------------------------------------------------ plots

def _xy(study: an.Study, config: str, metric: str):
    s = an.summary(study.runs[config], metric)
    return (None, 0.0) if s is None else (s['mean'], s['std'] or 0.0)


def _color(study: an.Study, config: str) -> str:
    return KIND_COLORS['moe' if an.is_moe(study, config) else 'dense']


def _scatter(study: an.Study, points: Sequence[Tuple[str, Any, Any, Any, Any, str]], xlabel: str, ylabel: str,
             title: str, path: Path, vline: Optional[float] = None) -> Path:
    """One labelled point per config: (config, x, x error, y, y error, marker), in the config's colour."""
    fig, (ax,) = new_figure(size=(8.0, 5.0))
    labels = []
    for c, x, xe, y, ye, fmt in points:
        ax.errorbar(x, y, xerr=xe, yerr=ye, fmt=fmt, color=_color(study, c), capsize=3, markersize=5)
        labels.append((x, y, c, _color(study, c)))
    if vline is not None:
        ax.axvline(vline, color='#999999', linestyle=':', linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    label_column(ax, labels)
    return save_figure(fig, path)


def plot_robust_vs_clean(study: an.Study, path: Path) -> Path:
    m = study.primary()
    if m is None:
        return empty_figure(path, 'robust vs clean accuracy', 'a robust metric every run measured')
    points = [(c, *_xy(study, c, 'clean'), *_xy(study, c, m), 'o' if an.adversarial(study, c) else 's')
              for c in study.configs]
    return _scatter(study, points, 'clean accuracy (%)', f'{m} accuracy (%)',
                    f'{study.name}: {m} vs clean\n(error bars: sd over seeds; squares: normal training)', path)


def plot_flops_vs_robust(study: an.Study, path: Path) -> Path:
    m = study.primary()
    configs = [c for c in study.configs if an.flops_ratio(study, c) is not None and an.adversarial(study, c)]
    if m is None or not configs:
        return empty_figure(path, 'FLOPs vs robust accuracy', 'flops.ratio and a robust metric')
    points = [(c, an.flops_ratio(study, c), None, *_xy(study, c, m), 'o') for c in configs]
    return _scatter(study, points, 'active inference FLOPs / dense', f'{m} accuracy (%)',
                    f'{study.name}: adversarially trained configs\n(error bars: sd over seeds)', path, vline=1.0)


def _panels(study: an.Study, configs: List[str]) -> Dict[str, List[str]]:
    """The expert plots' panels, {title: configs}: in a budget study one per config, smallest budget first, so
    that no panel mixes budgets; elsewhere one per aux loss."""
    if an.of_budgets(study):
        return {f'{c} ({b.short})': [c] for b, cs in an.budgets(study, configs).items() for c in cs}
    out: Dict[str, List[str]] = {}
    for c in configs:
        out.setdefault(str(an.traits(study, c).get('aux_loss')), []).append(c)
    return {f'aux loss {aux}': cs for aux, cs in sorted(out.items())}


def plot_subpaths(study: an.Study, path: Path) -> Path:
    m = study.primary()
    rows: Dict[str, List[Any]] = {}
    for c in study.configs:
        e = study.first(c)
        if m is None or e is None or not an.adversarial(study, c):
            continue
        experts = [pe for pe in sorted(e.get('per_expert') or [], key=lambda p: p['expert'])
                   if pe.get('per_sample') and m in pe['robust_acc']]
        results = [subpath_comparison(e, pe, m) for pe in experts]
        if results:
            rows[c] = results
    if not rows:
        return empty_figure(path, 'expert subpaths vs gated model', 'per-expert per-sample results')
    groups = _panels(study, list(rows))
    # each panel as wide as its bars, so that a panel of six configs is as legible as one of one
    bars = [sum(len(rows[c]) + 2 for c in configs) for configs in groups.values()]
    from matplotlib.figure import Figure
    fig = Figure(figsize=(max(6.0, 0.28 * sum(bars) + 1.2 * len(bars)), 4.2), layout='constrained')
    axes = fig.subplots(1, len(groups), squeeze=False, width_ratios=bars)[0]
    for ax, (title, configs) in zip(axes, groups.items()):
        x = 0
        ticks, labels = [], []
        for c in configs:
            g = rows[c][0]['b']
            ax.bar(x, g['acc'], color='#d62728', width=0.8, yerr=[[g['acc'] - g['lo']], [g['hi'] - g['acc']]], capsize=2)
            ticks.append(x)
            labels.append('gated')
            for i, r in enumerate(rows[c]):
                ax.bar(x + 1 + i, r['a']['acc'], color=_color(study, c), width=0.8,
                       yerr=[[r['a']['acc'] - r['a']['lo']], [r['a']['hi'] - r['a']['acc']]], capsize=2)
                ticks.append(x + 1 + i)
                labels.append(f'e{i}')
            # the config's name once, under its group of bars
            ax.text(x + len(rows[c]) / 2, -0.13, c, transform=ax.get_xaxis_transform(), ha='center', va='top',
                    fontsize=8, fontweight='bold')
            x += len(rows[c]) + 2
        ax.set_xticks(ticks, labels, fontsize=6, rotation=90)
        ax.set_ylabel(f'{m} accuracy (%), same points', fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis='y')
    # two lines: on one, a figure of one or two panels cut the title off at both edges
    fig.suptitle('Expert subpaths on the same points as the gated model (first seed)\n'
                 'red = the gated model, then each expert forced alone; error bars: Wilson 95%', fontsize=9)
    return save_figure(fig, path)


def plot_expert_load(study: an.Study, path: Path) -> Path:
    import numpy as np

    loads: Dict[str, Optional[np.ndarray]] = {}
    for c in study.configs:
        ls = [e['routing']['load'] for _, e in sorted(study.runs[c].items()) if (e.get('routing') or {}).get('load')]
        if ls and an.adversarial(study, c):
            loads[c] = np.asarray(ls, dtype=float)
    if not loads:
        return empty_figure(path, 'expert load', 'routing.load')
    groups = _panels(study, list(loads))
    fig, axes = new_figure(1, len(groups), size=(5.0, 3.8))
    for ax, (title, configs) in zip(axes, groups.items()):
        width = 0.8 / len(configs)
        for j, c in enumerate(configs):
            arr = loads[c]
            sd = arr.std(0, ddof=1) if len(arr) > 1 else np.zeros(arr.shape[1])
            xs = np.arange(arr.shape[1]) + j * width
            mean = arr.mean(0)
            # a share is never negative: the lower bar stops at 0
            seeds = f'{len(arr)} seed' + ('' if len(arr) == 1 else 's')
            ax.bar(xs, mean, width=width, yerr=[np.minimum(sd, mean), sd], capsize=2, label=f'{c} ({seeds})')
        n = max(loads[c].shape[1] for c in configs)
        for e, style in zip(sorted({loads[c].shape[1] for c in configs}), ('--', ':', '-.')):
            ax.hlines(1 / e, -width, e - 1 + 0.8, colors='#555555', linestyles=style, linewidth=1,
                      label=f'uniform load, E={e}')
        ax.set_ylim(bottom=0)
        ax.set_xticks(np.arange(n) + 0.4 - width / 2, [f'e{i}' for i in range(n)], fontsize=8)
        ax.set_xlabel('expert', fontsize=8)
        ax.set_ylabel('share of images (mean ± sd over seeds)', fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_budget_response(study: an.Study, path: Path) -> Path:
    """The gap MoE − dense at each training budget, per MoE arm, with its Welch 95% interval over seeds; the
    paper's effect of each arm as a labelled horizontal line (a reference, not a data point)."""
    r = an.budget_response(study)
    if r is None:
        # an interval needs two seeds of the MoE arm and of dense at a budget: an interim study with one seed
        # has pairs, but nothing this plot can draw with an interval
        return empty_figure(path, 'gap to dense vs training budget',
                            'two or more budgets, each with a dense config\nand at least 2 seeds of dense and of the MoE')
    fig, (ax,) = new_figure(size=(8.0, 5.0))
    x = {b: i for i, b in enumerate(r['budgets'])}
    known = an.claims_of(study)
    paper = ', '.join([next(iter(known.metrics.values()))] + ([known.setting] if known.setting else []))
    colors = ('#d62728', '#1f77b4', '#2ca02c', '#9467bd')
    for i, (arm, points) in enumerate(r['arms'].items()):
        color = colors[i % len(colors)]
        xs = [x[b] + 0.08 * (i - (len(r['arms']) - 1) / 2) for b, _ in points]  # side by side, not on top
        ys = [w['diff'] for _, w in points]
        err = [[w['diff'] - w['lo'] for _, w in points], [w['hi'] - w['diff'] for _, w in points]]
        ax.errorbar(xs, ys, yerr=err, fmt='o-', color=color, capsize=4, label=arm)
        if arm in r['paper']:
            ax.axhline(r['paper'][arm], color=color, linestyle='--', linewidth=1)
            ax.annotate(f"the paper ({paper}): {r['paper'][arm]:+.2f}",
                        (0.01, r['paper'][arm]), xycoords=('axes fraction', 'data'), xytext=(0, 3),
                        textcoords='offset points', fontsize=8, color=color)
    ax.axhline(0, color='#999999', linewidth=1)
    ax.set_xticks(range(len(r['budgets'])), [b.short for b in r['budgets']])
    ax.set_xlabel('training budget (training images x epochs, width), by image passes')
    ax.set_ylabel(f"{r['metric']} gap, MoE − dense (points)")
    ax.set_title(f"{study.name}: the gap to dense as training grows\n(mean over seeds, Welch 95% interval)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='lower right')
    return save_figure(fig, path)


BUDGET_PLOT = ('budget_response.png', plot_budget_response, 'the gap to dense vs the training budget')


def plots(study: an.Study) -> Tuple[Tuple[str, Any, str], ...]:
    """The plots of a study's report: the budget response only for a study of budgets, one that pre-registers
    an interaction across them (`base:` in a primary entry); other studies' reports stay what they were."""
    if not an.of_budgets(study):
        return PLOTS
    # the expert plots of a budget study have a panel per config (`_panels`): their titles say so
    per_config = {'subpaths.png': 'expert subpaths vs the gated model, per config by budget',
                  'expert_load.png': 'expert load per config, by budget'}
    return tuple((name, fn, per_config.get(name, title)) for name, fn, title in PLOTS) + (BUDGET_PLOT,)


PLOTS = (
    ('robust_vs_clean.png', plot_robust_vs_clean, 'robust vs clean accuracy'),
    ('flops_vs_robust.png', plot_flops_vs_robust, 'active FLOPs vs robust accuracy'),
    ('subpaths.png', plot_subpaths, 'expert subpaths vs the gated model'),
    ('expert_load.png', plot_expert_load, 'expert load per aux loss'),
)


# ------------------------------------------------------------------------------------------ the report

REPORT_NAME = 'STUDY.md'
PLOT_DIR = 'study'


def report_text(study: Study) -> str:
    """The markdown of the report (plots linked relative to it)."""
    lines = document.render('study.md.j2', name=study.name, runs=len(study.entries()), autoattack=len(study.autoattack),
                   notes=study.notes, claims=len(an.claims_of(study).claims),
                   budgets=an.of_budgets(study))
    lines += preregistration(study) + ['## Summary', ''] + summary(study) + claim_sections(study)
    for table in TABLES:
        lines += table(study)
    lines += document.render('plots.md.j2', plot_dir=PLOT_DIR, plots=[(name, title) for name, _, title in plots(study)])
    lines += protocol(study)
    while lines and lines[-1] == '':
        lines.pop()
    return '\n'.join(lines) + '\n'


def write_study(entries: Sequence[Mapping[str, Any]], plan: Mapping[str, Any], out_dir: Path) -> List[Path]:
    """Write `out_dir/STUDY.md` and `out_dir/study/*.png`; returns the files written.

    Args:
        entries: the registry's entries (those of other studies are ignored).
        plan: the spec as plain data (`bench.results.study.analysis` describes it).
        out_dir: where the report goes (created if missing).
    """
    study = collect(entries, plan)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f'--out {out_dir} is a file: pass a directory for {REPORT_NAME} and its plots')
    (out_dir / PLOT_DIR).mkdir(parents=True, exist_ok=True)
    text = report_text(study)  # before any file is written: a refusal leaves the old report whole
    paths = [fn(study, out_dir / PLOT_DIR / name) for name, fn, _ in plots(study)]
    report = out_dir / REPORT_NAME
    report.write_text(text, encoding='utf-8')
    return [report] + paths


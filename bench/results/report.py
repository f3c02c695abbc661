"""PNG plots drawn from the registry (never from numbers typed anywhere else).

Plots (all written to --out):
- `clean_vs_robust.png`: clean against robust accuracy, a panel per setting (data set, threat model, eps: points
  of two settings are never compared, nor joined by a line); marker shape = source (measured / paper /
  RobustBench), colour = dense or MoE, hollow = the robust number is not AutoAttack; a Pareto front per source
  within the panel; the points are named when a panel has few.
- `expert_load.png`: the expert load (`routing.load`) of each configuration against the uniform load, a panel
  per configuration: the mean over its seeds with a 95% t-interval, one y-scale for all panels.
- `per_expert.png`: each expert forced on its own beside the gated model (`per_expert`), a panel per
  configuration, averaged over its seeds likewise.
- `flops_vs_robust.png`: robust accuracy against the active-FLOPs ratio to the dense model
  (`flops.ratio`), a panel per setting, the x range fitted to the ratios.

A plot without data is still written, with a 'no entries with ...' note in place of the axes:
the list of files is then the same on every registry, which keeps scripts and CI simple.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from bench.core.errors import UserError
from bench.results.leaderboard import EXACT_N, fmt_eps
from bench.results.registry import DEFAULT_REGISTRY, load_entries, robust_metric
from bench.core.stats import group_by_seed, seed_summary, wilson_interval

MAX_PANELS = 16  # more small multiples than this become unreadable; the rest are named in a note
SOURCE_MARKERS = {'measured': 'o', 'paper': '^', 'robustbench': 's'}
SOURCE_LINES = {'measured': '-', 'paper': '--', 'robustbench': ':'}
KIND_COLORS = {'dense': '#444444', 'moe': '#1f77b4', 'unknown': '#ff7f0e'}
# colour = architecture kind and training: the light shade is normal training, the dark one adversarial
TRAINING_COLORS = {('dense', 'normal'): '#a6a6a6', ('dense', 'pgd'): '#333333', ('dense', 'trades'): '#8c6d31',
                   ('moe', 'normal'): '#9ecae1', ('moe', 'pgd'): '#1f77b4', ('moe', 'trades'): '#6a3d9a'}
KIND_NAMES = {'dense': 'dense', 'moe': 'MoE', 'unknown': 'unknown arch'}
ATTACK_LABELS = {'autoattack': 'AutoAttack', 'worst_case': 'worst case of our attacks', 'pgd20': 'PGD-20'}


def new_figure(nrows: int = 1, ncols: int = 1, size: Tuple[float, float] = (6.4, 4.8)):
    # a bare Figure (no pyplot): no global state, no GUI backend, safe in tests and worker processes
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout='constrained')
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def save_figure(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, metadata={'Software': None})  # no version stamp in the file
    return path


def empty_figure(path: Path, title: str, what: str) -> Path:
    fig, (ax,) = new_figure()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, f'no entries with {what}', ha='center', va='center', fontsize=13, color='#666666',
            transform=ax.transAxes)
    return save_figure(fig, path)


def label_column(ax, points: Sequence[Tuple[float, float, str, str]], fontsize: float = 7) -> None:
    """Name each point in a column right of the axes, one line apart, with a thin leader line to its point:
    labels never overlap however tight the points cluster (a label beside each point would).

    Args:
        ax: the axes; the figure's constrained layout makes room for the column.
        points: (x, y, label, colour) in data coordinates.
        fontsize: of the labels; it also sets the spacing.
    """
    if not points:
        return
    (y0, y1) = ax.get_ylim()  # autoscaled to every artist drawn so far: call this last
    placed = sorted(((y - y0) / (y1 - y0), x, y, text, color) for x, y, text, color in points)
    # one line in axes units, for axes about 80% of the figure's height (constrained layout)
    step = fontsize * 1.5 / (ax.figure.get_figheight() * 72 * 0.8)
    ys: List[float] = []
    for fy, *_ in placed:  # bottom up, at least one line apart
        ys.append(max(fy, ys[-1] + step) if ys else max(fy, 0.0))
    ys = [y - max(0.0, ys[-1] - 1.0) for y in ys]  # the column back under the top
    for i in range(len(ys) - 2, -1, -1):  # and one line apart again, top down
        ys[i] = min(ys[i], ys[i + 1] - step)
    for ty, (_, x, y, text, color) in zip(ys, placed):
        ax.annotate(text, (x, y), xytext=(1.03, ty), textcoords='axes fraction', fontsize=fontsize, va='center',
                    color=color, annotation_clip=False,
                    arrowprops=dict(arrowstyle='-', color='#cccccc', linewidth=0.6, shrinkA=0, shrinkB=3))


def _kind(entry: Mapping[str, Any]) -> str:
    experts = entry['model'].get('experts')
    return 'unknown' if experts is None else 'dense' if experts == 0 else 'moe'


def _training(entry: Mapping[str, Any]) -> str:
    return str((entry.get('training') or {}).get('method') or '?')


def _color(entry: Mapping[str, Any]) -> str:
    return TRAINING_COLORS.get((_kind(entry), _training(entry)), KIND_COLORS[_kind(entry)])


def _wilson_err(entry: Mapping[str, Any], value: Optional[float]) -> Optional[List[List[float]]]:
    """[[below], [above]]: the 95% Wilson interval of an accuracy of the entry as error-bar lengths (None
    where the entry gives no number of points, or 10,000 or more: the leaderboard's rule)."""
    n = (entry.get('per_sample') or {}).get('n') or entry.get('n_examples')
    if value is None or not n or n >= EXACT_N:
        return None
    lo, hi = wilson_interval(round(value * n / 100), n)
    return [[max(0.0, value - lo)], [max(0.0, hi - value)]]


def _legend(ax, pts: Sequence[Tuple[Mapping[str, Any], float, str]], extra: Sequence[Any] = ()) -> None:
    """What the markers mean, drawn as the points are: hollow where they are hollow; a swatch per colour
    (architecture and training), a marker per source, fill = AutoAttack."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    handles = [Patch(color=_color(e), label=f'{KIND_NAMES[_kind(e)]} · {_training(e)} training')
               for e in {(_kind(e), _training(e)): e for e, _, _ in sorted(pts, key=lambda p: (
                   _kind(p[0]), _training(p[0])))}.values()]
    handles += [Line2D([], [], marker=m, linestyle='', color='#000000', markerfacecolor='none', label=s)
                for s, m in SOURCE_MARKERS.items() if any(e['source'] == s for e, _, _ in pts)]
    if any(k == 'autoattack' for _, _, k in pts):
        handles.append(Line2D([], [], marker='o', linestyle='', color='#000000', label='filled: AutoAttack'))
        if any(k != 'autoattack' for _, _, k in pts):
            handles.append(Line2D([], [], marker='o', linestyle='', color='#000000', markerfacecolor='none',
                                  label='hollow: another attack'))
    ax.legend(handles=handles + list(extra), fontsize=8, loc='best')


def _label(entry: Mapping[str, Any], width: int = 34) -> str:
    name = entry['model']['name']
    return name if len(name) <= width else name[:width - 1] + '…'


def _grid(n: int) -> Tuple[int, int]:
    ncols = min(4, n)
    return (n + ncols - 1) // ncols, ncols


Setting = Tuple[str, str, float]


def _setting(entry: Mapping[str, Any]) -> Setting:
    """(data set, threat model, eps): accuracies of two settings are never compared in one panel."""
    return entry['dataset'], entry['threat_model'], round(float(entry['eps']), 10)


def _setting_title(setting: Setting) -> str:
    dataset, threat, eps = setting
    return f'{dataset} · {threat} · eps {fmt_eps(eps, threat)}'


def _by_setting(items: Sequence[Tuple[Mapping[str, Any], float, str]]) -> List[Tuple[Setting, list]]:
    groups: Dict[Setting, list] = {}
    for item in items:
        groups.setdefault(_setting(item[0]), []).append(item)
    return sorted(groups.items())


def _short_name(entry: Mapping[str, Any]) -> str:
    """'E4k1 · pgd', 'dense · normal': a point's label where a panel has few."""
    m = entry['model']
    arch = (f"E{m['experts']}" + (f"k{m['k']}" if m.get('k') else '')) if m.get('experts') else KIND_NAMES[_kind(entry)]
    return f'{arch} · {_training(entry)}'


def _configurations(entries: Sequence[Mapping[str, Any]]) -> List[List[Mapping[str, Any]]]:
    """The entries as configurations: measured runs that differ only in their seed are one (the leaderboard's
    seed groups), a reported entry is one on its own; ordered by setting, model and what sets them apart."""
    groups = group_by_seed([e for e in entries if e['source'] == 'measured'])
    groups += [[e] for e in entries if e['source'] != 'measured']
    return sorted(groups, key=lambda g: (_setting(g[0]), g[0]['model']['name'], _config_title(g)))


def _config_title(group: Sequence[Mapping[str, Any]]) -> str:
    """What tells a configuration's panel apart: the model; its gate, balancing loss, placement and noise; the
    grid config it ran in, upcycling and epochs (the leaderboard's Setup); the training; the setting; the seeds."""
    from bench.results.leaderboard.groups import Row
    from bench.results.leaderboard.render import moe_config_label, setup
    e = group[0]
    config = moe_config_label(e)
    ran = setup(Row(list(group), {}), seeds=False)
    seeds = f'{len(group)} seeds' if len(group) > 1 else 'one run'
    lines = [_label(e, 48), ' · '.join(x for x in (config, ran) if x != '—'),
             f"{_training(e)} training · {_setting_title(_setting(e))} · {seeds}"]
    # a panel is about 70 characters of a 7-point title wide: a longer line wraps instead of running into the next
    return '\n'.join(textwrap.fill(x, 70, break_long_words=False) for x in lines if x)


def _mean_err(columns: Sequence[Sequence[float]]) -> Tuple[List[float], Optional[List[List[float]]]]:
    """Per position, the mean over seeds and its 95% t-interval as error-bar lengths (None for one seed)."""
    stats = [seed_summary(v) for v in columns]
    means = [s['mean'] for s in stats]
    if any(s['lo'] is None for s in stats):
        return means, None
    return means, [[s['mean'] - s['lo'] for s in stats], [s['hi'] - s['mean'] for s in stats]]


def _panels(groups: Sequence[Any], what: str = 'configurations') -> Tuple[List[Any], Optional[str]]:
    """At most MAX_PANELS panels (in their order) and a note naming how many were left out."""
    if len(groups) <= MAX_PANELS:
        return list(groups), None
    return list(groups[:MAX_PANELS]), f'{len(groups) - MAX_PANELS} more {what} not shown'


def pareto_front(points: Sequence[Tuple[float, float]]) -> List[Tuple[float, float]]:
    """Points not dominated in (clean, robust), both higher-is-better, in order of clean accuracy."""
    front: List[Tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return sorted(front)


NAMED_POINTS = 12  # a panel with at most this many points names each (a column of labels); more would be a wall


def plot_clean_vs_robust(entries: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Clean vs robust accuracy, a panel per (data set, threat model, eps)."""
    from matplotlib.lines import Line2D

    pts = [(e, *robust_metric(e)) for e in entries]
    pts = [(e, r, k) for e, r, k in pts if r is not None and e.get('clean_acc') is not None]
    if not pts:
        return empty_figure(path, 'clean vs robust accuracy', 'a clean and a robust accuracy')
    groups = _by_setting(pts)
    fig, axes = new_figure(*_grid(len(groups)), size=(7.0, 5.4))
    fronts = set()  # sources whose Pareto front has a line to show
    for ax, (setting, group) in zip(axes, groups):
        by_source: Dict[str, List[Tuple[float, float]]] = {}
        for e, r, key in group:
            color = _color(e)
            filled = key == 'autoattack'
            xerr, yerr = _wilson_err(e, e['clean_acc']), _wilson_err(e, r)
            if xerr or yerr:
                ax.errorbar(e['clean_acc'], r, xerr=xerr, yerr=yerr, fmt='none', ecolor=color, elinewidth=0.8,
                            capsize=2, alpha=0.6)
            ax.scatter(e['clean_acc'], r, marker=SOURCE_MARKERS[e['source']], s=36, linewidths=1.1,
                       edgecolors=color, facecolors=color if filled else 'none', alpha=0.85)
            by_source.setdefault(e['source'], []).append((e['clean_acc'], r))
        for source, points in sorted(by_source.items()):
            front = pareto_front(points)
            if len(front) > 1:
                fronts.add(source)
                ax.plot(*zip(*front), SOURCE_LINES[source], color='#999999', linewidth=1, zorder=0)
        for e, r, _ in group:  # the few external reference points are named, the paper's grid is not
            if e['source'] == 'robustbench':
                ax.annotate(e['model']['name'], (e['clean_acc'], r), fontsize=7, xytext=(-4, -11), ha='right', bbox=dict(boxstyle='round,pad=0.15', fc='white', ec='none', alpha=0.85),
                            textcoords='offset points')
        ax.set_title(_setting_title(setting))
        ax.set_xlabel('clean accuracy (%)')
        ax.set_ylabel('robust accuracy (%): AutoAttack, else worst case, else PGD-20')
        ax.grid(alpha=0.3)
        if len(group) <= NAMED_POINTS:  # colour alone does not say which point is which
            label_column(ax, [(e['clean_acc'], r, _short_name(e), _color(e)) for e, r, _ in group
                              if e['source'] != 'robustbench'])
    for ax in axes[len(groups):]:
        ax.set_axis_off()
    fronts_lines = [Line2D([], [], linestyle=SOURCE_LINES[s], color='#999999', label=f'Pareto front ({s})')
                    for s in SOURCE_MARKERS if s in fronts]
    if any(_wilson_err(e, r) for e, r, _ in pts):
        fronts_lines.append(Line2D([], [], color='#777777', linewidth=0.8, label='error bars: Wilson 95%'))
    _legend(axes[len(groups) - 1], pts, fronts_lines)
    return save_figure(fig, path)


def plot_expert_load(entries: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Expert load of each configuration that recorded routing.load: the mean over its seeds, with the 95%
    t-interval over them; one y-scale for every panel, so that their loads compare at a glance."""
    with_load = [e for e in entries if (e.get('routing') or {}).get('load')]
    if not with_load:
        return empty_figure(path, 'expert load', 'routing.load')
    groups = [g for g in _configurations(with_load) if len({len(e['routing']['load']) for e in g}) == 1]
    shown, note = _panels(groups)
    drawn = []
    for g in shown:
        means, err = _mean_err(list(zip(*(e['routing']['load'] for e in g))))
        drawn.append((g, means, err))
    top = max(max(1.0 / len(m), max(a + (b[1][i] if b else 0.0) for i, a in enumerate(m))) for _, m, b in drawn)
    fig, axes = new_figure(*_grid(len(shown)), size=(4.4, 3.4))
    for ax, (g, load, err) in zip(axes, drawn):
        ax.bar(range(len(load)), load, color=KIND_COLORS['moe'], yerr=err, capsize=2, error_kw=dict(elinewidth=0.8),
               label=f'mean of {len(g)} seeds, 95% t-interval' if err else 'load')
        ax.axhline(1 / len(load), color='#d62728', linestyle='--', linewidth=1, label='uniform')
        collapses = [e['routing']['collapse'] for e in g if e['routing'].get('collapse') is not None]
        title = _config_title(g)
        if collapses:
            title += f', collapse {sum(collapses) / len(collapses):.2f}'
        ax.set_title(title, fontsize=7)
        ax.set_xticks(range(len(load)))
        ax.set_xlabel('expert', fontsize=8)
        ax.set_ylabel('share of images', fontsize=8)
        ax.set_ylim(0, min(top, 1.0) * 1.2)  # one scale for every panel (a share is at most 1)
        ax.legend(fontsize=7)
    for ax in axes[len(shown):]:
        ax.set_axis_off()
    if note:
        fig.suptitle(note, fontsize=9)
    return save_figure(fig, path)


COMMON_KEYS = ('autoattack', 'worst_case', 'pgd20', 'apgd-ce', 'apgd20')


def common_attack(*entries: Mapping[str, Any]) -> Optional[str]:
    """The strongest attack measured on the gated model and on every expert alike, of every entry given (the
    seeds of a configuration); None: no common one.

    The bars must compare like with like: the gated model's AutoAttack number beside an expert's
    PGD number would make the expert look more robust than it is.
    """
    results = [r for entry in entries for r in [entry] + list(entry.get('per_expert') or [])]
    shared = set.intersection(*({k for k, v in (r.get('robust_acc') or {}).items() if v is not None}
                                for r in results))
    for key in COMMON_KEYS:
        if key in shared:
            return key
    return min(shared) if shared else None


def _bars_err(entry: Mapping[str, Any], values: Sequence[float]) -> Optional[List[List[float]]]:
    """Wilson error bars for accuracies measured on the entry's points (the gated model's and each expert's)."""
    errs = [_wilson_err(entry, v) for v in values]
    return None if any(x is None for x in errs) else [[x[0][0] for x in errs], [x[1][0] for x in errs]]


def _per_expert_bars(group: Sequence[Mapping[str, Any]], values) -> Tuple[List[float], Optional[List[List[float]]]]:
    """[gated, e0, e1, ...] of one configuration: one run's values with their Wilson bars, or the mean over its
    seeds with the 95% t-interval (expert i of each seed, by index)."""
    runs = [values(e) for e in group]
    if len(group) == 1:
        return runs[0], _bars_err(group[0], runs[0])
    return _mean_err(list(zip(*runs)))


def plot_per_expert(entries: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Clean and robust accuracy of every expert forced on its own, beside the gated model: a panel per
    configuration, averaged over its seeds."""
    with_pe = [e for e in entries if e.get('per_expert')]
    if not with_pe:
        return empty_figure(path, 'per-expert robustness', 'per_expert results')
    groups = [g for g in _configurations(with_pe) if len({len(e['per_expert']) for e in g}) == 1]
    shown, note = _panels(groups)
    fig, axes = new_figure(*_grid(len(shown)), size=(4.6, 3.6))
    for ax, g in zip(axes, shown):
        key = common_attack(*g)

        def experts(e: Mapping[str, Any]) -> List[Mapping[str, Any]]:
            return sorted(e['per_expert'], key=lambda p: p['expert'])
        labels = ['gated'] + [f"e{pe['expert']}" for pe in experts(g[0])]
        clean, clean_err = _per_expert_bars(g, lambda e: [e['clean_acc']] + [p['clean_acc'] for p in experts(e)])
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], clean, width=0.4, color='#aec7e8', label='clean', yerr=clean_err,
               capsize=2, error_kw=dict(elinewidth=0.8))
        if key is not None:
            robust, robust_err = _per_expert_bars(
                g, lambda e: [e['robust_acc'][key]] + [p['robust_acc'][key] for p in experts(e)])
            ax.bar([x + 0.2 for x in xs], robust, width=0.4, color='#1f77b4', label=ATTACK_LABELS.get(key, key),
                   yerr=robust_err, capsize=2, error_kw=dict(elinewidth=0.8))
            ax.axhline(robust[0], color='#d62728', linestyle='--', linewidth=1, label='gated, robust')
        else:
            ax.text(0.5, 0.5, 'no attack shared by the gated model and all experts', ha='center', fontsize=7,
                    transform=ax.transAxes)
        ax.set_xticks(list(xs), labels, fontsize=8)
        ax.set_ylabel('accuracy (%)', fontsize=8)
        ax.set_ylim(0, max(clean) * 1.35)  # head room for the legend
        bars = ('mean over seeds, 95% t-interval' if len(g) > 1 else 'error bars: Wilson 95%') if clean_err else ''
        ax.set_title(_config_title(g) + (f'\n({bars})' if bars else ''), fontsize=7)
        ax.legend(fontsize=7, ncol=3, loc='upper center')
    for ax in axes[len(shown):]:
        ax.set_axis_off()
    if note:
        fig.suptitle(note, fontsize=9)
    return save_figure(fig, path)


def plot_flops_vs_robust(entries: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Robust accuracy against the ratio of active inference FLOPs to the dense baseline, a panel per
    (data set, threat model, eps)."""
    pts = [(e, *robust_metric(e)) for e in entries if (e.get('flops') or {}).get('ratio') is not None]
    pts = [(e, r, k) for e, r, k in pts if r is not None]
    if not pts:
        return empty_figure(path, 'FLOPs vs robust accuracy', 'flops.ratio and a robust accuracy')
    groups = _by_setting(pts)
    fig, axes = new_figure(*_grid(len(groups)), size=(8.0, 5.0))
    for ax, (setting, group) in zip(axes, groups):
        _flops_panel(ax, group, setting)
    for ax in axes[len(groups):]:
        ax.set_axis_off()
    return save_figure(fig, path)


def _flops_panel(ax, pts: Sequence[Tuple[Mapping[str, Any], float, str]], setting: Setting) -> None:
    labels = []
    for e, r, key in pts:
        color = _color(e)
        x = e['flops']['ratio']
        yerr = _wilson_err(e, r)
        if yerr:
            ax.errorbar(x, r, yerr=yerr, fmt='none', ecolor=color, elinewidth=0.8, capsize=2, alpha=0.6)
        ax.scatter(x, r, marker=SOURCE_MARKERS[e['source']], s=40, edgecolors=color,
                   facecolors=color if key == 'autoattack' else 'none', linewidths=1.1)
        labels.append((x, r, _short_name(e), KIND_COLORS[_kind(e)]))
    ax.axvline(1.0, color='#999999', linestyle=':', linewidth=1)
    # plain ratios (1.0003, not 0.0003 + 1); the range fits the ratios and the dense cost, with a margin, so
    # that near-equal costs spread over the panel instead of a sliver of it
    ax.ticklabel_format(axis='x', useOffset=False, style='plain')
    lo, hi = min([1.0] + [x for x, *_ in labels]), max([1.0] + [x for x, *_ in labels])
    pad = max(0.08 * (hi - lo), 2e-4)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel('active inference FLOPs / dense baseline')
    ax.set_ylabel('robust accuracy (%): AutoAttack, else worst case, else PGD-20')
    ax.set_title(f'FLOPs vs robust accuracy: {_setting_title(setting)}\n(dotted: the dense cost)')
    ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D
    _legend(ax, pts, [Line2D([], [], color='#777777', linewidth=0.8, label='error bars: Wilson 95%')]
            if any(_wilson_err(e, r) for e, r, _ in pts) else [])
    if len(labels) <= 24:  # a column of names; the paper's full grid would be a wall of them
        label_column(ax, labels)


PLOTS = (
    ('clean_vs_robust.png', plot_clean_vs_robust),
    ('expert_load.png', plot_expert_load),
    ('per_expert.png', plot_per_expert),
    ('flops_vs_robust.png', plot_flops_vs_robust),
)


def write_report(registry_dir: Path = DEFAULT_REGISTRY, out_dir: Path = Path('report'),
                 dataset: Optional[List[str]] = None, threat_model: Optional[List[str]] = None) -> List[Path]:
    """Draw every plot from the registry's entries; returns the files written, in PLOTS order.

    Args:
        registry_dir: the registry root.
        out_dir: where the PNG files go (created if missing).
        dataset: only these data sets (None: all).
        threat_model: only these threat models (None: all).
    """
    entries = load_entries(registry_dir, dataset=dataset, threat_model=threat_model)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f'--out {out_dir} is a file: pass a directory for the plots')
    out_dir.mkdir(parents=True, exist_ok=True)
    return [fn(entries, out_dir / name) for name, fn in PLOTS]

"""PNG plots drawn from the registry (never from numbers typed anywhere else).

Plots (all written to --out):
- `clean_vs_robust.png`: clean against robust accuracy, a panel per data set and threat model;
  marker shape = source (measured / paper / RobustBench), colour = dense or MoE, hollow = the
  robust number is not AutoAttack; a Pareto front per source.
- `expert_load.png`: each entry's expert load (`routing.load`) against the uniform load.
- `per_expert.png`: each expert forced on its own beside the gated model (`per_expert`).
- `flops_vs_robust.png`: robust accuracy against the active-FLOPs ratio to the dense model
  (`flops.ratio`).

A plot without data is still written, with a 'no entries with ...' note in place of the axes:
the list of files is then the same on every registry, which keeps scripts and CI simple.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from bench.core.errors import UserError
from bench.results.leaderboard import EXACT_N, fmt_eps
from bench.results.registry import DEFAULT_REGISTRY, load_entries, robust_metric
from bench.results.stats import wilson_interval

MAX_PANELS = 16  # more small multiples than this become unreadable; the rest are named in a note
SOURCE_MARKERS = {'measured': 'o', 'paper': '^', 'robustbench': 's'}
SOURCE_LINES = {'measured': '-', 'paper': '--', 'robustbench': ':'}
KIND_COLORS = {'dense': '#444444', 'moe': '#1f77b4', 'unknown': '#ff7f0e'}
# colour = architecture kind and training: the light shade is normal training, the dark one adversarial
TRAINING_COLORS = {('dense', 'normal'): '#a6a6a6', ('dense', 'pgd'): '#333333', ('dense', 'trades'): '#8c6d31',
                   ('moe', 'normal'): '#9ecae1', ('moe', 'pgd'): '#1f77b4', ('moe', 'trades'): '#6a3d9a'}
KIND_NAMES = {'dense': 'dense', 'moe': 'MoE', 'unknown': 'unknown arch'}
ATTACK_LABELS = {'autoattack': 'AutoAttack', 'worst_case': 'worst case of our attacks', 'pgd20': 'PGD-20'}


def _figure(nrows: int = 1, ncols: int = 1, size: Tuple[float, float] = (6.4, 4.8)):
    # a bare Figure (no pyplot): no global state, no GUI backend, safe in tests and worker processes
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout='constrained')
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, metadata={'Software': None})  # no version stamp in the file
    return path


def _empty(path: Path, title: str, what: str) -> Path:
    fig, (ax,) = _figure()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, f'no entries with {what}', ha='center', va='center', fontsize=13, color='#666666',
            transform=ax.transAxes)
    return _save(fig, path)


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


def _panels(entries: Sequence[Mapping[str, Any]]) -> Tuple[List[Mapping[str, Any]], Optional[str]]:
    """At most MAX_PANELS entries (in entry-id order) and a note naming how many were left out."""
    entries = sorted(entries, key=lambda e: (e['dataset'], e['threat_model'], e['entry_id']))
    if len(entries) <= MAX_PANELS:
        return entries, None
    return entries[:MAX_PANELS], f'{len(entries) - MAX_PANELS} more entries not shown'


def pareto_front(points: Sequence[Tuple[float, float]]) -> List[Tuple[float, float]]:
    """Points not dominated in (clean, robust), both higher-is-better, in order of clean accuracy."""
    front: List[Tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return sorted(front)


def plot_clean_vs_robust(entries: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Clean vs robust accuracy, a panel per (data set, threat model)."""
    from matplotlib.lines import Line2D

    pts = [(e, *robust_metric(e)) for e in entries]
    pts = [(e, r, k) for e, r, k in pts if r is not None and e.get('clean_acc') is not None]
    if not pts:
        return _empty(path, 'clean vs robust accuracy', 'a clean and a robust accuracy')
    groups: Dict[Tuple[str, str], list] = {}
    for p in pts:
        groups.setdefault((p[0]['dataset'], p[0]['threat_model']), []).append(p)
    fig, axes = _figure(1, len(groups), size=(7.0, 5.4))
    fronts = set()  # sources whose Pareto front has a line to show
    for ax, ((dataset, threat), group) in zip(axes, sorted(groups.items())):
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
        eps = sorted({fmt_eps(e['eps'], threat) for e, _, _ in group})
        ax.set_title(f'{dataset} · {threat} · eps {", ".join(eps)}')
        ax.set_xlabel('clean accuracy (%)')
        ax.set_ylabel('robust accuracy (%): AutoAttack, else worst case, else PGD-20')
        ax.grid(alpha=0.3)
    fronts_lines = [Line2D([], [], linestyle=SOURCE_LINES[s], color='#999999', label=f'Pareto front ({s})')
                    for s in SOURCE_MARKERS if s in fronts]
    if any(_wilson_err(e, r) for e, r, _ in pts):
        fronts_lines.append(Line2D([], [], color='#777777', linewidth=0.8, label='error bars: Wilson 95%'))
    _legend(axes[-1], pts, fronts_lines)
    return _save(fig, path)


def plot_expert_load(entries: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Expert load histograms of the entries that recorded routing.load."""
    with_load = [e for e in entries if (e.get('routing') or {}).get('load')]
    if not with_load:
        return _empty(path, 'expert load', 'routing.load')
    shown, note = _panels(with_load)
    fig, axes = _figure(*_grid(len(shown)), size=(4.0, 3.0))
    for ax, e in zip(axes, shown):
        load = e['routing']['load']
        ax.bar(range(len(load)), load, color=KIND_COLORS['moe'])
        ax.axhline(1 / len(load), color='#d62728', linestyle='--', linewidth=1, label='uniform')
        collapse = e['routing'].get('collapse')
        ax.set_title(f"{_label(e)}\n{e['training']['method']}, {e['dataset']}"
                     + ('' if collapse is None else f', collapse {collapse:.2f}'), fontsize=8)
        ax.set_xticks(range(len(load)))
        ax.set_xlabel('expert', fontsize=8)
        ax.set_ylabel('share of images', fontsize=8)
        ax.set_ylim(0, max(1.0 / len(load), max(load)) * 1.15)
        ax.legend(fontsize=7)
    for ax in axes[len(shown):]:
        ax.set_axis_off()
    if note:
        fig.suptitle(note, fontsize=9)
    return _save(fig, path)


COMMON_KEYS = ('autoattack', 'worst_case', 'pgd20', 'apgd-ce', 'apgd20')


def common_attack(entry: Mapping[str, Any]) -> Optional[str]:
    """The strongest attack measured on the gated model and on every expert alike (None: no common one).

    The bars must compare like with like: the gated model's AutoAttack number beside an expert's
    PGD number would make the expert look more robust than it is.
    """
    results = [entry] + list(entry.get('per_expert') or [])
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


def plot_per_expert(entries: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Clean and robust accuracy of every expert forced on its own, beside the gated model."""
    with_pe = [e for e in entries if e.get('per_expert')]
    if not with_pe:
        return _empty(path, 'per-expert robustness', 'per_expert results')
    shown, note = _panels(with_pe)
    fig, axes = _figure(*_grid(len(shown)), size=(4.4, 3.2))
    for ax, e in zip(axes, shown):
        key = common_attack(e)
        experts = sorted(e['per_expert'], key=lambda p: p['expert'])
        labels = ['gated'] + [f"e{pe['expert']}" for pe in experts]
        clean = [e['clean_acc']] + [pe['clean_acc'] for pe in experts]
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], clean, width=0.4, color='#aec7e8', label='clean', yerr=_bars_err(e, clean),
               capsize=2, error_kw=dict(elinewidth=0.8))
        if key is not None:
            robust = [e['robust_acc'][key]] + [pe['robust_acc'][key] for pe in experts]
            ax.bar([x + 0.2 for x in xs], robust, width=0.4, color='#1f77b4', label=ATTACK_LABELS.get(key, key),
                   yerr=_bars_err(e, robust), capsize=2, error_kw=dict(elinewidth=0.8))
            ax.axhline(robust[0], color='#d62728', linestyle='--', linewidth=1, label='gated, robust')
        else:
            ax.text(0.5, 0.5, 'no attack shared by the gated model and all experts', ha='center', fontsize=7,
                    transform=ax.transAxes)
        ax.set_xticks(list(xs), labels, fontsize=8)
        ax.set_ylabel('accuracy (%)', fontsize=8)
        ax.set_ylim(0, max(clean) * 1.35)  # head room for the legend
        ax.set_title(f"{_label(e)}\n{e['training']['method']}, {e['dataset']}"
                     + (' (error bars: Wilson 95%)' if _bars_err(e, clean) else ''), fontsize=8)
        ax.legend(fontsize=7, ncol=3, loc='upper center')
    for ax in axes[len(shown):]:
        ax.set_axis_off()
    if note:
        fig.suptitle(note, fontsize=9)
    return _save(fig, path)


def plot_flops_vs_robust(entries: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Robust accuracy against the ratio of active inference FLOPs to the dense baseline."""
    pts = [(e, *robust_metric(e)) for e in entries if (e.get('flops') or {}).get('ratio') is not None]
    pts = [(e, r, k) for e, r, k in pts if r is not None]
    if not pts:
        return _empty(path, 'FLOPs vs robust accuracy', 'flops.ratio and a robust accuracy')
    fig, (ax,) = _figure(size=(8.0, 5.0))
    labels = []
    for e, r, key in pts:
        color = _color(e)
        x = e['flops']['ratio']
        yerr = _wilson_err(e, r)
        if yerr:
            ax.errorbar(x, r, yerr=yerr, fmt='none', ecolor=color, elinewidth=0.8, capsize=2, alpha=0.6)
        ax.scatter(x, r, marker=SOURCE_MARKERS[e['source']], s=40, edgecolors=color,
                   facecolors=color if key == 'autoattack' else 'none', linewidths=1.1)
        k = e['model'].get('k')
        arch = f"E{e['model']['experts']}" + (f'k{k}' if k else '') if e['model'].get('experts') else KIND_NAMES[_kind(e)]
        labels.append((x, r, f'{arch} · {_training(e)}', KIND_COLORS[_kind(e)]))
    ax.axvline(1.0, color='#999999', linestyle=':', linewidth=1)
    # plain ratios (1.0003, not 0.0003 + 1), over at least ±0.02 so that near-equal costs are not a blur
    ax.ticklabel_format(axis='x', useOffset=False, style='plain')
    lo, hi = min(x for x, *_ in labels), max(x for x, *_ in labels)
    if hi - lo < 0.04:
        ax.set_xlim(min(lo, 1.0) - 0.02, max(hi, 1.0) + 0.02)
    ax.set_xlabel('active inference FLOPs / dense baseline')
    ax.set_ylabel('robust accuracy (%): AutoAttack, else worst case, else PGD-20')
    ax.set_title('FLOPs vs robust accuracy (dotted: the dense cost)')
    ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D
    _legend(ax, pts, [Line2D([], [], color='#777777', linewidth=0.8, label='error bars: Wilson 95%')]
            if any(_wilson_err(e, r) for e, r, _ in pts) else [])
    if len(labels) <= 24:  # a column of names; the paper's full grid would be a wall of them
        label_column(ax, labels)
    return _save(fig, path)


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

"""The plots read right: Wilson error bars on every accuracy with a known number of points, a legend drawn as
the points are (hollow, and which training), plain FLOPs ratios, and point labels that never overlap."""
from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.container import ErrorbarContainer

from bench.results import report
from registry_fakes import make_entry


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions draw, instead of their PNG files."""
    drawn = []
    monkeypatch.setattr(report, 'save_figure', lambda fig, path: drawn.append(fig) or path)
    return drawn


def _entries():
    dense = make_entry('d-pgd', experts=0, clean=75.0, robust=60.0)
    moe = make_entry('m-normal', clean=78.0, robust=20.0, lr=0.2)
    moe['training']['method'] = 'normal'
    return [dense, moe]


def test_clean_vs_robust_has_error_bars_and_a_legend_that_matches(figures):
    report.plot_clean_vs_robust(_entries(), Path('x.png'))
    ax = figures[0].axes[-1]
    assert sum(isinstance(c, ErrorbarContainer) for c in ax.containers) == 2
    legend = ax.get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    assert 'dense · pgd training' in texts and 'MoE · normal training' in texts
    assert 'filled: AutoAttack' not in texts  # no point is filled, so no filled marker is explained
    measured = legend.legend_handles[texts.index('measured')]
    assert measured.get_markerfacecolor() == 'none'  # drawn hollow, as the points are


def test_flops_vs_robust_writes_plain_ratios(figures):
    report.plot_flops_vs_robust(_entries(), Path('x.png'))
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    fig = figures[0]
    ax = fig.axes[0]
    FigureCanvasAgg(fig).draw()
    assert ax.xaxis.get_major_formatter().get_offset() == ''  # no '+1' offset notation
    lo, hi = ax.get_xlim()
    # fitted to the ratios (1.0 and 1.005) and the dense cost: not 0.98-1.02, where they were a sliver
    assert lo < 1.0 and 1.005 < hi and hi - lo < 0.01
    assert any(isinstance(c, ErrorbarContainer) for c in ax.containers)


def _overlaps(ax) -> int:
    """Pairs of texts on the axes whose boxes overlap (the text only, not a leader line)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text
    canvas = FigureCanvasAgg(ax.figure)
    canvas.draw()
    boxes = [Text.get_window_extent(t, canvas.get_renderer()) for t in ax.texts]
    return sum(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


CLUSTER = [(70 + 0.1 * i, 57 + 0.05 * i, f'config_{i}', '#1f77b4') for i in range(12)] + [(60, 45, 'far', '#444')]


def test_label_column_never_overlaps():
    fig, (ax,) = report.new_figure(size=(7.0, 5.0))
    for x, y, *_ in CLUSTER:
        ax.scatter(x, y)
    report.label_column(ax, CLUSTER)
    assert len(ax.texts) == len(CLUSTER) and _overlaps(ax) == 0


def test_labels_beside_clustered_points_do_overlap():  # what the check catches: the old labelling
    fig, (ax,) = report.new_figure(size=(7.0, 5.0))
    for x, y, text, _ in CLUSTER:
        ax.scatter(x, y)
        ax.annotate(text, (x, y), fontsize=7, xytext=(4, 4), textcoords='offset points')
    assert _overlaps(ax) > 0


def _two_settings():
    """Three models at eps 0.1 and three at 8/255, the clean accuracies of the two settings apart."""
    out = []
    for eps, base in ((0.1, 70.0), (8 / 255, 50.0)):
        for i, (experts, method) in enumerate(((0, 'pgd'), (4, 'pgd'), (4, 'normal'))):
            e = make_entry(f'{"a" if eps == 0.1 else "b"}-{i}', experts=experts, clean=base + 3 * i,
                           robust=40.0 - 5 * i, eps=eps, lr=0.1 * (i + 1))
            e['training']['method'] = method
            out.append(e)
    return out


def _points(ax):
    """Every (x, y) the axes draw as a marker or a line."""
    pts = {tuple(p) for c in ax.collections if hasattr(c, 'get_offsets') for p in c.get_offsets()}
    return pts | {tuple(p) for line in ax.lines for p in line.get_xydata()}


def test_no_panel_mixes_settings_and_no_line_crosses_them(figures):
    entries = _two_settings()
    for plot, x_of in ((report.plot_clean_vs_robust, lambda e: e['clean_acc']),
                       (report.plot_flops_vs_robust, lambda e: e['flops']['ratio'] if e.get('flops') else None)):
        figures.clear()
        plot(entries, Path('x.png'))
        panels = [ax for ax in figures[0].axes if ax.axison]
        assert len(panels) == 2, plot  # one per eps (before: one panel titled 'eps 0.1, 8/255')
        for ax, eps, label in zip(panels, (8 / 255, 0.1), ('eps 8/255', 'eps 0.1')):
            assert ax.get_title().count('eps ') == 1 and label in ax.get_title(), ax.get_title()
            own = {(x_of(e), report.robust_metric(e)[0]) for e in entries if e['eps'] == eps and x_of(e)}
            other = {(x_of(e), report.robust_metric(e)[0]) for e in entries if e['eps'] != eps and x_of(e)}
            drawn = {p for p in _points(ax) if p in own | other}
            assert drawn == own, (plot, ax.get_title())  # every point of its setting, none of the other
            for line in ax.lines:  # a front joins only points of its panel's setting
                xy = {tuple(p) for p in line.get_xydata()}
                assert not xy & other
        if plot is report.plot_clean_vs_robust:  # few points: each is named, not told by colour alone
            assert {'dense · pgd', 'E4k1 · pgd', 'E4k1 · normal'} <= {t.get_text() for t in panels[0].texts}


def test_expert_panels_are_configurations_averaged_over_seeds(figures):
    runs = []
    for seed, load in enumerate(([0.4, 0.2, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2], [0.5, 0.1, 0.2, 0.2])):
        e = make_entry(f'entropy-{seed}', seed=seed, attacks={'pgd20': 40.0 + seed})
        e['routing']['load'] = load
        e['per_expert'] = [{'expert': i, 'clean_acc': 60.0 - i, 'robust_acc': {'pgd20': 30.0 + seed - i}}
                           for i in range(4)]
        runs.append(e)
    kl = make_entry('kl-0', attacks={'pgd20': 35.0}, lr=0.3,
                    model_kwargs={'width': 16, 'gate': 'gap_fc', 'aux_loss': 'kl', 'placement': 'last'})
    kl['routing']['load'] = [0.9, 0.05, 0.03, 0.02]
    kl['per_expert'] = [{'expert': i, 'clean_acc': 50.0, 'robust_acc': {'pgd20': 20.0}} for i in range(4)]
    for plot in (report.plot_expert_load, report.plot_per_expert):
        figures.clear()
        plot(runs + [kl], Path('x.png'))
        panels = [ax for ax in figures[0].axes if ax.axison]
        assert len(panels) == 2, plot  # a configuration per panel, its three seeds one of them (before: 4)
        titles = [ax.get_title() for ax in panels]
        assert len(set(titles)) == 2 and sum('kl' in t for t in titles) == 1
        assert sum('3 seeds' in t for t in titles) == 1
        seeds = panels[[i for i, t in enumerate(titles) if '3 seeds' in t][0]]
        assert any(isinstance(c, ErrorbarContainer) for c in seeds.containers)  # the interval over the seeds
        bars = [p.get_height() for p in seeds.patches][:4]
        if plot is report.plot_expert_load:
            assert bars == pytest.approx([0.4, 0.2, 0.2, 0.2])  # the mean over the seeds
            assert len({ax.get_ylim() for ax in panels}) == 1  # one y-scale for every panel

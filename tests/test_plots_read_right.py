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
    monkeypatch.setattr(report, '_save', lambda fig, path: drawn.append(fig) or path)
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
    assert hi - lo >= 0.04 and lo < 1.0 < hi
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
    fig, (ax,) = report._figure(size=(7.0, 5.0))
    for x, y, *_ in CLUSTER:
        ax.scatter(x, y)
    report.label_column(ax, CLUSTER)
    assert len(ax.texts) == len(CLUSTER) and _overlaps(ax) == 0


def test_labels_beside_clustered_points_do_overlap():  # what the check catches: the old labelling
    fig, (ax,) = report._figure(size=(7.0, 5.0))
    for x, y, text, _ in CLUSTER:
        ax.scatter(x, y)
        ax.annotate(text, (x, y), fontsize=7, xytext=(4, 4), textcoords='offset points')
    assert _overlaps(ax) > 0

"""The leaderboard reads right: every row says what distinguishes it, and the terminal view fits 110 columns
without breaking a model name or a number."""
from __future__ import annotations

import io
import re
from collections import Counter
from typing import List, Tuple

from rich.console import Console

from bench.cli import main
from bench.pipeline.quickstart import _print_summary
from bench.results.leaderboard import print_table, render_markdown
from bench.results.leaderboard.render import IDENTITY
from bench.results.registry import DEFAULT_REGISTRY, load_entries
from registry_fakes import make_entry


def _tables(text: str) -> List[Tuple[str, List[dict]]]:
    """(heading, rows as {column: cell}) of every markdown table."""
    out, heading, lines = [], '', text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith('#'):
            heading = lines[i]
        if lines[i].startswith('| ') and i + 1 < len(lines) and lines[i + 1].startswith('|--'):
            head = [c.strip() for c in lines[i].strip('|').split(' | ')]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith('| '):
                rows.append(dict(zip(head, (c.strip() for c in lines[i].strip('|').split(' | ')))))
                i += 1
            out.append((heading, rows))
        i += 1
    return out


def rows_alike(text: str) -> List[str]:
    """Rows of one table that agree in every identifying column (IDENTITY)."""
    clashes = []
    for heading, rows in _tables(text):
        if not rows or not set(IDENTITY) <= set(rows[0]):
            continue
        seen = Counter(tuple(r[c] for c in IDENTITY) for r in rows)
        clashes += [f'{heading}: {" | ".join(k)} ({n} rows)' for k, n in seen.items() if n > 1]
    return clashes


def test_no_two_rows_of_the_shipped_leaderboard_look_alike():
    entries = load_entries(DEFAULT_REGISTRY)
    text = render_markdown(entries)
    assert not rows_alike(text), '\n'.join(rows_alike(text))
    # the committed file is the one this code renders (regenerate: python -m bench.cli leaderboard)
    assert (DEFAULT_REGISTRY / 'LEADERBOARD.md').read_text(encoding='utf-8') == text


def test_runs_that_differ_in_epochs_upcycling_width_or_study_config_say_so():
    base = dict(attacks={'pgd20': 30.0})
    a = make_entry('a', **base)
    b = make_entry('b', **base)
    b['training']['epochs'] = 2
    c = make_entry('c', **base)
    c['training']['config']['upcycle_from'] = 'runs/study/cells/dense_half-seed0/run'
    d = make_entry('d', **base)
    d['model']['effective_kwargs'] = dict(d['model']['effective_kwargs'], expert_width='matched')
    e = make_entry('e', **base, lr=0.3, grid={'spec': 'study_x', 'config': 'dense', 'seed': 0, 'cell': 'dense-seed0',
                                      'stage': 'main'})
    rows = {r['Entry']: r for _, t in _tables(render_markdown([a, b, c, d, e])) for r in t}
    assert rows['a']['Setup'] == '1 ep · seed 0' and rows['b']['Setup'] == '2 ep · seed 0'
    assert rows['c']['Setup'] == '1 ep · upcycled from dense_half-seed0/run · seed 0'
    assert rows['d']['Config'].endswith('· matched experts') and rows['d']['Setup'] == rows['a']['Setup']
    assert rows['e']['Setup'] == 'study_x: dense · 1 ep · seed 0'


def test_a_seed_group_across_grids_names_every_grid():
    # a pilot's seeds and the study it sized share one configuration, so they form one seed group: its Setup
    # must not credit the study's seeds to the pilot
    runs = [make_entry(f'r{seed}', attacks={'pgd20': 30.0 + seed % 3}, seed=seed,
                       grid={'spec': spec, 'config': 'convmoe_all', 'seed': seed, 'cell': f'convmoe_all-seed{seed}',
                             'stage': 'main'})
            for spec, seed in (('pilot', 0), ('pilot', 1), ('study_p', 100))]
    rows = [r for _, t in _tables(render_markdown(runs)) for r in t]
    assert len(rows) == 1, rows
    assert rows[0]['Setup'] == 'pilot: convmoe_all + study_p: convmoe_all · 1 ep · seeds 0, 1, 100'
    alone = [r for _, t in _tables(render_markdown(runs[:2])) for r in t]
    assert alone[0]['Setup'] == 'pilot: convmoe_all · 1 ep · seeds 0, 1'


def test_the_identity_check_fires_on_rows_that_look_alike():
    a, b = make_entry('a', attacks={'pgd20': 30.0}), make_entry('b', attacks={'pgd20': 31.0})
    b['training']['config']['lr'] = 0.2  # another configuration, but nothing the table shows
    assert len(rows_alike(render_markdown([a, b]))) == 1


def _lines(console: Console) -> List[str]:
    return console.export_text().splitlines()


def test_the_terminal_view_of_the_quickstart_fits_110_columns():
    entries = [e for e in load_entries(DEFAULT_REGISTRY) if e['dataset'] == 'fashion-mnist-bundled'
               and e['eps'] < 0.05]
    assert len(entries) == 4
    console = Console(width=110, record=True, file=io.StringIO())
    print_table(entries, console=console)
    lines = _lines(console)
    assert max(map(len, lines)) <= 110
    text = '\n'.join(lines)
    for e in entries:  # names and numbers whole: nothing folded mid-word
        assert re.search(rf'│ {e["model"]["name"]} +│', text), e['model']['name']
        assert f'{e["clean_acc"]:.2f}' in text
    assert 'not shown here' not in text  # all three attack columns fit
    assert re.search(r'\[\d+\.\d, \d+\.\d\]', text)


def test_the_terminal_view_leaves_out_what_does_not_fit_and_says_so():
    # constructed entries, not the shipped registry: which rows rank first there changes with every study entry
    sets = [{'pgd20': 31.0, 'apgd-ce': 30.5, 'apgd-ce20': 30.8, 'apgd-t3': 30.0, 'worst_case': 30.0},
            {'pgd20': 41.0, 'apgd-ce': 40.5, 'worst_case': 40.5},
            {'pgd20': 21.0, 'apgd-ce': 20.5, 'apgd-ce20': 20.7, 'worst_case': 20.5},
            {'pgd20': 11.0, 'apgd-ce': 10.5, 'apgd-t3': 10.2, 'worst_case': 10.2}]
    entries = [make_entry(f'resnet18_blockmoe_e4_k1-pgd-fmnist-{i:06x}', lr=0.1 * (i + 1), attacks=a)
               for i, a in enumerate(sets)]
    console = Console(width=80, record=True, file=io.StringIO())  # at 110 columns, every column fits
    print_table(entries, console=console, limit=3)
    text = '\n'.join(_lines(console))
    assert max(map(len, text.splitlines())) <= 80
    flat = ' '.join(text.split())  # the caption wraps
    assert 'not shown here (too narrow)' in flat and 'APGD-CE-100' in text  # the ranking metric always stays
    assert 'fmnist-000001' not in text  # ids only in --wide
    wide = Console(width=1000, record=True, file=io.StringIO())
    print_table(entries, console=wide, limit=3, wide=True)
    shown = wide.export_text()
    assert 'not shown here' not in shown
    # --wide: entry ids, of the 3 best by APGD-CE-100 only
    assert [i for i in range(4) if f'resnet18_blockmoe_e4_k1-pgd-fmnist-{i:06x}' in shown] == [0, 1, 2]


def test_the_quickstart_summary_fits_110_columns():
    row = dict(intervals={'clean': [69.5, 79.3], 'pgd20': [62.2, 72.7], 'apgd-ce20': [62.2, 72.7]},
               clean_acc=74.67, pgd_acc=67.67, apgd_acc=67.67, flops_ratio=1.0001, train_img_per_s=512.0, flags=[])
    summary = dict(dataset='fashion-mnist-bundled', n_eval=300,
                   rows=[dict(row, model=m, training=t) for m in ('resnet18_dense', 'resnet18_blockmoe_e4_k1')
                         for t in ('normal', 'adversarial')],
                   pgd_gain_points={'dense': 30.0, 'moe': 31.0},
                   pgd_gain_interval={'dense': [25.0, 35.0], 'moe': [26.0, 36.0]}, method_works=True,
                   adv_train_img_per_s_moe_over_dense=0.9, seconds={'total': 100.0}, leaderboard='x/LEADERBOARD.md',
                   plots=['x/clean_vs_robust.png'], device='cpu AMD EPYC (2 cores, AVX2 kernels)')
    console = Console(width=110, record=True, file=io.StringIO())
    _print_summary(console, summary)
    lines = _lines(console)
    table = [line for line in lines if line.startswith(('│', '┃'))]
    assert table and max(map(len, table)) <= 110
    text = '\n'.join(lines)
    assert 'resnet18_blockmoe_e4_k1 ' in text and '[69.5, 79.3]' in text and 'adversarial' in text
    # the throughput of runs that shared the cores reads as what it is, not as a speed comparison
    flat = ' '.join(text.split())
    assert 'wall img/s' in flat and 'not a speed comparison' in flat
    assert 'wall throughput under shared load, BlockMoE / dense: 0.90x' in flat



def test_the_terminal_view_shows_measured_sections_first_and_the_paper_cut(monkeypatch, capsys):
    # the shipped registry, as a user's 110-column terminal shows it: the paper's 219 reported CIFAR-100 rows
    # came first and in full, burying the results measured here
    monkeypatch.setenv('COLUMNS', '110')
    assert main(['leaderboard', '--no-write']) == 0
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= 110
    titles = re.findall(r'^ *(\S+ · \S+ · eps \S+): (?:ranked|not measured)', out, flags=re.M)
    # every measured section (the bundled subset's, the full Fashion-MNIST studies') comes before the paper's
    datasets = [t.split(' · ')[0] for t in titles]
    first_paper = datasets.index('cifar100')
    assert 'fashion-mnist-bundled' in datasets[:first_paper], datasets
    assert set(datasets[first_paper:]) == {'cifar100'}, datasets
    reported = [e for e in load_entries(DEFAULT_REGISTRY) if e['dataset'] == 'cifar100']
    assert all(e['source'] != 'measured' for e in reported)
    ranked = re.search(r'cifar100 · Linf · eps 8/255: ranked by .* \((\d+) of (\d+) rows\)', out)
    assert ranked and int(ranked[1]) == 10 < int(ranked[2])
    assert f'... {int(ranked[2]) - 10} more rows of cifar100 · Linf · eps 8/255 not shown: --limit 0' in out
    assert len(out.splitlines()) < 400  # before: 1,054


def test_a_column_empty_on_every_shown_row_makes_way(monkeypatch):
    # AutoAttack on one unranked row only: on the ranked rows it is '—' everywhere, and the columns with
    # numbers take its place (it took the place of APGD-CE-20 and PGD-20 before)
    sets = [{'pgd20': 31.0 + i, 'apgd-ce': 30.5 + i, 'apgd-ce20': 30.8 + i} for i in range(3)]
    entries = [make_entry(f'resnet18_blockmoe_e4_k1-pgd-fmnist-{i:06x}', lr=0.1 * (i + 1), attacks=a)
               for i, a in enumerate(sets)]
    entries.append(make_entry('resnet18_blockmoe_e4_k1-pgd-fmnist-0000aa', lr=0.9,
                              attacks={'autoattack': 20.0}))
    console = Console(width=110, record=True, file=io.StringIO())
    print_table(entries, console=console)
    text = console.export_text()
    ranked, unranked = text.split('not measured with')
    head = ' '.join(line for line in ranked.splitlines() if line.startswith('┃'))
    for label in ('APGD-CE-100', 'APGD-CE-20', 'PGD-20'):
        assert label in head.split('Clean')[1], head
    assert 'AutoAttack' not in head and 'no value on these rows: AutoAttack' in ranked
    # the unranked row has no APGD-CE-100: the ranking metric's column is empty there and left out too
    head = ' '.join(line for line in unranked.splitlines() if line.startswith('┃'))
    assert 'AutoAttack' in head and 'APGD-CE-100' not in head

"""The leaderboard: one attack configuration per column, ranks within the sorted metric, seed groups, intervals."""
from __future__ import annotations

import copy
import math
import random
import re
import shutil
from pathlib import Path
from typing import Dict, List

import pytest

from bench.results import leaderboard as lb
from bench.cli import main
from bench.core.errors import UserError
from bench.results.registry import DEFAULT_REGISTRY, load_entries, write_entry
from bench.core.stats import t_quantile, wilson_interval
from registry_fakes import make_entry

# the quickstart's entries as shipped before schema 2, kept to prove that old entries still render
SCHEMA1_REGISTRY = Path(__file__).parent / 'fixtures' / 'registry_schema1'


def _table(text: str, heading: str) -> List[Dict[str, str]]:
    """The rows of the first markdown table after `heading`, as {column: cell}."""
    lines = text[text.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('| '))
    head = [c.strip() for c in lines[start].strip('|').split(' | ')]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith('| '):
            break
        rows.append(dict(zip(head, (c.strip() for c in line.strip('|').split(' | ')))))
    return rows


def _paper_copy(root: Path, pattern: str = 'paper-resnet18-dense-*.json') -> None:
    for p in DEFAULT_REGISTRY.rglob(pattern):
        dst = root / p.relative_to(DEFAULT_REGISTRY)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dst)


# --- one configuration per column ---------------------------------------------------------------------

def test_pgd10_and_pgd20_are_two_columns():
    a = make_entry('a-pgd10', attacks={'pgd10': 30.0})
    b = make_entry('b-pgd20', attacks={'pgd20': 25.0}, lr=0.2)
    columns, _ = lb.columns_of([a, b])
    assert [c.label for c in columns] == ['PGD-20', 'PGD-10']
    text = lb.render_markdown([a, b], sort='pgd20')
    ranked = _table(text, '## fashion-mnist-bundled')
    assert [(r['#'], r['Entry'], r['PGD-20'], r['PGD-10']) for r in ranked] == [
        ('1', 'b-pgd20', '25.00 [19.5, 31.4]', '—')]
    apart = _table(text, '### Not measured with PGD-20')
    assert [(r['#'], r['Entry'], r['PGD-20'], r['PGD-10']) for r in apart] == [
        ('—', 'a-pgd10', '—', '30.00 [24.1, 36.7]')]


def test_apgd_step_counts_and_the_papers_apgd_are_separate_columns(tmp_path):
    entries = [make_entry('a', attacks={'apgd-ce': 20.0}), make_entry('b', attacks={'apgd-ce20': 21.0}),
               make_entry('c', attacks={'apgd-ce10': 22.0})]
    _paper_copy(tmp_path)
    paper = load_entries(tmp_path)
    columns, keymap = lb.columns_of(entries + paper)
    labels = [c.label for c in columns]
    assert labels == ['APGD-CE-100', 'APGD-20 [torchattacks]', 'APGD-CE-20', 'APGD-CE-10', 'PGD-20 [paper code]']
    assert len({keymap['b']['apgd-ce20'], keymap[paper[0]['entry_id']]['apgd20']}) == 2


def test_stored_settings_split_a_key_that_meant_something_else():
    plain = make_entry('plain', attacks={'pgd20': 20.0})
    restart = make_entry('restart', attacks={'pgd20': 18.0})
    restart['eval_settings']['attacks']['pgd20'].update(restarts=5, random_start=True)
    columns, keymap = lb.columns_of([plain, restart])
    assert [c.label for c in columns] == ['PGD-20', 'PGD-20-RS×5']
    assert keymap['plain']['pgd20'] != keymap['restart']['pgd20']


def test_clashing_labels_get_a_hash():
    a = make_entry('a', attacks={'apgd-ce20': 20.0})
    b = make_entry('b', attacks={'apgd-ce20': 20.0})
    b['eval_settings']['attacks']['apgd-ce20']['rho'] = 0.5  # not in the label
    labels = [c.label for c in lb.columns_of([a, b])[0]]
    assert len(set(labels)) == 2 and all(lab.startswith('APGD-CE-20 #') for lab in labels)


def test_schema1_keys_and_stored_settings_share_a_column(tmp_path):
    old = load_entries(SCHEMA1_REGISTRY)[0]
    new = make_entry('new', attacks={'pgd20': 20.0, 'apgd-ce20': 19.0, 'worst_case': 18.0}, eps=old['eps'])
    columns, keymap = lb.columns_of([old, new])
    assert keymap[old['entry_id']] == keymap['new']  # same configurations: same columns, worst case included
    pgd = next(c for c in columns if c.label == 'PGD-20')
    assert pgd.inferred == ('pgd20',)  # and the legend says where the old entry's settings come from
    assert "the key 'pgd20' meant" in lb.render_markdown([old, new])


def test_sections_split_by_eps():
    a, b = make_entry('a', eps=8 / 255), make_entry('b', eps=4 / 255)
    text = lb.render_markdown([a, b])
    assert '## fashion-mnist-bundled · Linf · eps 4/255' in text and '## fashion-mnist-bundled · Linf · eps 8/255' in text


# --- ranking ------------------------------------------------------------------------------------------

def test_rows_without_the_metric_are_listed_apart_not_ranked():
    aa = make_entry('with-aa', attacks={'autoattack': 30.0})
    pgd_only = make_entry('pgd-only', attacks={'pgd20': 50.0}, lr=0.2)
    text = lb.render_markdown([aa, pgd_only], sort='autoattack')
    assert [(r['#'], r['Entry']) for r in _table(text, '## fashion')] == [('1', 'with-aa')]
    assert [(r['#'], r['Entry']) for r in _table(text, '### Not measured with AutoAttack')] == [('—', 'pgd-only')]


def test_equal_values_share_a_rank_and_ties_follow_clean_then_id():
    es = [make_entry(f'm-{x}', clean=clean, attacks={'pgd20': pgd}, lr=lr)
          for x, clean, pgd, lr in (('b', 60.0, 20.0, 0.1), ('a', 60.0, 20.0, 0.2), ('c', 70.0, 20.0, 0.3),
                                    ('d', 90.0, 10.0, 0.4))]
    rows = _table(lb.render_markdown(es, sort='PGD-20'), '## fashion')
    assert [(r['#'], r['Entry']) for r in rows] == [('1', 'm-c'), ('1', 'm-a'), ('1', 'm-b'), ('4', 'm-d')]
    assert [r['Entry'] for r in _table(lb.render_markdown(es, sort='clean'), '## fashion')] == ['m-d', 'm-c', 'm-a', 'm-b']


def test_auto_ranks_by_the_most_measured_then_strongest_configuration():
    es = [make_entry('x', attacks={'pgd20': 40.0, 'apgd-ce': 35.0}),
          make_entry('y', attacks={'pgd20': 30.0, 'apgd-ce': 32.0}, lr=0.2),
          make_entry('z', attacks={'autoattack': 10.0})]
    text = lb.render_markdown(es)
    assert 'Ranked by **APGD-CE-100**' in text  # on 2 rows (AutoAttack on 1); APGD lower on average than PGD
    assert [r['Entry'] for r in _table(text, '## fashion')] == ['x', 'y']
    assert [r['Entry'] for r in _table(text, '### Not measured with APGD-CE-100')] == ['z']


def test_sort_names_one_configuration(tmp_path):
    ours = make_entry('ours', attacks={'pgd20': 20.0}, eps=8 / 255, dataset='cifar100')
    _paper_copy(tmp_path)
    entries = [ours] + load_entries(tmp_path)
    with pytest.raises(UserError, match=r"'pgd20' names 2 attack configurations .*PGD-20; PGD-20 \[paper code\]"):
        lb.render_markdown(entries, sort='pgd20')
    assert _table(lb.render_markdown(entries, sort='pgd-20'), '## cifar100')[0]['Entry'] == 'ours'
    with pytest.raises(UserError, match=r"'pgd' names no attack configuration .*PGD-20"):
        lb.check_sort(entries, 'pgd')


# --- intervals and seed groups --------------------------------------------------------------------------

def test_single_runs_carry_their_wilson_interval_below_10000_points():
    e = make_entry('w', clean=60.0, attacks={'pgd20': 21.0}, n=200)
    row = _table(lb.render_markdown([e]), '## fashion')[0]
    lo, hi = wilson_interval(42, 200)
    assert row['PGD-20'] == f'21.00 [{lo:.1f}, {hi:.1f}]' and row['n'] == '200' and row['Seeds'] == '1'
    rb = [x for x in load_entries(DEFAULT_REGISTRY) if x['entry_id'] == 'robustbench-rice2020overfitting']
    row = _table(lb.render_markdown(rb), '## cifar100')[0]
    assert row['AutoAttack'] == '18.95†' and row['n'] == '10000'  # 10,000 points: no interval


def test_schema1_entries_get_an_interval_from_n_examples():
    old = load_entries(SCHEMA1_REGISTRY)
    rows = _table(lb.render_markdown(old), '## fashion')
    for row in rows:
        e = next(x for x in old if x['entry_id'] == row['Entry'])
        lo, hi = wilson_interval(round(e['robust_acc']['pgd20'] * 3), 300)
        assert row['PGD-20'] == f"{e['robust_acc']['pgd20']:.2f} [{lo:.1f}, {hi:.1f}]"


def _three_seeds() -> list:
    return [make_entry(f'run-s{s}', seed=s, clean=60.0 + s, attacks={'pgd20': v})
            for s, v in zip((0, 1, 2), (20.0, 22.0, 27.0))]


def test_three_seeds_are_one_row_with_mean_std_and_t_interval():
    runs = _three_seeds()
    other = make_entry('other-config', attacks={'pgd20': 25.0}, lr=0.2)
    text = lb.render_markdown(runs + [other])
    rows = _table(text, '## fashion')
    assert len(rows) == 2
    group = next(r for r in rows if r['Seeds'] == '3')
    assert group['Entry'] == 'run-s0, run-s1, run-s2'
    mean, std = 23.0, math.sqrt(((20 - 23) ** 2 + (22 - 23) ** 2 + (27 - 23) ** 2) / 2)
    half = t_quantile(0.95, 2) * std / math.sqrt(3)
    assert group['PGD-20'] == f'{mean:.2f} ±{std:.2f} [{mean - half:.1f}, {mean + half:.1f}]'
    assert group['#'] == '2' and next(r for r in rows if r['Seeds'] == '1')['#'] == '1'  # mean 23 < 25
    # --no-group: one row per run
    rows = lb.make_rows(runs, lb.columns_of(runs)[1], group=False)
    assert len(rows) == 3 and all(len(r.entries) == 1 for r in rows)


def test_a_different_recipe_is_not_a_seed_group():
    a, b = _three_seeds()[:2]
    b['training']['config']['lr'] = 0.2
    assert len(lb.make_rows([a, b], lb.columns_of([a, b])[1])) == 2



def test_a_first_seed_with_more_attacks_stays_in_its_seed_group():
    """A study's first seed adds APGD-T: the three seeds are still one row, every column they share is the
    mean over all three (the dense group keeps its worst seed), and neither worst case is pooled, because
    seed 0's is over another attack set."""
    runs = [make_entry(f'run-s{s}', seed=s, attacks=dict({'pgd20': 30.0 + s, 'apgd-ce': 28.0 + s},
                                                         **({'apgd-t': 25.0, 'worst_case': 24.0} if s == 0
                                                            else {'worst_case': 27.0 + s})))
            for s in (0, 1, 2)]
    columns, keymap = lb.columns_of(runs)
    rows = lb.make_rows(runs, keymap)
    assert len(rows) == 1 and rows[0].ids == ('run-s0', 'run-s1', 'run-s2')
    apgd = next(c.ident for c in columns if c.label == 'APGD-CE-100')
    assert rows[0].cells[apgd].value == pytest.approx(29.0) and rows[0].cells[apgd].std == pytest.approx(1.0)
    worst = [c.ident for c in columns if c.config['attack'] == 'WorstCase']
    assert len(worst) == 2 and not any(w in rows[0].cells for w in worst)
    # the same attack with other settings is another measurement: that run is a row of its own
    odd = make_entry('run-s3', seed=3, attacks={'pgd20': 33.0, 'apgd-ce': 31.0, 'worst_case': 30.0})
    odd['eval_settings']['attacks']['pgd20']['steps'] = 10
    assert [r.ids for r in lb.make_rows(runs + [odd], lb.columns_of(runs + [odd])[1])] == [
        ('run-s0', 'run-s1', 'run-s2'), ('run-s3',)]


# --- config column ----------------------------------------------------------------------------------------

def test_config_shows_effective_noisy_gating():
    quiet = make_entry('quiet')
    noisy = make_entry('noisy')
    noisy['model']['noisy_gating'] = True
    assert lb.moe_config_label(quiet).endswith('no noise') and lb.moe_config_label(noisy).endswith('· noisy')
    old = [e for e in load_entries(SCHEMA1_REGISTRY) if e['model']['experts']][0]
    assert lb.moe_config_label(old).endswith('no noise')  # schema 1: the plugin's default then was off
    unknown = copy.deepcopy(old)
    unknown['source'] = 'robustbench'
    assert lb.moe_config_label(unknown).endswith('noise ?')
    assert lb.moe_config_label(make_entry('dense', experts=0)) == lb.DASH


# --- the file and the command ---------------------------------------------------------------------------

def _small_registry(root: Path) -> list:
    for e in (make_entry('m-b', attacks={'autoattack': 19.0, 'pgd20': 21.0}, lr=0.3),  # not run-s0's config
              make_entry('m-a', attacks={'autoattack': 19.0, 'pgd20': 21.0}, lr=0.2),
              make_entry('m-dense', clean=65.0, attacks={'pgd20': 19.0}, experts=0),
              make_entry('m-other', dataset='cifar10', clean=80.0, attacks={'pgd20': 41.0}),
              *_three_seeds()):
        write_entry(e, root)
    _paper_copy(root)
    return load_entries(root)


def test_leaderboard_is_deterministic(tmp_path):
    entries = _small_registry(tmp_path)
    text = lb.render_markdown(entries)
    for seed in range(5):
        shuffled = entries[:]
        random.Random(seed).shuffle(shuffled)
        assert lb.render_markdown(shuffled) == text
    p1 = lb.write_leaderboard(tmp_path).read_bytes()
    p2 = lb.write_leaderboard(tmp_path).read_bytes()
    assert p1 == p2 == text.encode()
    assert 'paper†' in text and 'not AutoAttack' in text and '| measured |' in text and '—' in text


def test_leaderboard_cli_writes_identical_file(tmp_path, capsys):
    _small_registry(tmp_path)
    assert main(['leaderboard', '--registry', str(tmp_path), '--wide']) == 0  # --wide: entry ids on the console
    first = (tmp_path / 'LEADERBOARD.md').read_bytes()
    out = capsys.readouterr().out
    assert 'm-a' in out and 'LEADERBOARD.md' in out and 'run-s0, run-s1, run-s2' in out
    assert main(['leaderboard', '--registry', str(tmp_path), '--sort', 'clean', '--dataset', 'cifar10']) == 0
    assert (tmp_path / 'LEADERBOARD.md').read_bytes() == first  # the file never depends on the flags
    (tmp_path / 'LEADERBOARD.md').unlink()
    capsys.readouterr()
    assert main(['leaderboard', '--registry', str(tmp_path), '--no-write', '--no-group', '--sort', 'PGD-20',
                 '--wide']) == 0
    out = capsys.readouterr().out
    assert not (tmp_path / 'LEADERBOARD.md').exists()
    assert 'run-s0, run-s1' not in out and 'not measured with PGD-20' in out


@pytest.mark.parametrize('argv, needle', [
    (['leaderboard', '--sort', 'bogus'], "'bogus'"),
    (['leaderboard', '--sort', 'pgd'], "'pgd' names no attack configuration"),
    (['leaderboard', '--registry', '/nonexistent/registry'], '/nonexistent/registry'),
    (['leaderboard', '--dataset', 'imagenet'], "'imagenet'"),
    (['leaderboard', '--limit', '-1'], '--limit -1'),
])
def test_leaderboard_bad_input_is_one_line(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and needle in err and 'Traceback' not in err, err


def test_shipped_leaderboard_mixes_no_configurations():
    text = (DEFAULT_REGISTRY / lb.FILENAME).read_text(encoding='utf-8')
    assert 'APGD-20 [torchattacks]' in text and 'PGD-20 [paper code]' in text
    heads = [line for line in text.splitlines() if line.startswith('| # |')]
    assert heads
    for head in heads:
        cols = [c.strip() for c in head.strip('|').split('|')]
        assert len(cols) == len(set(cols)), head  # one column per attack configuration
        # every attack column names its steps (APGD-CE-20 and APGD-CE-100 are two columns, never one 'APGD')
        attack_cols = [c for c in cols if c.startswith(('APGD', 'PGD'))]
        assert all(re.match(r'^A?PGD(-[A-Z]+)?-\d+', c) for c in attack_cols), head
    assert '| APGD |' not in text

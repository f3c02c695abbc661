"""`timm-moe leaderboard --html`: the page's content, its links, and its behaviour in a real headless Chromium.

The browser test needs Debian's `chromium` (`.ci/run` installs it, so CI always runs it; elsewhere it skips
and says why). It saves two screenshots to $CI_ARTIFACTS (default .ci/artifacts/) for a person to look at: the
top of the page and the study's section, at 1280 px.
"""
from __future__ import annotations

import json
import os
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bench.cli import main
from bench.results import leaderboard as lb
from bench.results.leaderboard.columns import short_labels
from bench.results.leaderboard.html import moe_kind, render_html, write_html
from bench.results.registry import DEFAULT_REGISTRY, load_entries
from headless_chromium import Chromium, find_chromium

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get('CI_ARTIFACTS') or ROOT / '.ci' / 'artifacts')


class _Links(HTMLParser):
    """Every href/src of a page, and whether it has any external resource."""

    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        self.refs += [(tag, k, v) for k, v in attrs if k in ('href', 'src')]


def _refs(text):
    parser = _Links()
    parser.feed(text)
    return parser.refs


@pytest.fixture(scope='module')
def shipped():
    return load_entries(DEFAULT_REGISTRY)


def test_page_is_self_contained_and_links_every_entry(tmp_path, shipped):
    page = write_html(tmp_path / 'site' / 'index.html', DEFAULT_REGISTRY, shipped)
    text = page.read_text(encoding='utf-8')
    refs = _refs(text)
    # nothing from the network: no script or stylesheet file, no absolute URL anywhere
    assert not [r for r in refs if r[0] in ('script', 'link') and r[2] != 'data:,']
    assert not re.search(r'(src|href)="(https?:)?//', text)
    entry_links = [v for tag, k, v in refs if tag == 'a' and v.endswith('.json')]
    assert len(entry_links) >= len(shipped)  # each run links its entry (a seed group's from its run rows)
    by_id = {e['entry_id']: e for e in shipped}
    for href in set(entry_links):  # relative, and each is a copy of its entry
        target = (page.parent / href).resolve()
        assert not Path(href).is_absolute() and target.is_file(), href
        assert json.loads(target.read_text(encoding='utf-8')) == by_id[target.stem]
    # cards: every shipped pretrained tag with an entry has one, and its row links to it
    cards = re.findall(r'id="(card-[^"]+)"', text)
    assert cards and all(f'href="#{c}"' in text for c in cards)
    # one table per data set, threat model and eps, with the markdown's columns: a long label has a short
    # header, and its full label on hover and in the settings list
    secs = lb.sections(shipped)
    assert text.count('<table class="lb">') == len(secs)
    unescaped = text.replace('&#39;', "'")
    for sec in secs:
        short = short_labels(sec.columns)
        for c in sec.columns:
            assert f'title="{c.label}: ' in unescaped
            assert f'<button type="button">{short[c.ident]}</button>' in unescaped
            assert len(short[c.ident]) <= 24 and (short[c.ident] == c.label or f'<b>{short[c.ident]}</b> = {c.label}:'
                                                  in unescaped)
        assert len(set(short.values())) == len(sec.columns)  # no two headers read alike
    # the sections measured here come first; the paper's reported table after them
    order = [int(i) for i in re.findall(r'<section id="section-(\d+)">', text)]
    measured = [any(e['source'] == 'measured' for e in sec.entries) for sec in secs]
    assert sorted(order) == list(range(len(secs))) and measured[order[0]]
    assert [measured[i] for i in order] == sorted(measured, reverse=True)


def test_page_is_a_pure_function_of_the_entries(shipped):
    def href(e):
        return f"{e['dataset']}/{e['entry_id']}.json"
    assert render_html(shipped, href) == render_html(list(shipped), href)


def test_moe_kind_filter_values(shipped):
    def first(name_part):
        return next(e for e in shipped if name_part in e['model']['name'])
    dense, block, conv = first('resnet18_dense'), first('blockmoe'), first('convmoe')
    assert [moe_kind(e) for e in (dense, block, conv)] == ['dense', 'blockmoe', 'convmoe']
    unnamed = dict(block, model=dict(block['model'], name='my_experts_net'))
    assert moe_kind(unnamed) == 'moe'
    converted = dict(block, model=dict(block['model'], name='convnext_atto',
                                       convert={'targets': 'stages.3.blocks.*', 'num_experts': 4, 'k': 1}))
    assert moe_kind(converted) == 'converted'


def test_html_out_must_be_a_file(tmp_path, capsys):
    empty = tmp_path / 'registry'
    empty.mkdir()
    assert main(['leaderboard', '--registry', str(empty), '--no-write', '--html', str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'is a directory' in err


# ------------------------------------------------------------------------------------------------ browser

CHROMIUM = find_chromium()

# JavaScript helpers evaluated in the page
ROWS = """(sel => Array.from(document.querySelectorAll(sel + ' table.lb > tbody')).filter(g => !g.hidden)
  .map(g => g.rows[0].cells[{col}].textContent.trim()))('{sec}')"""
COL = """Array.from(document.querySelectorAll('{sec} table.lb thead th')).findIndex(
  th => th.textContent.trim() === '{label}')"""
SCREEN = 1280  # a laptop's width: the study's numbers must start on it
# the study's table as laid out: where its clean, first attack and ranking columns end, its tallest row (closed),
# a line's height, and the seed groups' toggles
MEASURE = """(() => {{
  const sec = document.querySelector('{sec}');
  const ths = Array.from(sec.querySelectorAll('table.lb thead th'));
  const metric = sec.querySelector('p b').textContent;
  const right = th => th.getBoundingClientRect().right;
  const rows = Array.from(sec.querySelectorAll('table.lb tbody tr')).filter(r => !r.hidden);
  const td = sec.querySelector('table.lb tbody td');
  return {{clean_right: right(ths.find(th => th.textContent.trim().startsWith('Clean'))),
          first_attack: ths.filter(th => th.classList.contains('acc'))[1].getBoundingClientRect().left,
          metric_right: right(ths.find(th => th.title.startsWith(metric + ':'))),
          max_row: Math.max(...rows.map(r => r.getBoundingClientRect().height)),
          line: parseFloat(getComputedStyle(td).lineHeight),
          seeds: Array.from(sec.querySelectorAll('button.toggle')).map(b => b.textContent)}};
}})()"""


@pytest.mark.skipif(CHROMIUM is None, reason='no chromium on PATH (Debian: apt-get install chromium; '
                                             '.ci/run installs it)')
def test_page_in_headless_chromium(tmp_path, shipped):
    page = tmp_path / 'site' / 'leaderboard.html'
    assert main(['leaderboard', '--no-write', '--html', str(page)]) == 0
    secs = lb.sections(shipped)
    # the study's section: measured runs, seed groups, intervals
    fm = max(range(len(secs)), key=lambda i: len(lb.make_rows(secs[i].entries, secs[i].keymap, group=False))
             - len(lb.make_rows(secs[i].entries, secs[i].keymap)))
    sec = f'#section-{fm}'
    start = time.perf_counter()
    with Chromium(CHROMIUM, tmp_path / 'profile', width=SCREEN, height=900) as browser:
        browser.open(page.as_uri())
        assert browser.errors == []
        assert browser.js("document.querySelectorAll('table.lb').length") == len(secs)
        top = browser.screenshot(ARTIFACTS / 'leaderboard-top.png')

        # the study's table on a 1280 px screen: the numbers it ranks by are on the first screen, and a seed
        # group of 40 runs is a row of a few lines, not a list of 40 seeds and 40 entry ids
        m = browser.js(MEASURE.format(sec=sec))
        assert m['first_attack'] < m['metric_right'] <= SCREEN, m
        assert m['clean_right'] < m['metric_right'], m
        assert m['max_row'] <= 5 * m['line'], m  # before: 1,441 px (the Entry cell listed 40 ids)
        assert m['seeds'] and all(re.fullmatch(r'\d+ seeds ▸', t) for t in m['seeds']), m

        # sorting by the clean-accuracy column reorders the rows: high to low, then low to high
        col = browser.js(COL.format(sec=sec, label='Clean'))
        assert col > 0
        before = browser.js(ROWS.format(sec=sec, col=col))
        browser.js(f"document.querySelectorAll('{sec} table.lb thead th')[{col}].querySelector('button').click()")
        desc = browser.js(ROWS.format(sec=sec, col=col))
        values = [float(v.split()[0].rstrip('†')) for v in desc]
        assert values == sorted(values, reverse=True) and desc != before and sorted(desc) == sorted(before)
        assert browser.js(f"document.querySelectorAll('{sec} table.lb thead th')[{col}]"
                          ".getAttribute('aria-sort')") == 'descending'
        browser.js(f"document.querySelectorAll('{sec} table.lb thead th')[{col}].querySelector('button').click()")
        asc = [float(v.split()[0].rstrip('†')) for v in browser.js(ROWS.format(sec=sec, col=col))]
        assert asc == sorted(asc)

        # a seed group expands into its runs
        runs = browser.js(f"""(() => {{
            const g = Array.from(document.querySelectorAll('{sec} tbody')).find(t => t.querySelector('.toggle'));
            const shown = () => Array.from(g.querySelectorAll('tr.run')).filter(r => r.offsetParent !== null).length;
            const closed = shown();
            g.querySelector('.toggle').click();
            return [closed, shown(), g.querySelectorAll('tr.run').length];
        }})()""")
        assert runs[0] == 0 and runs[1] == runs[2] >= 2

        # the filter hides rows: measured only leaves the fashion-mnist section, and nothing reported
        total = browser.js("document.querySelectorAll('table.lb > tbody').length")
        browser.js("""(() => { const s = document.querySelector('select[data-filter="source"]');
                    s.value = 'measured'; s.dispatchEvent(new Event('change')); })()""")
        visible = browser.js("Array.from(document.querySelectorAll('table.lb > tbody'))"
                             ".filter(g => g.offsetParent !== null).map(g => g.dataset.source)")
        assert 0 < len(visible) < total and set(visible) == {'measured'}
        assert browser.js("document.getElementById('shown').textContent") == f'{len(visible)} of {total} rows shown'
        assert browser.js(f"document.querySelector('{sec}').hidden") is False
        # and a second filter narrows it further; "all" brings every row back
        browser.js("""(() => { const s = document.querySelector('select[data-filter="kind"]');
                    s.value = 'dense'; s.dispatchEvent(new Event('change')); })()""")
        kinds = browser.js("Array.from(document.querySelectorAll('table.lb > tbody'))"
                           ".filter(g => g.offsetParent !== null).map(g => g.dataset.kind)")
        assert 0 < len(kinds) < len(visible) and set(kinds) == {'dense'}
        browser.js("""(() => { const s = document.querySelector('select[data-filter="kind"]');
                    s.value = ''; s.dispatchEvent(new Event('change')); })()""")

        # an entry link opens its JSON
        href = browser.js(f"document.querySelector('{sec} td.entry a').getAttribute('href')")
        assert json.loads((page.parent / href).read_text(encoding='utf-8'))['dataset'] == 'fashion-mnist-bundled'
        browser.js(f"document.querySelector('{sec}').scrollIntoView()")  # the study's table, under the filters
        shot = browser.screenshot(ARTIFACTS / 'leaderboard-study.png')
        assert browser.errors == []
    assert shot.stat().st_size > 10_000 and top.stat().st_size > 10_000
    print(f'browser test: {time.perf_counter() - start:.1f} s; study {m}; screenshots {top}, {shot}')

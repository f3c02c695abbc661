"""The leaderboard as one static web page: `timm-moe leaderboard --html OUT`.

The page shows what `LEADERBOARD.md` shows (the same sections, columns, cells and ranking, from
`bench.results.leaderboard`), and adds what a page can: every column sorts, seed groups expand into their runs,
rows filter by architecture, MoE kind, training and source, and each row links to its entry JSON and, for a
shipped pretrained tag, to its model card. It needs no network: the CSS and JS (`bench/assets/leaderboard.*`)
are inlined. The entry links are relative, to copies under `entries/` beside the page (never inside a registry,
see `write_html`). Like the markdown file, the page is a pure function of the entries.
"""
from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from bench.core.atomic import recover_dir, temp_dir_beside
from bench.core.errors import UserError
from bench.results.leaderboard.columns import DAGGER, DASH, DEFAULT_SORT, EXACT_N, describe, short_labels
from bench.results.leaderboard.groups import Row, make_rows, measured_first, rank_rows, resolve_sort, sections
from bench.results.leaderboard.render import (FIXED_LEFT, FIXED_RIGHT, RIGHT, header, row_cells, seed_list,
                                              setup, sort_label)
from bench.results.registry import check_writable, entry_path, registry_holding

ASSETS = Path(__file__).resolve().parents[2] / 'assets'
ENTRY_COPIES = 'entries'  # beside the page
MARKER = '<meta name="generator" content="timm-moe leaderboard --html">'  # tells a page this command wrote
FILTERS = (('arch', 'architecture'), ('kind', 'MoE kind'), ('training', 'training'), ('source', 'source'))
# the page's column order: what the row is, then its numbers, then the rest (E and k are in the model name), so
# that the accuracies start within the first screen; the markdown table keeps its own order
PAGE_LEFT = ('#', 'Model', 'Config', 'Training', 'Setup', 'Clean')
PAGE_RIGHT = ('FLOPs×', 'Seeds', 'n', 'Source', 'E', 'k', 'Flags', 'Entry')


def page_order(n_columns: int) -> List[int]:
    """Where each of the page's cells is in `header`/`row_cells` order, for a section of n attack columns."""
    first, last = len(FIXED_LEFT), len(FIXED_LEFT) + n_columns

    def at(name: str) -> int:
        return FIXED_LEFT.index(name) if name in FIXED_LEFT else last + FIXED_RIGHT.index(name)
    return [at(n) for n in PAGE_LEFT] + list(range(first, last)) + [at(n) for n in PAGE_RIGHT]


def moe_kind(entry: Mapping[str, Any]) -> str:
    """'dense', or the MoE layer kind named in the model name ('blockmoe', 'convmoe', ...); 'moe' if unnamed."""
    m = entry['model']
    if not m.get('experts'):
        return 'dense'
    found = re.search(r'(?:^|[_:.-])([a-z]*moe)(?=[_.-]|$)', str(m['name']).lower())
    return found.group(1) if found else 'moe'


def pretrained_cards() -> Dict[str, Dict[str, Any]]:
    """{entry_id: {'tag': ..., record}} of the shipped pretrained tags (timm_moe/pretrained/manifest.json).

    The manifest is read as a file, without importing the plugin (which imports torch): the page is cheap.
    """
    spec = importlib.util.find_spec('timm_moe')
    if spec is None or not spec.submodule_search_locations:
        return {}
    manifest = Path(list(spec.submodule_search_locations)[0]) / 'pretrained' / 'manifest.json'
    if not manifest.is_file():
        return {}
    records = json.loads(manifest.read_text(encoding='utf-8'))
    return {r['entry_id']: dict(r, tag=tag) for tag, r in sorted(records.items()) if r.get('entry_id')}


def _card_html(card: Mapping[str, Any], href: str) -> str:
    """A pretrained tag's model card: how to load it, what it was trained with, its weights and its entry."""
    tag, t = card['tag'], card.get('training') or {}
    arch = tag.split('.')[0]
    kwargs = ', '.join(f'{k}={v!r}' for k, v in sorted((card.get('model_kwargs') or {}).items()))
    rows = ''.join(f'<tr><th>{html.escape(k)}</th><td>{html.escape(str(t[k]))}</td></tr>'
                   for k in ('training', 'config', 'epochs', 'batch_size', 'lr', 'eps', 'attack_steps', 'seed')
                   if k in t)
    return (f'<article class="card" id="card-{html.escape(tag)}"><h3>{html.escape(tag)}</h3>'
            f'<pre><code>import timm, timm_moe\nmodel = timm.create_model({html.escape(repr(tag))}, pretrained=True)'
            f'  # {html.escape(arch)}({html.escape(kwargs)})</code></pre>'
            f'<table class="kv">{rows}<tr><th>input</th><td>{html.escape(str(card.get("input_size")))} '
            f'({html.escape(str(card.get("dataset")))})</td></tr>'
            f'<tr><th>weights</th><td>{html.escape(str(card.get("file")))}, {html.escape(str(card.get("dtype")))}, '
            f'sha256 <code>{html.escape(str(card.get("sha256")))}</code></td></tr>'
            f'<tr><th>entry</th><td><a href="{html.escape(href)}">{html.escape(card["entry_id"])}</a></td></tr>'
            '</table></article>')


def _attrs(entry: Mapping[str, Any]) -> Dict[str, str]:
    return {'arch': str(entry['model'].get('arch') or entry['model']['name']), 'kind': moe_kind(entry),
            'training': str(entry['training']['method']), 'source': str(entry['source'])}


def _cells_html(cells: Sequence[str], head: Sequence[str], right: set, links: str,
                setup_html: Optional[str] = None) -> str:
    """The <td>s of one row (`cells` and `head` in page order); an accuracy's interval is set apart from its
    value, so that it may go below it. `setup_html` replaces the Setup text (a seed group's count and toggle)."""
    out = []
    for name, text in zip(head, cells):
        if name == 'Entry':
            out.append(f'<td class="entry">{links}</td>')
            continue
        if name == 'Setup' and setup_html is not None:
            out.append(f'<td class="setup">{setup_html}</td>')
            continue
        cls = {'#': 'num rank', 'Model': 'model', 'Config': 'config', 'Flags': 'flags', 'Setup': 'setup'}.get(
            name, 'num' if name in right else '')
        value, _, spread = text.partition(' ')
        if name in right and spread:
            body = f'<span class="v">{html.escape(value)}</span> <span class="ci">{html.escape(spread)}</span>'
            cls = 'num acc'
        else:
            body = html.escape(text)
        out.append(f'<td class="{cls}">{body}</td>' if cls else f'<td>{body}</td>')
    return ''.join(out)


def _links(entries: Sequence[Mapping[str, Any]], href, cards: Mapping[str, Mapping[str, Any]]) -> str:
    parts = []
    for e in entries:
        link = f'<a href="{html.escape(href(e))}">{html.escape(e["entry_id"])}</a>'
        if e['entry_id'] in cards:
            link += f' <a class="card-link" href="#card-{html.escape(cards[e["entry_id"]]["tag"])}">card</a>'
        parts.append(link)
    return '<br>'.join(parts)


def _row_group(index: int, rank: Optional[int], row: Row, columns, head, right, keymap, href, cards) -> str:
    """One <tbody>: the row, and for a seed group its runs (hidden until expanded); sorting moves it whole.

    A seed group is one row of a few lines however many seeds it has: its Setup says how many ('40 seeds ▸',
    the seeds on hover) and the button lists the runs, each with its seed and its entry link."""
    attrs = ''.join(f' data-{k}="{html.escape(v)}"' for k, v in _attrs(row.first).items())
    order = page_order(len(columns))
    runs = row.entries if len(row.entries) > 1 else []
    links, setup_html = _links(row.entries, href, cards), None
    if runs:
        text = setup(row, seeds=False)
        setup_html = ('' if text == DASH else html.escape(text) + ' ') + (
            f'<button class="toggle" aria-expanded="false" data-count="{len(runs)}" '
            f'title="{html.escape(seed_list(row) or f"{len(runs)} runs")}: click to list the runs">'
            f'{len(runs)} seeds ▸</button>')
        links = f'{len(runs)} entries: ▸ lists them'
    cls = 'row' + ('' if row.first['source'] == 'measured' else ' reported')
    cells = row_cells(rank, row, columns)
    body = [f'<tr class="{cls}">' + _cells_html([cells[i] for i in order], head, right, links, setup_html) + '</tr>']
    for e in runs:  # each run on its own: its own cells and Wilson intervals
        cells = row_cells(None, make_rows([e], keymap, group=False)[0], columns)
        cells[0] = '↳'  # a run of the group above, not ranked on its own
        body.append('<tr class="run" hidden>' + _cells_html([cells[i] for i in order], head, right,
                                                            _links([e], href, cards)) + '</tr>')
    return f'<tbody data-order="{index}"{attrs}>' + ''.join(body) + '</tbody>'


def _options(values: Sequence[str]) -> str:
    return '<option value="">all</option>' + ''.join(
        f'<option value="{html.escape(v)}">{html.escape(v)}</option>' for v in sorted(set(values)))


def render_html(entries: Sequence[Mapping[str, Any]], href, cards: Optional[Mapping[str, Mapping[str, Any]]] = None,
                title: str = 'timm-moe leaderboard') -> str:
    """The page. Pure function of its arguments.

    Args:
        entries: the registry's entries.
        href: entry -> the relative link of its JSON file.
        cards: {entry_id: pretrained tag record} (`pretrained_cards`); rows of these link to a card.
    """
    cards = {k: v for k, v in (cards or {}).items() if any(e['entry_id'] == k for e in entries)}
    css = (ASSETS / 'leaderboard.css').read_text(encoding='utf-8')
    js = (ASSETS / 'leaderboard.js').read_text(encoding='utf-8')
    values = {k: [_attrs(e)[k] for e in entries] for k, _ in FILTERS}
    filters = ''.join(f'<label>{html.escape(name)} <select data-filter="{k}">{_options(values[k])}</select></label>'
                      for k, name in FILTERS)
    parts = [
        '<!DOCTYPE html>', '<html lang="en"><head><meta charset="utf-8">', MARKER,
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',  # no favicon request: the page loads nothing
        f'<title>{html.escape(title)}</title><style>{css}</style></head><body>',
        f'<header><h1>{html.escape(title)}</h1><p>Accuracies in percent, from {len(entries)} registry entries. '
        'Each accuracy column is one attack configuration (its settings are listed under the table). '
        f'<code>61.33 [55.7, 66.6]</code>: one run on fewer than {EXACT_N:,} test points with its 95% Wilson '
        'interval; <code>61.33 ±1.20 [58.4, 64.3]</code>: the runs that differ only in their training seed '
        '(▸ lists them): mean, standard deviation and 95% t-interval over the seeds. '
        f'{DAGGER} reported by the paper\'s code or RobustBench, not measured here; {DASH} not measured. '
        'Click a column heading to sort by it.</p>',
        '</header>',
        f'<form class="filters" onsubmit="return false">{filters}'
        '<output id="shown" aria-live="polite"></output></form><main>',
    ]
    if not entries:
        parts.append('<p>No entries yet.</p>')
    for s_index, sec in measured_first(sections(entries)):
        rows = make_rows(sec.entries, sec.keymap, group=True)
        metric = resolve_sort(DEFAULT_SORT, sec, rows)
        ranked, rest = rank_rows(rows, metric)
        full = header(sec.columns)
        head = [full[i] for i in page_order(len(sec.columns))]
        right = RIGHT | {c.label for c in sec.columns}
        n_meas = sum(e['source'] == 'measured' for e in sec.entries)
        accuracy = {'Clean'} | {c.label for c in sec.columns}
        short = short_labels(sec.columns)
        # a long label gets a short header; hovering shows the full one and its settings, as the list below does
        shown = {c.label: (short[c.ident], f'{c.label}: {describe(c.config)}') for c in sec.columns}
        ths = ''.join(f'<th scope="col" class="{"num acc" if h in accuracy else "num" if h in right else ""}" '
                      f'title="{html.escape(shown.get(h, (h, h))[1])}"><button type="button">'
                      f'{html.escape(shown.get(h, (h, h))[0])}</button></th>' for h in head)
        groups = [(rank, r) for rank, r in ranked] + [(None, r) for r in rest]
        body = ''.join(_row_group(i, rank, r, sec.columns, head, right, sec.keymap, href, cards)
                       for i, (rank, r) in enumerate(groups))
        legend = ''.join(f'<li><b>{html.escape(short[c.ident])}</b>'
                         f'{" = " + html.escape(c.label) if short[c.ident] != c.label else ""}: '
                         f'{html.escape(describe(c.config))}</li>' for c in sec.columns)
        parts.append(
            f'<section id="section-{s_index}"><h2>{html.escape(sec.title)}</h2>'
            f'<p>{len(sec.entries)} entries ({n_meas} measured, {len(sec.entries) - n_meas} reported) in '
            f'{len(rows)} rows; # ranks by <b>{html.escape(sort_label(sec, metric, DEFAULT_SORT))}</b> (the '
            'configuration measured on the most rows, the strongest among those); rows without it are listed '
            f'after the ranked ones.</p><div class="scroll"><table class="lb"><thead><tr>{ths}</tr></thead>{body}'
            f'</table></div><ul class="legend">{legend}</ul></section>')
    if cards:
        parts.append('<section id="cards"><h2>Model cards of the pretrained tags</h2>' + ''.join(
            _card_html(c, href(next(e for e in entries if e['entry_id'] == c['entry_id'])))
            for c in cards.values()) + '</section>')
    parts.append(f'</main><script>{js}</script></body></html>\n')
    return '\n'.join(parts)


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an --html target that is not a page of ours to replace: a special file or a link (never), an existing
    file without the page's `MARKER` or an `entries/` folder beside it that no page of ours made (unless
    `overwrite`)."""
    copies = out.parent / ENTRY_COPIES
    for path in (out, copies):
        if path.is_symlink() or (path.exists() and not (path.is_file() if path == out else path.is_dir())):
            kind = 'a symbolic link' if path.is_symlink() else 'not a regular file' if path == out else 'not a folder'
            raise UserError(f'--html {out}: {path} is {kind}; give a new file name for the page')
    ours = out.is_file() and MARKER.encode() in _head(out)
    if overwrite or ours:
        return
    if out.exists():
        raise UserError(f'--html {out} exists and is not a page that timm-moe leaderboard wrote: pass --overwrite to '
                        'replace it, or give another file name')
    if copies.exists() and not any(p.is_file() and not p.is_symlink() and MARKER.encode() in _head(p)
                                   for p in out.parent.glob('*.html')):  # another page of ours shares them
        raise UserError(f'--html {out}: {copies} exists and holds no entries of a page of ours: pass --overwrite to '
                        'replace it, or write the page to another folder')


def _head(path: Path, size: int = 4096) -> bytes:
    with open(path, 'rb') as f:  # a regular file (checked): the marker is in the page's head
        return f.read(size)


def write_html(out: Path, registry_dir: Path, entries: Sequence[Mapping[str, Any]], overwrite: bool = False) -> Path:
    """Write the page to `out` and copies of the entries it links to `entries/` beside it; returns its path.

    Both are made in a temporary folder beside `out` and then renamed into place, so a failed write (a full disk)
    leaves the previous page as it was and no partial copies. Refused (UserError): a directory, a special file or
    a link at `out`; any place inside a registry (a page there would be read as an entry, or its copies make the
    registry fail to load); an existing file that is not a page of ours, unless `overwrite`.
    """
    out, registry_dir = Path(out), Path(registry_dir)
    if out.is_dir():
        raise UserError(f'--html {out} is a directory: pass the page to write, e.g. {out / "leaderboard.html"}')
    check_writable(out.parent)
    inside = registry_holding(out, registry_dir)
    if inside is not None:
        raise UserError(f'--html {out} is inside the registry {inside}: write the page outside any registry '
                        f'(its entries are copied beside it)')
    _check_out(out, overwrite)
    page_dir = out.parent.resolve()
    root = page_dir / ENTRY_COPIES

    def href(entry: Mapping[str, Any]) -> str:
        return Path(os.path.relpath(entry_path(entry, root), page_dir)).as_posix()

    text = render_html(entries, href, pretrained_cards())
    recover_dir(out)  # the temporary folders of a page write that was killed (its process gone) go first
    tmp = temp_dir_beside(out)
    try:
        for e in entries:
            dst = entry_path(e, tmp / ENTRY_COPIES)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(entry_path(e, registry_dir), dst)
        (tmp / ENTRY_COPIES).mkdir(exist_ok=True)
        (tmp / out.name).write_text(text, encoding='utf-8')
        # the copies first, then the page that links to them; the old copies go once the new page is in place
        old = tmp / '.old'
        if root.exists():
            os.replace(root, old)
        os.replace(tmp / ENTRY_COPIES, root)
        os.replace(tmp / out.name, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out

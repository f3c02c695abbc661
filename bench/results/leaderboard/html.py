"""The leaderboard as one static web page: `timm-moe leaderboard --html OUT`.

The page shows what `LEADERBOARD.md` shows (the same sections, columns, cells and ranking, from
`bench.results.leaderboard`), and adds what a page can: every column sorts, seed groups expand into their runs,
rows filter by architecture, MoE kind, training and source, and each row links to its entry JSON and, for a
shipped pretrained tag, to its model card. It needs no network: the CSS and JS (`bench/assets/leaderboard.*`)
are inlined. The entry links are relative, to copies under `entries/` beside the page (never inside a registry,
see `write_html`). Like the markdown file, the page is a pure function of the entries: `page_data` computes what
it shows, and the Jinja2 template `bench/assets/leaderboard.html.j2` (autoescape on) lays it out.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import jinja2
from markupsafe import Markup

from bench.core.atomic import recover_dir, temp_dir_beside
from bench.core.errors import UserError
from bench.results.leaderboard.columns import DAGGER, DASH, DEFAULT_SORT, EXACT_N, describe, short_labels
from bench.results.leaderboard.groups import Row, make_rows, measured_first, rank_rows, resolve_sort, sections
from bench.results.leaderboard.render import (FIXED_LEFT, FIXED_RIGHT, RIGHT, header, row_cells, seed_list,
                                              setup, sort_label)
from bench.results.registry import check_writable, entry_path, registry_holding

ASSETS = Path(__file__).resolve().parents[2] / 'assets'
TEMPLATE = 'leaderboard.html.j2'  # in ASSETS, beside the CSS and JS it inlines
Href = Callable[[Mapping[str, Any]], str]  # entry -> the relative link of its JSON file
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
    """'dense', or the MoE layer kind of the entry's registered model ('blockmoe', 'convmoe'); 'converted' for a
    timm model converted to MoE (a `convert` record); 'moe' for any other model that timm-moe does not register."""
    m = entry['model']
    if not m.get('experts'):
        return 'dense'
    if m.get('convert') is not None:  # a timm model converted to MoE (its name is timm's, not ours)
        return 'converted'
    from timm_moe.spec import ModelSpec  # the table of registered names (which imports torch): only for an MoE
    try:
        return f'{ModelSpec.from_name(m["name"]).kind}moe'
    except ValueError:  # not a registered name
        return 'moe'


def pretrained_cards() -> Dict[str, Dict[str, Any]]:
    """{entry_id: {'tag': ..., record}} of the shipped pretrained tags (timm_moe/pretrained/manifest.json).

    The manifest is read as a file, without importing the plugin (which imports torch).
    """
    spec = importlib.util.find_spec('timm_moe')
    if spec is None or not spec.submodule_search_locations:
        return {}
    manifest = Path(list(spec.submodule_search_locations)[0]) / 'pretrained' / 'manifest.json'
    if not manifest.is_file():
        return {}
    records = json.loads(manifest.read_text(encoding='utf-8'))
    return {r['entry_id']: dict(r, tag=tag) for tag, r in sorted(records.items()) if r.get('entry_id')}


def _card(card: Mapping[str, Any], entry: Mapping[str, Any], href: Href) -> Dict[str, Any]:
    """A pretrained tag's model card: how to load it, what it was trained with, its weights and its entry."""
    t = card.get('training') or {}
    return dict(tag=card['tag'], tag_repr=repr(card['tag']), arch=entry['model']['name'],
                kwargs=', '.join(f'{k}={v!r}' for k, v in sorted((card.get('model_kwargs') or {}).items())),
                training=[(k, t[k]) for k in ('training', 'config', 'epochs', 'batch_size', 'lr', 'eps',
                                              'attack_steps', 'seed') if k in t],
                input_size=card.get('input_size'), dataset=card.get('dataset'), file=card.get('file'),
                dtype=card.get('dtype'), sha256=card.get('sha256'), href=href(entry), entry_id=card['entry_id'])


def _filters(entry: Mapping[str, Any]) -> Dict[str, str]:
    """What the page's filters select a row by (its `data-*` attributes)."""
    return {'arch': str(entry['model'].get('arch') or entry['model']['name']), 'kind': moe_kind(entry),
            'training': str(entry['training']['method']), 'source': str(entry['source'])}


def _cells(texts: Sequence[str], head: Sequence[str], right: set, entry_cell: Dict[str, Any],
           seeds_cell: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    """The cells of one row (`texts` and `head` in page order); an accuracy's interval is set apart from its
    value, so that it may go below it. `seeds_cell` replaces the Setup text (a seed group's count and toggle)."""
    out = []
    for name, text in zip(head, texts):
        if name == 'Entry':
            out.append(entry_cell)
            continue
        if name == 'Setup' and seeds_cell is not None:
            out.append(seeds_cell)
            continue
        cls = {'#': 'num rank', 'Model': 'model', 'Config': 'config', 'Flags': 'flags', 'Setup': 'setup'}.get(
            name, 'num' if name in right else '')
        value, _, spread = text.partition(' ')
        if name in right and spread:
            out.append(dict(kind='value', cls='num acc', text=value, spread=spread))
        else:
            out.append(dict(kind='value', cls=cls, text=text, spread=''))
    return out


def _entry_cell(entries: Sequence[Mapping[str, Any]], href: Href,
                cards: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
    links = [dict(href=href(e), entry_id=e['entry_id'], card=cards[e['entry_id']]['tag'] if e['entry_id'] in cards
                  else None) for e in entries]
    return dict(kind='entry', links=links, text='')


def _row_group(rank: Optional[int], row: Row, columns, head, right, keymap, href: Href, cards) -> Dict[str, Any]:
    """A row, and for a seed group its runs (hidden until expanded).

    A seed group is one row of a few lines however many seeds it has: its Setup says how many ('40 seeds ▸',
    the seeds on hover) and the button lists the runs, each with its seed and its entry link."""
    order = page_order(len(columns))
    runs = row.entries if len(row.entries) > 1 else []
    entry_cell, seeds_cell = _entry_cell(row.entries, href, cards), None
    if runs:
        text = setup(row, seeds=False)
        seeds_cell = dict(kind='seeds', text=None if text == DASH else text, runs=len(runs),
                          title=seed_list(row) or f'{len(runs)} runs')
        entry_cell = dict(kind='entry', links=[], text=f'{len(runs)} entries: ▸ lists them')
    texts = row_cells(rank, row, columns)
    rows = [dict(cls='row' + ('' if row.first['source'] == 'measured' else ' reported'), hidden=False,
                 cells=_cells([texts[i] for i in order], head, right, entry_cell, seeds_cell))]
    for e in runs:  # each run on its own: its own cells and Wilson intervals
        texts = row_cells(None, make_rows([e], keymap, group=False)[0], columns)
        texts[0] = '↳'  # a run of the group above, not ranked on its own
        rows.append(dict(cls='run', hidden=True,
                         cells=_cells([texts[i] for i in order], head, right, _entry_cell([e], href, cards))))
    return dict(filters=_filters(row.first), rows=rows)


def _section(index: int, sec, href: Href, cards) -> Dict[str, Any]:
    rows = make_rows(sec.entries, sec.keymap, group=True)
    metric = resolve_sort(DEFAULT_SORT, sec, rows)
    ranked, rest = rank_rows(rows, metric)
    full = header(sec.columns)
    head = [full[i] for i in page_order(len(sec.columns))]
    right = RIGHT | {c.label for c in sec.columns}
    accuracy = {'Clean'} | {c.label for c in sec.columns}
    short = short_labels(sec.columns)
    # a long label gets a short header; hovering shows the full one and its settings, as the list below does
    shown = {c.label: (short[c.ident], f'{c.label}: {describe(c.config)}') for c in sec.columns}
    heads = [dict(cls='num acc' if h in accuracy else 'num' if h in right else '', text=shown.get(h, (h, h))[0],
                  title=shown.get(h, (h, h))[1]) for h in head]
    groups = [(rank, r) for rank, r in ranked] + [(None, r) for r in rest]
    return dict(index=index, title=sec.title, n_entries=len(sec.entries), n_rows=len(rows),
                n_measured=sum(e['source'] == 'measured' for e in sec.entries),
                metric=sort_label(sec, metric, DEFAULT_SORT), heads=heads,
                groups=[_row_group(rank, r, sec.columns, head, right, sec.keymap, href, cards) for rank, r in groups],
                legend=[dict(short=short[c.ident], label=c.label, settings=describe(c.config)) for c in sec.columns])


def page_data(entries: Sequence[Mapping[str, Any]], href: Href,
              cards: Optional[Mapping[str, Mapping[str, Any]]] = None,
              title: str = 'timm-moe leaderboard') -> Dict[str, Any]:
    """What the page shows (the template's context), computed from the entries apart from its markup."""
    cards = {k: v for k, v in (cards or {}).items() if any(e['entry_id'] == k for e in entries)}
    values = {k: [_filters(e)[k] for e in entries] for k, _ in FILTERS}
    return dict(
        title=title, n_entries=len(entries), exact_n=f'{EXACT_N:,}', dagger=DAGGER, dash=DASH,
        filters=[dict(key=k, name=name, options=sorted(set(values[k]))) for k, name in FILTERS],
        sections=[_section(i, sec, href, cards) for i, sec in measured_first(sections(entries))],
        cards=[_card(c, next(e for e in entries if e['entry_id'] == c['entry_id']), href) for c in cards.values()])


@functools.lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ASSETS), autoescape=True, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    return env.get_template(TEMPLATE)


def render_html(entries: Sequence[Mapping[str, Any]], href: Href,
                cards: Optional[Mapping[str, Mapping[str, Any]]] = None, title: str = 'timm-moe leaderboard') -> str:
    """The page. Pure function of its arguments.

    Args:
        entries: the registry's entries.
        href: entry -> the relative link of its JSON file.
        cards: {entry_id: pretrained tag record} (`pretrained_cards`); rows of these link to a card.
    """
    # the page's own CSS and JS, inlined as they are: trusted, never escaped
    assets = {name: Markup((ASSETS / f'leaderboard.{name}').read_text(encoding='utf-8')) for name in ('css', 'js')}
    return _template().render(page_data(entries, href, cards, title), marker=Markup(MARKER), **assets)


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

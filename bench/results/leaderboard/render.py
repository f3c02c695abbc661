"""The leaderboard as text: its cells, `LEADERBOARD.md` (a pure function of the entries) and the console tables."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from bench.core.atomic import atomic_open
from bench.core.errors import UserError
from bench.results.leaderboard.columns import (AUTO, CLEAN, DAGGER, DASH, DEFAULT_SORT, EXACT_N, FILENAME, Column,
                                               describe)
from bench.core.values import printable
from bench.results.leaderboard.groups import (Cell, Row, Section, make_rows, measured_first, rank_rows, resolve_sort,
                                              sections)
from bench.results.markdown import md_code, md_table, md_text
from bench.results.registry import DEFAULT_REGISTRY, check_writable, load_entries

def fmt_cell(cell: Optional[Cell], reported: bool = False) -> str:
    """'61.33 [55.7, 66.6]' (one run, Wilson), '61.33 ±1.20 [58.4, 64.3]' (seeds: std, t-interval), '61.33†'."""
    if cell is None:
        return DASH
    text = f'{cell.value:.2f}{DAGGER if reported else ""}'
    if cell.std is not None:
        text += f' ±{cell.std:.2f}'
    if cell.lo is not None and cell.hi is not None:
        text += f' [{cell.lo:.1f}, {cell.hi:.1f}]'
    return text


def noisy_gating(entry: Mapping[str, Any]) -> Optional[bool]:
    """Whether the model trained with noisy gating; None for a dense model or where it is not known.

    Schema 2 entries store it (`model.noisy_gating`). Schema 1 entries measured here did not: the plugin's
    default then was off, so an entry whose kwargs do not turn it on trained without it.
    """
    m = entry['model']
    if not m.get('experts'):
        return None
    if 'noisy_gating' in m:
        return m['noisy_gating']
    if entry['source'] == 'measured':
        value = m.get('kwargs', {}).get('noisy_gating', False)
        return value if isinstance(value, bool) else None
    return None


def model_label(model: Mapping[str, Any]) -> str:
    """The Model cell of an entry's model block: its name, and for a timm model converted to MoE (a `convert`
    record) 'convnext_atto converted E=4 k=1', so that it does not read as the plain model of that name."""
    if model.get('convert') is None:
        return str(model['name'])
    return f"{model['name']} converted E={model.get('experts')} k={model.get('k')}"


def moe_config_label(entry: Mapping[str, Any]) -> str:
    m = entry['model']
    parts = [str(p) for p in (m.get('gate'), m.get('aux_loss'), m.get('placement')) if p]
    if m.get('experts'):
        parts.append({True: 'noisy', False: 'no noise', None: 'noise ?'}[noisy_gating(entry)])
        width = (m.get('effective_kwargs') or m.get('kwargs') or {}).get('expert_width')
        if width not in (None, 'full'):
            parts.append(f'{width} experts')
    return ' · '.join(parts) or DASH


def _short_source(path: str) -> str:
    """'runs/study/cells/dense_half-seed0/run' -> 'dense_half-seed0/run': enough to tell the source apart."""
    return '/'.join(Path(str(path)).parts[-2:])


def _grid_label(grid: Mapping[str, Any]) -> str:
    """'spec: config' (and its stage, if not the main one) of a grid run; '' outside a grid."""
    if not grid.get('spec'):
        return ''
    stage = f" ({grid['stage']} stage)" if grid.get('stage') not in (None, 'main') else ''
    return f"{grid['spec']}: {grid.get('config', '?')}{stage}"


def setup(row: Row, seeds: bool = True) -> str:
    """What tells a measured row apart from rows of the same model, config and training: the grid config it
    ran in (and its stage, if not the main one), the epochs (and a max_steps cut), upcycling, and the seeds
    (seeds=False: left out, for a page that shows the count and lists the runs on demand).
    Reported rows: their source says it all."""
    e = row.first
    if e['source'] != 'measured':
        return DASH
    # a seed group may join runs of one configuration from several grids (a pilot and the study it sized):
    # name each, not only the first member's
    grids = dict.fromkeys(_grid_label(x.get('grid') or {}) for x in row.entries)
    parts = [' + '.join(g for g in grids if g)] if any(grids) else []
    training = e.get('training') or {}
    config = training.get('config') if isinstance(training.get('config'), Mapping) else {}
    if training.get('epochs') is not None:
        parts.append(f"{training['epochs']} ep")
    if config.get('max_steps'):
        parts.append(f"max {config['max_steps']} steps")
    sources = sorted({str(((x.get('training') or {}).get('config') or {}).get('upcycle_from') or '')
                      for x in row.entries} - {''})
    if sources:
        parts.append(f'upcycled from {_short_source(sources[0])}' if len(sources) == 1
                     else f'upcycled from {len(sources)} runs')
    if seeds:
        parts.append(seed_list(row))
    return ' · '.join(p for p in parts if p) or DASH


def seed_list(row: Row) -> str:
    """'seeds 0, 1, 2' of a row's runs; '' where a run does not record its seed."""
    seeds = [(x.get('provenance') or {}).get('seed') for x in row.entries]
    if not all(s is not None for s in seeds):
        return ''
    return f"seed{'s' * (len(seeds) > 1)} {', '.join(str(s) for s in sorted(seeds))}"


def _flops(row: Row) -> str:
    ratios = [e['flops']['ratio'] for e in row.entries if (e.get('flops') or {}).get('ratio') is not None]
    return f'{sum(ratios) / len(ratios):.3f}' if ratios else DASH


FIXED_LEFT = ('#', 'Model', 'Config', 'E', 'k', 'Training', 'Setup', 'Source', 'Clean')
# the columns that say which model, training and run a row is (no two rows of a table may agree in all of them)
IDENTITY = ('Model', 'Config', 'E', 'k', 'Training', 'Setup', 'Source')
FIXED_RIGHT = ('FLOPs×', 'n', 'Seeds', 'Flags', 'Entry')
RIGHT = {'#', 'E', 'k', 'Clean', 'FLOPs×', 'n', 'Seeds'}


def header(columns: Sequence[Column]) -> List[str]:
    return list(FIXED_LEFT) + [c.label for c in columns] + list(FIXED_RIGHT)


def row_cells(rank: Optional[int], row: Row, columns: Sequence[Column], short_flags: bool = False) -> List[str]:
    """The cells of one row (shared by the console and the markdown table).

    Args:
        rank: the rank within the table's metric; None for a row listed apart.
        row: one run or one seed group.
        columns: the section's attack columns.
        short_flags: show the number of sanity flags instead of their names (the console is narrow).
    """
    e = row.first
    reported = e['source'] != 'measured'
    m = e['model']
    flags = sorted({f for x in row.entries for f in (x.get('sanity_flags') or [])})
    n = e.get('n_examples')
    return [
        DASH if rank is None else str(rank), model_label(m), moe_config_label(e),
        DASH if m.get('experts') is None else str(m['experts']), DASH if m.get('k') is None else str(m['k']),
        e['training']['method'], setup(row), f"{e['source']}{DAGGER if reported else ''}",
        fmt_cell(row.cells.get(CLEAN), reported),
        *[fmt_cell(row.cells.get(c.ident), reported) for c in columns],
        _flops(row), DASH if n is None else str(n), DASH if reported else str(len(row.entries)),
        (str(len(flags)) if short_flags else ', '.join(flags)) if flags else DASH, ', '.join(row.ids),
    ]


def sort_label(section: Section, metric: Optional[str], sort: str) -> str:
    if metric == CLEAN:
        return 'clean accuracy'
    return next((c.label for c in section.columns if c.ident == metric), sort)


# ------------------------------------------------------------------------------------ markdown

def _inferred_note(column: Column) -> str:
    if not column.inferred:
        return ''
    return (f" (entries of schema 1 store no settings: for them this is what the key "
            f"{', '.join(repr(k) for k in column.inferred)} meant)")


def render_markdown(entries: Sequence[Mapping[str, Any]], sort: str = DEFAULT_SORT) -> str:
    """LEADERBOARD.md: a section per data set, threat model and eps. Pure function of the entries."""
    lines = [
        '# timm-moe leaderboard',
        '',
        '<!-- generated by `timm-moe leaderboard` from the JSON entries in this directory; do not edit -->',
        '',
        'Accuracies in percent. Each accuracy column is ONE attack configuration (its settings are listed '
        'under the table): PGD-10 and PGD-20, or our APGD-CE-20 and the paper code\'s APGD-20, are different '
        'columns. A table ranks the rows measured with one configuration (`#`, equal values share a rank); '
        'rows without it follow in a table of their own, unranked. FLOPs× = active inference FLOPs / the '
        'dense baseline\'s.',
        '',
        f'- `61.33 [55.7, 66.6]`: one run on fewer than {EXACT_N:,} test points, with its 95% Wilson interval '
        '(the uncertainty of the test sample).',
        '- `61.33 ±1.20 [58.4, 64.3]`: runs that differ only in their training seed (Seeds = how many), as one '
        'row: mean, standard deviation over the seeds and the 95% t-interval of the mean over the seeds.',
        '- **measured**: run by this harness; each entry holds its provenance (commit, versions, device, '
        'command, seed, checkpoint sha256) and its exact attack settings.',
        f'- **paper{DAGGER}**: reported by the paper\'s public code (Pavlitska et al. 2025): its own PGD-20 and '
        'torchattacks APGD-20, **not AutoAttack**; APGD above PGD-20 points to a weak evaluation.',
        f'- **robustbench{DAGGER}**: AutoAttack numbers from the RobustBench leaderboard.',
        f'- {DAGGER} = reported elsewhere, not measured here. {DASH} = not measured or not reported. '
        'Config: gate · balancing loss · placement · noisy gating in training (· expert width, when not full). '
        'Setup (measured rows): grid spec and config, epochs, upcycling source, seeds.',
        '',
    ]
    if not entries:
        lines += ['No entries yet.', '']
    for sec in sections(entries):
        rows = make_rows(sec.entries, sec.keymap, group=True)
        metric = resolve_sort(sort, sec, rows)
        ranked, rest = rank_rows(rows, metric)
        label = sort_label(sec, metric, sort)
        n_meas = sum(e['source'] == 'measured' for e in sec.entries)
        how = (' (auto: the attack configuration measured on the most rows, the strongest among those)'
               if sort == AUTO and metric != CLEAN else '')
        lines += [f'## {md_text(sec.title)}', '',
                  f'{len(sec.entries)} entries ({n_meas} measured, {len(sec.entries) - n_meas} reported) in '
                  f'{len(rows)} rows. Ranked by **{md_text(label)}**{how}.', '']
        head = header(sec.columns)
        right = RIGHT | {c.label for c in sec.columns}
        if ranked:
            lines += md_table(head, (row_cells(rank, r, sec.columns) for rank, r in ranked), right)
        if rest:
            lines += [f'### Not measured with {md_text(label)}', '']
            lines += md_table(head, (row_cells(None, r, sec.columns) for r in rest), right)
        if sec.columns:
            lines += ['Columns (the settings that define each; seeds and batch sizes are in the entries):', '']
            lines += [f'- **{md_text(c.label)}**: {md_text(describe(c.config))}' + md_text(_inferred_note(c))
                      for c in sec.columns] + ['']
    flags = sorted({f for e in entries for f in (e.get('sanity_flags') or [])})
    if flags:
        lines += ['Flags: sanity checks that failed for an entry (for reported numbers, anomalies of the source '
                  'table); see the entry\'s `notes`.', '']
        lines += [f'- {md_code(f)}' for f in flags] + ['']
    return '\n'.join(lines)


def write_leaderboard(registry_dir: Path = DEFAULT_REGISTRY, entries: Optional[Sequence[Mapping[str, Any]]] = None) -> Path:
    """Regenerate `<registry_dir>/LEADERBOARD.md` from every entry (each section ranked by `auto`).

    Args:
        registry_dir: the registry root.
        entries: the entries to render (default: load them all from registry_dir).
    """
    registry_dir = Path(registry_dir)
    check_writable(registry_dir)
    if entries is None:
        entries = load_entries(registry_dir)
    text = render_markdown(entries, DEFAULT_SORT)
    path = registry_dir / FILENAME
    old = path.read_text(encoding='utf-8') if path.is_file() else None
    if not entries and old is not None and '\n## ' in old:
        # a read that found nothing where the page lists results (a moved, emptied or unmounted folder) must not
        # erase the only overview of them
        raise UserError(f'registry {registry_dir} has no entries, but its {FILENAME} lists some: it is left as it is '
                        f'(delete {path} first to regenerate it empty)')
    if old != text:  # leave an unchanged file untouched
        with atomic_open(path) as f:  # concurrent regenerations (sweep jobs) never interleave
            f.write(text)
    return path


# ------------------------------------------------------------------------------------ console

def check_sort(entries: Sequence[Mapping[str, Any]], sort: str) -> None:
    """Refuse a --sort that names no column of any shown section (or several in one), listing the choices."""
    if sort in (AUTO, CLEAN) or not entries:
        return
    found = False
    for sec in sections(entries):
        found |= resolve_sort(sort, sec, make_rows(sec.entries, sec.keymap)) is not None
    if not found:
        labels = sorted({c.label for sec in sections(entries) for c in sec.columns})
        raise UserError(f'--sort {sort!r} names no attack configuration of the shown entries: choose auto, clean '
                        f'or one of: {"; ".join(labels) or "(none)"}')


def console_text(text: Any) -> str:
    """Text for a rich console: control characters written out (an ESC sequence in an entry would otherwise act on
    the reader's terminal), then rich's markup escaped."""
    from rich.markup import escape
    return escape(printable(text))


def _two_lines(cell: Optional[Cell], reported: bool) -> str:
    """A cell as the console shows it: the value, then its spread and its interval each on a line of its own
    (a column as narrow as '[67.8, 75.3]', so that more accuracy columns fit)."""
    text = fmt_cell(cell, reported)
    value, _, rest = text.partition(' ')
    spread, _, interval = rest.partition(' [') if rest.startswith('±') else ('', '', rest[1:])
    return '\n'.join([value] + [part for part in (spread, interval and '[' + interval) if part])


def _compact_label(column: Column) -> str:
    """The worst-case column's label lists every attack; the console says how many ('worst of 3')."""
    if column.config['attack'] == 'WorstCase':
        return f"worst of {len(column.config['members'])}"
    return column.label


def compact_cells(rank: Optional[int], row: Row, columns: Sequence[Column], flags_column: bool) -> List[str]:
    """A row for a terminal about 110 columns wide: the model with its config and setup below it, each
    accuracy above its interval; E and k are in the name, the source shows as † and dim rows, the seeds in
    the setup, and the entry ids are left to --wide and LEADERBOARD.md."""
    e = row.first
    reported = e['source'] != 'measured'
    model = '\n'.join([model_label(e['model'])] + [s for s in (moe_config_label(e), setup(row)) if s != DASH])
    flags = {f for x in row.entries for f in (x.get('sanity_flags') or [])}
    return [
        DASH if rank is None else str(rank), model, e['training']['method'],
        _two_lines(row.cells.get(CLEAN), reported),
        *[_two_lines(row.cells.get(c.ident), reported) for c in columns],
        _flops(row), *([str(len(flags)) if flags else DASH] if flags_column else []),
    ]


def _compact_table(title: str, body: Sequence[Tuple[Optional[int], Row]], columns: Sequence[Column],
                   caption: str) -> Tuple[Any, int]:
    """(the rich table, the narrowest width it renders in without folding a word). Every column but Model has
    the width of its longest cell line (the header wraps inside it); Model takes the rest, wrapping at spaces."""
    from rich.table import Table
    flags_column = any(x.get('sanity_flags') for _, r in body for x in r.entries)
    head = ['#', 'Model', 'Training', 'Clean', *map(_compact_label, columns), 'FLOPs×'] + ['Flags'] * flags_column
    cells = [compact_cells(rank, r, columns, flags_column) for rank, r in body]
    table = Table(title=console_text(title), caption=console_text(caption), show_lines=True, pad_edge=False)
    narrowest = 1 + 3 * len(head) - 2  # the borders and the padding (none at the outer edges)
    for i, name in enumerate(head):
        lines = [line for row in cells for line in row[i].split('\n')]
        words = [w for text in lines + [name] for w in text.split()]
        if name == 'Model':
            narrowest += max(map(len, words))
            table.add_column(name, overflow='fold')
        else:
            width = max(map(len, lines + words))
            narrowest += width
            table.add_column(console_text(name), justify='left' if name == 'Training' else 'right', width=width,
                             overflow='fold')
    for (_, r), row in zip(body, cells):
        # a cell's lines are the view's own (name, config, setup): each is made safe, the breaks kept
        table.add_row(*('\n'.join(map(console_text, cell.split('\n'))) for cell in row),
                      style=None if r.first['source'] == 'measured' else 'dim')
    return table, narrowest


def _fitting_columns(width: int, build: Any, columns: Sequence[Column], keep: Optional[str],
                     filled: Optional[Mapping[str, int]] = None) -> List[Column]:
    """The attack columns that fit `width` without folding a word: columns (never the ranking metric's) are
    left out until the table's narrowest rendering fits, those with the fewest values on the rows shown
    (`filled`: column ident -> count) first, and among those the last."""
    shown = list(columns)
    while shown and build(shown)[1] > width:
        droppable = [c for c in shown if c.ident != keep]
        if not droppable:
            break
        shown.remove(min(reversed(droppable), key=lambda c: (filled or {}).get(c.ident, 0)))
    return shown


REPORTED_TOP = 10  # rows shown of a table of numbers reported elsewhere, unless --limit asks otherwise


def print_table(entries: Sequence[Mapping[str, Any]], sort: str = DEFAULT_SORT, limit: Optional[int] = None,
                group: bool = True, wide: bool = False, console: Any = None) -> None:
    """The rich console tables: per section, the ranked rows, then the rows without the metric. The sections
    measured here come first; the sections of numbers only reported elsewhere (the paper's hundreds of rows)
    follow, each table cut to its top rows with a count of the rest.

    Args:
        limit: rows per table; 0: all; None (default): all of a measured section, REPORTED_TOP of the others.
        wide: every column of LEADERBOARD.md, one line per row (for a wide terminal or a pipe). By default, a
            compact view (`compact_cells`) that leaves out the attack columns with no value on the table's
            rows, then those that do not fit the terminal (never the ranking metric's), and says which.
        console: a rich Console (default: the terminal's width; when stdout is not a terminal, $COLUMNS if set,
            else 240 columns).
    """
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() or os.environ.get('COLUMNS') else 240)
    if not entries:
        console.print('no entries match')
        return
    legend = f'{DAGGER} reported elsewhere (dim rows); {DASH} missing; [lo, hi] 95% interval; ±std over seeds'
    for _, sec in measured_first(sections(entries)):
        rows = make_rows(sec.entries, sec.keymap, group=group)
        metric = resolve_sort(sort, sec, rows)
        ranked, rest = rank_rows(rows, metric)
        label = sort_label(sec, metric, sort)
        cut = limit if limit is not None else (
            0 if any(e['source'] == 'measured' for e in sec.entries) else REPORTED_TOP)
        shown = ranked[:cut] if cut > 0 else ranked
        unranked = rest[:cut] if cut > 0 and limit is None else rest  # --limit N cuts the ranked rows only
        for title, body, total in (
                (f'{sec.title}: ranked by {label} ({len(shown)} of {len(ranked)} rows)',
                 [(rank, r) for rank, r in shown], len(ranked)),
                (f'{sec.title}: not measured with {label} ({len(unranked)} of {len(rest)} rows)'
                 if len(unranked) < len(rest) else f'{sec.title}: not measured with {label} ({len(rest)} rows)',
                 [(None, r) for r in unranked], len(rest))):
            if not body:
                continue
            if not wide:
                points = sorted({str(r.first.get('n_examples')) for _, r in body if r.first.get('n_examples')})
                caption = f'{legend}; test points: {", ".join(points) or DASH}; Flags = failed sanity checks'
                # a column with no value on any row shown makes way for those that have numbers
                filled = {c.ident: sum(c.ident in r.cells for _, r in body) for c in sec.columns}
                present = [c for c in sec.columns if filled[c.ident]]

                def build(cols: Sequence[Column], caption: str = caption) -> Tuple[Any, int]:
                    return _compact_table(title, body, cols, caption)
                cols = _fitting_columns(console.width, build, present, metric, filled)
                empty = [c.label for c in sec.columns if c not in present]
                left_out = [c.label for c in present if c not in cols]
                if empty:
                    caption += f'; no value on these rows: {"; ".join(empty)}'
                if left_out:
                    caption += f'; not shown here (too narrow): {"; ".join(left_out)}'
                caption += '; --wide: every column, entry ids included'
                console.print(_compact_table(title, body, cols, caption)[0])
            else:
                table = Table(title=console_text(title),
                              caption=console_text(f'{legend}; Flags = number of failed sanity checks'))
                right = RIGHT | {c.label for c in sec.columns}
                for c in header(sec.columns):
                    table.add_column(console_text(c), justify='right' if c in right else 'left', overflow='fold')
                for rank, r in body:
                    style = None if r.first['source'] == 'measured' else 'dim'
                    table.add_row(*map(console_text, row_cells(rank, r, sec.columns, short_flags=True)), style=style)
                console.print(table)
            if len(body) < total:
                console.print(f'... {total - len(body)} more rows of {sec.title} not shown: --limit 0 shows every '
                              f'row (LEADERBOARD.md has them all)', highlight=False)

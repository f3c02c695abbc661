"""`timm-moe leaderboard`: rank the registry's entries and regenerate `registry/LEADERBOARD.md`.

The printed table shows what was asked (--dataset, --threat-model, --sort, --limit). The file is
the canonical view: every entry of the registry, sorted by AutoAttack, so that its content
depends only on the entries and never on the flags of whoever ran the command last. It has no
timestamp and a total order (ties broken by the other metrics, then by entry id), so
regenerating it from the same entries gives the same bytes.
"""
from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .atomic import atomic_open
from .errors import UserError
from .registry import DEFAULT_REGISTRY, add_registry_args, check_filters, load_entries

DASH = '—'  # a value that was not measured or not reported
DAGGER = '†'  # a number reported elsewhere (paper, RobustBench), not measured by this harness
FILENAME = 'LEADERBOARD.md'
DEFAULT_SORT = 'autoattack'


def pgd_value(entry: Mapping[str, Any]) -> Optional[float]:
    """PGD-20 accuracy; without it, the lowest (strongest) other PGD result on record; else None."""
    ra = entry.get('robust_acc') or {}
    if ra.get('pgd20') is not None:
        return ra['pgd20']
    pgd = [v for k, v in ra.items() if k.startswith('pgd') and v is not None]
    return min(pgd) if pgd else None


def apgd_value(entry: Mapping[str, Any]) -> Optional[float]:
    """APGD accuracy: APGD-CE (ours, 100 steps first, then the shorter runs) or the paper's APGD-20."""
    ra = entry.get('robust_acc') or {}
    for key in ('apgd-ce', 'apgd-ce20', 'apgd-ce10', 'apgd20', 'apgd'):
        if ra.get(key) is not None:
            return ra[key]
    return None


METRICS: Dict[str, Callable[[Mapping[str, Any]], Optional[float]]] = {
    'autoattack': lambda e: (e.get('robust_acc') or {}).get('autoattack'),
    'pgd': pgd_value,
    'clean': lambda e: e.get('clean_acc'),
}
# each sort key is a chain: the named metric first, the others break its ties, entry_id last
SORT_CHAINS = {
    'autoattack': ('autoattack', 'pgd', 'clean'),
    'pgd': ('pgd', 'autoattack', 'clean'),
    'clean': ('clean', 'autoattack', 'pgd'),
}


def sort_key(sort: str) -> Callable[[Mapping[str, Any]], tuple]:
    """Key for sorted(): best first, missing values after present ones, ties by entry_id."""
    if sort not in SORT_CHAINS:
        raise UserError(f'--sort {sort!r} is not a sort key: choose one of {", ".join(SORT_CHAINS)}')
    chain = SORT_CHAINS[sort]

    def key(e: Mapping[str, Any]) -> tuple:
        parts: List[Any] = []
        for m in chain:
            v = METRICS[m](e)
            parts += [v is None, -(v if v is not None else 0.0)]
        return (*parts, e['entry_id'], e['dataset'], e['threat_model'])
    return key


def sort_entries(entries: Iterable[Mapping[str, Any]], sort: str = DEFAULT_SORT) -> List[Mapping[str, Any]]:
    """Entries in leaderboard order (a total order: the input order never matters)."""
    return sorted(entries, key=sort_key(sort))


def fmt_eps(eps: float, threat_model: str = 'Linf') -> str:
    """Linf budgets as n/255 (how the field writes them) when they are one, else the number."""
    frac = Fraction(eps).limit_denominator(1000)
    if threat_model == 'Linf' and 0 < eps < 1 and 255 % frac.denominator == 0:  # 8/255, also 1/51 = 5/255
        return f'{frac.numerator * 255 // frac.denominator}/255'
    return f'{eps:g}'


def _num(v: Optional[float], reported: bool, digits: int = 2) -> str:
    if v is None:
        return DASH
    return f'{v:.{digits}f}{DAGGER if reported else ""}'


def _config(m: Mapping[str, Any]) -> str:
    parts = [m.get('gate'), m.get('aux_loss'), m.get('placement')]
    return ' · '.join(str(p) for p in parts if p) or DASH


COLUMNS = ('#', 'Model', 'Config', 'E', 'k', 'Training', 'Source', 'Eps', 'Clean', 'AutoAttack', 'Ensemble',
           'PGD-20', 'APGD', 'FLOPs×', 'n', 'Flags', 'Entry')
RIGHT = {'#', 'E', 'k', 'Eps', 'Clean', 'AutoAttack', 'Ensemble', 'PGD-20', 'APGD', 'FLOPs×', 'n'}


def row_cells(rank: int, e: Mapping[str, Any], short_flags: bool = False) -> List[str]:
    """The leaderboard cells of one entry (shared by the console and the markdown table).

    Args:
        rank: the 1-based position.
        e: the entry.
        short_flags: show the number of sanity flags instead of their names (the console is narrow).
    """
    flags = e.get('sanity_flags') or []
    reported = e['source'] != 'measured'
    m, ra = e['model'], e.get('robust_acc') or {}
    flops = e.get('flops') or {}
    experts = m.get('experts')
    return [
        str(rank), m['name'], _config(m),
        DASH if experts is None else str(experts), DASH if m.get('k') is None else str(m['k']),
        e['training']['method'], f"{e['source']}{DAGGER if reported else ''}", fmt_eps(e['eps'], e['threat_model']),
        _num(e.get('clean_acc'), reported), _num(ra.get('autoattack'), reported), _num(ra.get('ensemble'), reported),
        _num(pgd_value(e), reported), _num(apgd_value(e), reported),
        DASH if flops.get('ratio') is None else f"{flops['ratio']:.3f}",
        DASH if e.get('n_examples') is None else str(e['n_examples']),
        (str(len(flags)) if short_flags else ', '.join(flags)) if flags else DASH, e['entry_id'],
    ]


def group_entries(entries: Iterable[Mapping[str, Any]]) -> Dict[Tuple[str, str], List[Mapping[str, Any]]]:
    """Entries per (dataset, threat model), the groups in name order."""
    groups: Dict[Tuple[str, str], List[Mapping[str, Any]]] = {}
    for e in entries:
        groups.setdefault((e['dataset'], e['threat_model']), []).append(e)
    return dict(sorted(groups.items()))


def _md_cell(s: str) -> str:
    return s.replace('|', '\\|')


def render_markdown(entries: Sequence[Mapping[str, Any]], sort: str = DEFAULT_SORT) -> str:
    """LEADERBOARD.md: a section per data set and threat model. Pure function of the entries."""
    lines = [
        '# timm-moe leaderboard',
        '',
        '<!-- generated by `timm-moe leaderboard` from the JSON entries in this directory; do not edit -->',
        '',
        f'Sorted by {sort} (ties by the other metrics, then by entry id; missing values last). '
        'Accuracies in percent; FLOPs× = active inference FLOPs / the dense baseline\'s.',
        '',
        '- **measured**: run by this harness; each entry holds its provenance (commit, versions, device, '
        'command, seed, checkpoint sha256).',
        f'- **paper{DAGGER}**: reported by the paper\'s public code (Pavlitska et al. 2025): PGD-20 and APGD-20, '
        '**not AutoAttack**; APGD above PGD-20 points to a weak evaluation.',
        f'- **robustbench{DAGGER}**: AutoAttack numbers from the RobustBench leaderboard.',
        f'- {DAGGER} = reported elsewhere, not measured here. {DASH} = not measured or not reported.',
        '',
    ]
    if not entries:
        lines += ['No entries yet.', '']
    for (dataset, threat), group in group_entries(entries).items():
        rows = sort_entries(group, sort)
        n_meas = sum(e['source'] == 'measured' for e in rows)
        lines += [f'## {dataset} · {threat}', '',
                  f'{len(rows)} entries: {n_meas} measured, {len(rows) - n_meas} reported.', '']
        lines.append('| ' + ' | '.join(COLUMNS) + ' |')
        lines.append('|' + '|'.join('---:' if c in RIGHT else '---' for c in COLUMNS) + '|')
        for i, e in enumerate(rows, 1):
            lines.append('| ' + ' | '.join(_md_cell(c) for c in row_cells(i, e)) + ' |')
        lines.append('')
    flags = sorted({f for e in entries for f in (e.get('sanity_flags') or [])})
    if flags:
        lines += ['Flags: sanity checks that failed for an entry (for reported numbers, anomalies of the source '
                  'table); see the entry\'s `notes`.', '']
        lines += [f'- `{f}`' for f in flags] + ['']
    return '\n'.join(lines)


def write_leaderboard(registry_dir: Path = DEFAULT_REGISTRY, entries: Optional[Sequence[Mapping[str, Any]]] = None) -> Path:
    """Regenerate `<registry_dir>/LEADERBOARD.md` from every entry (sorted by AutoAttack).

    Args:
        registry_dir: the registry root.
        entries: the entries to render (default: load them all from registry_dir).
    """
    registry_dir = Path(registry_dir)
    if entries is None:
        entries = load_entries(registry_dir)
    text = render_markdown(entries, DEFAULT_SORT)
    path = registry_dir / FILENAME
    if not path.is_file() or path.read_text(encoding='utf-8') != text:  # leave an unchanged file untouched
        with atomic_open(path) as f:  # concurrent regenerations (sweep jobs) never interleave
            f.write(text)
    return path


def print_table(entries: Sequence[Mapping[str, Any]], sort: str, limit: int = 0) -> None:
    """The rich console table, one per data set and threat model."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 220)
    if not entries:
        console.print('no entries match')
        return
    for (dataset, threat), group in group_entries(entries).items():
        rows = sort_entries(group, sort)
        shown = rows[:limit] if limit > 0 else rows
        table = Table(title=f'{dataset} · {threat}, sorted by {sort} ({len(shown)} of {len(rows)})',
                      caption=f'{DAGGER} reported elsewhere (paper: PGD-20/APGD-20, not AutoAttack); {DASH} missing; '
                              'Flags = number of failed sanity checks (names in LEADERBOARD.md)')
        for c in COLUMNS:
            table.add_column(c, justify='right' if c in RIGHT else 'left', overflow='fold')
        for i, e in enumerate(shown, 1):
            style = None if e['source'] == 'measured' else 'dim'
            table.add_row(*row_cells(i, e, short_flags=True), style=style)
        console.print(table)


def run(args: argparse.Namespace) -> int:
    check_filters(args.dataset, args.threat_model)
    sort_key(args.sort)  # validates the key before any work
    if args.limit < 0:
        raise UserError(f'--limit {args.limit} is negative: use 0 for all rows or a positive count')
    registry = Path(args.registry)
    everything = load_entries(registry)
    shown = [e for e in everything if (not args.dataset or e['dataset'] in args.dataset)
             and (not args.threat_model or e['threat_model'] in args.threat_model)]
    print_table(shown, args.sort, args.limit)
    if not args.no_write:
        path = write_leaderboard(registry, everything)
        print(f'wrote {path} ({len(everything)} entries)')
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser('leaderboard', help='rank the registry and regenerate registry/LEADERBOARD.md',
                              description=__doc__.split('\n\n')[0])
    add_registry_args(p, 'show only these')  # LEADERBOARD.md always has every entry
    p.add_argument('--sort', default=DEFAULT_SORT,
                   help='autoattack | pgd (PGD-20, else the strongest PGD on record) | clean; the file is '
                        'always sorted by autoattack')
    p.add_argument('--limit', type=int, default=0, help='rows per table on the console (0 = all)')
    p.add_argument('--no-write', action='store_true', help='print only; leave LEADERBOARD.md as it is')
    p.set_defaults(func=run)

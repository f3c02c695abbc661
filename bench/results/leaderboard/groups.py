"""Rows (one run, or the runs that differ only in their seed), sections (data set, threat model, eps) and ranking."""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from bench.core.errors import UserError
from bench.results.leaderboard.columns import AUTO, CLEAN, EXACT_N, Column, columns_of
from bench.core.stats import group_by_seed, per_sample_vectors, seed_summary, wilson_interval


@dataclass
class Cell:
    """One accuracy as shown: a value, or a mean over seeds with its spread; the interval when there is one."""
    value: float
    lo: Optional[float] = None
    hi: Optional[float] = None
    std: Optional[float] = None  # over seeds; None for a single run


@dataclass
class Row:
    entries: List[Mapping[str, Any]]  # one run, or the runs of one configuration that differ only in the seed
    cells: Dict[str, Cell]  # column ident (or CLEAN) -> cell

    @property
    def first(self) -> Mapping[str, Any]:
        return self.entries[0]

    @property
    def ids(self) -> Tuple[str, ...]:
        return tuple(e['entry_id'] for e in self.entries)


def _points(entry: Mapping[str, Any]) -> Optional[int]:
    per_sample = entry.get('per_sample')
    return per_sample['n'] if per_sample else entry.get('n_examples')


def _single_cell(entry: Mapping[str, Any], metric_key: str, value: float) -> Cell:
    """A run's accuracy with its Wilson interval when it comes from fewer than EXACT_N known points."""
    n = _points(entry)
    if n is None or n >= EXACT_N:
        return Cell(value)
    got = per_sample_vectors(entry)
    if got is not None and metric_key in got[1]:
        k = int(got[1][metric_key].sum())
    else:  # no bits (schema 1): the count the percentage was computed from
        k = round(value * n / 100)
    lo, hi = wilson_interval(k, n)
    return Cell(value, lo, hi)


def _group_cell(values: Sequence[float]) -> Cell:
    s = seed_summary(values)
    return Cell(s['mean'], s['lo'], s['hi'], s['std'])


def make_rows(entries: Sequence[Mapping[str, Any]], keymap: Mapping[str, Mapping[str, str]],
              group: bool = True) -> List[Row]:
    """One row per entry, or (group=True) per set of measured entries that differ only in their seed."""
    measured = [e for e in entries if e['source'] == 'measured']
    groups = group_by_seed(measured) if group else [[e] for e in measured]
    groups += [[e] for e in entries if e['source'] != 'measured']  # reported numbers are single results
    rows = []
    for members in groups:
        members = sorted(members, key=lambda e: e['entry_id'])
        per_column: Dict[str, List[Tuple[Mapping[str, Any], str, float]]] = {}
        for e in members:
            per_column.setdefault(CLEAN, []).append((e, 'clean', e['clean_acc']))
            for key, value in (e.get('robust_acc') or {}).items():
                if value is not None:
                    per_column.setdefault(keymap[e['entry_id']][key], []).append((e, key, value))
        cells = {}
        for ident, found in per_column.items():
            if len(members) == 1:
                e, key, value = found[0]
                cells[ident] = _single_cell(e, key, value)
            elif len(found) == len(members):
                cells[ident] = _group_cell([v for _, _, v in found])
        rows.append(Row(members, cells))
    return rows


# ------------------------------------------------------------------------------------ sections and ranking

@dataclass
class Section:
    dataset: str
    threat_model: str
    eps: float
    entries: List[Mapping[str, Any]]
    columns: List[Column]
    keymap: Dict[str, Dict[str, str]]

    @property
    def title(self) -> str:
        return f'{self.dataset} · {self.threat_model} · eps {fmt_eps(self.eps, self.threat_model)}'


def sections(entries: Iterable[Mapping[str, Any]]) -> List[Section]:
    """Entries per (data set, threat model, eps): only results at the same radius are ranked together."""
    by: Dict[Tuple[str, str, float], List[Mapping[str, Any]]] = {}
    for e in entries:
        by.setdefault((e['dataset'], e['threat_model'], round(float(e['eps']), 10)), []).append(e)
    out = []
    for (dataset, threat, eps), group in sorted(by.items()):
        columns, keymap = columns_of(group)
        out.append(Section(dataset, threat, eps, group, columns, keymap))
    return out


def measured_first(secs: Sequence[Section]) -> List[Tuple[int, Section]]:
    """(index in `sections`, section), the sections with results measured here before those only reported
    elsewhere (the paper's hundreds of rows would bury them), each part in `sections`' order."""
    return sorted(enumerate(secs), key=lambda i_s: not any(e['source'] == 'measured' for e in i_s[1].entries))


def _norm(text: str) -> str:
    return re.sub(r'\s+', '', text).lower()


def resolve_sort(sort: str, section: Section, rows: Sequence[Row]) -> Optional[str]:
    """The column ident (or CLEAN) that `sort` names in this section; None if this section has no such column.

    `sort` is 'clean', 'auto', a column label ('PGD-20', 'APGD-CE-20', case and spaces ignored) or an accuracy
    key ('pgd20', 'autoattack'). 'auto' picks the configuration measured on the most rows, and among those the
    strongest (lowest mean accuracy on the rows that have them all), so a section is ranked by its most
    comparable and most demanding number.

    Raises:
        UserError: `sort` names several configurations in this section (e.g. 'pgd20' for ours and the
            paper code's PGD-20): the message lists their labels.
    """
    if sort == CLEAN:
        return CLEAN
    if sort == AUTO:
        return _auto_column(section, rows)
    wanted = _norm(sort)
    hits = {c.ident for c in section.columns if _norm(c.label) == wanted}
    if not hits:
        hits = {ident for m in section.keymap.values() for key, ident in m.items() if key == sort}
    if len(hits) > 1:
        labels = sorted(c.label for c in section.columns if c.ident in hits)
        raise UserError(f'--sort {sort!r} names {len(hits)} attack configurations in {section.title}: '
                        f'{"; ".join(labels)}. Pass one of these labels')
    return next(iter(hits), None)


def _auto_column(section: Section, rows: Sequence[Row]) -> str:
    if not section.columns:
        return CLEAN
    count = {c.ident: sum(c.ident in r.cells for r in rows) for c in section.columns}
    best = max(count.values())
    candidates = [c for c in section.columns if count[c.ident] == best]
    shared = [r for r in rows if all(c.ident in r.cells for c in candidates)]

    def strength(c: Column) -> tuple:
        mean = sum(r.cells[c.ident].value for r in shared) / len(shared) if shared else 0.0
        return (mean, c.order)
    return min(candidates, key=strength).ident


def rank_rows(rows: Sequence[Row], metric: Optional[str]) -> Tuple[List[Tuple[int, Row]], List[Row]]:
    """(ranked, unranked): rows with the metric, best first, with their rank (equal values share a rank);
    and the rows without it, by clean accuracy. Ties are broken by clean accuracy, then by entry id."""
    def clean(r: Row) -> float:
        return r.cells[CLEAN].value

    have = [r for r in rows if metric is not None and metric in r.cells]
    rest = [r for r in rows if metric is None or metric not in r.cells]
    have.sort(key=lambda r: (-r.cells[metric].value, -clean(r), r.ids))
    ranked = [(1 + sum(o.cells[metric].value > r.cells[metric].value for o in have), r) for r in have]
    return ranked, sorted(rest, key=lambda r: (-clean(r), r.ids))


def fmt_eps(eps: float, threat_model: str = 'Linf') -> str:
    """Linf budgets as n/255 (how the field writes them) when they are one, else the number."""
    frac = Fraction(eps).limit_denominator(1000)
    if threat_model == 'Linf' and 0 < eps < 1 and 255 % frac.denominator == 0:  # 8/255, also 1/51 = 5/255
        return f'{frac.numerator * 255 // frac.denominator}/255'
    return f'{eps:g}'

"""`timm-moe leaderboard`: rank the registry's entries and regenerate `registry/LEADERBOARD.md`.

Each accuracy column holds exactly one attack configuration (attack, implementation, steps, restarts,
random start, loss, step size; for AutoAttack the parts that ran), read from the settings an entry stores
(`eval_settings`) or, for entries without them, from what its accuracy key meant (`KEY_SETTINGS`). PGD-10
and PGD-20 are two columns; so are our APGD-CE-20 and the paper code's APGD-20.

A table ranks the rows measured with one configuration (`--sort`); the rows without it are listed apart
("not measured with ..."), never ranked below as if they had scored nothing. Runs that differ only in their
training seed are one row: mean, std over seeds and a 95% t-interval over the seeds (`--no-group` lists the
runs). An accuracy from fewer than 10,000 test points carries its 95% Wilson interval.

The printed tables show what was asked (--dataset, --threat-model, --sort, --limit). The file is the
canonical view: every entry, grouped by seed, each section ranked by its default configuration (`auto`), so
that its content depends only on the entries, never on the flags of whoever ran the command last. It has
no timestamp and a total order, so regenerating it from the same entries gives the same bytes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from bench.atomic import atomic_open
from bench.errors import UserError
from .registry import DEFAULT_REGISTRY, add_registry_args, check_filters, load_entries

DASH = '—'  # a value that was not measured or not reported
DAGGER = '†'  # a number reported elsewhere (paper, RobustBench), not measured by this harness
FILENAME = 'LEADERBOARD.md'
AUTO = 'auto'
CLEAN = 'clean'
DEFAULT_SORT = AUTO
EXACT_N = 10000  # accuracies from fewer test points than this carry their 95% interval
ENSEMBLE = 'ensemble'  # the robust_acc key of the per-sample worst case over an entry's attacks

# ------------------------------------------------------------------------------------ attack configurations

# What each accuracy key meant for entries that do not store their attack settings (schema 1): the
# definitions of bench.attacks when those entries were written. Reported numbers (paper, RobustBench) store
# theirs since schema 2; for older copies of them, bench.results.import_paper's tables apply (see `legacy_settings`).
KEY_SETTINGS: Dict[str, Dict[str, Any]] = {
    'pgd20': dict(attack='PGD', steps=20, restarts=1, random_start=False, loss='ce', step_size=None),
    'pgd10': dict(attack='PGD', steps=10, restarts=1, random_start=False, loss='ce', step_size=None),
    'apgd-ce': dict(attack='APGD', steps=100, restarts=1, loss='ce'),
    'apgd-ce20': dict(attack='APGD', steps=20, restarts=1, loss='ce'),
    'apgd-ce10': dict(attack='APGD', steps=10, restarts=1, loss='ce'),
    'apgd-dlr': dict(attack='APGD', steps=100, restarts=1, loss='dlr'),
    'apgd-t': dict(attack='APGDTargeted', steps=100, restarts=1, n_target_classes=9),
    'fab-t': dict(attack='FABTargeted', steps=100, restarts=1, n_target_classes=9),
    'square': dict(attack='Square', n_queries=5000, restarts=1),
    'autoattack': dict(attack='AutoAttack', version='standard'),
}
AUTOATTACK_STANDARD = ('apgd-ce', 'apgd-t', 'fab-t', 'square')
CUSTOM_AUTOATTACK = 'autoattack.'  # 'autoattack.apgd-ce+square': AutoAttack's custom version with those parts

# The settings that make two runs of one attack the same configuration, with the value a setting has when an
# entry does not name it. Everything else an entry stores (seed, batch size, descriptive text) is kept in the
# entry but does not split a column: a different seed is another draw of the same configuration.
FAMILY_SETTINGS: Dict[str, Dict[str, Any]] = {
    'PGD': dict(steps=None, restarts=1, random_start=False, loss='ce', step_size=None, final_iterate=False),
    'APGD': dict(steps=100, restarts=1, loss='ce', rho=0.75),
    'APGDTargeted': dict(steps=100, restarts=1, n_target_classes=9),
    'FABTargeted': dict(steps=100, restarts=1, n_target_classes=9),
    'Square': dict(n_queries=5000, restarts=1, p_init=0.8),
    'AutoAttack': dict(version='standard'),
}
DEFAULT_IMPLEMENTATION = {'PGD': 'timm-moe'}  # every other attack runs from pyautoattack
# the same code under two names: pyautoattack is fra31/auto-attack ('autoattack') packaged for PyPI
IMPLEMENTATION_ALIASES = {'autoattack': 'pyautoattack'}
IMPLEMENTATION_LABELS = {'robust-sparse-moes': 'paper code'}
# settings of attacks this module does not know that are randomness or bookkeeping, not configuration
NOISE = frozenset({'seed', 'eps', 'norm', 'batch_size', 'implementation'})
# column order within a table, strongest families first
FAMILY_ORDER = ('AutoAttack', 'APGDTargeted', 'FABTargeted', 'Square', 'APGD', 'PGD')


def _library(implementation: Any, family: str) -> str:
    """'pyautoattack 0.2.0' -> 'pyautoattack': the code that ran, without its version."""
    if not implementation:
        return DEFAULT_IMPLEMENTATION.get(family, 'pyautoattack')
    name = re.sub(r'\s+v?\d[\w.+-]*$', '', str(implementation).strip())
    return IMPLEMENTATION_ALIASES.get(name, name)


def _relative_step(step: Any, eps: float, ours: bool) -> Any:
    """PGD's step size as a multiple of eps (None: our default eps/4), so 2/255 at 8/255 equals 'eps/4'."""
    if step is None:
        return 0.25 if ours else None
    if isinstance(step, (int, float)) and not isinstance(step, bool) and eps > 0:
        return round(step / eps, 4)
    return step


def _autoattack_parts(settings: Mapping[str, Any]) -> Tuple[str, ...]:
    """The AutoAttack parts that ran: recorded after the run, else requested, else the standard four."""
    for key in ('parts_run', 'ran'):
        if isinstance(settings.get(key), (list, tuple)) and settings[key]:
            return tuple(settings[key])
    parts = settings.get('parts')
    if settings.get('version') == 'custom' and isinstance(parts, (list, tuple)) and parts:
        return tuple(parts)
    if isinstance(settings.get('parts_requested'), (list, tuple)) and settings['parts_requested']:
        return tuple(settings['parts_requested'])
    return AUTOATTACK_STANDARD


def attack_config(settings: Mapping[str, Any], eps: float) -> Dict[str, Any]:
    """The configuration that identifies a column, from an attack's stored settings.

    Args:
        settings: the attack's settings (an entry's `eval_settings['attacks'][key]`, or `KEY_SETTINGS`).
        eps: the entry's radius (step sizes are compared relative to it).
    """
    family = str(settings.get('attack') or '?')
    library = _library(settings.get('implementation'), family)
    config: Dict[str, Any] = {'attack': family, 'implementation': library}
    if family in FAMILY_SETTINGS:
        # a setting an entry leaves out has our code's default when our code ran it; for other code
        # (the paper's, torchattacks) it is unknown, never assumed to be ours
        ours = library == _library(None, family)
        for name, default in FAMILY_SETTINGS[family].items():
            config[name] = settings.get(name, default if ours else None)
        if family == 'PGD':
            config['step_size'] = _relative_step(config['step_size'], eps, ours)
        if family == 'AutoAttack':
            config['parts'] = list(_autoattack_parts(settings))
    else:  # an attack this module does not know: every setting counts, except randomness and the radius
        config.update({k: v for k, v in settings.items() if k not in NOISE and k != 'attack'})
    return json.loads(json.dumps(config, default=str))


def legacy_settings(key: str, source: str) -> Dict[str, Any]:
    """Settings of an accuracy key for an entry that stores none (see `KEY_SETTINGS`)."""
    if source != 'measured':
        from .import_paper import REPORTED_ATTACKS
        if key in REPORTED_ATTACKS.get(source, {}):
            return dict(REPORTED_ATTACKS[source][key])
    if key in KEY_SETTINGS:
        return dict(KEY_SETTINGS[key])
    if key.startswith(CUSTOM_AUTOATTACK):
        return dict(attack='AutoAttack', version='custom', parts=key[len(CUSTOM_AUTOATTACK):].split('+'))
    return dict(attack=key)  # unknown: a column of its own, named by the key


def entry_attack_settings(entry: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """{robust_acc key: settings} of an entry, stored or (schema 1) read from the key; the ensemble excluded."""
    stored = (entry.get('eval_settings') or {}).get('attacks') or {}
    return {k: dict(stored[k]) if k in stored else legacy_settings(k, entry['source'])
            for k in (entry.get('robust_acc') or {}) if k != ENSEMBLE}


def _canon(config: Mapping[str, Any]) -> str:
    return json.dumps(config, sort_keys=True)


def config_label(config: Mapping[str, Any], member_labels: Sequence[str] = ()) -> str:
    """A short name of a configuration: 'PGD-20', 'APGD-CE-20', 'AutoAttack', 'APGD-20 [torchattacks]'."""
    family = config['attack']
    if family == 'Ensemble':
        return 'worst of ' + ' + '.join(member_labels)
    steps = config.get('steps')
    if family == 'PGD':
        label = f'PGD-{steps}'
        if config.get('random_start'):
            label += '-RS'
        if config.get('loss') not in ('ce', None):
            label += f"-{str(config['loss']).upper()}"
        if config.get('step_size') not in (0.25, None):
            label += f" step {config['step_size']}·eps"
        if config.get('final_iterate'):
            label += ' final-iterate'
    elif family == 'APGD':
        loss = config.get('loss')
        label = f'APGD-{str(loss).upper()}-{steps}' if loss else f'APGD-{steps}'
    elif family == 'APGDTargeted':
        label = f'APGD-T-{steps}'
    elif family == 'FABTargeted':
        label = f'FAB-T-{steps}'
    elif family == 'Square':
        label = f"Square-{config.get('n_queries')}"
    elif family == 'AutoAttack':
        parts = tuple(config.get('parts') or ())
        label = 'AutoAttack' if parts == AUTOATTACK_STANDARD else f"AutoAttack({'+'.join(parts)})"
    else:
        label = family + (f'-{steps}' if steps else '')
    if (config.get('restarts') or 1) > 1:
        label += f"×{config['restarts']}"
    impl = config.get('implementation')
    if impl and impl != _library(None, family):
        label += f' [{IMPLEMENTATION_LABELS.get(impl, impl)}]'
    return label


def describe(config: Mapping[str, Any]) -> str:
    """Every setting of a configuration, for the legend under a table ('not stated': the source does not say)."""
    if config['attack'] == 'Ensemble':
        return 'per test point, robust only if it survived every attack of the entry'

    def text(k: str, v: Any) -> str:
        if v is None:
            return 'not stated'
        if isinstance(v, bool):
            return 'yes' if v else 'no'
        if isinstance(v, list):
            return '+'.join(map(str, v))
        if k == 'step_size' and isinstance(v, (int, float)):
            return f'{v:g}·eps'
        return str(v)
    return f"{config['attack']}: " + ', '.join(f'{k.replace("_", " ")} {text(k, v)}'
                                               for k, v in config.items() if k != 'attack')


@dataclass(frozen=True)
class Column:
    ident: str  # canonical JSON of the configuration
    label: str
    config: Dict[str, Any] = field(compare=False, hash=False)
    inferred: Tuple[str, ...] = ()  # accuracy keys whose settings were read from the key (schema 1), not stored

    @property
    def order(self) -> tuple:
        family = self.config['attack']
        rank = FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER) + (family == 'Ensemble')
        return (rank, -(self.config.get('steps') or 0), self.label, self.ident)


def entry_columns(entry: Mapping[str, Any]) -> Dict[str, Tuple[str, Dict[str, Any], str]]:
    """{robust_acc key: (column ident, configuration, label)} of one entry (before label clashes are resolved)."""
    out: Dict[str, Tuple[str, Dict[str, Any], str]] = {}
    for key, settings in entry_attack_settings(entry).items():
        config = attack_config(settings, entry['eps'])
        out[key] = (_canon(config), config, config_label(config))
    if ENSEMBLE in (entry.get('robust_acc') or {}):
        members = sorted(out.values(), key=lambda m: Column(m[0], m[2], m[1]).order)
        config = {'attack': 'Ensemble', 'members': [m[0] for m in members]}
        out[ENSEMBLE] = (_canon(config), config, config_label(config, [m[2] for m in members]))
    return out


def columns_of(entries: Iterable[Mapping[str, Any]]) -> Tuple[List[Column], Dict[str, Dict[str, str]]]:
    """The attack columns of a set of entries, in display order, and per entry id {key: column ident}.

    Two different configurations never share a label: a clash gets a short hash of the configuration.
    """
    configs: Dict[str, Tuple[Dict[str, Any], str]] = {}
    inferred: Dict[str, set] = {}
    keymap: Dict[str, Dict[str, str]] = {}
    for e in entries:
        cols = entry_columns(e)
        stored = (e.get('eval_settings') or {}).get('attacks') or {}
        keymap[e['entry_id']] = {k: ident for k, (ident, _, _) in cols.items()}
        for key, (ident, config, label) in cols.items():
            configs.setdefault(ident, (config, label))
            if key != ENSEMBLE and key not in stored:
                inferred.setdefault(ident, set()).add(key)
    by_label: Dict[str, List[str]] = {}
    for ident, (_, label) in configs.items():
        by_label.setdefault(label, []).append(ident)
    columns = []
    for ident, (config, label) in configs.items():
        if len(by_label[label]) > 1:
            label = f'{label} #{hashlib.sha256(ident.encode()).hexdigest()[:4]}'
        columns.append(Column(ident, label, config, tuple(sorted(inferred.get(ident, ())))))
    return sorted(columns, key=lambda c: c.order), keymap


# ------------------------------------------------------------------------------------ rows and statistics

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
    from .stats import per_sample_vectors, wilson_interval

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
    from .stats import seed_summary

    s = seed_summary(values)
    return Cell(s['mean'], s['lo'], s['hi'], s['std'])


def make_rows(entries: Sequence[Mapping[str, Any]], keymap: Mapping[str, Mapping[str, str]],
              group: bool = True) -> List[Row]:
    """One row per entry, or (group=True) per set of measured entries that differ only in their seed."""
    from .stats import group_by_seed

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


def sort_entries(entries: Iterable[Mapping[str, Any]], sort: str = DEFAULT_SORT) -> List[Mapping[str, Any]]:
    """Entries of one section in leaderboard order, one per row (no seed grouping): ranked rows first, then
    the rows without the metric. For tests and scripts; the tables use `rank_rows`."""
    entries = list(entries)
    out: List[Mapping[str, Any]] = []
    for sec in sections(entries):
        rows = make_rows(sec.entries, sec.keymap, group=False)
        ranked, rest = rank_rows(rows, resolve_sort(sort, sec, rows))
        out += [r.first for _, r in ranked] + [r.first for r in rest]
    return out


# ------------------------------------------------------------------------------------ cells

def fmt_eps(eps: float, threat_model: str = 'Linf') -> str:
    """Linf budgets as n/255 (how the field writes them) when they are one, else the number."""
    frac = Fraction(eps).limit_denominator(1000)
    if threat_model == 'Linf' and 0 < eps < 1 and 255 % frac.denominator == 0:  # 8/255, also 1/51 = 5/255
        return f'{frac.numerator * 255 // frac.denominator}/255'
    return f'{eps:g}'


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


def _config(entry: Mapping[str, Any]) -> str:
    m = entry['model']
    parts = [str(p) for p in (m.get('gate'), m.get('aux_loss'), m.get('placement')) if p]
    if m.get('experts'):
        parts.append({True: 'noisy', False: 'no noise', None: 'noise ?'}[noisy_gating(entry)])
    return ' · '.join(parts) or DASH


def _flops(row: Row) -> str:
    ratios = [e['flops']['ratio'] for e in row.entries if (e.get('flops') or {}).get('ratio') is not None]
    return f'{sum(ratios) / len(ratios):.3f}' if ratios else DASH


FIXED_LEFT = ('#', 'Model', 'Config', 'E', 'k', 'Training', 'Source', 'Clean')
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
        DASH if rank is None else str(rank), m['name'], _config(e),
        DASH if m.get('experts') is None else str(m['experts']), DASH if m.get('k') is None else str(m['k']),
        e['training']['method'], f"{e['source']}{DAGGER if reported else ''}",
        fmt_cell(row.cells.get(CLEAN), reported),
        *[fmt_cell(row.cells.get(c.ident), reported) for c in columns],
        _flops(row), DASH if n is None else str(n), DASH if reported else str(len(row.entries)),
        (str(len(flags)) if short_flags else ', '.join(flags)) if flags else DASH, ', '.join(row.ids),
    ]


def _label_of(section: Section, metric: Optional[str], sort: str) -> str:
    if metric == CLEAN:
        return 'clean accuracy'
    return next((c.label for c in section.columns if c.ident == metric), sort)


# ------------------------------------------------------------------------------------ markdown

def _md_cell(s: str) -> str:
    return s.replace('|', '\\|')


def _md_table(head: Sequence[str], body: Iterable[Sequence[str]], right: Iterable[str]) -> List[str]:
    right = set(right)
    lines = ['| ' + ' | '.join(_md_cell(h) for h in head) + ' |',
             '|' + '|'.join('---:' if h in right else '---' for h in head) + '|']
    return lines + ['| ' + ' | '.join(_md_cell(c) for c in cells) + ' |' for cells in body] + ['']


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
        'Config: gate · balancing loss · placement · noisy gating in training.',
        '',
    ]
    if not entries:
        lines += ['No entries yet.', '']
    for sec in sections(entries):
        rows = make_rows(sec.entries, sec.keymap, group=True)
        metric = resolve_sort(sort, sec, rows)
        ranked, rest = rank_rows(rows, metric)
        label = _label_of(sec, metric, sort)
        n_meas = sum(e['source'] == 'measured' for e in sec.entries)
        how = (' (auto: the attack configuration measured on the most rows, the strongest among those)'
               if sort == AUTO and metric != CLEAN else '')
        lines += [f'## {sec.title}', '',
                  f'{len(sec.entries)} entries ({n_meas} measured, {len(sec.entries) - n_meas} reported) in '
                  f'{len(rows)} rows. Ranked by **{label}**{how}.', '']
        head = header(sec.columns)
        right = RIGHT | {c.label for c in sec.columns}
        if ranked:
            lines += _md_table(head, (row_cells(rank, r, sec.columns) for rank, r in ranked), right)
        if rest:
            lines += [f'### Not measured with {label}', '']
            lines += _md_table(head, (row_cells(None, r, sec.columns) for r in rest), right)
        if sec.columns:
            lines += ['Columns (the settings that define each; seeds and batch sizes are in the entries):', '']
            lines += [f'- **{c.label}**: {describe(c.config)}' + _inferred_note(c) for c in sec.columns] + ['']
    flags = sorted({f for e in entries for f in (e.get('sanity_flags') or [])})
    if flags:
        lines += ['Flags: sanity checks that failed for an entry (for reported numbers, anomalies of the source '
                  'table); see the entry\'s `notes`.', '']
        lines += [f'- `{f}`' for f in flags] + ['']
    return '\n'.join(lines)


def write_leaderboard(registry_dir: Path = DEFAULT_REGISTRY, entries: Optional[Sequence[Mapping[str, Any]]] = None) -> Path:
    """Regenerate `<registry_dir>/LEADERBOARD.md` from every entry (each section ranked by `auto`).

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


def print_table(entries: Sequence[Mapping[str, Any]], sort: str = DEFAULT_SORT, limit: int = 0,
                group: bool = True) -> None:
    """The rich console tables: per section, the ranked rows, then the rows without the metric."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 240)
    if not entries:
        console.print('no entries match')
        return
    for sec in sections(entries):
        rows = make_rows(sec.entries, sec.keymap, group=group)
        metric = resolve_sort(sort, sec, rows)
        ranked, rest = rank_rows(rows, metric)
        label = _label_of(sec, metric, sort)
        shown = ranked[:limit] if limit > 0 else ranked
        head = header(sec.columns)
        for title, body in ((f'{sec.title}: ranked by {label} ({len(shown)} of {len(ranked)} rows)',
                             [(rank, r) for rank, r in shown]),
                            (f'{sec.title}: not measured with {label} ({len(rest)} rows)', [(None, r) for r in rest])):
            if not body:
                continue
            table = Table(title=escape(title),
                          caption=escape(f'{DAGGER} reported elsewhere; {DASH} missing; [lo, hi] 95% interval; '
                                         '±std over seeds; Flags = number of failed sanity checks'))
            right = RIGHT | {c.label for c in sec.columns}
            for c in head:
                table.add_column(escape(c), justify='right' if c in right else 'left', overflow='fold')
            for rank, r in body:
                style = None if r.first['source'] == 'measured' else 'dim'
                table.add_row(*map(escape, row_cells(rank, r, sec.columns, short_flags=True)), style=style)
            console.print(table)


def run(args: argparse.Namespace) -> int:
    check_filters(args.dataset, args.threat_model)
    if args.limit < 0:
        raise UserError(f'--limit {args.limit} is negative: use 0 for all rows or a positive count')
    registry = Path(args.registry)
    everything = load_entries(registry)
    shown = [e for e in everything if (not args.dataset or e['dataset'] in args.dataset)
             and (not args.threat_model or e['threat_model'] in args.threat_model)]
    check_sort(shown, args.sort)
    print_table(shown, args.sort, args.limit, group=not args.no_group)
    if not args.no_write:
        path = write_leaderboard(registry, everything)
        print(f'wrote {path} ({len(everything)} entries)')
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser('leaderboard', help='rank the registry and regenerate registry/LEADERBOARD.md',
                              description=__doc__.split('\n\n')[0])
    add_registry_args(p, 'show only these')  # LEADERBOARD.md always has every entry
    p.add_argument('--sort', default=DEFAULT_SORT,
                   help="the ranking metric: auto (per section, the attack configuration measured on most rows, "
                        "the strongest among ties), clean, a column label such as PGD-20, APGD-CE-20 or "
                        "AutoAttack, or an accuracy key such as pgd20; the file always uses auto")
    p.add_argument('--limit', type=int, default=0, help='ranked rows per table on the console (0 = all)')
    p.add_argument('--no-group', action='store_true',
                   help='one row per run, instead of one per configuration over its seeds')
    p.add_argument('--no-write', action='store_true', help='print only; leave LEADERBOARD.md as it is')
    p.set_defaults(func=run)

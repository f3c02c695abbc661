"""A paper's claims as data: what each claim says, the effect the paper's own table gives it, and how a study
tests it, read from a claims file beside the paper's table (the shipped one:
`registry/sources/robust_experts_claims.yaml`, whose header describes the format).

Nothing here knows a paper: the rows a claim compares are named by the file, and its effects are computed by
three generic operations on them (`delta`: one row minus another; `ahead`: in how many rows, or matched twins
differing in one column, one side is ahead; `best`: in how many groups one value of a column is the most
robust). A study names its claims file with `claims:` in its spec; without one it tests the shipped paper's.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from string import Formatter
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from bench.core.errors import UserError
from bench.core.yaml_files import read_utf8
from bench.results.registry import SHIPPED_REGISTRY

SOURCES = SHIPPED_REGISTRY / 'sources'
DEFAULT_CLAIMS = SOURCES / 'robust_experts_claims.yaml'
TOP_KEYS = ('table', 'source', 'setting', 'rows', 'keys', 'metrics', 'baseline', 'sets', 'claims')
CLAIM_KEYS = ('title', 'claim', 'effect', 'detail', 'values', 'test')
OPERATIONS = ('delta', 'ahead', 'best')
# how a study answers a claim (`bench.results.study.render` draws each): the keys each kind takes
TESTS = {'equal_flops': ('pairs',),
         'differ_in': ('pairs', 'field', 'also', 'better', 'label', 'how', 'none', 'after'),
         'collapse': ('collapse', 'value', 'also')}

Row = Dict[str, Any]  # the key columns as stripped text, the metrics as floats
Delta = Tuple[float, ...]  # one difference per metric, in the file's metric order


@dataclass(frozen=True)
class Claims:
    """A claims file, checked: `claims` is a list of {title, claim, effect, detail, values, test}."""
    path: Path
    table: Path
    source: str
    setting: str
    rows: Dict[str, str]
    keys: Tuple[str, ...]
    metrics: Dict[str, str]
    baseline: Mapping[str, Any]
    sets: Dict[str, Dict[str, str]]
    claims: List[Dict[str, Any]]

    def metric_names(self) -> str:
        """'PGD-20 / APGD-20': the metrics as the report names a delta's parts."""
        return ' / '.join(self.metrics.values())


def _fail(path: Path, where: str, value: Any, allowed: str) -> UserError:
    return UserError(f'{where} in claims file {path} is {value!r}: {allowed}')


def _texts(path: Path, where: str, value: Any) -> Dict[str, str]:
    """A mapping of column -> value, the values as text (the table's cells are text: k 1 is '1')."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _fail(path, where, value, 'give a mapping of column: value')
    return {k: str(v) for k, v in value.items()}


def _where(path: Path, where: str, value: Any, sets: Mapping[str, Dict[str, str]]) -> Dict[str, str]:
    """A row selection: columns and values, `in: NAME` (or a list of names) adding those of the named sets.
    Several sets are kept apart under the key `in` (a row belongs to the selection if it is in any of them)."""
    if not isinstance(value, Mapping):
        raise _fail(path, where, value, 'give a mapping of column: value, with in: SET to start from a set')
    names = value.get('in', [])
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list) or any(n not in sets for n in names):
        raise _fail(path, f'{where}.in', value.get('in'), f'name sets of the file ({", ".join(sets)})')
    out: Dict[str, Any] = _texts(path, where, {k: v for k, v in value.items() if k != 'in'})
    if names:
        out['in'] = [sets[n] for n in names]
    return out


def _operation(path: Path, where: str, spec: Any, sets: Mapping[str, Dict[str, str]]) -> Dict[str, Any]:
    if not isinstance(spec, Mapping) or len(spec) != 1 or next(iter(spec)) not in OPERATIONS:
        raise _fail(path, where, spec, f'give one operation, {" or ".join(OPERATIONS)}: {{...}}')
    (op, args), = spec.items()
    allowed = {'delta': ('a', 'b'), 'ahead': ('a', 'b', 'vary', 'what'), 'best': ('rows', 'over', 'value')}[op]
    if not isinstance(args, Mapping) or set(args) - set(allowed):
        raise _fail(path, f'{where}.{op}', args, f'give a mapping with keys {", ".join(allowed)}')
    out: Dict[str, Any] = {'op': op}
    for key in ('a', 'b', 'rows'):
        if key in args:
            out[key] = _where(path, f'{where}.{op}.{key}', args[key], sets)
    if op == 'delta' and set(out) != {'op', 'a', 'b'}:
        raise _fail(path, f'{where}.delta', args, 'give the rows a and b')
    if op == 'ahead':
        if 'a' not in out or ('b' in out) == ('vary' in args):
            raise _fail(path, f'{where}.ahead', args, 'give rows a, and either a row b or vary: {column: value}')
        if 'vary' in args:
            out['vary'] = _texts(path, f'{where}.ahead.vary', args['vary'])
            if len(out['vary']) != 1:
                raise _fail(path, f'{where}.ahead.vary', args['vary'], 'give one column: value')
        out['what'] = str(args.get('what') or '')
    if op == 'best':
        if 'rows' not in out or not isinstance(args.get('over'), str) or 'value' not in args:
            raise _fail(path, f'{where}.best', args, 'give rows, over: a column and value: its value')
        out.update(over=args['over'], value=str(args['value']))
    return out


def _test(path: Path, where: str, test: Any) -> Dict[str, Any]:
    kind = (test.get('pairs') or ('collapse' if 'collapse' in test else None)) if isinstance(test, Mapping) else None
    if kind not in TESTS or set(test) - set(TESTS[kind]):
        raise _fail(path, where, test, 'give {pairs: equal_flops}, {pairs: differ_in, field, better, ...} or '
                                       '{collapse: field, value}')
    out = dict(test, kind=kind, also=list(test.get('also') or []))
    if kind == 'differ_in':
        for key in ('field', 'better', 'label', 'how', 'none'):
            if not isinstance(test.get(key), str):
                raise _fail(path, f'{where}.{key}', test.get(key), 'give text')
        out['after'] = str(test.get('after') or '')
    if kind == 'collapse' and not (isinstance(test['collapse'], str) and isinstance(test.get('value'), str)):
        raise _fail(path, where, test, 'give collapse: the field and value: its value')
    return out


def resolve(name: Union[None, str, Path]) -> Path:
    """A claims file given as a path, or by its name among the shipped sources; None: the shipped paper's."""
    if name is None:
        return DEFAULT_CLAIMS
    if not isinstance(name, (str, Path)) or not str(name):
        raise UserError(f'claims is {name!r}: give a claims file, a path or a shipped one\'s name')
    path = Path(name)
    if not path.exists() and (SOURCES / path.with_suffix('.yaml').name).is_file():
        return SOURCES / path.with_suffix('.yaml').name
    if not path.is_file():
        shipped = ', '.join(sorted(p.stem for p in SOURCES.glob('*_claims.yaml')))
        raise UserError(f'claims file {name!r} does not exist: give a path, or a shipped one ({shipped})')
    return path


def load_claims(name: Union[None, str, Path] = None) -> Claims:
    """Read and check a claims file (`resolve` finds it); its table is read only when effects are asked for."""
    path = resolve(name)
    try:
        data = yaml.safe_load(read_utf8(path, 'claims file'))
    except yaml.YAMLError as e:
        raise UserError(f'{path} is not valid YAML: {str(e).splitlines()[0]}') from None
    if not isinstance(data, Mapping):
        raise UserError(f'claims file {path} must hold a mapping with keys {", ".join(TOP_KEYS)}')
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise UserError(f'unknown key {unknown[0]!r} in claims file {path}; allowed: {", ".join(TOP_KEYS)}')
    for key in ('table', 'source'):
        if not isinstance(data.get(key), str) or not data[key]:
            raise _fail(path, key, data.get(key), 'give text')
    keys = data.get('keys')
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise _fail(path, 'keys', keys, 'give the list of columns that name a row')
    metrics = _texts(path, 'metrics', data.get('metrics'))
    if not metrics:
        raise _fail(path, 'metrics', data.get('metrics'), 'give {column: name} for each column of numbers')
    sets = {name: _texts(path, f'sets.{name}', s) for name, s in (data.get('sets') or {}).items()}
    baseline = data.get('baseline') or {}
    if not isinstance(baseline, Mapping) or set(baseline) - {'same', 'where'} or \
            not set(baseline.get('same') or []) <= set(keys):
        raise _fail(path, 'baseline', baseline, 'give {same: [key columns], where: {column: value}}')
    baseline = {'same': list(baseline.get('same') or []), 'where': _texts(path, 'baseline.where',
                                                                           baseline.get('where') or {})}
    claims = []
    if not isinstance(data.get('claims'), list) or not data['claims']:
        raise _fail(path, 'claims', data.get('claims'), 'give a list of claims')
    for i, claim in enumerate(data['claims'], 1):
        where = f'claims[{i}]'
        if not isinstance(claim, Mapping) or set(claim) - set(CLAIM_KEYS):
            raise _fail(path, where, claim, f'give a mapping with keys {", ".join(CLAIM_KEYS)}')
        for key in ('title', 'claim', 'effect'):
            if not isinstance(claim.get(key), str):
                raise _fail(path, f'{where}.{key}', claim.get(key), 'give text')
        values = {name: _operation(path, f'{where}.values.{name}', spec, sets)
                  for name, spec in (claim.get('values') or {}).items()}
        detail = str(claim.get('detail') or '')
        for text in (claim['effect'], detail):
            missing = [f for _, f, _, _ in Formatter().parse(text) if f is not None and f not in values]
            if missing:
                raise _fail(path, where, '{' + missing[0] + '}', f'name one of its values ({", ".join(values)})')
        claims.append(dict(title=claim['title'], claim=claim['claim'], effect=claim['effect'], detail=detail,
                           values=values, test=_test(path, f'{where}.test', claim.get('test'))))
    return Claims(path=path, table=path.parent / data['table'], source=' '.join(data['source'].split()),
                  setting=str(data.get('setting') or ''), rows=_texts(path, 'rows', data.get('rows') or {}),
                  keys=tuple(keys), metrics=metrics, baseline=baseline, sets=sets, claims=claims)


# ------------------------------------------------------------------------------------------ the table

def table_rows(claims: Claims) -> List[Row]:
    """The table's rows that the claims read (`rows`), cells stripped, the metrics as floats.

    Raises:
        UserError: the table is missing, lacks a column the file names, or a metric is not a number.
    """
    path = claims.table
    if not path.is_file():
        raise UserError(f"the paper's table {path} does not exist (claims file {claims.path.name}: table)")
    with open(path, newline='', encoding='utf-8') as f:
        reader = csv.DictReader(f)
        needed = list(claims.keys) + list(claims.metrics) + list(claims.rows)
        missing = [c for c in needed if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"the paper's table {path} lacks column {missing[0]!r}, which {claims.path.name} names")
        out = []
        for r in reader:
            if all((r[c] or '').strip() == v for c, v in claims.rows.items()):
                try:
                    out.append({**{k: (r[k] or '').strip() for k in claims.keys},
                                **{m: float(r[m]) for m in claims.metrics}})
                except ValueError:
                    raise UserError(f"the paper's table {path}: a {list(claims.metrics)} cell of row "
                                    f"{[r[k] for k in claims.keys]} is not a number") from None
    return out


def select(rows: Sequence[Row], where: Mapping[str, Any]) -> List[Row]:
    """The rows a selection names, in the table's order (`in`: any of its sets, then its own columns)."""
    own = {k: v for k, v in where.items() if k != 'in'}
    sets = where.get('in') or [{}]
    return [r for r in rows if any(all(r.get(k) == v for k, v in s.items()) for s in sets)
            and all(r.get(k) == v for k, v in own.items())]


def first(rows: Sequence[Row], where: Mapping[str, Any]) -> Optional[Row]:
    found = select(rows, where)
    return found[0] if found else None


def delta(claims: Claims, a: Optional[Row], b: Optional[Row]) -> Optional[Delta]:
    return None if a is None or b is None else tuple(a[m] - b[m] for m in claims.metrics)


def fmt_delta(d: Optional[Delta]) -> str:
    return '–' if d is None else ' / '.join(f'{x:+.2f}' for x in d)


def _counts(claims: Claims, counts: Sequence[int], n: int, what: str = '') -> str:
    """'3 of 6 WHAT on PGD-20 and 6 of 6 on APGD-20'."""
    parts = [f'{c} of {n}' + (f' {what}' if what and i == 0 else '') + f' on {name}'
             for i, (c, name) in enumerate(zip(counts, claims.metrics.values()))]
    return ' and '.join(parts)


def _twin(rows: Sequence[Row], row: Row, keys: Sequence[str], vary: Mapping[str, str]) -> Optional[Row]:
    """The row equal to `row` in every key column but the varied one, which has the varied value."""
    return first(rows, {**{k: row[k] for k in keys if k not in vary}, **vary})


def compute(claims: Claims, rows: Sequence[Row], op: Mapping[str, Any]) -> str:
    """One value of a claim's text, computed from the table by its operation."""
    if op['op'] == 'delta':
        return fmt_delta(delta(claims, first(rows, op['a']), first(rows, op['b'])))
    if op['op'] == 'ahead':
        against = ((lambda r: _twin(rows, r, claims.keys, op['vary'])) if 'vary' in op
                   else (lambda r, b=first(rows, op['b']): b))
        deltas = [d for d in (delta(claims, r, against(r)) for r in select(rows, op['a'])) if d is not None]
        return _counts(claims, [sum(d[i] > 0 for d in deltas) for i in range(len(claims.metrics))], len(deltas),
                       op['what'])
    groups: Dict[Tuple[str, ...], List[Row]] = {}
    for r in select(rows, op['rows']):
        groups.setdefault(tuple(r[k] for k in claims.keys if k != op['over']), []).append(r)
    # max keeps the first of equal rows, in the table's order
    counts = [sum(max(g, key=lambda r: r[m])[op['over']] == op['value'] for g in groups.values())
              for m in claims.metrics]
    return _counts(claims, counts, len(groups))


def effects(claims: Claims, rows: Sequence[Row]) -> List[Dict[str, str]]:
    """What the paper's table says on each claim: {claim, effect, detail}, the texts with their values filled in."""
    out = []
    for c in claims.claims:
        values = {name: compute(claims, rows, op) for name, op in c['values'].items()}
        out.append(dict(claim=c['claim'], effect=c['effect'].format_map(values),
                        detail=c['detail'].format_map(values)))
    return out


def load_effects(claims: Claims) -> Tuple[Optional[List[Dict[str, str]]], Optional[str]]:
    """(effects of the claims' table, None), or (None, the reason) when the table is absent."""
    if not claims.table.is_file():
        return None, f"the paper's table is not at {claims.table.name}: its effects are left out"
    return effects(claims, table_rows(claims)), None


def row_effect(claims: Claims, paper: Optional[Mapping[str, Any]]) -> Union[None, str, Delta]:
    """The paper's effect for a row it names (a pre-registration's `paper:`): the row minus its baseline row
    (`baseline`: the row with the same `same` columns and the `where` values); None without a row, or the reason
    (a string) it cannot be read."""
    if not paper:
        return None
    try:
        rows = table_rows(claims)
    except UserError as err:
        return f'– ({err})'
    want = {k: str(v) for k, v in paper.items()}
    row = first(rows, want)
    base = first(rows, {**{k: want.get(k) for k in claims.baseline['same']}, **claims.baseline['where']})
    if row is None or base is None:
        return f"– (no such row in the paper's table: {dict(paper)})"
    return delta(claims, row, base)

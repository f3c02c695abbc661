"""`timm-moe compare A B`: is model A more accurate than model B on the same test points?

A and B are registry entry ids or paths to entry JSON files. Both must store per-sample results
(`per_sample`, see bench.core.stats). The comparison runs on the test points both entries cover; it prints
the accuracy difference with its 95% paired bootstrap interval and the exact McNemar p-value, and
says plainly when the point sets or the attack settings differ. See docs/STATISTICS.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from bench.core.errors import UserError
from bench.core.values import NAME_PATTERN
from bench.core import stats
from bench.results.registry import DEFAULT_REGISTRY, RENAMED_METRICS, load_entry

__all__ = ['METRIC_STRENGTH', 'strongest_shared', 'compare_entries', 'resolve_entry', 'format_result']

# strongest first: AutoAttack standard; then a custom AutoAttack; then the per-point worst case over all
# attacks an entry ran (at least as strong as each of them); then single attacks by strength (100-step
# APGD before 20 before 10, APGD before PGD at equal steps); 'clean' last. Keys not listed rank after
# the listed attacks and before 'clean', alphabetically.
METRIC_STRENGTH: Tuple[str, ...] = (
    'autoattack', 'autoattack.*', 'worst_case', 'apgd-t', 'apgd-ce', 'apgd-dlr', 'fab-t', 'square',
    'apgd-ce20', 'pgd20', 'apgd-ce10', 'pgd10',
)


def _rank(metric: str) -> Tuple[int, str]:
    if metric == 'clean':
        return len(METRIC_STRENGTH) + 1, metric
    if metric in METRIC_STRENGTH:
        return METRIC_STRENGTH.index(metric), metric
    if metric.startswith('autoattack.'):
        return METRIC_STRENGTH.index('autoattack.*'), metric
    return len(METRIC_STRENGTH), metric


def strongest_shared(metrics_a: Sequence[str], metrics_b: Sequence[str]) -> Optional[str]:
    """The strongest metric (by `METRIC_STRENGTH`) that both sides store; None if they share none."""
    shared = set(metrics_a) & set(metrics_b)
    return min(shared, key=_rank) if shared else None


# ------------------------------------------------------------------------------------------ loading

def resolve_entry(ref: str, registry_dir: Any = DEFAULT_REGISTRY) -> Tuple[Dict[str, Any], str]:
    """(entry, where it came from) for a path to an entry file or an entry id in the registry."""
    path = Path(ref)
    if path.is_file():
        return load_entry(path), str(path)
    if ref.endswith('.json') or not NAME_PATTERN.fullmatch(ref):
        raise UserError(f'{ref!r} is neither an entry file nor an entry id (ids look like '
                        f"'resnet18_dense-pgd-cifar100-1a2b3c')")
    root = Path(registry_dir)
    if not root.is_dir():
        raise UserError(f'registry directory {root} does not exist: pass --registry DIR or a path to an entry file')
    hits = sorted(root.glob(f'*/*/{ref}.json'))
    if not hits:
        raise UserError(f'no entry {ref!r} in registry {root}: pass its id as in `timm-moe leaderboard`, '
                        'or a path to its JSON file')
    if len(hits) > 1:
        raise UserError(f'entry id {ref!r} is in {len(hits)} places in {root} ({", ".join(str(h) for h in hits)}): '
                        'pass the path of the one you mean')
    return load_entry(hits[0], root), str(hits[0])


def _vectors(entry: Mapping[str, Any]) -> Tuple[Tuple[int, int], Dict[str, np.ndarray]]:
    found = stats.per_sample_vectors(entry)
    if found is None:
        raise UserError(f"entry {entry.get('entry_id')!r} has no per-sample results: it predates per-sample "
                        f"storage{' (or was imported from a publication)' if entry.get('source') != 'measured' else ''}"
                        '; re-evaluate its checkpoint to compare it point by point')
    return found


def _stored_accuracy(entry: Mapping[str, Any], metric: str) -> Optional[float]:
    return entry.get('clean_acc') if metric == 'clean' else (entry.get('robust_acc') or {}).get(metric)


def _check_consistent(entry: Mapping[str, Any], metric: str, vector: np.ndarray) -> None:
    """Bits that disagree with the entry's own number mean a corrupted or hand-edited entry: refuse it."""
    stored = _stored_accuracy(entry, metric)
    if stored is None or len(vector) == 0:
        return
    from_bits = 100.0 * vector.mean()
    if abs(from_bits - stored) > 1e-6 * max(1.0, abs(stored)):
        key = 'clean_acc' if metric == 'clean' else f'robust_acc.{metric}'
        raise UserError(f"entry {entry.get('entry_id')!r}: its per-sample bits for {metric!r} give {from_bits:.4f}% "
                        f'but {key} says {stored:.4f}%: the entry is inconsistent')


# ------------------------------------------------------------------------------------------ settings

def _flatten(obj: Any, prefix: str = '') -> Dict[str, Any]:
    if isinstance(obj, Mapping):
        out: Dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f'{prefix}.{k}' if prefix else str(k)))
        return out if out or not prefix else {prefix: {}}
    return {prefix: obj}


def _diff(a: Any, b: Any, drop: frozenset = frozenset()) -> List[str]:
    """'path: A vs B' for every leaf that differs; leaves whose last key is in `drop` are left out."""
    fa, fb = _flatten(a), _flatten(b)
    out = []
    for key in sorted(set(fa) | set(fb)):
        if key.rsplit('.', 1)[-1] in drop:
            continue
        va, vb = fa.get(key, '<absent>'), fb.get(key, '<absent>')
        if stats.canonical_text(va) != stats.canonical_text(vb):
            out.append(f'{key}: {va!r} vs {vb!r}')
    return out


def _metric_settings(entry: Mapping[str, Any], metric: str) -> Optional[Dict[str, Any]]:
    """The stored settings behind one metric (all attacks for 'worst_case'); None if not stored."""
    per_attack = stats.attack_settings(entry)
    if per_attack is None:
        return None
    if metric == 'worst_case':
        return per_attack
    return per_attack.get(metric)


def settings_check(a: Mapping[str, Any], b: Mapping[str, Any], metric: str) -> Dict[str, List[str]]:
    """How the two measurements of `metric` differ: {'differences': [...], 'notes': [...]}.

    Differences are configuration (threat model, eps, the attack's steps, restarts, step size, random
    start, implementation, which AutoAttack parts ran); notes are what does not make the numbers
    incomparable (attack seeds, batch size) or what cannot be checked (settings not stored).
    """
    diffs: List[str] = []
    notes: List[str] = []
    if metric == 'clean':  # no attack: eps and the threat model do not enter clean accuracy
        return dict(differences=diffs, notes=notes)
    if stats.canonical_text(a.get('eps')) != stats.canonical_text(b.get('eps')):
        from bench.results.leaderboard.groups import fmt_eps
        diffs.append(f"eps: {fmt_eps(float(a['eps']), a.get('threat_model', 'Linf'))} vs "
                     f"{fmt_eps(float(b['eps']), b.get('threat_model', 'Linf'))}")
    if stats.canonical_text(a.get('threat_model')) != stats.canonical_text(b.get('threat_model')):
        diffs.append(f"threat_model: {a.get('threat_model')!r} vs {b.get('threat_model')!r}")
    if metric == 'worst_case':  # the worst case over different attack lists is a different attack
        runs = [sorted(set(e.get('robust_acc') or {}) - {'worst_case'}) for e in (a, b)]
        if runs[0] != runs[1]:
            diffs.append(f'worst-case members: {", ".join(runs[0])} vs {", ".join(runs[1])}')
    sa, sb = _metric_settings(a, metric), _metric_settings(b, metric)
    missing = [e.get('entry_id') for e, s in ((a, sa), (b, sb)) if s is None]
    if missing:
        notes.append(f'attack settings of {metric!r} are not stored in {", ".join(map(repr, missing))}: '
                     'checked by the metric name only')
        return dict(differences=diffs, notes=notes)
    diffs += _diff(sa, sb, drop=stats.ATTACK_NOISE_KEYS)
    noise = [d for d in _diff(sa, sb) if d not in diffs]
    if noise:
        notes.append(f'randomness/bookkeeping differs (does not change what the attack is): {"; ".join(noise)}')
    return dict(differences=diffs, notes=notes)


# ------------------------------------------------------------------------------------------ comparison

def _overlap(ra: Tuple[int, int], rb: Tuple[int, int], ida: str, idb: str) -> Tuple[int, int]:
    lo, hi = max(ra[0], rb[0]), min(ra[1], rb[1])
    if hi <= lo:
        raise UserError(f'entries {ida!r} (test points [{ra[0]}, {ra[1]})) and {idb!r} ([{rb[0]}, {rb[1]})) '
                        'share no test points: a paired comparison needs the same points')
    return lo, hi


def _pick_metric(metric: Optional[str], va: Mapping[str, Any], vb: Mapping[str, Any],
                 ida: str, idb: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> Tuple[str, str]:
    if metric is None:
        shared = sorted(set(va) & set(vb), key=_rank)
        if not shared:
            raise UserError(f'entries {ida!r} ({", ".join(sorted(va))}) and {idb!r} ({", ".join(sorted(vb))}) '
                            'store no metric in common')
        # the strongest metric both measured the same way: a worst case over different attack sets, or an
        # attack run with other settings, is not a default anyone could mean
        same = [m for m in shared if not settings_check(a, b, m)['differences']]
        if not same:
            raise UserError(f'entries {ida!r} and {idb!r} measured every shared metric ({", ".join(shared)}) with '
                            'different settings: pass --metric and --allow-different-settings to compare anyway')
        skipped = shared[:shared.index(same[0])]
        return same[0], ('the strongest metric both entries measured with the same settings'
                         + (f' ({", ".join(skipped)}: settings differ)' if skipped else ''))
    if metric in RENAMED_METRICS:  # entries are read with today's names (`registry.migrate`)
        raise UserError(f'--metric {metric!r} is now called {RENAMED_METRICS[metric]!r}')
    lacking = [f'{i!r} has {", ".join(sorted(v, key=_rank))}' for i, v in ((ida, va), (idb, vb)) if metric not in v]
    if lacking:
        shared = sorted(set(va) & set(vb), key=_rank)
        raise UserError(f'--metric {metric!r} is not stored in both entries ({"; ".join(lacking)}); '
                        f'shared: {", ".join(shared) or "none"}')
    return metric, 'given with --metric'


def compare_entries(a: Mapping[str, Any], b: Mapping[str, Any], metric: Optional[str] = None, n_boot: int = 10000,
                    seed: int = 0, confidence: float = 0.95, allow_different_settings: bool = False) -> Dict[str, Any]:
    """Paired comparison of two registry entries on the test points they share.

    Args:
        a, b: registry entries with `per_sample` results.
        metric: 'clean', 'pgd20', 'autoattack', ...; None: the strongest both store with the same settings
            (`METRIC_STRENGTH`, `settings_check`).
        n_boot: bootstrap replicates. seed: the bootstrap's seed. confidence: of every interval.
        allow_different_settings: compare even when the metric's attack settings differ (flagged in the result).

    Returns:
        A JSON-ready dict: metric, per-side accuracy with Wilson interval, diff (A - B, points) with its
        paired bootstrap interval, McNemar p, discordant counts, overlap, settings differences, warnings.

    Raises:
        UserError: no per-sample results, different data sets, no shared points or metric, settings
            that differ (without allow_different_settings), or bits that contradict the entry's numbers.
    """
    ida, idb = str(a.get('entry_id')), str(b.get('entry_id'))
    if ida == idb and stats.canonical_text(a) == stats.canonical_text(b):
        raise UserError(f'A and B are the same entry ({ida!r}): give two different entries to compare')
    (ra, va), (rb, vb) = _vectors(a), _vectors(b)
    if a.get('dataset') != b.get('dataset'):
        raise UserError(f'entries {ida!r} ({a.get("dataset")}) and {idb!r} ({b.get("dataset")}) are on different '
                        'data sets: their test points are not the same images')
    metric, why = _pick_metric(metric, va, vb, ida, idb, a, b)
    for entry, vec in ((a, va), (b, vb)):
        _check_consistent(entry, metric, vec[metric])
    check = settings_check(a, b, metric)
    warnings: List[str] = []
    if check['differences']:
        # the radius and threat model first, then at most two attack settings: one line a reader takes in
        diffs = check['differences']
        listed = '; '.join(diffs[:3]) + (f'; and {len(diffs) - 3} more' if len(diffs) > 3 else '')
        what = f'the settings of {metric!r} differ between {ida!r} and {idb!r}: {listed}'
        if not allow_different_settings:
            raise UserError(f'{what}; the accuracies measure different attacks (pass --allow-different-settings '
                            'to compare anyway)')
        warnings.append(f'DIFFERENT ATTACK SETTINGS: {what}; compared anyway (--allow-different-settings)')
    lo, hi = _overlap(ra, rb, ida, idb)
    xa, xb = va[metric][lo - ra[0]:hi - ra[0]], vb[metric][lo - rb[0]:hi - rb[0]]
    partial = (lo, hi) != ra or (lo, hi) != rb
    if partial:
        warnings.append(f'the point sets differ: {ida!r} covers test points [{ra[0]}, {ra[1]}), {idb!r} '
                        f'[{rb[0]}, {rb[1]}); compared on the {hi - lo} shared points [{lo}, {hi}) only')
    diff, dlo, dhi = stats.paired_bootstrap(xa, xb, n_boot=n_boot, seed=seed, confidence=confidence)
    n = hi - lo

    def side(entry: Mapping[str, Any], x: np.ndarray, r: Tuple[int, int]) -> Dict[str, Any]:
        k = int(x.sum())
        wlo, whi = stats.wilson_interval(k, n, confidence)
        return dict(entry_id=entry.get('entry_id'), model=(entry.get('model') or {}).get('name'),
                    index_range=list(r), correct=k, acc=100.0 * k / n, lo=wlo, hi=whi,
                    stored_acc=_stored_accuracy(entry, metric))

    return dict(
        metric=metric, metric_choice=why, confidence=confidence, n=n,
        overlap=dict(index_range=[lo, hi], partial=partial),
        a=side(a, xa, ra), b=side(b, xb, rb),
        diff=diff, diff_lo=dlo, diff_hi=dhi, n_boot=int(n_boot), boot_seed=int(seed),
        mcnemar_p=stats.mcnemar_exact(xa, xb),
        discordant=dict(a_only=int(np.sum(xa & ~xb)), b_only=int(np.sum(~xa & xb))),
        settings_differences=check['differences'], notes=check['notes'], warnings=warnings,
    )


# ------------------------------------------------------------------------------------------ output

def format_result(r: Mapping[str, Any]) -> str:
    """The comparison as plain lines (what `timm-moe compare` prints)."""
    pct = round(100 * r['confidence'])
    # warnings first: a reader who stops after the numbers must still see them
    lines = [f'WARNING: {w}' for w in r['warnings']]
    lines.append(f"metric: {r['metric']} ({r['metric_choice']}); {r['n']} shared test points "
                 f"[{r['overlap']['index_range'][0]}, {r['overlap']['index_range'][1]})")
    width = max(len(str(r[s]['entry_id'])) for s in 'ab')
    for s in 'ab':
        x = r[s]
        own = ''
        if r['overlap']['partial'] and x['stored_acc'] is not None:
            own = f"; {x['stored_acc']:.2f}% on all its points [{x['index_range'][0]}, {x['index_range'][1]})"
        lines.append(f"  {s.upper()}  {str(x['entry_id']):<{width}}  {x['acc']:6.2f}%  "
                     f"{pct}% Wilson [{x['lo']:.2f}, {x['hi']:.2f}]  ({x['correct']}/{r['n']}{own})")
    lines.append(f"  A - B = {r['diff']:+.2f} points, {pct}% paired bootstrap [{r['diff_lo']:+.2f}, {r['diff_hi']:+.2f}] "
                 f"({r['n_boot']} resamples, seed {r['boot_seed']})")
    d = r['discordant']
    lines.append(f"  exact McNemar p {stats.format_p(r['mcnemar_p'], 4, relation=True)} (A right, B wrong: {d['a_only']}; "
                 f"A wrong, B right: {d['b_only']})")
    alpha = 1 - r['confidence']
    if r['mcnemar_p'] < alpha:
        better = 'A' if r['diff'] > 0 else 'B'
        lines.append(f'  verdict: {better} is more accurate on these points (p < {alpha:.2g})')
    else:
        lines.append(f'  verdict: no significant difference on these points (p >= {alpha:.2g})')
    lines += [f'note: {n}' for n in r['notes']]
    return '\n'.join(lines)

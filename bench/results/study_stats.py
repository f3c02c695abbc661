"""The study report's statistics: configurations over seeds, paired comparisons and the verdict rule.

Every number comes from `bench.results.stats` and `bench.results.compare`; this module only arranges them
for a study (a configuration = its runs over seeds, `config -> seed -> entry`):

- `summary`: mean, sd and 95% t-interval over seeds of one metric (one run: its Wilson interval instead).
- `compare_configs`: A vs B paired by seed: `compare_entries` per seed pair (which refuses different attack
  settings and flags different point sets), the t-interval over the seeds' differences, and pooled over seeds
  the per-point paired bootstrap interval and the exact McNemar p.
- `verdict`: the rule stated in the report's protocol (`VERDICT_RULE`).

Bootstrap seeds are fixed (`BOOT_SEED`), so the report is the same bytes on every run.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from bench.core.errors import UserError
from bench.results import stats
from bench.results.compare import compare_entries

N_BOOT = 10000
BOOT_SEED = 0
ALPHA = 0.05
VERDICT_RULE = ("'holds' if the 95% t-interval over the seeds of the paired difference (claimed better minus "
                "other) lies above 0; 'reversed' if it lies below 0; else 'within noise (seed interval spans 0)'; "
                "with one seed there is no seed interval: 'undecided (one seed)'. Separately, the exact McNemar "
                "test on the points pooled over seeds says whether sampling noise over test points alone "
                f"explains the difference (p < {ALPHA:g}: it does not).")

Runs = Mapping[int, Mapping[str, Any]]  # seed -> entry


def accuracy(entry: Mapping[str, Any], metric: str) -> Optional[float]:
    return entry.get('clean_acc') if metric == 'clean' else (entry.get('robust_acc') or {}).get(metric)


def summary(runs: Runs, metric: str) -> Optional[Dict[str, Any]]:
    """seed_summary of a metric over the runs that measured it; a single run adds its Wilson interval
    (the only spread one run has: over test points)."""
    values = {s: accuracy(e, metric) for s, e in sorted(runs.items())}
    values = {s: v for s, v in values.items() if v is not None}
    if not values:
        return None
    out = stats.seed_summary(list(values.values()))
    out['seeds'] = sorted(values)
    if out['n'] == 1:
        entry = runs[out['seeds'][0]]
        n = int(entry['n_examples'])
        out['lo'], out['hi'] = stats.wilson_interval(round(out['mean'] * n / 100), n)
        out['wilson'] = True
    return out


def fmt_summary(s: Optional[Mapping[str, Any]], digits: int = 2) -> str:
    """'71.23 ± 0.85 [69.12, 73.34]' (sd over seeds, 95% t-interval); one run: '71.20 [W 68.31, 74.02]'."""
    if s is None:
        return '–'
    if s.get('wilson'):
        return f"{s['mean']:.{digits}f} [W {s['lo']:.{digits}f}, {s['hi']:.{digits}f}]"
    if s['n'] == 1:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} [{s['lo']:.{digits}f}, {s['hi']:.{digits}f}]"


def verdict(seed_interval: Optional[Mapping[str, Any]]) -> str:
    """`VERDICT_RULE` on a seed_summary of the differences (claimed better minus other)."""
    if seed_interval is None or seed_interval['n'] < 2:
        return 'undecided (one seed)'
    if seed_interval['lo'] > 0:
        return 'holds'
    if seed_interval['hi'] < 0:
        return 'reversed'
    return 'within noise (seed interval spans 0)'


def points_note(p: Optional[float]) -> str:
    if p is None:
        return 'no pooled test'
    return (f'pooled McNemar p = {p:.3g} < {ALPHA:g}: not sampling noise over points alone' if p < ALPHA
            else f'pooled McNemar p = {p:.3g} ≥ {ALPHA:g}: within sampling noise over points')


def _shared_bits(r: Mapping[str, Any], a: Mapping[str, Any], b: Mapping[str, Any]):
    """The two correct-vectors a compare_entries result was computed on (its overlap of points)."""
    lo, hi = r['overlap']['index_range']
    out = []
    for entry in (a, b):
        (start, _), vectors = stats.per_sample_vectors(entry)
        out.append(vectors[r['metric']][lo - start:hi - start])
    return out


def compare_configs(a: Runs, b: Runs, metric: str) -> Dict[str, Any]:
    """A vs B on `metric`, paired by seed (the seeds both ran) and by test point.

    Returns:
        dict(metric, seeds, per_seed [{seed, diff, lo, hi, p, flags}], seed_diff (seed_summary of the
        per-seed differences), pooled {diff, lo, hi, p, n}, verdict, flags, refused): a pair that
        compare_entries refuses (different attack settings, no shared points, inconsistent bits) is left
        out and named in `refused`; its warnings (different point sets) are in `flags`.
    """
    seeds = sorted(set(a) & set(b))
    flags: List[str] = [f'seed {s} only in {side}' for side, runs in (('A', a), ('B', b))
                        for s in sorted(set(runs) - set(seeds))]
    per_seed, refused, pooled_a, pooled_b = [], [], [], []
    for s in seeds:
        if accuracy(a[s], metric) is None or accuracy(b[s], metric) is None:
            refused.append(f'seed {s}: {metric} not measured on both')
            continue
        try:
            r = compare_entries(a[s], b[s], metric=metric, n_boot=N_BOOT, seed=BOOT_SEED)
        except UserError as e:
            refused.append(f'seed {s}: {e}')
            continue
        xa, xb = _shared_bits(r, a[s], b[s])
        pooled_a.append(xa)
        pooled_b.append(xb)
        flags += [f'seed {s}: {w}' for w in r['warnings']]
        per_seed.append(dict(seed=s, diff=r['diff'], lo=r['diff_lo'], hi=r['diff_hi'], p=r['mcnemar_p'], n=r['n']))
    seed_diff = stats.seed_summary([p['diff'] for p in per_seed]) if per_seed else None
    pooled = None
    if per_seed:
        xa, xb = np.concatenate(pooled_a), np.concatenate(pooled_b)
        diff, lo, hi = stats.paired_bootstrap(xa, xb, n_boot=N_BOOT, seed=BOOT_SEED)
        pooled = dict(diff=diff, lo=lo, hi=hi, p=stats.mcnemar_exact(xa, xb), n=len(xa))
    return dict(metric=metric, seeds=[p['seed'] for p in per_seed], per_seed=per_seed, seed_diff=seed_diff,
                pooled=pooled, verdict=verdict(seed_diff), flags=flags, refused=refused)


def seed_paired(a: Mapping[int, float], b: Mapping[int, float]) -> Dict[str, Any]:
    """A number that has no per-point bits (routing collapse): the differences paired by seed, their
    seed_summary and the verdict."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return dict(seeds=[], seed_diff=None, verdict='undecided (no shared seed)')
    s = stats.seed_summary([a[k] - b[k] for k in seeds])
    return dict(seeds=seeds, seed_diff=s, verdict=verdict(s))


def fmt_interval(s: Optional[Mapping[str, Any]], key: str = 'mean', digits: int = 2) -> str:
    """'+1.23 [-0.40, +2.86]' (signed), or the value alone when there is no interval."""
    if s is None:
        return '–'
    if s.get('lo') is None:
        return f'{s[key]:+.{digits}f}'
    return f"{s[key]:+.{digits}f} [{s['lo']:+.{digits}f}, {s['hi']:+.{digits}f}]"


def bootstrap_mean(values: Sequence[float], n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                   confidence: float = 0.95) -> Dict[str, float]:
    """Mean of per-point values with a percentile bootstrap interval over points.

    For a statistic of more than two vectors, which `stats.paired_bootstrap` (two vectors) does not cover:
    the difference between two models' AutoAttack gaps on the same points, per point
    (dense_apgd - dense_aa) - (moe_apgd - moe_aa).
    """
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError('bootstrap_mean needs at least one value')
    rng = np.random.default_rng(seed)
    means = np.empty(int(n_boot))
    for i in range(0, int(n_boot), 1000):  # in blocks: 1000 x n indices at a time keeps memory small
        m = min(1000, int(n_boot) - i)
        means[i:i + m] = v[rng.integers(0, v.size, size=(m, v.size))].mean(1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return dict(mean=float(v.mean()), lo=float(lo), hi=float(hi))

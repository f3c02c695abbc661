"""Statistics for accuracies measured on a finite test set, and for runs that differ only in their seed.

The distributions and tests are scipy's (Student's t, Welch's t-test, the exact binomial test and its Wilson
interval); what scipy lacks is here: the paired and hierarchical bootstraps, Holm's step-down, the
t-approximation of a t-test's power, and the registry's per-sample bits and seed groups. What each statistic
means and when to use it is in docs/STATISTICS.md.

- `wilson_interval`: the 95% interval of ONE accuracy (k correct of n points).
- `paired_bootstrap`, `mcnemar_exact`: the difference of TWO models evaluated on the SAME points.
- `encode_bits` / `decode_bits` / `per_sample_block` / `per_sample_vectors`: the per-sample results that a
  registry entry stores (format 'bitset-b64-v1'), which the paired tests need.
- `seed_group_key` / `group_by_seed` / `seed_summary`: the spread of a configuration over training seeds.

Accuracies are in percent, as everywhere in the registry.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy.stats import binomtest, ttest_ind
from scipy.stats import t as student_t

from bench.core.config_keys import NOT_THE_RESULT
from bench.core.errors import UserError

__all__ = [
    'BITSET_FORMAT', 'wilson_interval', 'encode_bits', 'decode_bits', 'per_sample_block', 'per_sample_vectors',
    'paired_bootstrap', 'mcnemar_exact', 'attack_settings', 'attack_signature', 'seed_group_key', 'group_by_seed',
    'seed_summary', 't_quantile', 'minimum_detectable_difference', 'welch', 'interaction_welch', 'holm',
    'holm_levels', 'seeds_for_margin', 'hierarchical_bootstrap', 'format_p',
]

BITSET_FORMAT = 'bitset-b64-v1'


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f'confidence {confidence!r} must lie strictly between 0 and 1 (e.g. 0.95)')


# ------------------------------------------------------------------------------------------ one accuracy

def wilson_interval(k: int, n: int, confidence: float = 0.95) -> Tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n, in percent.

    Unlike the normal ('Wald') interval it stays inside [0, 100] and keeps its coverage near 0% and
    100% accuracy, which robust accuracies often are. n = 0 gives (0, 100): no points, no information
    (the formula's limit).

    Args:
        k: points classified correctly.
        n: points evaluated.
        confidence: two-sided coverage (0.95 for a 95% interval).
    """
    k, n = int(k), int(n)
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f'wilson_interval needs 0 <= k <= n, got k={k}, n={n}')
    _check_confidence(confidence)
    if n == 0:  # scipy's binomtest needs n >= 1
        return 0.0, 100.0
    # scipy sets the bound at k = 0 to exactly 0 and at k = n to exactly 1, with no float dust
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method='wilson')
    return 100 * float(ci.low), 100 * float(ci.high)


# ------------------------------------------------------------------------------------------ per-sample bits

def _as_bool(correct: Any, what: str = 'per-sample vector') -> np.ndarray:
    """A 1-D bool array from bools or 0/1 numbers; anything else is a caller bug (ValueError)."""
    arr = np.asarray(correct)
    if arr.ndim != 1:
        raise ValueError(f'{what} must be one-dimensional, got shape {arr.shape}')
    if arr.dtype == bool:
        return arr
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError(f'{what} must hold only 0/1 or booleans, got values {sorted(set(arr.tolist()))[:5]}')
    return arr.astype(bool)


def encode_bits(correct: Any) -> str:
    """Pack a correct/incorrect vector into base64 text: bit i (little-endian within each byte) is point i.

    Example: [1, 0, 1] -> byte 0b101 = 5 -> 'BQ=='.
    """
    bits = np.packbits(_as_bool(correct), bitorder='little')
    return base64.b64encode(bits.tobytes()).decode('ascii')


def decode_bits(text: str, n: int) -> np.ndarray:
    """Inverse of `encode_bits`: the first n bits of the base64 text as a bool array.

    The text comes from a registry file, so a malformed one is bad input (UserError): wrong alphabet,
    a byte count other than ceil(n / 8), or set bits past n (which means n is wrong).
    """
    if not isinstance(text, str):
        raise UserError(f'per-sample bits must be base64 text, got {type(text).__name__}')
    n = int(n)
    if n < 0:
        raise UserError(f'per-sample n={n} must be >= 0')
    try:
        raw = base64.b64decode(text.encode('ascii'), validate=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise UserError(f'per-sample bits {text[:20]!r}... are not standard base64 ({e})') from None
    if len(raw) != (n + 7) // 8:
        raise UserError(f'per-sample bits hold {len(raw)} bytes but n={n} points need {(n + 7) // 8}')
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder='little').astype(bool)
    if bits[n:].any():
        raise UserError(f'per-sample bits have set bits past n={n}: n does not match the stored vector')
    return bits[:n]


def per_sample_block(correct_by_metric: Mapping[str, Any], start: int = 0) -> Dict[str, Any]:
    """The registry's `per_sample` field from per-metric correct vectors of test points start, start+1, ...

    Args:
        correct_by_metric: {'clean': [...], 'pgd20': [...], ...}, as `evaluate_model(...)['correct']`.
        start: index of the first point in the data set's test split.
    """
    if not correct_by_metric:
        raise ValueError('per_sample_block needs at least one metric')
    vectors = {str(k): _as_bool(v, f'per-sample vector {k!r}') for k, v in correct_by_metric.items()}
    lengths = {k: len(v) for k, v in vectors.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f'per-sample vectors differ in length: {lengths}')
    if int(start) < 0:
        raise ValueError(f'start={start} must be >= 0')
    n = next(iter(lengths.values()))
    block = {'format': BITSET_FORMAT, 'index_range': [int(start), int(start) + n], 'n': n,
             'bits': {k: encode_bits(v) for k, v in vectors.items()}}
    return dict(block, sha256=bits_sha256(block))


def bits_sha256(block: Mapping[str, Any]) -> str:
    """sha256 of a per_sample block's points and bits (canonical JSON), stored beside them: the accuracy check
    catches a flipped bit that changes a count, this one also a flip that keeps it (one point right, another wrong)."""
    payload = {'index_range': [int(v) for v in block['index_range']], 'n': int(block['n']), 'bits': dict(block['bits'])}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(',', ':')).encode('ascii')).hexdigest()


def _entry_name(entry: Mapping[str, Any]) -> str:
    return repr(entry.get('entry_id', '<no entry_id>'))


def per_sample_vectors(entry: Mapping[str, Any]) -> Optional[Tuple[Tuple[int, int], Dict[str, np.ndarray]]]:
    """((start, stop), {metric: bool array}) of an entry's stored per-sample results; None if it has none.

    Raises UserError for a block that is malformed (unknown format, inconsistent range, bad bits).
    """
    block = entry.get('per_sample')
    if block is None:
        return None
    name = _entry_name(entry)
    if not isinstance(block, Mapping) or block.get('format') != BITSET_FORMAT:
        fmt = block.get('format') if isinstance(block, Mapping) else type(block).__name__
        raise UserError(f'entry {name}: per_sample format {fmt!r} is not known; this version reads {BITSET_FORMAT!r}')
    try:
        start, stop = (int(v) for v in block['index_range'])
        n = int(block['n'])
        bits = dict(block['bits'])
    except (KeyError, TypeError, ValueError):
        raise UserError(f'entry {name}: per_sample needs index_range [start, stop], n and bits') from None
    if not 0 <= start <= stop or n != stop - start:
        raise UserError(f'entry {name}: per_sample index_range [{start}, {stop}] does not hold n={n} points')
    try:
        vectors = {k: decode_bits(v, n) for k, v in bits.items()}
    except UserError as e:
        raise UserError(f'entry {name}: {e}') from None
    # entries written before the checksum have none, and still load
    if 'sha256' in block and block['sha256'] != bits_sha256(block):
        raise UserError(f'entry {name}: per_sample bits do not match their sha256 (changed after they were written); '
                        'restore the entry or evaluate the model again')
    return (start, stop), vectors


# ------------------------------------------------------------------------------------------ two models, same points

def _paired(a: Any, b: Any) -> Tuple[np.ndarray, np.ndarray]:
    a, b = _as_bool(a, 'a'), _as_bool(b, 'b')
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f'paired statistics need two non-empty vectors over the same points, got {len(a)} and {len(b)}')
    return a, b


def paired_bootstrap(a: Any, b: Any, n_boot: int = 10000, seed: int = 0,
                     confidence: float = 0.95) -> Tuple[float, float, float]:
    """accuracy(a) - accuracy(b) in percentage points, with a percentile bootstrap interval over points.

    Each replicate resamples the n points with replacement, keeping every point's pair (a_i, b_i): the
    models' shared hard and easy points cancel, which is why the interval is much narrower than two
    separate Wilson intervals. A replicate's difference depends only on how many resampled points are
    (a right, b wrong) and (a wrong, b right), and those counts of n draws with replacement are exactly
    multinomial(n, (n10/n, n01/n, rest)). So we draw the counts directly: the same distribution as
    drawing n_boot x n indices, in O(n_boot) time and memory.

    Args:
        a, b: correct vectors of the two models on the same points, in the same order.
        n_boot: replicates (10000 gives the 2.5% and 97.5% points to about +-0.1 points at n = 1000).
        seed: seeds numpy's default_rng, so the interval is reproducible.
        confidence: two-sided coverage.

    Returns:
        (diff, lo, hi) in percentage points.
    """
    a, b = _paired(a, b)
    _check_confidence(confidence)
    if int(n_boot) < 1:
        raise ValueError(f'n_boot={n_boot} must be >= 1')
    n = len(a)
    n10, n01 = int(np.sum(a & ~b)), int(np.sum(~a & b))
    counts = np.random.default_rng(seed).multinomial(n, [n10 / n, n01 / n, (n - n10 - n01) / n], size=int(n_boot))
    diffs = 100.0 * (counts[:, 0] - counts[:, 1]) / n
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(diffs, [alpha, 1 - alpha])
    return 100.0 * (n10 - n01) / n, float(lo), float(hi)


def mcnemar_exact(a: Any, b: Any, alternative: str = 'two-sided') -> float:
    """Exact McNemar p-value: do the models differ on the points where they disagree?

    Under 'no difference', each of the m = n10 + n01 discordant points (n10: a right, b wrong) is equally
    likely to favour either model, so n10 ~ Binomial(m, 1/2): scipy's exact binomial test of n10, no normal
    approximation. `alternative` 'greater' is the one-sided P(X >= n10) (a more accurate than b), 'less' the
    other side. m = 0 gives 1. A p below the smallest float (about 1e-323, m in the thousands) is 0.0.
    """
    a, b = _paired(a, b)
    n10, n01 = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if n10 + n01 == 0:  # no discordant point, no evidence (binomtest needs m >= 1)
        return 1.0
    return float(binomtest(n10, n10 + n01, 0.5, alternative=alternative).pvalue)


def format_p(p: float, digits: int = 3, relation: bool = False) -> str:
    """A p-value in `digits` significant digits; one that underflowed to 0.0 is '< 1e-300' (true, where '0' is not).
    With `relation`, for 'p ...' in a sentence: '= 0.0123' or '< 1e-300'."""
    if p > 0:
        return f'= {p:.{digits}g}' if relation else f'{p:.{digits}g}'
    return '< 1e-300'


# ------------------------------------------------------------------------------------------ seeds

# training-config keys that the seeds of one configuration may differ in: the seed, and what does not change the
# trained model (where it runs, how it reports: `NOT_THE_RESULT`, the config's own list)
TRAIN_NOISE_KEYS = frozenset(NOT_THE_RESULT) | {'seed'}
# attack-setting keys that are randomness or bookkeeping rather than the attack's configuration
ATTACK_NOISE_KEYS = frozenset({'seed', 'batch_size'})


def attack_settings(entry: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """{metric: exact settings} of the attacks behind an entry's robust accuracies (`eval_settings.attacks`,
    schema version 2); None for an entry that does not store them (version 1, most imported entries)."""
    ev = entry.get('eval_settings')
    per_attack = ev.get('attacks') if isinstance(ev, Mapping) else None
    return dict(per_attack) if isinstance(per_attack, Mapping) else None


def _strip(obj: Any, drop: frozenset) -> Any:
    """obj with every mapping key in `drop` removed, at any depth (AutoAttack nests its parts' settings)."""
    if isinstance(obj, Mapping):
        return {k: _strip(v, drop) for k, v in obj.items() if k not in drop}
    if isinstance(obj, (list, tuple)):
        return [_strip(v, drop) for v in obj]
    return obj


def canonical_text(obj: Any) -> str:
    """A hashable, order-independent text of a JSON-like value; floats to 12 significant digits, so that
    8/255 typed two ways (0.03137254901960784 vs 0.031372549019607843) is one configuration."""
    def fix(o: Any) -> Any:
        if isinstance(o, float):
            return float(f'{o:.12g}')
        if isinstance(o, Mapping):
            return {str(k): fix(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [fix(v) for v in o]
        return o
    return json.dumps(fix(obj), sort_keys=True, default=str)


def seed_group_key(entry: Mapping[str, Any]) -> Tuple[str, ...]:
    """What identifies an entry's configuration, leaving out the seed, provenance noise and which attacks ran.

    In: source and citation, the whole `model` block (name, kwargs, effective settings), training method,
    epochs and config (minus `TRAIN_NOISE_KEYS`), data set, threat model, eps, n_examples and the
    per-sample index range, and the attack note.
    Out: entry_id, provenance (seed, date, commit, device, checkpoint hash), every measured number
    (accuracies, FLOPs and routing, which follow the trained weights), the config's path and hash (the hash
    covers the seed and the output path), and the attacks: a study's first seed runs more attacks than its
    other seeds and is still the same configuration. `group_by_seed` checks the attacks that entries share.
    """
    training = entry.get('training') or {}
    config = training.get('config')
    per_sample = entry.get('per_sample') or {}
    parts = {
        'source': entry.get('source'), 'citation': entry.get('citation'),
        'model': entry.get('model'),
        'training': {'method': training.get('method'), 'epochs': training.get('epochs'),
                     'config': _strip(config, TRAIN_NOISE_KEYS) if isinstance(config, Mapping) else config},
        'dataset': entry.get('dataset'), 'threat_model': entry.get('threat_model'), 'eps': entry.get('eps'),
        'n_examples': entry.get('n_examples'), 'index_range': per_sample.get('index_range'),
        'attack_note': entry.get('attack_note'),
    }
    return tuple(f'{k}={canonical_text(v)}' for k, v in parts.items())


def attack_signature(entry: Mapping[str, Any]) -> Dict[str, str]:
    """{accuracy key: its attack's settings (minus `ATTACK_NOISE_KEYS`) as canonical text} of an entry.

    The per-point worst case ('worst_case') is the worst over the entry's attack set, so its signature is that
    set: two worst cases are the same statistic only over identical attack sets. An attack whose settings
    are not stored (schema 1) is known by its name alone.
    """
    settings = attack_settings(entry) or {}
    keys = sorted(k for k in (entry.get('robust_acc') or {}) if k != 'worst_case')
    out = {k: canonical_text(_strip(settings[k], ATTACK_NOISE_KEYS)) if k in settings else canonical_text(None)
           for k in keys}
    if 'worst_case' in (entry.get('robust_acc') or {}):
        out['worst_case'] = canonical_text({k: out[k] for k in keys})
    return out


def _compatible(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    """Every attack both entries ran was run with the same settings (their worst cases aside: see below)."""
    return all(a[k] == b[k] for k in set(a) & set(b) if k != 'worst_case')


def group_by_seed(entries: Sequence[Mapping[str, Any]]) -> List[List[Mapping[str, Any]]]:
    """Entries of one configuration (`seed_group_key`) whose shared attacks have identical settings; groups
    and their members keep the input order.

    Entries of one configuration may differ in which attacks they ran (a study's first seed adds APGD-T):
    they stay one group, and a statistic over the group uses only what every member measured with the same
    settings (`attack_signature`): the worst case of seeds with different attack sets is not pooled. An
    attack that two entries both ran with different settings splits them, and so does one training seed
    (`provenance.seed`) twice: that is one model evaluated twice.
    """
    groups: Dict[Tuple[str, ...], List[List[Mapping[str, Any]]]] = {}
    signatures: Dict[int, Dict[str, str]] = {}

    def fits(e: Mapping[str, Any], m: Mapping[str, Any]) -> bool:
        seeds = [(x.get('provenance') or {}).get('seed') for x in (e, m)]
        # two entries of one training seed are one trained model evaluated twice, not two seeds
        return _compatible(signatures[id(e)], signatures[id(m)]) and (seeds[0] is None or seeds[0] != seeds[1])

    position = {id(e): i for i, e in enumerate(entries)}
    # assigned in entry-id order, so that the groups do not depend on the order the entries were read in
    for e in sorted(entries, key=lambda x: (str(x.get('entry_id')), position[id(x)])):
        signatures.setdefault(id(e), attack_signature(e))
        bucket = groups.setdefault(seed_group_key(e), [])
        home = next((g for g in bucket if all(fits(e, m) for m in g)), None)
        if home is None:
            bucket.append([e])
        else:
            home.append(e)
    out = [sorted(g, key=lambda x: position[id(x)]) for bucket in groups.values() for g in bucket]
    return sorted(out, key=lambda g: position[id(g[0])])


def t_quantile(confidence: float, df: float) -> float:
    """The two-sided Student-t critical value: P(|T_df| < t) = confidence (12.706 for 0.95 at df = 1)."""
    _check_confidence(confidence)
    if not float(df) > 0:
        raise ValueError(f'df={df} must be > 0')
    return float(student_t.ppf(0.5 + confidence / 2, df))


def minimum_detectable_difference(se: float, df: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference a two-sided t-test at level `alpha` detects with probability `power`:
    (t_{1 - alpha/2, df} + t_{power, df}) * se, the usual t approximation of the power function.

    With 3 seeds paired (df = 2) and a differences' sd of 2.25 points, se = 2.25 / sqrt(3) and the
    detectable difference is (4.303 + 1.061) * 1.299 = 6.97 points.
    """
    if not 0 < power < 1:
        raise ValueError(f'power {power!r} must lie strictly between 0 and 1 (e.g. 0.8)')
    # not scipy's exact noncentral-t power: the studies were pre-registered and sized with this approximation
    # (how close it is: docs/STATISTICS.md, tests/test_stats.py)
    return (t_quantile(1 - alpha, df) + float(student_t.ppf(power, df))) * float(se)


def welch(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, pooled: bool = False) -> Dict[str, Any]:
    """Mean(a) - mean(b) for two independent samples (seeds as the unit) with its t-interval and two-sided p.

    Welch's unequal-variance t (Welch-Satterthwaite df), or with `pooled` the pooled-variance t (df = na + nb - 2).

    Returns:
        dict(diff, se, df, lo, hi, t, p, n_a, n_b, sd_a, sd_b).
    """
    va, vb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if va.size < 2 or vb.size < 2:
        raise ValueError(f'welch needs at least 2 values per side, got {va.size} and {vb.size}')
    if not (np.isfinite(va).all() and np.isfinite(vb).all()):
        raise ValueError('welch got a non-finite value')
    sa, sb = float(va.var(ddof=1)), float(vb.var(ddof=1))
    na, nb = va.size, vb.size
    sizes = dict(n_a=int(na), n_b=int(nb), sd_a=math.sqrt(sa), sd_b=math.sqrt(sb))
    # scipy's result holds no standard error; the Holm-level intervals and the detectable difference need it
    se = math.sqrt(((na - 1) * sa + (nb - 1) * sb) / (na + nb - 2) * (1 / na + 1 / nb) if pooled else sa / na + sb / nb)
    diff = float(va.mean() - vb.mean())
    if se == 0:  # no spread at all: the difference is exact, where scipy warns and gives t = nan for 0 / 0
        return dict(_t_interval(diff, se, float(na + nb - 2), confidence), **sizes)
    r = ttest_ind(va, vb, equal_var=pooled)
    lo, hi = r.confidence_interval(confidence)
    return dict(diff=diff, se=se, df=float(r.df), lo=float(lo), hi=float(hi), t=float(r.statistic),
                p=float(r.pvalue), **sizes)


def _t_interval(diff: float, se: float, df: float, confidence: float) -> Dict[str, float]:
    """A difference with its t-interval at `confidence` and two-sided p (diff, se, df, lo, hi, t, p)."""
    half = t_quantile(confidence, df) * se
    if se > 0:
        tt = diff / se
        # the tail itself: 2 * (1 - cdf) cancels to a multiple of 1e-16 (or 0) where p is smaller
        p = 2 * float(student_t.sf(abs(tt), df))
    else:  # no spread at all: the difference is exact
        tt, p = (math.copysign(math.inf, diff), 0.0) if diff else (0.0, 1.0)
    return dict(diff=diff, se=se, df=df, lo=diff - half, hi=diff + half, t=tt, p=min(1.0, max(0.0, p)))


def interaction_welch(a: Sequence[float], b: Sequence[float], c: Sequence[float], d: Sequence[float],
                      confidence: float = 0.95) -> Dict[str, Any]:
    """(mean(a) - mean(b)) - (mean(c) - mean(d)) for four independent samples (seeds as the unit: each run is its
    own seed), with Welch's t over the four variances (Welch-Satterthwaite df) and its two-sided p: whether the
    difference a - b changes from one condition (c - d) to the other, e.g. a MoE's gap to dense as training grows.

    Returns:
        dict(diff, se, df, lo, hi, t, p, n_a, n_b, n_c, n_d).
    """
    arms = [np.asarray(x, dtype=float) for x in (a, b, c, d)]
    if any(x.size < 2 for x in arms):
        raise ValueError(f'interaction_welch needs at least 2 values per arm, got {[x.size for x in arms]}')
    if not all(np.isfinite(x).all() for x in arms):
        raise ValueError('interaction_welch got a non-finite value')
    q = [float(x.var(ddof=1)) / x.size for x in arms]
    se = math.sqrt(sum(q))
    df = sum(q) ** 2 / sum(v ** 2 / (x.size - 1) for v, x in zip(q, arms)) if se > 0 else float(
        sum(x.size for x in arms) - 4)
    diff = float((arms[0].mean() - arms[1].mean()) - (arms[2].mean() - arms[3].mean()))
    return dict(_t_interval(diff, se, df, confidence),
                **{f'n_{k}': int(x.size) for k, x in zip('abcd', arms)})


def holm(pvalues: Sequence[float]) -> List[float]:
    """Holm's step-down adjusted p-values, in the input order: the i-th smallest p times (m - i + 1), made
    non-decreasing along the order and capped at 1. Rejecting where the adjusted p < alpha controls the
    family-wise error rate at alpha over the m tests."""
    p = [float(x) for x in pvalues]
    if any(not 0 <= x <= 1 for x in p):
        raise ValueError(f'p-values must lie in [0, 1], got {p}')
    order = sorted(range(len(p)), key=lambda i: (p[i], i))
    out, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        out[i] = running
    return out


def holm_levels(pvalues: Sequence[float], alpha: float = 0.05) -> List[float]:
    """The level Holm tests each p at, in the input order: alpha / (m - rank), rank 0 for the smallest p."""
    order = sorted(range(len(pvalues)), key=lambda i: (float(pvalues[i]), i))
    out = [0.0] * len(pvalues)
    for rank, i in enumerate(order):
        out[i] = alpha / (len(pvalues) - rank)
    return out


def seeds_for_margin(sd: float, margin: float, alpha: float = 0.05, power: float = 0.8, max_n: int = 10000) -> int:
    """Seeds per arm so that two arms of n seeds each, with seed sd `sd` in both, have a minimum detectable
    difference (pooled t, df = 2n - 2, se = sd * sqrt(2 / n)) of at most `margin`.

    sd = margin, alpha 0.05, power 0.8 gives 17 per arm: the textbook sample size of a two-sample t-test
    for an effect of one sd.
    """
    if not (sd > 0 and margin > 0):
        raise ValueError(f'sd {sd!r} and margin {margin!r} must be > 0')
    for n in range(2, max_n + 1):
        if minimum_detectable_difference(sd * math.sqrt(2 / n), 2 * n - 2, alpha, power) <= margin:
            return n
    raise ValueError(f'more than {max_n} seeds per arm: sd {sd} is too large for margin {margin}')


def seed_summary(values: Sequence[float], confidence: float = 0.95) -> Dict[str, Any]:
    """Mean, sample std (n - 1) and the t-interval mean +- t_{n-1} * std / sqrt(n) over seeds.

    The interval is for the configuration's expected accuracy over training seeds (on these test points).
    One seed has no spread: std, lo and hi are None.

    Returns:
        dict(mean, std, n, lo, hi).
    """
    v = np.asarray([float(x) for x in values], dtype=float)
    if v.size == 0:
        raise ValueError('seed_summary needs at least one value')
    if not np.isfinite(v).all():
        raise ValueError(f'seed_summary got a non-finite value: {v.tolist()}')
    mean = float(v.mean())
    if v.size == 1:
        return dict(mean=mean, std=None, n=1, lo=None, hi=None)
    std = float(v.std(ddof=1))
    half = t_quantile(confidence, v.size - 1) * std / math.sqrt(v.size)
    return dict(mean=mean, std=std, n=int(v.size), lo=mean - half, hi=mean + half)


def hierarchical_bootstrap(bits_a: Any, bits_b: Any, n_boot: int = 10000, seed: int = 0,
                           confidence: float = 0.95) -> Tuple[float, float, float]:
    """Mean accuracy of arm A minus arm B, in points, with a percentile interval from a two-level bootstrap:
    the seeds of each arm resampled with replacement, then the test points (drawn once per replicate and
    shared by every run, because every run was attacked on the same points).

    Args:
        bits_a, bits_b: (seeds, points) correct/incorrect matrices of the two arms on the same points.

    Returns:
        (difference, lo, hi).
    """
    _check_confidence(confidence)
    a, b = np.asarray(bits_a, dtype=float), np.asarray(bits_b, dtype=float)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or 0 in a.shape or 0 in b.shape:
        raise ValueError(f'hierarchical_bootstrap needs (seeds, points) matrices on the same points, got {a.shape} '
                         f'and {b.shape}')
    if int(n_boot) < 1:
        raise ValueError(f'n_boot={n_boot} must be >= 1')
    rng = np.random.default_rng(seed)
    n = a.shape[1]
    out = np.empty(int(n_boot))
    for start in range(0, int(n_boot), 500):  # in blocks: 500 x n point weights at a time
        m = min(500, int(n_boot) - start)
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=m).T / n  # (points, m)
        acc_a, acc_b = a @ weights, b @ weights  # (seeds, m): each run's accuracy on the resampled points
        pick_a = rng.integers(0, a.shape[0], size=(a.shape[0], m))
        pick_b = rng.integers(0, b.shape[0], size=(b.shape[0], m))
        cols = np.arange(m)
        out[start:start + m] = (acc_a[pick_a, cols].mean(0) - acc_b[pick_b, cols].mean(0)) * 100
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(out, [alpha, 1 - alpha])
    return float(100 * (a.mean() - b.mean())), float(lo), float(hi)

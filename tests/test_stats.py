"""bench.core.stats against answers computed independently: scipy called directly, published tables, hand sums,
exact integers and mpmath's arbitrary precision, brute force."""
import base64
import math

import numpy as np
import pytest
import scipy.stats

from bench.core import stats
from bench.core.errors import UserError


# ------------------------------------------------------------------------------------------ Wilson

@pytest.mark.parametrize('k, n, lo, hi', [
    # by hand: p = 0.5, z = 1.959964: centre 0.5, half = z/(1+z^2/10) * sqrt(0.025 + z^2/400) = 0.263407
    (5, 10, 23.6593, 76.3407),
    # k = 0: upper = (z^2/2n) / (1 + z^2/n) * 2 = z^2 / (n + z^2) = 3.841459 / 13.841459
    (0, 10, 0.0, 27.7533),
    (10, 10, 72.2467, 100.0),
])
def test_wilson_matches_hand_values(k, n, lo, hi):
    got = stats.wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-3)


@pytest.mark.parametrize('k, n', [(81, 263), (1, 1000), (287, 300), (4000, 10000)])
def test_wilson_bounds_solve_the_score_equation(k, n):
    # by definition the bounds are the p with (k/n - p)^2 = z^2 p (1 - p) / n: the roots of
    # (1 + z^2/n) p^2 - (2 k/n + z^2/n) p + (k/n)^2 = 0
    z2, q = 1.959963984540054 ** 2, k / n
    qa, qb, qc = 1 + z2 / n, -(2 * q + z2 / n), q * q
    disc = math.sqrt(qb * qb - 4 * qa * qc)
    roots = ((-qb - disc) / (2 * qa) * 100, (-qb + disc) / (2 * qa) * 100)
    assert stats.wilson_interval(k, n) == pytest.approx(roots, abs=1e-9)


@pytest.mark.parametrize('k, n, confidence', [(0, 1, 0.95), (81, 263, 0.95), (1, 1000, 0.99), (300, 300, 0.9)])
def test_wilson_is_scipys(k, n, confidence):
    ci = scipy.stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method='wilson')
    assert stats.wilson_interval(k, n, confidence) == pytest.approx((100 * ci.low, 100 * ci.high), rel=1e-12)


def test_wilson_edges_are_exact_and_bad_counts_raise():
    assert stats.wilson_interval(0, 300)[0] == 0.0  # no float dust below 0
    assert stats.wilson_interval(300, 300)[1] == 100.0
    assert stats.wilson_interval(0, 0) == (0.0, 100.0)  # no points: no information
    wide, narrow = stats.wilson_interval(30, 100), stats.wilson_interval(300, 1000)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]
    assert stats.wilson_interval(30, 100, confidence=0.99)[0] < wide[0]
    for k, n in ((11, 10), (-1, 10), (0, -1)):
        with pytest.raises(ValueError, match='0 <= k <= n'):
            stats.wilson_interval(k, n)
    with pytest.raises(ValueError, match='confidence'):
        stats.wilson_interval(1, 2, confidence=95)


# ------------------------------------------------------------------------------------------ bits

@pytest.mark.parametrize('n', [0, 1, 7, 8, 9, 13, 1001])
def test_bits_roundtrip_any_length(n):
    v = np.random.default_rng(n).random(n) < 0.5
    text = stats.encode_bits(v)
    assert len(base64.b64decode(text)) == (n + 7) // 8
    assert np.array_equal(stats.decode_bits(text, n), v)


def test_bits_layout_is_little_endian_base64():
    # points 0 and 2 right: byte 0b00000101 = 5; 0/1 ints are accepted as evaluate gives them
    assert stats.encode_bits([1, 0, 1]) == base64.b64encode(bytes([5])).decode() == 'BQ=='
    assert stats.encode_bits([True] * 9) == base64.b64encode(bytes([255, 1])).decode()


def test_bad_bits_raise():
    with pytest.raises(UserError, match='not standard base64'):
        stats.decode_bits('BQ=*', 3)
    with pytest.raises(UserError, match='need 2'):
        stats.decode_bits('BQ==', 9)  # one byte for nine points
    with pytest.raises(UserError, match='past n=2'):
        stats.decode_bits('BQ==', 2)  # bit 2 is set: the vector is longer than n says
    with pytest.raises(ValueError, match='0/1'):
        stats.encode_bits([0, 2, 1])
    with pytest.raises(ValueError, match='one-dimensional'):
        stats.encode_bits([[1, 0]])


def test_per_sample_block_and_vectors_roundtrip():
    correct = {'clean': [1, 1, 0, 1, 1], 'pgd20': [1, 0, 0, 0, 1], 'worst_case': [0, 0, 0, 0, 1]}
    block = stats.per_sample_block(correct, start=100)
    assert block['format'] == 'bitset-b64-v1' and block['index_range'] == [100, 105] and block['n'] == 5
    (start, stop), vectors = stats.per_sample_vectors({'entry_id': 'x', 'per_sample': block})
    assert (start, stop) == (100, 105)
    for k, v in correct.items():
        assert vectors[k].tolist() == [bool(b) for b in v]
    assert stats.per_sample_vectors({'entry_id': 'old'}) is None
    assert stats.per_sample_vectors({'entry_id': 'old', 'per_sample': None}) is None
    with pytest.raises(ValueError, match='differ in length'):
        stats.per_sample_block({'clean': [1, 0], 'pgd20': [1]})
    with pytest.raises(ValueError, match='at least one metric'):
        stats.per_sample_block({})


def test_per_sample_vectors_refuses_malformed_blocks():
    block = stats.per_sample_block({'clean': [1, 0, 1]})
    bad_format = dict(block, format='bitset-b64-v9')
    with pytest.raises(UserError, match="'e1'.*bitset-b64-v9"):
        stats.per_sample_vectors({'entry_id': 'e1', 'per_sample': bad_format})
    with pytest.raises(UserError, match='does not hold n=4'):
        stats.per_sample_vectors({'entry_id': 'e1', 'per_sample': dict(block, n=4)})
    with pytest.raises(UserError, match="'e1'.*need 1"):
        stats.per_sample_vectors({'entry_id': 'e1', 'per_sample': dict(block, bits={'clean': 'AAAA'})})
    with pytest.raises(UserError, match='needs index_range'):
        stats.per_sample_vectors({'entry_id': 'e1', 'per_sample': {'format': 'bitset-b64-v1'}})


# ------------------------------------------------------------------------------------------ paired tests

def _pair(n10, n01, n11, n00):
    a = np.array([1] * n10 + [0] * n01 + [1] * n11 + [0] * n00, bool)
    b = np.array([0] * n10 + [1] * n01 + [1] * n11 + [0] * n00, bool)
    return a, b


@pytest.mark.parametrize('n10, n01, p', [
    (1, 6, 2 * (1 + 7) / 2 ** 7),            # m = 7: 2 * (C(7,0) + C(7,1)) / 2^7 = 0.125
    (10, 0, 2 / 2 ** 10),                     # all discordant points favour A
    (3, 3, 1.0),                              # tie: capped at 1
    (0, 0, 1.0),                              # no discordant points: no evidence
    (8, 22, 2 * sum(math.comb(30, i) for i in range(9)) / 2 ** 30),
])
def test_mcnemar_exact_matches_binomial_sums(n10, n01, p):
    a, b = _pair(n10, n01, 20, 5)
    assert stats.mcnemar_exact(a, b) == pytest.approx(p, rel=1e-12, abs=0)
    assert stats.mcnemar_exact(b, a) == pytest.approx(p, rel=1e-12, abs=0)  # two-sided: symmetric
    if n10 + n01:
        assert stats.mcnemar_exact(a, b) == scipy.stats.binomtest(n10, n10 + n01).pvalue


def _exact_tail(low: int, m: int) -> float:
    """P(X <= low) for X ~ Binomial(m, 1/2) from exact integers (Python's int / int rounds correctly)."""
    return sum(math.comb(m, i) for i in range(low + 1)) / 2 ** m


@pytest.mark.parametrize('n10, n01', [(5200, 4800), (45, 259), (10, 184), (1433, 2153)])
def test_mcnemar_in_the_tail_is_exact(n10, n01):
    """m = 10000 (2^10000 overflows a float) and the study's per-seed tails (p down to 1e-42)."""
    a, b = _pair(n10, n01, 0, 0)
    want = 2 * _exact_tail(min(n10, n01), n10 + n01)
    assert stats.mcnemar_exact(a, b) == pytest.approx(want, rel=1e-9, abs=0) and want > 0


def test_mcnemar_below_the_float_range_prints_as_such():
    """The powered study's pooled convmoe_all vs dense: 1341 vs 5054 discordant points, p = 10^-500.3 (exact
    integers), below the smallest float: 0.0, printed '< 1e-300', not '0'."""
    a, b = _pair(1341, 5054, 0, 0)
    m = 1341 + 5054
    log10_p = math.log10(2 * sum(math.comb(m, i) for i in range(1342))) - m * math.log10(2)
    assert log10_p == pytest.approx(-500.27, abs=0.01)
    assert stats.mcnemar_exact(a, b) == 0.0
    assert stats.format_p(0.0) == '< 1e-300' and stats.format_p(0.0, relation=True) == '< 1e-300'
    assert stats.format_p(2.48e-05) == '2.48e-05' and stats.format_p(0.0043, relation=True) == '= 0.0043'
    assert stats.format_p(1e-310) == '1e-310'  # a subnormal p is still a number


@pytest.mark.parametrize('n10, n01', [(7, 0), (10, 5), (0, 3), (0, 0), (300, 250)])
def test_one_sided_mcnemar_is_the_upper_binomial_tail(n10, n01):
    """P(X >= n10), X ~ Binomial(n10 + n01, 1/2): the sanity check's APGD-vs-PGD test."""
    a, b = _pair(n10, n01, 3, 2)
    m = n10 + n01
    want = sum(math.comb(m, i) for i in range(n10, m + 1)) / 2 ** m
    assert stats.mcnemar_exact(a, b, alternative='greater') == pytest.approx(want, rel=1e-12, abs=0)
    assert stats.mcnemar_exact(b, a, alternative='less') == pytest.approx(want, rel=1e-12, abs=0)


def test_bootstrap_is_deterministic_and_centred_on_the_difference():
    a, b = _pair(301, 97, 400, 202)  # acc(a) = 70.1%, acc(b) = 49.7%
    got = stats.paired_bootstrap(a, b, n_boot=500, seed=3)
    assert got == stats.paired_bootstrap(a, b, n_boot=500, seed=3)
    assert got != stats.paired_bootstrap(a, b, n_boot=500, seed=4)
    diff, lo, hi = got
    assert diff == pytest.approx(20.4)
    assert lo < diff < hi
    assert stats.paired_bootstrap(a, a) == (0.0, 0.0, 0.0)  # identical predictions: no uncertainty


def test_bootstrap_matches_brute_force_index_resampling():
    rng = np.random.default_rng(0)
    a, b = rng.random(200) < 0.6, rng.random(200) < 0.5
    idx = rng.integers(0, 200, size=(20000, 200))  # the textbook bootstrap: resample point indices
    brute = 100 * (a[idx].mean(1) - b[idx].mean(1))
    _, lo, hi = stats.paired_bootstrap(a, b, n_boot=20000, seed=1)
    want_lo, want_hi = np.quantile(brute, [0.025, 0.975])
    assert lo == pytest.approx(want_lo, abs=0.6) and hi == pytest.approx(want_hi, abs=0.6)


def test_bootstrap_interval_covers_the_true_difference():
    # population: each point is (a right, b wrong) w.p. 0.15, (a wrong, b right) w.p. 0.05 -> true diff 10 points
    rng = np.random.default_rng(7)
    covered, trials = 0, 300
    for t in range(trials):
        u = rng.random(400)
        a = (u < 0.15) | (u >= 0.20) & (u < 0.70)
        b = (u >= 0.15) & (u < 0.70)
        _, lo, hi = stats.paired_bootstrap(a, b, n_boot=2000, seed=t)
        covered += lo <= 10.0 <= hi
    assert 0.90 <= covered / trials <= 0.99


def test_paired_inputs_are_checked():
    with pytest.raises(ValueError, match='same points'):
        stats.paired_bootstrap([1, 0], [1])
    with pytest.raises(ValueError, match='same points'):
        stats.mcnemar_exact([], [])
    with pytest.raises(ValueError, match='n_boot'):
        stats.paired_bootstrap([1, 0], [0, 1], n_boot=0)


# ------------------------------------------------------------------------------------------ seeds

@pytest.mark.parametrize('confidence, df, t', [
    # Student-t table, two-sided
    (0.95, 1, 12.706), (0.95, 2, 4.303), (0.95, 3, 3.182), (0.95, 4, 2.776), (0.95, 5, 2.571),
    (0.95, 10, 2.228), (0.95, 30, 2.042), (0.99, 3, 5.841), (0.90, 7, 1.895), (0.95, 2000, 1.961),
])
def test_t_quantile_matches_tables(confidence, df, t):
    assert stats.t_quantile(confidence, df) == pytest.approx(t, abs=1e-3)
    assert stats.t_quantile(confidence, df) == pytest.approx(scipy.stats.t.ppf(0.5 + confidence / 2, df), rel=1e-12)


def test_seed_summary():
    s = stats.seed_summary([50.0, 52.0, 51.0])
    assert (s['mean'], s['std'], s['n']) == (51.0, 1.0, 3)
    half = 4.302653 * 1.0 / math.sqrt(3)  # t_{0.975, 2} * std / sqrt(n)
    assert (s['lo'], s['hi']) == pytest.approx((51 - half, 51 + half), abs=1e-5)
    assert stats.seed_summary([42.0]) == dict(mean=42.0, std=None, n=1, lo=None, hi=None)
    with pytest.raises(ValueError, match='at least one'):
        stats.seed_summary([])
    with pytest.raises(ValueError, match='non-finite'):
        stats.seed_summary([1.0, float('nan')])


def _entry(seed=1, **changes):
    """A measured-entry-like dict; `changes` maps dotted paths to new values."""
    e = {
        'schema_version': 2, 'entry_id': f'm-pgd-fmnist-{seed}', 'source': 'measured',
        'model': {'name': 'resnet18_blockmoe_e4_k1', 'kwargs': {'width': 8}, 'experts': 4, 'k': 1,
                  'effective_kwargs': {'width': 8, 'gate': 'gap_fc', 'noisy_gating': False}},
        'training': {'method': 'pgd', 'epochs': 1, 'config_sha256': f'{seed:064x}', 'config_path': f'/r/{seed}/c.yaml',
                     'config': {'lr': 0.05, 'epochs': 1, 'seed': seed, 'out': f'/r/{seed}', 'workers': 2}},
        'dataset': 'fashion-mnist-bundled', 'threat_model': 'Linf', 'eps': 8 / 255, 'n_examples': 300,
        'clean_acc': 70.0 + seed, 'robust_acc': {'pgd20': 40.0 + seed, 'worst_case': 39.0 + seed},
        'eval_settings': {'seed': seed, 'attacks': {'pgd20': {'attack': 'PGD', 'steps': 20, 'seed': seed}}},
        'per_sample': {'index_range': [0, 300]},
        'flops': {'active': 1000 + seed}, 'provenance': {'seed': seed, 'date': f'2026-01-0{seed}'},
    }
    for path, value in changes.items():
        *parents, leaf = path.split('.')
        node = e
        for p in parents:
            node = node[p]
        node[leaf] = value
    return e


def test_seed_group_key_ignores_seed_and_noise_only():
    base = stats.seed_group_key(_entry(1))
    assert stats.seed_group_key(_entry(2)) == base  # seed, paths, dates, accuracies, FLOPs, attack seed
    assert stats.seed_group_key(_entry(1, eps=0.031372549019607843)) == base  # 8/255 typed another way
    for path, value in [('model.effective_kwargs', {'width': 8, 'gate': 'gap_fc', 'noisy_gating': True}),
                        ('model.name', 'resnet18_dense'), ('training.method', 'trades'),
                        ('training.config', {'lr': 0.1, 'epochs': 1}), ('eps', 4 / 255), ('threat_model', 'L2'),
                        ('n_examples', 1000), ('per_sample', {'index_range': [300, 600]}),
                        ('source', 'paper')]:
        assert stats.seed_group_key(_entry(1, **{path: value})) != base, path
    # which attacks ran is not the configuration: group_by_seed checks the attacks entries share
    assert stats.seed_group_key(_entry(1, robust_acc={'pgd20': 40.0})) == base


def test_a_seed_with_more_attacks_stays_in_its_group_but_other_settings_split():
    """A study's first seed adds an attack (and so has another worst case): still one configuration. The same
    attack run with other settings is another measurement: its entry is a group of its own."""
    extra = _entry(1, robust_acc={'pgd20': 41.0, 'apgd-t': 30.0, 'worst_case': 29.0},
                   eval_settings={'seed': 1, 'attacks': {'pgd20': {'attack': 'PGD', 'steps': 20, 'seed': 1},
                                                         'apgd-t': {'attack': 'APGDTargeted', 'seed': 1}}})
    other = _entry(4, eval_settings={'seed': 4, 'attacks': {'pgd20': {'attack': 'PGD', 'steps': 10, 'seed': 4}}})
    groups = stats.group_by_seed([extra, _entry(2), _entry(3), other])
    assert [[e['entry_id'] for e in g] for g in groups] == [
        ['m-pgd-fmnist-1', 'm-pgd-fmnist-2', 'm-pgd-fmnist-3'], ['m-pgd-fmnist-4']]
    sig = [stats.attack_signature(e) for e in groups[0]]
    assert sig[0]['pgd20'] == sig[1]['pgd20'] and sig[0]['worst_case'] != sig[1]['worst_case']


# ------------------------------------------------------------------------------------------ power and sizing

def test_t_quantile_takes_welchs_fractional_df():
    q = stats.t_quantile(0.95, 5.5)
    assert stats.t_quantile(0.95, 6) < q < stats.t_quantile(0.95, 5)
    assert scipy.stats.t.cdf(q, 5.5) == pytest.approx(0.975, abs=1e-12)
    with pytest.raises(ValueError, match='df=0'):
        stats.t_quantile(0.95, 0)


def _student_tail(t: float, df: float) -> float:
    """2 P(T_df > |t|) in 50 digits: the regularised incomplete beta I_{df/(df+t^2)}(df/2, 1/2) (mpmath)."""
    mpmath = pytest.importorskip('mpmath')
    with mpmath.workdps(50):
        t, df = mpmath.mpf(t), mpmath.mpf(df)
        return float(mpmath.betainc(df / 2, mpmath.mpf(1) / 2, 0, df / (df + t * t), regularized=True))


A = [50.1, 51.3, 49.8, 50.6, 50.9, 49.5, 50.2, 51.0, 50.4, 49.9]
NOISE = [0.3, -0.2, 0.1, -0.4, 0.2, 0.0, -0.1, 0.3, 0.5, -0.6]


@pytest.mark.parametrize('shift', [1, 8, 10])
def test_welch_is_scipys_and_exact_in_the_tail(shift):
    """Welch's p is scipy's ttest_ind (unequal variances). Its tail is exact: at shift 8 (p = 7.8e-16) the old
    2 * (1 - cdf) gave 8.9e-16, at shift 10 (p = 1.7e-17) it gave 0."""
    a, b = A, [x - shift + e for x, e in zip(A, NOISE)]
    r, want = stats.welch(a, b), scipy.stats.ttest_ind(a, b, equal_var=False)
    assert (r['t'], r['df'], r['p']) == pytest.approx((want.statistic, want.df, want.pvalue), rel=1e-12, abs=0)
    assert (r['lo'], r['hi']) == pytest.approx(tuple(want.confidence_interval(0.95)), rel=1e-12, abs=0)
    assert r['se'] == pytest.approx(r['diff'] / r['t'], rel=1e-12)
    exact = _student_tail(r['t'], r['df'])
    assert r['p'] > 0 and r['p'] == pytest.approx(exact, rel=1e-6, abs=0)
    cancelled = 2 * (1 - scipy.stats.t.cdf(abs(r['t']), r['df']))
    if shift == 10:
        assert exact < 1e-16 and cancelled == 0.0
    if shift == 8:
        assert exact < 1e-15 and abs(cancelled / exact - 1) > 0.1


def test_interaction_welch_is_exact_in_the_tail():
    """Four arms (scipy has no test for them): Welch-Satterthwaite by hand here, the tail from mpmath."""
    arms = [A, [x - 10 + e for x, e in zip(A, NOISE)], [x + e for x, e in zip(A, NOISE[::-1])], A]
    r = stats.interaction_welch(*arms)
    q = [np.var(x, ddof=1) / len(x) for x in arms]
    df = sum(q) ** 2 / sum(v ** 2 / (len(x) - 1) for v, x in zip(q, arms))
    t = r['diff'] / math.sqrt(sum(q))
    assert (r['t'], r['df']) == pytest.approx((t, df), rel=1e-12)
    exact = _student_tail(t, df)
    assert exact < 1e-15 and r['p'] > 0 and r['p'] == pytest.approx(exact, rel=1e-6, abs=0)


def test_minimum_detectable_difference_of_the_three_seed_study():
    # 3 seeds, paired sd 2.25: (t_{.975,2} + t_{.80,2}) * 2.25 / sqrt(3) = (4.3027 + 1.0607) * 1.2990
    assert stats.minimum_detectable_difference(2.25 / math.sqrt(3), 2) == pytest.approx(6.967, abs=1e-3)
    with pytest.raises(ValueError, match='power'):
        stats.minimum_detectable_difference(1.0, 2, power=1.0)


def _power(delta: float, se: float, df: float, alpha: float) -> float:
    """The exact power of the two-sided t-test at a true difference delta: scipy's noncentral t."""
    crit, nc = scipy.stats.t.isf(alpha / 2, df), delta / se
    return scipy.stats.nct.sf(crit, df, nc) + scipy.stats.nct.cdf(-crit, df, nc)


@pytest.mark.parametrize('df, alpha, lo, hi', [
    (78, 0.025, 0.795, 0.805),  # the powered study's two arms of 40 seeds, at Holm's strictest level
    (32, 0.05, 0.795, 0.805),   # 17 seeds per arm
    (2, 0.05, 0.76, 0.77),      # 3 seeds paired: the approximation promises 80 % and delivers 77 %
])
def test_minimum_detectable_difference_against_the_exact_power(df, alpha, lo, hi):
    """The detectable difference is the usual t approximation; scipy's noncentral t says how close its power is."""
    se = 1.3
    assert lo <= _power(stats.minimum_detectable_difference(se, df, alpha, 0.8), se, df, alpha) < hi


def test_welch_matches_a_hand_computation():
    r = stats.welch([1, 2, 3, 4], [2, 4, 6, 8, 10])
    # var 5/3 and 10: se = sqrt(5/12 + 2) = 1.5546, Welch-Satterthwaite df = 5.5208, t = -2.2514
    assert (r['diff'], r['se'], r['df'], r['t']) == pytest.approx((-3.5, 1.55456, 5.52079, -2.25144), abs=1e-4)
    assert r['p'] == pytest.approx(2 * scipy.stats.t.cdf(-2.25144, 5.52079), abs=1e-5)
    assert 0.06 < r['p'] < 0.08
    pooled = stats.welch([1, 2, 3, 4], [2, 4, 6, 8, 10], pooled=True)
    assert pooled['df'] == 7 and pooled['se'] == pytest.approx(math.sqrt((3 * 5 / 3 + 4 * 10) / 7 * (1 / 4 + 1 / 5)))
    assert pooled['p'] == pytest.approx(scipy.stats.ttest_ind([1, 2, 3, 4], [2, 4, 6, 8, 10]).pvalue, rel=1e-12, abs=0)
    assert stats.welch([1, 1], [1, 1])['p'] == 1.0 and stats.welch([2, 2], [1, 1])['p'] == 0.0
    with pytest.raises(ValueError, match='at least 2'):
        stats.welch([1], [1, 2])


def test_holm_on_constructed_p_values():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.02, 0.02]) == pytest.approx([0.04, 0.04])
    assert stats.holm([0.9, 0.001]) == pytest.approx([0.9, 0.002])  # monotone along the order, capped at 1
    assert stats.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    assert stats.holm_levels([0.04, 0.01], 0.05) == pytest.approx([0.05, 0.025])
    with pytest.raises(ValueError):
        stats.holm([1.5])


def test_seeds_for_margin_matches_the_textbook_sample_size():
    # a two-sample t-test for an effect of one sd at alpha 0.05 and 80 % power needs 17 per group
    assert stats.seeds_for_margin(1.0, 1.0) == 17
    # the exact power agrees: 17 per arm reach 80 % for an effect of one sd, 16 do not
    assert _power(1.0, math.sqrt(2 / 17), 32, 0.05) > 0.8 > _power(1.0, math.sqrt(2 / 16), 30, 0.05)
    assert stats.seeds_for_margin(1.5, 1.5) == 17
    n = stats.seeds_for_margin(2.3, 1.5)  # the study's worst measured seed sd
    mdd = lambda k: stats.minimum_detectable_difference(2.3 * math.sqrt(2 / k), 2 * k - 2)  # noqa: E731
    assert mdd(n) <= 1.5 < mdd(n - 1)
    with pytest.raises(ValueError):
        stats.seeds_for_margin(0.0, 1.5)


def test_group_by_seed_keeps_order():
    runs = [_entry(1), _entry(2, **{'model.name': 'resnet18_dense'}), _entry(3), _entry(4)]
    groups = stats.group_by_seed(runs)
    assert [[e['entry_id'] for e in g] for g in groups] == [
        ['m-pgd-fmnist-1', 'm-pgd-fmnist-3', 'm-pgd-fmnist-4'], ['m-pgd-fmnist-2']]
    summary = stats.seed_summary([e['robust_acc']['pgd20'] for e in groups[0]])
    assert summary['n'] == 3 and summary['mean'] == pytest.approx(42 + 2 / 3)
    assert groups[0][0] == _entry(1)  # grouping does not modify the entries (e.g. by stripping noise keys)

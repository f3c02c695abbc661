"""The study's analysis: its runs by configuration and seed, what each configuration is, which pairs a claim
compares, and the statistics of those comparisons.

The CLI reads the grid spec and passes its plain `plan` here (this layer does not import the pipeline):

    {'name': 'study_fashion_mnist', 'seeds': [0, 1, 2],
     'configs': {'dense': {'model': 'resnet18_dense', 'training': 'pgd', 'seeds': [0, 1, 2], 'upcycle_from': None},
                 ...}}

What a configuration *is* (experts, k, gate, aux loss, expert width, training method, upcycled or not) is read
from its entries' `model` block, the effective values the runs had, so that the claims' pairs ("differ only
in aux_loss") follow what was trained, not how the spec spelled it. No config name or attack label is built
into the computation: the claims find their pairs by these traits and their metrics among the entries'.

Statistics (every number from `bench.core.stats` and `bench.results.compare`; arranged here for a study):

- `summary`: mean, sd and 95% t-interval over seeds of one metric (one run: its Wilson interval instead).
- `compare_configs`: A vs B paired by seed: `compare_entries` per seed pair (which refuses different attack
  settings and flags different point sets), the t-interval over the seeds' differences with its minimum
  detectable difference, and pooled over seeds the per-point paired bootstrap interval and the exact McNemar p.
- `verdict`: the rule stated in the report's protocol (`VERDICT_RULE`).

Bootstrap seeds are fixed (`BOOT_SEED`), so the report is the same bytes on every run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from bench.core.errors import UserError
from bench.core import stats
from bench.results.compare import compare_entries, strongest_shared
from bench.results.study.claims import Claims, load_claims, load_effects, row_effect

FLOPS_TOL = 0.02  # |ratio - 1| within this is 'equal FLOPs': a gate adds well under 1% to a ResNet block
STAGE_MAIN, STAGE_AA = 'main', 'autoattack'


def by_strength(metrics: Sequence[str]) -> List[str]:
    """Metrics strongest first, in `compare.METRIC_STRENGTH` order."""
    rest, out = set(metrics), []
    while rest:
        best = strongest_shared(sorted(rest), sorted(rest))
        out.append(best)
        rest.discard(best)
    return out


@dataclass
class Study:
    name: str
    plan: Mapping[str, Any]
    runs: Dict[str, Dict[int, Dict[str, Any]]]  # config -> seed -> main-stage entry
    autoattack: List[Dict[str, Any]]  # stage 'autoattack' entries, by cell
    notes: List[str] = field(default_factory=list)  # what the data lack (missing cells, unknown configs)
    # a superseded study: the AutoAttack follow-ups of the study that supersedes it (`superseded_by`)
    later_autoattack: List[Dict[str, Any]] = field(default_factory=list)
    # comparisons computed once per report: (A, B, metric) -> compare_configs result
    cache: Dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def configs(self) -> List[str]:
        """Configs of the spec that have at least one run, in the spec's order."""
        return [c for c in self.plan['configs'] if self.runs.get(c)]

    def first(self, config: str) -> Optional[Dict[str, Any]]:
        """The run of the config's first seed (the one with the first-seed analyses), if it is there."""
        seeds = self.plan['configs'][config].get('seeds') or [min(self.runs[config])]
        return self.runs.get(config, {}).get(seeds[0])

    def main_entry(self, cell: str) -> Optional[Dict[str, Any]]:
        return next((e for runs in self.runs.values() for e in runs.values() if e['grid']['cell'] == cell), None)

    def entries(self) -> List[Dict[str, Any]]:
        return [self.runs[c][s] for c in self.configs for s in sorted(self.runs[c])]

    def metrics(self) -> List[str]:
        """Robust metrics every main run measured with the same settings, strongest first (the first-seed
        extras are not among them, and neither is the per-point worst case when the runs' attack sets differ:
        the worst case over another set of attacks is another statistic)."""
        sigs = [stats.attack_signature(e) for e in self.entries()]
        if not sigs:
            return []
        shared = set.intersection(*(set(s) for s in sigs))
        return by_strength({m for m in shared if len({s[m] for s in sigs}) == 1})

    def mixed_worst_case(self) -> bool:
        """Every run stores a worst case, but over different attack sets (`metrics` leaves it out)."""
        runs = self.entries()
        return (bool(runs) and all('worst_case' in (e.get('robust_acc') or {}) for e in runs)
                and 'worst_case' not in self.metrics())

    def first_seed_metrics(self) -> List[str]:
        """Robust metrics only some runs (the first seeds) measured, strongest first (not the worst case)."""
        every = set(self.metrics()) | {'worst_case'}
        return by_strength({m for e in self.entries() for m in (e.get('robust_acc') or {})} - every)

    def primary(self) -> Optional[str]:
        """The claims' primary metric: the strongest single attack every run measured (the worst case over
        attacks is a different statistic and is shown beside it)."""
        single = [m for m in self.metrics() if m != 'worst_case']
        return single[0] if single else None

    def pgd(self) -> Optional[str]:
        """The strongest PGD attack every run measured (the paper's headline attack), if any."""
        return next((m for m in self.metrics() if m.startswith('pgd')), None)


def collect(entries: Sequence[Mapping[str, Any]], plan: Mapping[str, Any]) -> Study:
    """The study's entries (`grid.spec == plan['name']`) by config and seed, and what is missing.

    Raises:
        UserError: no entry of the study, or two entries of one cell and stage (which one counts is not
            the report's to guess: remove the stale one).
    """
    name = plan['name']
    mine = [e for e in entries if (e.get('grid') or {}).get('spec') == name]
    if not mine:
        raise UserError(f'no registry entry belongs to study {name!r} (grid.spec); run `timm-moe grid {name}` '
                        'first, or pass the --registry it wrote to')
    runs: Dict[str, Dict[int, Dict[str, Any]]] = {}
    autoattack, seen, notes = [], {}, []
    for e in sorted(mine, key=lambda e: e['entry_id']):
        g = e['grid']
        key = (g.get('cell'), g.get('stage', STAGE_MAIN))
        if key in seen:
            raise UserError(f'study {name!r}: cell {key[0]} ({key[1]}) has two entries, {seen[key]!r} and '
                            f'{e["entry_id"]!r}: remove the stale one from the registry')
        seen[key] = e['entry_id']
        if g.get('config') not in plan['configs']:
            notes.append(f'entry {e["entry_id"]} is of config {g.get("config")!r}, which the spec does not list: '
                         'left out')
        elif key[1] == STAGE_AA:
            autoattack.append(e)
        else:
            runs.setdefault(g['config'], {})[int(g.get('seed') or 0)] = e
    for config, values in plan['configs'].items():
        missing = [s for s in values.get('seeds') or [] if s not in runs.get(config, {})]
        if missing:
            notes.append(f'config {config}: no run for seed{"s" if len(missing) > 1 else ""} '
                         f'{", ".join(map(str, missing))} (not finished, or failed)')
    later = (plan.get('superseded_by') or {}).get('name')
    later_autoattack = sorted((e for e in entries if later and (e.get('grid') or {}).get('spec') == later
                               and e['grid'].get('stage', STAGE_MAIN) == STAGE_AA), key=lambda e: e['entry_id'])
    return Study(name=name, plan=plan, runs=runs, autoattack=autoattack, notes=notes,
                 later_autoattack=later_autoattack)


# ------------------------------------------------------------------------------------------ traits

def traits(study: Study, config: str) -> Dict[str, Any]:
    """What the config trains: the model's effective settings, the training method, whether it is upcycled
    and its epochs (from its first run; the runs of a config differ only in their seed)."""
    e = next(iter(study.runs[config].values()))
    model = e['model']
    out = {'arch': model.get('arch'), 'experts': model.get('experts') or 0, 'k': model.get('k')}
    if out['experts']:  # a dense model's effective kwargs carry MoE defaults that mean nothing for it
        out.update({k: v for k, v in (model.get('effective_kwargs') or {}).items()
                    if k not in ('num_classes', 'in_chans')})
    else:
        out['width'] = (model.get('effective_kwargs') or {}).get('width')
    out['training'] = (e.get('training') or {}).get('method')
    out['upcycled'] = bool(study.plan['configs'][config].get('upcycle_from'))
    out['epochs'] = (e.get('training') or {}).get('epochs')
    return out


def differing(study: Study, a: str, b: str) -> List[str]:
    ta, tb = traits(study, a), traits(study, b)
    return sorted(k for k in set(ta) | set(tb) if ta.get(k) != tb.get(k))


def is_moe(study: Study, config: str) -> bool:
    return bool(traits(study, config)['experts'])


def flops_ratio(study: Study, config: str) -> Optional[float]:
    ratios = [(e.get('flops') or {}).get('ratio') for e in study.runs[config].values()]
    ratios = [r for r in ratios if r is not None]
    return sum(ratios) / len(ratios) if ratios else None


def adversarial(study: Study, config: str) -> bool:
    return traits(study, config)['training'] not in (None, 'normal')


def scratch(study: Study, config: str) -> bool:
    """Trained from random initialisation with the spec's own recipe (not upcycled)."""
    return not traits(study, config)['upcycled']


def dense_reference(study: Study, config: str) -> Optional[str]:
    """The dense config trained like `config`: the same training method, epochs and width, from scratch, at
    the same budget (in a budget study, the same data set and images too)."""
    keys = ('arch', 'width', 'training', 'epochs')
    t = traits(study, config)
    return next((c for c in study.configs if not is_moe(study, c) and scratch(study, c)
                 and all(traits(study, c).get(k) == t.get(k) for k in keys)
                 and budget(study, c) == budget(study, config)), None)


def pairs_differing_in(study: Study, allowed: Tuple[str, ...], required: str) -> List[Tuple[str, str]]:
    """(a, b) of adversarially trained MoE configs from scratch that differ in `required` and otherwise only
    in `allowed` keys; each unordered pair once, in spec order."""
    moe = [c for c in study.configs if is_moe(study, c) and adversarial(study, c) and scratch(study, c)]
    out = []
    for i, a in enumerate(moe):
        for b in moe[i + 1:]:
            diff = differing(study, a, b)
            if required in diff and set(diff) <= set(allowed):
                out.append((a, b))
    return out


# ------------------------------------------------------------------------------------------ statistics

N_BOOT = 10000
BOOT_SEED = 0
ALPHA = 0.05
POWER = 0.8
VERDICT_RULE = ("'holds' if the 95% t-interval over the seeds of the paired difference (claimed better minus "
                "other) lies above 0; 'reversed' if it lies below 0; else 'inconclusive at this power', with the "
                f"minimum detectable difference (the true difference the paired t-test over the seeds detects with "
                f"{POWER:.0%} power at two-sided alpha {0.05:g}: (t(0.975, df) + t({POWER:g}, df)) × sd / √seeds, "
                "df = seeds − 1, sd of the seeds' differences): a difference smaller than it is not ruled out; "
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


INCONCLUSIVE = 'inconclusive at this power'


def detectable(seed_interval: Optional[Mapping[str, Any]]) -> Optional[float]:
    """The minimum detectable difference of a seed_summary of paired differences (`VERDICT_RULE`); None for
    fewer than 2 seeds."""
    if seed_interval is None or seed_interval['n'] < 2:
        return None
    n = seed_interval['n']
    return stats.minimum_detectable_difference(seed_interval['std'] / n ** 0.5, n - 1, ALPHA, POWER)


def verdict(seed_interval: Optional[Mapping[str, Any]], digits: int = 2) -> str:
    """`VERDICT_RULE` on a seed_summary of the differences (claimed better minus other)."""
    if seed_interval is None or seed_interval['n'] < 2:
        return 'undecided (one seed)'
    if seed_interval['lo'] > 0:
        return 'holds'
    if seed_interval['hi'] < 0:
        return 'reversed'
    return f'{INCONCLUSIVE} (detectable Δ {detectable(seed_interval):.{digits}f})'


def points_note(p: Optional[float]) -> str:
    if p is None:
        return 'no pooled test'
    shown = stats.format_p(p, relation=True)
    return (f'pooled McNemar p {shown} < {ALPHA:g}: not sampling noise over points alone' if p < ALPHA
            else f'pooled McNemar p {shown} ≥ {ALPHA:g}: within sampling noise over points')


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
                pooled=pooled, verdict=verdict(seed_diff), detectable=detectable(seed_diff), flags=flags,
                refused=refused)


def seed_paired(a: Mapping[int, float], b: Mapping[int, float]) -> Dict[str, Any]:
    """A number that has no per-point bits (routing collapse): the differences paired by seed, their
    seed_summary and the verdict."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return dict(seeds=[], seed_diff=None, verdict='undecided (no shared seed)')
    s = stats.seed_summary([a[k] - b[k] for k in seeds])
    return dict(seeds=seeds, seed_diff=s, verdict=verdict(s, digits=3))


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


# ------------------------------------------------------------------------------------------ the paper's claims

def claims_of(study: Study) -> Claims:
    """The claims the study tests: the file its spec names (`claims:`), or the shipped paper's; read once."""
    if 'claims' not in study.cache:
        study.cache['claims'] = load_claims(study.plan.get('claims'))
    return study.cache['claims']


def paper_effects(study: Study) -> Tuple[Optional[List[Dict[str, str]]], Optional[str]]:
    """What the paper's table says on each claim (`claims.effects`), or None and why (no table)."""
    if 'effects' not in study.cache:
        study.cache['effects'] = load_effects(claims_of(study))
    return study.cache['effects']


# ------------------------------------------------------------------------------------------ pre-registration

PREREG_KEYS = ('baseline', 'primary', 'metric', 'margin', 'alpha', 'power', 'analysis', 'seed_sd')
PREREG_DEFAULTS = dict(metric='apgd-ce', margin=1.5, alpha=0.05, power=0.8, analysis='welch')
ANALYSES = ('welch', 'pooled')
HOLDS, EQUIVALENT, WORSE = 'holds', 'equivalent', 'worse'
PREREG_RULE = ("each primary contrast (config − baseline, seeds as the unit) gets {analysis} t over the seeds, "
               "two-sided p against 0, and Holm's correction over the primary contrasts at family-wise alpha "
               "{alpha:g}; its interval is the t-interval at Holm's level for its rank (1 − alpha/m for the "
               "smallest p, then 1 − alpha/(m − 1), ...). 'holds': Holm rejects 0 and the difference is above 0 "
               "(the interval lies above 0); 'worse': Holm rejects 0 and it is below 0; 'equivalent': the interval "
               "lies inside ±{margin:g} points; 'inconclusive': anything else, with the minimum detectable "
               "difference ({power:.0%} power at the contrast's level). The hierarchical bootstrap (seeds, then "
               "points) is shown beside it as a check; the per-point McNemar p is conditional on the trained "
               "weights and decides nothing. Everything outside the primary contrasts is exploratory.")


def check_preregistration(block: Any, configs: Mapping[str, Any], where: str,
                          paper_keys: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """The `preregistration:` block of a study spec with its defaults, or UserError naming the key.

    A study names, before it runs, the contrasts that decide it (each primary config against the baseline),
    the metric, the equivalence margin, the analysis and the seed sd its sizing used:

        preregistration:
          baseline: dense
          primary:                       # config: {paper: the row of the paper's table it reproduces} or {}
            convmoe: {paper: {COLUMN: VALUE, ...}}   # the row by its key columns (the claims file's `keys`)
            blockmoe: {}
          metric: apgd-ce                # APGD-CE-100 on the points every run is attacked on
          margin: 1.5                    # points: the equivalence margin, and the detectable difference sought
          analysis: welch                # or pooled (pooled-variance t over the arms)
          seed_sd: 2.3                   # the measured sd over seeds the sizing used

    A primary entry may add `base: [moe config, baseline config]` (the same arms at a base budget): its
    interaction, (config − baseline) − (base MoE − base baseline), is then a primary contrast too.

    `paper_keys`: the key columns of the paper's table (`claims.Claims.keys`); None: the shipped paper's.
    """
    paper_keys = load_claims().keys if paper_keys is None else paper_keys
    if not isinstance(block, Mapping):
        raise UserError(f'preregistration in {where} is {block!r}: give a mapping with baseline, primary, ...')
    unknown = sorted(set(block) - set(PREREG_KEYS))
    if unknown:
        raise UserError(f'unknown preregistration key {unknown[0]!r} in {where}; allowed: {", ".join(PREREG_KEYS)}')
    out = {**PREREG_DEFAULTS, **block}
    if out.get('baseline') not in configs:
        raise UserError(f'preregistration.baseline in {where} is {out.get("baseline")!r}: name a config of the spec '
                        f'({", ".join(configs)})')
    primary = out.get('primary')
    if isinstance(primary, list):
        primary = {name: {} for name in primary}
    if not isinstance(primary, Mapping) or not primary:
        raise UserError(f'preregistration.primary in {where} must name at least one config (a list, or '
                        '{config: {paper: {...}}})')
    for name, options in primary.items():
        if name not in configs or name == out['baseline']:
            raise UserError(f'preregistration.primary in {where} names {name!r}: name configs of the spec other than '
                            f'the baseline ({", ".join(c for c in configs if c != out["baseline"])})')
        options = options or {}
        if not isinstance(options, Mapping) or set(options) - {'paper', 'base'}:
            raise UserError(f'preregistration.primary.{name} in {where} is {options!r}: give {{}} or '
                            f'{{paper: {{{", ".join(paper_keys)}}}, base: [moe config, baseline config]}}')
        base = options.get('base')
        if base is not None and (not isinstance(base, list) or len(base) != 2 or len(set(map(str, base))) != 2
                                 or any(b not in configs or b in (name, out['baseline']) for b in base)):
            raise UserError(f'preregistration.primary.{name}.base in {where} is {base!r}: give [moe config, baseline '
                            f'config], two other configs of the spec, the same arms at the base budget')
        paper = options.get('paper') or {}
        if not isinstance(paper, Mapping) or set(paper) - set(paper_keys):
            raise UserError(f'preregistration.primary.{name}.paper in {where} is {paper!r}: keys '
                            f'{", ".join(paper_keys)} of a row of the paper\'s table')
    out['primary'] = {name: dict(options or {}) for name, options in primary.items()}
    for key, lo, hi in (('margin', 0, None), ('alpha', 0, 1), ('power', 0, 1), ('seed_sd', 0, None)):
        value = out.get(key)
        if value is None and key == 'seed_sd':
            continue
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value)
                or not value > lo or (hi is not None and not value < hi)):
            raise UserError(f'preregistration.{key} in {where} is {value!r}: give a number > {lo}'
                            + (f' and < {hi}' if hi is not None else ''))
    if out['analysis'] not in ANALYSES:
        raise UserError(f'preregistration.analysis in {where} is {out["analysis"]!r}; choose from {", ".join(ANALYSES)}')
    if not isinstance(out['metric'], str) or not out['metric']:
        raise UserError(f'preregistration.metric in {where} is {out["metric"]!r}: give an attack name, e.g. apgd-ce')
    return out


def prereg_verdict(diff: float, lo: float, hi: float, p_holm: float, margin: float, alpha: float) -> str:
    """`PREREG_RULE` on one contrast: its difference, its interval at Holm's level and its Holm-adjusted p."""
    if p_holm < alpha:
        return HOLDS if diff > 0 else WORSE
    if -margin < lo and hi < margin:
        return EQUIVALENT
    return INCONCLUSIVE


def _arm(study: Study, config: str, metric: str) -> Tuple[Dict[int, float], Dict[int, np.ndarray], List[str]]:
    """One arm's accuracy per seed, its per-point bits, and what keeps it from the analysis."""
    values, bits, problems = {}, {}, []
    for seed, e in sorted(study.runs.get(config, {}).items()):
        value = accuracy(e, metric)
        if value is None:
            problems.append(f'{config} seed {seed} did not measure {metric}')
            continue
        values[seed] = value
        found = stats.per_sample_vectors(e)
        if found is not None and metric in found[1]:
            bits[seed] = found[1][metric]
    return values, bits, problems


def _interaction(study: Study, config: str, baseline: str, base_config: str, base_baseline: str,
                 signatures: set) -> Dict[str, Any]:
    """The pre-registered interaction of `config` (`base: [base_config, base_baseline]` in its primary entry):
    (config − baseline) − (base_config − base_baseline), four independent arms, seeds as the unit."""
    metric = study.plan['preregistration']['metric']
    arms = [config, baseline, base_config, base_baseline]
    found = [_arm(study, arm, metric) for arm in arms]
    problems = [p for _, _, ps in found for p in ps]
    if len(signatures) > 1:
        problems.append(f'the runs measured {metric} with different settings')
    if any(len(values) < 2 for values, _, _ in found):
        problems.append(f'{", ".join(arms)} need at least 2 seeds each')
    c = dict(config=config, baseline=baseline, base=[base_config, base_baseline], n_a=len(found[0][0]),
             n_b=len(found[1][0]), problems=problems, paper=None,
             label=f'({config} − {baseline}) − ({base_config} − {base_baseline})')
    if not problems:
        c.update(stats.interaction_welch(*[list(values.values()) for values, _, _ in found]))
    return c


class Budget(NamedTuple):
    """What a budget study varies between its configs: the training data set, its images, the epochs, the width."""
    dataset: str
    images: int
    epochs: int
    width: Any

    @property
    def order(self) -> Tuple[int, int, str, str]:
        """Smallest first: by image passes (images x epochs), then images, width and data set."""
        return self.images * self.epochs, self.images, str(self.width), self.dataset

    @property
    def label(self) -> str:
        """'fashion-mnist, 60000 training images x 2 epochs, width 8'."""
        return f'{self.dataset}, {self.images} training images x {self.epochs} epochs, width {self.width}'

    @property
    def short(self) -> str:
        """'60k x 2 ep, w8' (a plot's tick, a sentence's aside)."""
        return f'{self.images / 1000:g}k x {self.epochs} ep' + (f', w{self.width}' if self.width is not None else '')


def _budget(dataset: str, train_limit: Optional[int], epochs: Any, width: Any) -> Budget:
    from bench.dataset_table import DATASET_SIZES

    images = train_limit or (DATASET_SIZES.get(dataset) or {}).get('train_images') or 0
    return Budget(str(dataset), int(images), int(epochs or 0), width)


def budget(study: Study, config: str) -> Optional[Budget]:
    """A config's budget: as its spec plans it (`budget` in the plan's config: dataset, train_limit, epochs,
    width), so that a config yet to run has one; else from its first run; None for neither."""
    planned = study.plan['configs'][config].get('budget')
    if planned:
        return _budget(planned['dataset'], planned.get('train_limit'), planned['epochs'], planned.get('width'))
    if not study.runs.get(config):
        return None
    e = next(iter(study.runs[config].values()))
    cfg = (e.get('training') or {}).get('config') or {}
    return _budget(cfg.get('dataset') or e.get('dataset'), cfg.get('train_limit'), traits(study, config)['epochs'],
                   traits(study, config).get('width'))


def budgets(study: Study, configs: Optional[Sequence[str]] = None) -> Dict[Budget, List[str]]:
    """The configs (default: every config the spec plans) grouped by budget, smallest budget first, each
    budget's configs in the spec's order; a config without a known budget is left out."""
    out: Dict[Budget, List[str]] = {}
    for c in study.plan['configs'] if configs is None else configs:
        b = budget(study, c)
        if b is not None:
            out.setdefault(b, []).append(c)
    return dict(sorted(out.items(), key=lambda kv: kv[0].order))


def planned_moe(study: Study, config: str) -> bool:
    """Whether a config is a MoE: its plan's `experts` (known before it runs), else its runs'."""
    experts = study.plan['configs'][config].get('experts')
    if experts is not None:
        return bool(experts)
    return bool(study.runs.get(config)) and is_moe(study, config)


def moe_arm(study: Study, config: str) -> str:
    """A MoE config's arm across budgets: its model and placement ('resnet18_convmoe_e4_k1, placement all')."""
    model = next(iter(study.runs[config].values()))['model']
    kwargs = model.get('effective_kwargs') or model.get('kwargs') or {}
    return f"{model.get('name')}, placement {kwargs.get('placement', model.get('placement'))}"


def of_budgets(study: Study) -> bool:
    """Whether the study pre-registers an interaction across budgets (`base:` in a primary entry): only such a
    study's report has the budget-response table and plot, so other studies' reports stay what they were."""
    primary = (study.plan.get('preregistration') or {}).get('primary') or {}
    return any((o or {}).get('base') for o in primary.values())


def budget_response(study: Study) -> Optional[Dict[str, Any]]:
    """The gap MoE − dense (the pre-registered metric, else the primary one) at each training budget, per MoE
    arm, with its Welch 95% interval over seeds; None unless the study's adversarially trained configs span two
    or more budgets, each with one dense config.

    Returns:
        dict(metric, budgets [Budget] by image passes, arms {arm: [(budget, welch) ...]},
        paper {arm: the paper's PGD-20 effect} for the arms of pre-registered primaries that name their row).
    """
    prereg = study.plan.get('preregistration') or {}
    metric = prereg.get('metric') or study.primary()
    by_budget = budgets(study, [c for c in study.configs if adversarial(study, c)])
    if metric is None or len(by_budget) < 2:
        return None
    arms: Dict[str, List[Tuple[Budget, Dict[str, Any]]]] = {}
    for b in by_budget:
        dense = [c for c in by_budget[b] if not is_moe(study, c)]
        if len(dense) != 1:
            continue  # no dense config, or several, at this budget: no gap to draw
        base = [v for v in (accuracy(e, metric) for e in study.runs[dense[0]].values()) if v is not None]
        for c in by_budget[b]:
            values = [v for v in (accuracy(e, metric) for e in study.runs[c].values()) if v is not None]
            if is_moe(study, c) and len(values) >= 2 and len(base) >= 2:
                arms.setdefault(moe_arm(study, c), []).append((b, stats.welch(values, base)))
    if not arms:
        return None
    paper = {}
    for config, options in (prereg.get('primary') or {}).items():
        delta = paper_delta(study, options.get('paper'))
        # the arm is named from a run: the primary config's own, else its arm's at another budget (the line is
        # the paper's, whatever has run of the primary config so far)
        ran = next((c for c in (config, *same_arm(study, config)) if study.runs.get(c) and is_moe(study, c)), None)
        if ran is not None and isinstance(delta, tuple):
            paper[moe_arm(study, ran)] = delta[0]
    return dict(metric=metric, budgets=list(by_budget), arms=arms, paper=paper)


def same_arm(study: Study, config: str) -> List[str]:
    """The other configs of `config`'s arm: the same plan (model, training, experts, ...) but for the budget."""
    def arm(c: str) -> Dict[str, Any]:
        return {k: v for k, v in (study.plan['configs'].get(c) or {}).items() if k not in ('budget', 'seeds')}
    return [c for c in study.plan['configs'] if c != config and arm(c) == arm(config)]


def paper_delta(study: Study, paper: Optional[Mapping[str, Any]]) -> Union[None, str, Tuple[float, ...]]:
    """The paper's effect for a row it names (`claims.row_effect`): one difference per metric of the claims file,
    None without a row, or the reason (a string) it cannot be read."""
    return row_effect(claims_of(study), paper)


def preregistered(study: Study) -> Optional[Dict[str, Any]]:
    """The pre-registered analysis of a study whose plan has `preregistration` (None otherwise).

    Returns:
        dict(prereg, sizing (seeds per arm the margin asks for at `seed_sd`, and at the sd measured here),
        contrasts [{config, baseline, n_a, n_b, diff, lo, hi, level, p, p_holm, detectable, boot, verdict,
        problems}]).
    """
    prereg = study.plan.get('preregistration')
    if not prereg:
        return None
    metric, alpha, margin, power = prereg['metric'], prereg['alpha'], prereg['margin'], prereg['power']
    base_values, base_bits, base_problems = _arm(study, prereg['baseline'], metric)
    signatures = {stats.attack_signature(e).get(metric) for runs in study.runs.values() for e in runs.values()
                  if metric in (e.get('robust_acc') or {})}
    contrasts = []
    for config in prereg['primary']:
        values, bits, problems = _arm(study, config, metric)
        problems = base_problems + problems
        if len(signatures) > 1:
            problems.append(f'the runs measured {metric} with different settings')
        if len(values) < 2 or len(base_values) < 2:
            problems.append(f'{config} and {prereg["baseline"]} need at least 2 seeds each')
        c = dict(config=config, baseline=prereg['baseline'], n_a=len(values), n_b=len(base_values), problems=problems,
                 paper=prereg['primary'][config].get('paper'))
        if not problems:
            c.update(stats.welch(list(values.values()), list(base_values.values()),
                                 pooled=prereg['analysis'] == 'pooled'))
            lengths = {len(v) for v in list(bits.values()) + list(base_bits.values())}
            if len(bits) == len(values) and len(base_bits) == len(base_values) and len(lengths) == 1:
                c['boot'] = stats.hierarchical_bootstrap(np.stack(list(bits.values())), np.stack(list(base_bits.values())),
                                                         n_boot=N_BOOT, seed=BOOT_SEED)
        contrasts.append(c)
    for config, options in prereg['primary'].items():
        if options.get('base'):
            contrasts.append(_interaction(study, config, prereg['baseline'], *options['base'], signatures))
    tested = [c for c in contrasts if 'p' in c]
    for c, p_holm, level in zip(tested, stats.holm([c['p'] for c in tested]),
                                stats.holm_levels([c['p'] for c in tested], alpha)):
        half = stats.t_quantile(1 - level, c['df']) * c['se']
        c.update(p_holm=p_holm, level=level, lo=c['diff'] - half, hi=c['diff'] + half,
                 detectable=stats.minimum_detectable_difference(c['se'], c['df'], level, power))
        c['verdict'] = prereg_verdict(c['diff'], c['lo'], c['hi'], p_holm, margin, alpha)
    for c in contrasts:
        c.setdefault('verdict', 'not analysed: ' + '; '.join(c['problems']))
    measured_sd = [s for runs in [base_values] + [_arm(study, c, metric)[0] for c in prereg['primary']]
                   for s in ([float(np.std(list(runs.values()), ddof=1))] if len(runs) > 1 else [])]
    # sized at Holm's strictest level, alpha / m: the contrast with the smallest p is tested there, and which
    # one that will be is not known before the runs
    level = alpha / len(contrasts)
    sizing = dict(level=level)
    if prereg.get('seed_sd'):
        sizing['spec'] = (prereg['seed_sd'], stats.seeds_for_margin(prereg['seed_sd'], margin, level, power))
    if measured_sd:
        sizing['measured'] = (max(measured_sd), stats.seeds_for_margin(max(measured_sd), margin, level, power))
    return dict(prereg=prereg, contrasts=contrasts, sizing=sizing)

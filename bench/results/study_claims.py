"""The study's four claims: which configurations each compares, the paired tests, and the answer in words.

A claim's pairs are found by what the configurations are (`study_configs.traits`), so a study without some
of them still renders: a comparison whose configurations are absent is skipped with the reason in the text.
Each section is a list of markdown lines.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from bench.core.errors import UserError
from bench.results import study_configs as sc
from bench.results import study_stats as st
from bench.results.compare import compare_entries

Lines = List[str]


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Lines:
    out = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    out += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return out + ['']


COMPARISON_HEADER = ('A vs B', 'metric', 'A', 'B', 'Δ per seed (A − B)', 'mean Δ [95% t, seeds]',
                     'pooled Δ [95% bootstrap, points]', 'McNemar p (pooled)', 'verdict')


def comparison_row(study: sc.Study, a: str, b: str, metric: str, r: Mapping[str, Any], label: str = '') -> List[str]:
    per_seed = ', '.join(f"s{p['seed']} {p['diff']:+.2f}" for p in r['per_seed']) or '–'
    pooled = r['pooled']
    return [label or f'{a} vs {b}', metric, st.fmt_summary(st.summary(study.runs[a], metric)),
            st.fmt_summary(st.summary(study.runs[b], metric)), per_seed, st.fmt_interval(r['seed_diff']),
            '–' if pooled is None else f"{pooled['diff']:+.2f} [{pooled['lo']:+.2f}, {pooled['hi']:+.2f}]",
            '–' if pooled is None else f"{pooled['p']:.3g}", r['verdict']]


def comparisons(study: sc.Study, pairs: Sequence[Tuple[str, str]], metrics: Sequence[str],
                labels: Optional[Mapping[Tuple[str, str], str]] = None) -> Tuple[Lines, Dict[Tuple[str, str, str], Any]]:
    """The comparison table of `pairs` (A claimed better) on each metric, with every flag and refusal below it."""
    rows, notes, results = [], [], {}
    for a, b in pairs:
        for m in metrics:
            r = st.compare_configs(study.runs[a], study.runs[b], m)
            results[(a, b, m)] = r
            rows.append(comparison_row(study, a, b, m, r, (labels or {}).get((a, b), '')))
            notes += [f'- flag ({a} vs {b}, {m}): {f}' for f in r['flags']]
            notes += [f'- refused ({a} vs {b}, {m}): {f}' for f in r['refused']]
    return md_table(COMPARISON_HEADER, rows) + (notes + [''] if notes else []), results


def _answer(results: Mapping[Tuple[str, str, str], Any], metric: str, what: str) -> str:
    """One sentence per comparison on the primary metric: its verdict, the numbers behind it, the points."""
    parts = []
    for (a, b, m), r in results.items():
        if m != metric:
            continue
        s = r['seed_diff']
        mean = '–' if s is None else f"{s['mean']:+.2f} points"
        parts.append(f"{a} vs {b}: {r['verdict']} (mean Δ {mean} over {len(r['seeds'])} seeds, "
                     f"{st.fmt_interval(s)}; {st.points_note((r['pooled'] or {}).get('p'))})")
    if not parts:
        return f'No comparison: {what}.'
    held = sum(r['verdict'] == 'holds' for (_, _, m), r in results.items() if m == metric)
    return (f'On {metric}, the claim holds beyond seed noise for {held} of {len(parts)} comparison'
            f'{"s" if len(parts) > 1 else ""}. ' + '; '.join(parts) + '.')


def _metrics(study: sc.Study) -> List[str]:
    return [m for m in (study.primary(), study.pgd()) if m]


# ------------------------------------------------------------------------------------------ claims 1-3

def claim_equal_flops(study: sc.Study) -> Lines:
    """(1) Every adversarially trained MoE config at the dense model's FLOPs vs the dense config."""
    out = ['## Claim 1: MoE with adversarial training is more robust than dense at equal FLOPs', '',
           f'Pairs: every adversarially trained MoE config from scratch whose active-FLOPs ratio to dense is within '
           f'±{sc.FLOPS_TOL:g} of 1, against the dense config with the same training method, epochs and width. '
           f'Primary metric {study.primary()}; also {study.pgd() or "no PGD attack"}.', '']
    pairs, skipped = [], []
    for c in study.configs:
        if not sc.is_moe(study, c):
            continue
        ratio, ref = sc.flops_ratio(study, c), sc.dense_reference(study, c)
        if not sc.adversarial(study, c):
            skipped.append(f'{c}: normal training (see the adversarial-training gain)')
        elif not sc.scratch(study, c):
            skipped.append(f'{c}: upcycled (see the upcycling table)')
        elif ratio is None or abs(ratio - 1) > sc.FLOPS_TOL:
            skipped.append(f'{c}: FLOPs ratio {"unknown" if ratio is None else f"{ratio:.3f}"}, not equal to dense')
        elif ref is None:
            skipped.append(f'{c}: no dense config trained the same way')
        else:
            pairs.append((c, ref))
    table, results = comparisons(study, pairs, _metrics(study)) if pairs else ([], {})
    out += table + [f'- not compared: {s}' for s in skipped] + ([''] if skipped else [])
    out += ['**Answer.** ' + _answer(results, study.primary(), 'no MoE config at equal FLOPs with a dense twin'), '']
    return out


def _oriented(pairs: Sequence[Tuple[str, str]], better) -> List[Tuple[str, str]]:
    out = []
    for a, b in pairs:
        if better(a, b):
            out.append((a, b))
        elif better(b, a):
            out.append((b, a))
    return out


def claim_entropy(study: sc.Study) -> Lines:
    """(2) The entropy loss vs every config that differs from an entropy config only in the aux loss."""
    aux = lambda c: sc.traits(study, c).get('aux_loss')  # noqa: E731
    pairs = _oriented(sc.pairs_differing_in(study, sc.AUX_KEYS, 'aux_loss'),
                      lambda a, b: aux(a) == 'entropy' and aux(b) != 'entropy')
    out = ['## Claim 2: the entropy loss gives more robust MoEs than the switch and KL losses', '',
           'Pairs: adversarially trained MoE configs that differ only in the auxiliary loss (and what follows from it: '
           'its default weight, noisy gating under `auto`), the entropy one as A.', '']
    if not pairs:
        return out + ['Skipped: no two configs differ only in the aux loss with one of them entropy.', '']
    table, results = comparisons(study, pairs, _metrics(study),
                                 {(a, b): f'{a} ({aux(a)}) vs {b} ({aux(b)})' for a, b in pairs})
    return out + table + ['**Answer.** ' + _answer(results, study.primary(), ''), '']


def claim_k(study: sc.Study) -> Lines:
    """(3) k=2 vs k=1: configs that differ only in k (FLOPs differ), or in k and expert width (FLOPs matched)."""
    k = lambda c: sc.traits(study, c).get('k') or 0  # noqa: E731
    pairs = _oriented(sc.pairs_differing_in(study, ('k', 'expert_width'), 'k'), lambda a, b: k(a) > k(b))
    out = ['## Claim 3: k=2 is more robust than k=1', '',
           'Pairs: adversarially trained MoE configs that differ only in k (then the FLOPs differ too), or in k and '
           'the expert width (a matched width keeps the FLOPs equal); the larger k as A.', '']
    if not pairs:
        return out + ['Skipped: no two configs differ only in k (or in k and expert width).', '']
    labels = {}
    for a, b in pairs:
        fa, fb = sc.flops_ratio(study, a), sc.flops_ratio(study, b)
        same = fa is not None and fb is not None and abs(fa - fb) <= sc.FLOPS_TOL
        cost = '' if fa is None or fb is None else f'FLOPs {fa:.2f} vs {fb:.2f}'
        labels[(a, b)] = f'{a} (k={k(a)}) vs {b} (k={k(b)}), {"equal FLOPs" if same else "FLOPs differ"}: {cost}'
    table, results = comparisons(study, pairs, _metrics(study), labels)
    return out + table + ['**Answer.** ' + _answer(results, study.primary(), '') +
                          ' Where the FLOPs differ, a gain is bought with compute; only the equal-FLOPs pairs '
                          'answer the claim at equal cost.', '']


# ------------------------------------------------------------------------------------------ claim 4

def _mean_sd(values: Sequence[float]) -> str:
    s = st.stats.seed_summary(values)
    return f"{s['mean']:.3f}" if s['std'] is None else f"{s['mean']:.3f} ± {s['std']:.3f}"


def collapse_of(study: sc.Study, config: str) -> Dict[int, float]:
    return {s: e['routing']['collapse'] for s, e in sorted(study.runs[config].items())
            if (e.get('routing') or {}).get('collapse') is not None}


def routing_rows(study: sc.Study) -> List[List[str]]:
    rows = []
    for c in study.configs:
        if not (sc.is_moe(study, c) and sc.adversarial(study, c)):
            continue
        loads = [e['routing']['load'] for _, e in sorted(study.runs[c].items()) if (e.get('routing') or {}).get('load')]
        coll = collapse_of(study, c)
        load = ', '.join(_mean_sd([l[i] for l in loads]) for i in range(len(loads[0]))) if loads else '–'
        rows.append([c, sc.traits(study, c).get('aux_loss'), len(loads),
                     _mean_sd(list(coll.values())) if coll else '–', load])
    return rows


def subpath_comparison(entry: Mapping[str, Any], pe: Mapping[str, Any], metric: str) -> Dict[str, Any]:
    """compare_entries of one expert's subpath against the gated model on the subpath's points (its first n):
    the subpath is given the gated entry's data set and attack settings, which it ran with."""
    sub = {k: entry.get(k) for k in ('dataset', 'threat_model', 'eps', 'eval_settings', 'model', 'source')}
    sub.update(entry_id=f"{entry['entry_id']}/expert{pe['expert']}", per_sample=pe['per_sample'],
               clean_acc=pe['clean_acc'], robust_acc=pe['robust_acc'], n_examples=pe.get('n_examples'))
    return compare_entries(sub, entry, metric=metric, n_boot=st.N_BOOT, seed=st.BOOT_SEED)


def claim_switch(study: sc.Study) -> Lines:
    """(4) The switch loss collapses the routing; some expert subpaths are more robust than the gated model."""
    aux = lambda c: sc.traits(study, c).get('aux_loss')  # noqa: E731
    out = ['## Claim 4: the switch loss collapses the routing, and some expert subpaths are more robust than the '
           'gated model', '', 'Collapse = 1 − H(load)/log E over the test images (0: uniform, 1: one expert takes '
           'every image); load = share of images per expert; mean ± sd over seeds.', '']
    out += md_table(('config', 'aux loss', 'seeds', 'collapse', 'load per expert'), routing_rows(study))
    pairs = _oriented(sc.pairs_differing_in(study, sc.AUX_KEYS, 'aux_loss'),
                      lambda a, b: aux(a) == 'switch' and aux(b) != 'switch')
    if pairs:
        rows, words = [], []
        for a, b in pairs:
            r = st.seed_paired(collapse_of(study, a), collapse_of(study, b))
            rows.append([f'{a} ({aux(a)}) vs {b} ({aux(b)})', ', '.join(map(str, r['seeds'])),
                         st.fmt_interval(r['seed_diff'], digits=3), r['verdict']])
            words.append(f"{a} vs {b}: {r['verdict']}")
        out += md_table(('collapse, A vs B', 'seeds', 'mean Δ collapse [95% t, seeds]', 'verdict'), rows)
        out += [f'**Answer (collapse).** {"; ".join(words)} (no per-point test: collapse is one number per run).', '']
    else:
        out += ['Collapse comparison skipped: no switch config with a twin that differs only in the aux loss.', '']
    out += _subpaths(study)
    return out


def _subpaths(study: sc.Study) -> Lines:
    rows, better, worse, total, flags = [], [], 0, 0, []
    for c in study.configs:
        e = study.first(c)
        if e is None or not e.get('per_expert'):
            continue
        for pe in sorted(e['per_expert'], key=lambda p: p['expert']):
            if not pe.get('per_sample'):
                flags.append(f'- {c} expert {pe["expert"]}: no per-sample bits, no paired test')
                continue
            for m in [m for m in _metrics(study) if m in pe['robust_acc']]:
                try:
                    r = subpath_comparison(e, pe, m)
                except UserError as err:
                    flags.append(f'- refused ({c} expert {pe["expert"]}, {m}): {err}')
                    continue
                total += 1
                sig = r['mcnemar_p'] < st.ALPHA
                if sig and r['diff'] > 0:
                    better.append(f"{c} expert {pe['expert']} ({m} {r['diff']:+.2f})")
                worse += sig and r['diff'] < 0
                flags += [f'- flag ({c} expert {pe["expert"]}, {m}): {w}' for w in r['warnings']
                          if not w.startswith('the point sets differ')]  # expected: the subpath ran on the first n
                rows.append([c, sc.traits(study, c).get('aux_loss'), pe['expert'], m, r['n'], f"{r['a']['acc']:.2f}",
                             f"{r['b']['acc']:.2f}", f"{r['diff']:+.2f} [{r['diff_lo']:+.2f}, {r['diff_hi']:+.2f}]",
                             f"{r['mcnemar_p']:.3g}"])
    out = ['### Expert subpaths vs the gated model (first seed)', '',
           "Each expert forced on its own, attacked on the first points of the run; the gated model's numbers are its "
           "main-run bits restricted to the same points. Δ = subpath − gated.", '']
    if not rows:
        return out + ['Skipped: no first-seed run stores per-expert per-sample results.', ''] + flags
    out += md_table(('config', 'aux loss', 'expert', 'metric', 'points', 'subpath', 'gated', 'Δ [95% bootstrap]',
                     'McNemar p'), rows) + flags + ([''] if flags else [])
    out += [f'**Answer (subpaths).** {len(better)} of {total} subpath comparisons are more robust than the gated '
            f'model at p < {st.ALPHA:g}' + (f': {"; ".join(better)}' if better else '') +
            f'; {worse} are less robust at p < {st.ALPHA:g}. These are single runs: the test is over points only.',
            '']
    return out


CLAIMS = (claim_equal_flops, claim_entropy, claim_k, claim_switch)

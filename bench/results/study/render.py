"""The study report's sections as markdown lines: the four claims (which configurations each compares, the
paired tests, the answer in words), the other tables (every config at a glance, upcycling at equal compute,
the adversarial-training gain, AutoAttack against the primary attack on the same points, routing under
attack, transfer, sanity flags), and the protocol and sizing.

A claim's pairs are found by what the configurations are (`analysis.traits`), so a study without some of
them still renders: a comparison whose configurations are absent is skipped with the reason in the text.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from bench.core.errors import UserError
from bench.results import stats
from bench.results.compare import compare_entries
from bench.results.markdown import md_table
from bench.results.study import analysis as an

Lines = List[str]
# a study -> (pairs (A, B), what was not compared, a label per pair)
PairFinder = Callable[[an.Study], Tuple[List[Tuple[str, str]], List[str], Dict[Tuple[str, str], str]]]


COMPARISON_HEADER = ('A vs B', 'metric', 'A', 'B', 'Δ per seed (A − B)', 'mean Δ [95% t, seeds]',
                     'pooled Δ [95% bootstrap, points]', 'McNemar p (pooled; given these weights)', 'verdict')


def comparison_row(study: an.Study, a: str, b: str, metric: str, r: Mapping[str, Any], label: str = '') -> List[str]:
    per_seed = ', '.join(f"s{p['seed']} {p['diff']:+.2f}" for p in r['per_seed']) or '–'
    pooled = r['pooled']
    return [label or f'{a} vs {b}', metric, an.fmt_summary(an.summary(study.runs[a], metric)),
            an.fmt_summary(an.summary(study.runs[b], metric)), per_seed, an.fmt_interval(r['seed_diff']),
            '–' if pooled is None else f"{pooled['diff']:+.2f} [{pooled['lo']:+.2f}, {pooled['hi']:+.2f}]",
            '–' if pooled is None else stats.format_p(pooled['p']), r['verdict']]


def compare(study: an.Study, a: str, b: str, metric: str) -> Dict[str, Any]:
    """`analysis.compare_configs` of two configs of the study, computed once per report (the summary and the
    claims show the same comparisons)."""
    key = (a, b, metric)
    if key not in study.cache:
        study.cache[key] = an.compare_configs(study.runs[a], study.runs[b], metric)
    return study.cache[key]


def comparisons(study: an.Study, pairs: Sequence[Tuple[str, str]], metrics: Sequence[str],
                labels: Optional[Mapping[Tuple[str, str], str]] = None) -> Tuple[Lines, Dict[Tuple[str, str, str], Any]]:
    """The comparison table of `pairs` (A claimed better) on each metric, with every flag and refusal below it."""
    rows, notes, results = [], [], {}
    for a, b in pairs:
        for m in metrics:
            r = compare(study, a, b, m)
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
                     f"{an.fmt_interval(s)}; {an.points_note((r['pooled'] or {}).get('p'))})")
    if not parts:
        return f'No comparison: {what}.'
    held = sum(r['verdict'] == 'holds' for (_, _, m), r in results.items() if m == metric)
    return (f'On {metric}, the claim holds beyond seed noise for {held} of {len(parts)} comparison'
            f'{"s" if len(parts) > 1 else ""}. ' + '; '.join(parts) + '.')


def _metrics(study: an.Study) -> List[str]:
    return [m for m in (study.primary(), study.pgd()) if m]


def paper_lines(study: an.Study, claim: int) -> Lines:
    """What the paper's own table says on a claim, beside ours (computed from the table, `analysis.paper_effects`)."""
    effects, why = an.load_paper_effects(study.plan)
    if effects is None:
        return [f"The paper's table: {why}.", '']
    e = effects[claim]
    return [f"**The paper's table** ({an.PAPER_SOURCE}): {e['claim']}. Effect: {e['effect']}"
            + (f"; {e['detail']}" if e['detail'] else '') + '.', '']


# ------------------------------------------------------------------------------------------ claims 1-3

def equal_flops_pairs(study: an.Study) -> Tuple[List[Tuple[str, str]], List[str], Dict[Tuple[str, str], str]]:
    """(1) (pairs, what is left out and why, labels): every adversarially trained MoE config at the dense
    model's FLOPs vs the dense config."""
    pairs, skipped = [], []
    for c in study.configs:
        if not an.is_moe(study, c):
            continue
        ratio, ref = an.flops_ratio(study, c), an.dense_reference(study, c)
        if not an.adversarial(study, c):
            skipped.append(f'{c}: normal training (see the adversarial-training gain)')
        elif not an.scratch(study, c):
            skipped.append(f'{c}: upcycled (see the upcycling table)')
        elif ratio is None or abs(ratio - 1) > an.FLOPS_TOL:
            skipped.append(f'{c}: FLOPs ratio {"unknown" if ratio is None else f"{ratio:.3f}"}, not equal to dense')
        elif ref is None:
            skipped.append(f'{c}: no dense config trained the same way')
        else:
            pairs.append((c, ref))
    return pairs, skipped, {}


def claim_equal_flops(study: an.Study) -> Lines:
    out = ['## Claim 1: MoE with adversarial training is more robust than dense at equal FLOPs', '',
           *paper_lines(study, 1),
           f'Pairs: every adversarially trained MoE config from scratch whose active-FLOPs ratio to dense is within '
           f'±{an.FLOPS_TOL:g} of 1, against the dense config with the same training method, epochs and width. '
           f'Primary metric {study.primary()}; also {study.pgd() or "no PGD attack"}.', '']
    pairs, skipped, _ = equal_flops_pairs(study)
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


def entropy_pairs(study: an.Study) -> Tuple[List[Tuple[str, str]], List[str], Dict[Tuple[str, str], str]]:
    """(2) The entropy config vs every config that differs from it only in the aux loss."""
    aux = lambda c: an.traits(study, c).get('aux_loss')  # noqa: E731
    pairs = _oriented(an.pairs_differing_in(study, an.AUX_KEYS, 'aux_loss'),
                      lambda a, b: aux(a) == 'entropy' and aux(b) != 'entropy')
    return pairs, [], {(a, b): f'{a} ({aux(a)}) vs {b} ({aux(b)})' for a, b in pairs}


def _paired_claim(study: an.Study, n: int, title: str, how: str, find: PairFinder, none: str,
                  after: str = '') -> Lines:
    """A claim answered by paired comparisons: its heading, the paper's words, how pairs are formed, the table
    of the pairs `find` returns (or `none` when there are none) and the answer, `after` appended."""
    out = [f'## Claim {n}: {title}', '', *paper_lines(study, n), how, '']
    pairs, _, labels = find(study)
    if not pairs:
        return out + [f'Skipped: {none}', '']
    table, results = comparisons(study, pairs, _metrics(study), labels)
    return out + table + ['**Answer.** ' + _answer(results, study.primary(), '') + after, '']


def claim_entropy(study: an.Study) -> Lines:
    return _paired_claim(
        study, 2, 'the entropy loss gives more robust MoEs than the switch and KL losses',
        'Pairs: adversarially trained MoE configs that differ only in the auxiliary loss (and what follows from it: '
        'its default weight, noisy gating under `auto`), the entropy one as A.',
        entropy_pairs, 'no two configs differ only in the aux loss with one of them entropy.')


def k_pairs(study: an.Study) -> Tuple[List[Tuple[str, str]], List[str], Dict[Tuple[str, str], str]]:
    """(3) k=1 vs k=2 (the paper's table has k=1 ahead): configs that differ only in k (FLOPs differ), or in k
    and expert width (FLOPs matched); the smaller k as A."""
    k = lambda c: an.traits(study, c).get('k') or 0  # noqa: E731
    pairs = _oriented(an.pairs_differing_in(study, ('k', 'expert_width'), 'k'), lambda a, b: k(a) < k(b))
    labels = {}
    for a, b in pairs:
        fa, fb = an.flops_ratio(study, a), an.flops_ratio(study, b)
        same = fa is not None and fb is not None and abs(fa - fb) <= an.FLOPS_TOL
        cost = '' if fa is None or fb is None else f'FLOPs {fa:.2f} vs {fb:.2f}'
        labels[(a, b)] = f'{a} (k={k(a)}) vs {b} (k={k(b)}), {"equal FLOPs" if same else "FLOPs differ"}: {cost}'
    return pairs, [], labels


def claim_k(study: an.Study) -> Lines:
    return _paired_claim(
        study, 3, 'k=1 is more robust than k=2 (as the paper\'s table has it)',
        'Pairs: adversarially trained MoE configs that differ only in k (then the FLOPs differ too), or in k and '
        'the expert width (a matched width keeps the FLOPs equal); the smaller k as A.',
        k_pairs, 'no two configs differ only in k (or in k and expert width).',
        ' Where the FLOPs differ, a difference is bought or saved with compute; only the equal-FLOPs pairs answer '
        'the claim at equal cost.')


CLAIM_PAIRS = ((1, equal_flops_pairs), (2, entropy_pairs), (3, k_pairs))


# ------------------------------------------------------------------------------------------ claim 4

def _mean_sd(values: Sequence[float]) -> str:
    s = an.stats.seed_summary(values)
    return f"{s['mean']:.3f}" if s['std'] is None else f"{s['mean']:.3f} ± {s['std']:.3f}"


def collapse_of(study: an.Study, config: str) -> Dict[int, float]:
    return {s: e['routing']['collapse'] for s, e in sorted(study.runs[config].items())
            if (e.get('routing') or {}).get('collapse') is not None}


def routing_rows(study: an.Study) -> List[List[str]]:
    rows = []
    for c in study.configs:
        if not (an.is_moe(study, c) and an.adversarial(study, c)):
            continue
        loads = [e['routing']['load'] for _, e in sorted(study.runs[c].items()) if (e.get('routing') or {}).get('load')]
        coll = collapse_of(study, c)
        load = ', '.join(_mean_sd([l[i] for l in loads]) for i in range(len(loads[0]))) if loads else '–'
        rows.append([c, an.traits(study, c).get('aux_loss'), len(loads),
                     _mean_sd(list(coll.values())) if coll else '–', load])
    return rows


def subpath_comparison(entry: Mapping[str, Any], pe: Mapping[str, Any], metric: str) -> Dict[str, Any]:
    """compare_entries of one expert's subpath against the gated model on the subpath's points (its first n):
    the subpath is given the gated entry's data set and attack settings, which it ran with."""
    sub = {k: entry.get(k) for k in ('dataset', 'threat_model', 'eps', 'eval_settings', 'model', 'source')}
    sub.update(entry_id=f"{entry['entry_id']}/expert{pe['expert']}", per_sample=pe['per_sample'],
               clean_acc=pe['clean_acc'], robust_acc=pe['robust_acc'], n_examples=pe.get('n_examples'))
    return compare_entries(sub, entry, metric=metric, n_boot=an.N_BOOT, seed=an.BOOT_SEED)


def collapse_results(study: an.Study) -> List[Tuple[str, str, Dict[str, Any]]]:
    """(A, B, seed-paired collapse difference) of each switch config vs its twin that differs only in the aux loss."""
    aux = lambda c: an.traits(study, c).get('aux_loss')  # noqa: E731
    pairs = _oriented(an.pairs_differing_in(study, an.AUX_KEYS, 'aux_loss'),
                      lambda a, b: aux(a) == 'switch' and aux(b) != 'switch')
    return [(a, b, an.seed_paired(collapse_of(study, a), collapse_of(study, b))) for a, b in pairs]


def claim_switch(study: an.Study) -> Lines:
    """(4) The switch loss collapses the routing; some expert subpaths are more robust than the gated model."""
    aux = lambda c: an.traits(study, c).get('aux_loss')  # noqa: E731
    out = ['## Claim 4: the switch loss collapses the routing, and some expert subpaths are more robust than the '
           'gated model', '', *paper_lines(study, 4), 'Collapse = 1 − H(load)/log E over the test images (0: uniform, '
           '1: one expert takes every image); load = share of images per expert; mean ± sd over seeds.', '']
    out += md_table(('config', 'aux loss', 'seeds', 'collapse', 'load per expert'), routing_rows(study))
    results = collapse_results(study)
    if results:
        rows, words = [], []
        for a, b, r in results:
            rows.append([f'{a} ({aux(a)}) vs {b} ({aux(b)})', ', '.join(map(str, r['seeds'])),
                         an.fmt_interval(r['seed_diff'], digits=3), r['verdict']])
            words.append(f"{a} vs {b}: {r['verdict']}")
        out += md_table(('collapse, A vs B', 'seeds', 'mean Δ collapse [95% t, seeds]', 'verdict'), rows)
        out += [f'**Answer (collapse).** {"; ".join(words)} (no per-point test: collapse is one number per run).', '']
    else:
        out += ['Collapse comparison skipped: no switch config with a twin that differs only in the aux loss.', '']
    out += _subpaths(study)
    return out


def subpaths(study: an.Study) -> Tuple[List[List[Any]], Lines, Dict[str, Dict[str, Any]]]:
    """(table rows, flags, counts): every expert subpath of the first seeds against its gated model; counts per
    training ('adversarial', 'normal'): comparisons, more robust at p < ALPHA (named), less robust at p < ALPHA."""
    rows, flags = [], []
    counts: Dict[str, Dict[str, Any]] = {}
    for c in study.configs:
        e = study.first(c)
        if e is None or not e.get('per_expert'):
            continue
        kind = counts.setdefault('adversarial' if an.adversarial(study, c) else 'normal',
                                 dict(total=0, better=[], worse=0))
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
                kind['total'] += 1
                sig = r['mcnemar_p'] < an.ALPHA
                if sig and r['diff'] > 0:
                    kind['better'].append(f"{c} expert {pe['expert']} ({m} {r['diff']:+.2f})")
                kind['worse'] += sig and r['diff'] < 0
                flags += [f'- flag ({c} expert {pe["expert"]}, {m}): {w}' for w in r['warnings']
                          if not w.startswith('the point sets differ')]  # expected: the subpath ran on the first n
                rows.append([c, an.traits(study, c).get('aux_loss'), pe['expert'], m, r['n'], f"{r['a']['acc']:.2f}",
                             f"{r['b']['acc']:.2f}", f"{r['diff']:+.2f} [{r['diff_lo']:+.2f}, {r['diff_hi']:+.2f}]",
                             stats.format_p(r['mcnemar_p'])])
    return rows, flags, counts


def subpath_answer(counts: Mapping[str, Mapping[str, Any]]) -> str:
    """'adversarially trained: 0 of 72 subpath comparisons are more robust ...; normally trained: ...'."""
    parts = []
    for kind, what in (('adversarial', 'adversarially trained'), ('normal', 'normally trained')):
        if kind in counts and counts[kind]['total']:
            k = counts[kind]
            parts.append(f"{what}: {len(k['better'])} of {k['total']} subpath comparisons are more robust than the "
                         f'gated model at p < {an.ALPHA:g}' + (f' ({"; ".join(k["better"])})' if k['better'] else '') +
                         f", {k['worse']} are less robust at p < {an.ALPHA:g}")
    return '; '.join(parts)


def _subpaths(study: an.Study) -> Lines:
    rows, flags, counts = subpaths(study)
    out = ['### Expert subpaths vs the gated model (first seed)', '',
           "Each expert forced on its own, attacked on the first points of the run; the gated model's numbers are its "
           "main-run bits restricted to the same points. Δ = subpath − gated.", '']
    if not rows:
        return out + ['Skipped: no first-seed run stores per-expert per-sample results.', ''] + flags
    out += md_table(('config', 'aux loss', 'expert', 'metric', 'points', 'subpath', 'gated', 'Δ [95% bootstrap]',
                     'McNemar p'), rows) + flags + ([''] if flags else [])
    out += [f'**Answer (subpaths).** {subpath_answer(counts).capitalize()}. These are single runs: the test is over '
            'points only, conditional on the trained weights.', '']
    return out


# ------------------------------------------------------------------------------------------ summary

SUMMARY_START = '<!-- summary: generated by timm-moe report --study; the README quotes it, do not edit -->'
SUMMARY_END = '<!-- end of summary -->'
# the pre-registered verdicts, which the README quotes for the powered study as it quotes the summary
VERDICTS_START = '<!-- verdicts: generated by timm-moe report --study; the README quotes them, do not edit -->'
VERDICTS_END = '<!-- end of verdicts -->'


def summary(study: an.Study) -> Lines:
    """Every claim in one table, the paper's table beside ours, on the primary metric; the README quotes these
    lines verbatim (between `SUMMARY_START` and `SUMMARY_END`)."""
    metric = study.primary()
    effects, why = an.load_paper_effects(study.plan)
    rows, mdds, verdicts = [], [], []
    for claim, pairs_of in CLAIM_PAIRS:
        pairs, _, labels = pairs_of(study)
        paper = '–' if effects is None else effects[claim]['effect']
        statement = f"{claim}. {effects[claim]['claim'] if effects else ''}".rstrip()
        if not pairs or metric is None:
            rows.append([statement, paper, 'no pair in this study', '–', '–', '–'])
        for i, (a, b) in enumerate(pairs):
            r = compare(study, a, b, metric)
            mdd = r.get('detectable')
            if mdd is not None:
                mdds.append(mdd)
            verdicts.append(r['verdict'])
            rows.append([statement if i == 0 else '', paper if i == 0 else '', labels.get((a, b), f'{a} vs {b}'),
                         an.fmt_interval(r['seed_diff']), '–' if mdd is None else f'{mdd:.2f}',
                         r['verdict'].split(' (')[0]])
    coll = collapse_results(study)
    _, _, counts = subpaths(study)
    statement = f"4. {effects[4]['claim'] if effects else ''}".rstrip()
    for i, (a, b, r) in enumerate(coll):
        rows.append([statement if i == 0 else '', effects[4]['effect'] if effects and i == 0 else '',
                     f'collapse, {a} − {b}', an.fmt_interval(r['seed_diff'], digits=3),
                     '–' if an.detectable(r['seed_diff']) is None else f"{an.detectable(r['seed_diff']):.3f}",
                     r['verdict'].split(' (')[0]])
    n_seeds = sorted({len(study.runs[c]) for c in study.configs if an.adversarial(study, c)})
    held = sum(v == 'holds' for v in verdicts)
    rev = sum(v == 'reversed' for v in verdicts)
    inc = sum(v.startswith(an.INCONCLUSIVE) for v in verdicts)
    out = [SUMMARY_START, '',
           f'Ours: {metric} on the same test points, mean Δ (A − B) over the seeds paired by seed '
           f'({"/".join(map(str, n_seeds))} seeds per adversarially trained config) with its 95% t-interval; '
           f'detectable Δ: the smallest true difference this design detects with {an.POWER:.0%} power '
           f'(two-sided alpha {an.ALPHA:g}). The paper: {an.PAPER_SOURCE}' + (f'; {why}' if why else '') + '.', '',
           # a pre-registered study's primary contrasts appear twice, analysed two ways: say which one decides
           *(['Exploratory, for every claim alike: the pre-registered contrasts are decided in their own section '
               "(Welch's t over seeds, Holm's correction), so their intervals and detectable differences there "
               'differ from these.', ''] if study.plan.get('preregistration') else []),
           *md_table(('claim (as the paper\'s table has it)', 'the paper\'s effect (PGD-20 / APGD-20)', 'here: A vs B',
                      f'mean Δ {metric} [95% t, seeds]', 'detectable Δ', 'verdict'), rows)]
    if verdicts:
        out += [f'Of {len(verdicts)} comparisons on {metric}: {held} hold, {rev} reversed, {inc} inconclusive at this '
                f'power' + (f' (detectable differences {min(mdds):.2f} to {max(mdds):.2f} points)' if mdds else '') +
                '. An inconclusive comparison neither reproduces nor refutes the claim: a true difference smaller than '
                'its detectable difference is not ruled out.', '']
    if counts:
        out += [f'Expert subpaths (claim 4; first seed, per point, conditional on the trained weights): '
                f'{subpath_answer(counts)}.', '']
    return out + [SUMMARY_END, '']


CLAIMS = (claim_equal_flops, claim_entropy, claim_k, claim_switch)


# ------------------------------------------------------------------------------------------ other tables

METRIC_NAMES = {'clean': 'clean', 'worst_case': 'worst case'}


def overview(study: an.Study) -> Lines:
    every, first = study.metrics(), study.first_seed_metrics()
    metrics = ['clean'] + list(reversed([m for m in every if m != 'worst_case'])) + \
              (['worst_case'] if 'worst_case' in every else []) + first
    header = ['config', 'model', 'training', 'seeds'] + [METRIC_NAMES.get(m, m) + (' (first seed)' if m in first else '')
                                                         for m in metrics] + ['FLOPs ratio', 'params (active / total)']
    rows = []
    for c in study.configs:
        t, e = an.traits(study, c), study.first(c) or next(iter(study.runs[c].values()))
        runs = study.runs[c]
        ratio, params = an.flops_ratio(study, c), e.get('params') or {}
        rows.append([c, e['model']['name'], f"{t['training']}{', upcycled' if t['upcycled'] else ''}, "
                     f"{t['epochs']} ep", ', '.join(map(str, sorted(runs)))]
                    + [an.fmt_summary(an.summary(runs, m)) for m in metrics]
                    + ['–' if ratio is None else f'{ratio:.3f}',
                       f"{params.get('active', '–')} / {params.get('total', '–')}"])
    worst = ('Worst case: per point, broken by any attack of the run.' if 'worst_case' in every else
             'Worst case: not shown, because the runs attacked with different attack sets (the first seeds add '
             f'{", ".join(first) or "attacks"}), and a worst case over another set of attacks is another statistic; '
             f'the headline metric is {study.primary()}, which every run measured with the same settings.'
             if study.mixed_worst_case() else '')
    return ['## All configurations', '',
            'Accuracy in %: mean ± sd over seeds [95% t-interval over seeds]; a single run: its Wilson 95% interval '
            '[W lo, hi] over the test points. ' + worst, '',
            *md_table(header, rows)]


def upcycling(study: an.Study) -> Lines:
    """Each upcycled config vs the same MoE from scratch (equal total epochs when source + fine-tune epochs
    equal the scratch run's) and vs the dense reference."""
    out = ['## Upcycling at equal compute', '']
    pairs, words = [], []
    for u in study.configs:
        source = study.plan['configs'][u].get('upcycle_from')
        if not source:
            continue
        tu = an.traits(study, u)
        twin = next((c for c in study.configs if c != u and an.scratch(study, c)
                     and set(an.differing(study, u, c)) <= {'upcycled', 'epochs'}), None)
        source_epochs = an.traits(study, source)['epochs'] if source in study.runs else 0
        total = (tu['epochs'] or 0) + source_epochs
        if twin is not None:
            pairs.append((u, twin))
            te = an.traits(study, twin)['epochs']
            words.append(f'{u}: {total} epochs in all ({source_epochs} of {source}, then {tu["epochs"]} as MoE), {twin}: {te} epochs: '
                         f'{"equal" if total == te else "unequal"} training compute')
        else:
            words.append(f'{u}: no MoE config from scratch with the same model to compare with')
        dense = an.dense_reference(study, twin) if twin else None
        if dense:
            pairs.append((u, dense))
    if not words:
        return out + ['Skipped: no upcycled config in the study.', '']
    out += [f'- {w}' for w in words] + ['']
    if pairs:
        out += comparisons(study, pairs, [m for m in (study.primary(), study.pgd()) if m])[0]
    return out


def adversarial_gain(study: an.Study) -> Lines:
    """Each normally trained config vs the adversarially trained config of the same model, on their shared
    seeds (the normal ones run one seed)."""
    out = ['## Adversarial-training gain', '', 'Δ = adversarially trained − normally trained, same model, '
           'same seeds (the normally trained configs run fewer seeds).', '']
    pairs, seeds = [], {}
    for n in study.configs:
        if an.adversarial(study, n):
            continue
        twin = next((c for c in study.configs if an.adversarial(study, c) and an.scratch(study, c)
                     and set(an.differing(study, n, c)) <= {'training'}), None)
        if twin:
            pairs.append((twin, n))
            seeds.setdefault(twin, set()).update(study.runs[n])
        else:
            out.append(f'- {n}: no adversarially trained config of the same model')
    if not pairs:
        return out + ['Skipped: no normally trained config with an adversarially trained twin.', '']
    # on the normal configs' seeds only: the adversarial twin's other seeds have nothing to pair with
    view = an.Study(study.name, study.plan, {**study.runs, **{t: {s: e for s, e in study.runs[t].items() if s in ss}
                                                            for t, ss in seeds.items()}}, study.autoattack)
    return out + comparisons(view, pairs, ['clean'] + [m for m in (study.primary(), study.pgd()) if m])[0]


def _aa_metric(entry: Mapping[str, Any]) -> Optional[str]:
    keys = [k for k in entry.get('robust_acc') or {} if k.startswith('autoattack')]
    return an.by_strength(keys)[0] if keys else None


def _bits_on(entry: Mapping[str, Any], metric: str, lo: int, hi: int) -> np.ndarray:
    (start, stop), vectors = stats.per_sample_vectors(entry)
    if lo < start or hi > stop:
        raise UserError(f"entry {entry['entry_id']}: test points [{lo}, {hi}) are not all among its [{start}, {stop})")
    return vectors[metric][lo - start:hi - start]


def autoattack(study: an.Study) -> Lines:
    """AutoAttack vs the primary attack on the AutoAttack entry's points, per AutoAttack entry; and whether the
    gap differs between the first two (dense and the best MoE), with a bootstrap over the points."""
    primary = study.primary()
    out = ['## AutoAttack vs ' + str(primary), '', f'Gap = {primary} − AutoAttack accuracy on the AutoAttack run\'s '
           f'points, the {primary} bits restricted to them (paired bootstrap 95% interval, exact McNemar p).', '']
    rows, gaps, notes = [], [], []
    for aa in sorted(study.autoattack, key=lambda e: list(study.plan['configs']).index(e['grid']['config'])):
        main, key = study.main_entry(aa['grid']['cell']), _aa_metric(aa)
        if main is None or key is None or primary is None:
            notes.append(f"- {aa['entry_id']}: no main run of cell {aa['grid']['cell']} or no AutoAttack metric")
            continue
        # a follow-up that ran the primary attack itself has it on the weights AutoAttack attacked (a shipped tag
        # in float16, say, when the run's folder was gone): the gap is taken on those, not on the run's
        own = primary in (aa.get('robust_acc') or {})
        try:
            # same data set, overlapping points, consistent bits (and the same primary attack, when it is the own)
            check = compare_entries(main, aa, metric=primary if own else 'clean')
            lo, hi = check['overlap']['index_range']
            x_pri, x_aa = _bits_on(aa if own else main, primary, lo, hi), _bits_on(aa, key, lo, hi)
        except UserError as err:
            notes.append(f"- refused ({aa['entry_id']}): {err}")
            continue
        notes += _other_weights(main, aa, primary, own, lo, hi)
        gap, glo, ghi = stats.paired_bootstrap(x_pri, x_aa, n_boot=an.N_BOOT, seed=an.BOOT_SEED)
        gaps.append((aa['grid']['config'], (lo, hi), x_pri, x_aa))
        chosen = aa['grid'].get('selected_as')
        rows.append([aa['grid']['config'] + (f' ({chosen})' if chosen else ''), key, f'[{lo}, {hi})',
                     f'{100 * x_pri.mean():.2f}', f'{100 * x_aa.mean():.2f}', f'{gap:+.2f} [{glo:+.2f}, {ghi:+.2f}]',
                     stats.format_p(stats.mcnemar_exact(x_pri, x_aa))])
    if not rows:
        return out + ['Skipped: no AutoAttack entry with its main run.', ''] + notes + superseded_autoattack(study)
    out += md_table(('config', 'AutoAttack', 'points', primary, 'AutoAttack', 'gap [95% bootstrap]', 'McNemar p'),
                    rows) + notes + ([''] if notes else []) + superseded_autoattack(study)
    if len(gaps) >= 2 and gaps[0][1] == gaps[1][1]:
        (ca, _, pa, aa_a), (cb, _, pb, aa_b) = gaps[:2]
        d = an.bootstrap_mean(100.0 * ((pa.astype(int) - aa_a) - (pb.astype(int) - aa_b)))
        verdict = 'the gaps differ' if d['lo'] > 0 or d['hi'] < 0 else 'no evidence that the gaps differ'
        out += [f'Difference of gaps, {ca} − {cb}: {d["mean"]:+.2f} points, 95% bootstrap over points '
                f'[{d["lo"]:+.2f}, {d["hi"]:+.2f}]: {verdict} (the weaker attack overstates one model\'s robustness '
                'more than the other\'s only if the interval excludes 0).', '']
    return out


def _other_weights(main: Mapping[str, Any], aa: Mapping[str, Any], primary: str, own: bool, lo: int,
                   hi: int) -> Lines:
    """A note for a follow-up that attacked other weights than its cell's run (another checkpoint sha256): how
    often its clean and primary results agree with the run's on the same points, and whose primary the gap uses."""
    ours, theirs = ((e.get('provenance') or {}).get('checkpoint_sha256') for e in (main, aa))
    if ours == theirs:
        return []
    n = hi - lo
    agree = {m: int((_bits_on(main, m, lo, hi) == _bits_on(aa, m, lo, hi)).sum())
             for m in ['clean'] + ([primary] if own else [])}
    what = '; '.join(aa.get('notes') or []) or f'checkpoint sha256 {str(theirs)[:12]}, the run\'s {str(ours)[:12]}'
    same = ' and '.join(f'{m} on {k} of {n}' for m, k in agree.items())
    main_pri = 100 * _bits_on(main, primary, lo, hi).mean()
    return [f"- {aa['grid']['config']}: AutoAttack attacked other weights than the run of cell {aa['grid']['cell']} "
            f'({what}); on points [{lo}, {hi}) their results agree with the run\'s, point by point, {same}; '
            + (f"the gap uses the follow-up's own {primary} (the run's {primary} there: {main_pri:.2f})." if own else
               f"the gap uses the run's {primary}, on the run's weights.")]


def superseded_autoattack(study: an.Study) -> Lines:
    """For a study superseded by a later one (`superseded_by` in its spec): the AutoAttack follow-ups it planned
    and never ran, closed rather than run; the later study's first seeds (shipped as pretrained tags) that have had
    their AutoAttack on the same points there, and the commands for those that have not. Nothing for a study that
    stands."""
    later = study.plan.get('superseded_by')
    if not later:
        return []
    ran = {x for e in study.autoattack for x in (e['grid'].get('config'), e['grid'].get('selected_as')) if x}
    closed = [c for c in later['autoattack_configs'] if c not in ran]
    # the later study's first seeds that have their AutoAttack entry (of the same seed), and those still without
    theirs = {e['grid'].get('config'): e for e in study.later_autoattack if _aa_metric(e)}
    done = [s for s in later['first_seeds']
            if s['config'] in theirs and theirs[s['config']]['grid'].get('seed') == s['seed']]
    left = [s for s in later['first_seeds'] if s not in done]
    how = 'the pre-registered study' if later['preregistered'] else 'the study'
    out = [f'Superseded: {how} `{later["name"]}` answers this study\'s question with {later["seeds_per_arm"]} '
           'seeds per arm, so '
           + (f'the AutoAttack follow-up{"s" if len(closed) > 1 else ""} of {", ".join(closed)} planned here '
              'is closed, not run (`timm-moe grid` no longer runs it).' if closed else
              'no AutoAttack follow-up is left to run here.')
           + ' The first seed of each of its configs ships as a pretrained tag'
           + (f'; AutoAttack on the same {later["n_examples"]} points, one command each:' if not done else
              f' and has had AutoAttack on the same {later["n_examples"]} points' if not left else
              f'; {len(done)} of them {"has" if len(done) == 1 else "have"} had AutoAttack on the same '
              f'{later["n_examples"]} points')
           + (f', as a follow-up of `{later["name"]}` (its report gives the gaps to its primary attack):'
              if done else ''), '']
    if done:
        out += md_table(('config', 'seed', 'AutoAttack entry', 'points', 'AutoAttack'),
                        [[s['config'], s['seed'], theirs[s['config']]['entry_id'], theirs[s['config']]['n_examples'],
                          f"{theirs[s['config']]['robust_acc'][_aa_metric(theirs[s['config']])]:.1f}"] for s in done])
        out += ['The others, one command each:', ''] if left else []
    if not left:
        return out
    out += ['```'] + [f'timm-moe eval --model {s["model"]}.{s["tag"]} --pretrained --attacks standard --no-per-expert '
                      f'--n-examples {later["n_examples"]} --eps {later["eps"]:g} --seed {s["seed"]} '
                      f'--json runs/{later["name"]}/autoattack/{s["config"]}.json' for s in left]
    return out + ['```', '']


def routing_under_attack(study: an.Study) -> Lines:
    rows, transfer = [], []
    for c in study.configs:
        e = study.first(c)
        if e is None or not an.is_moe(study, c):
            continue
        rua = e.get('routing_under_attack') or {}
        if rua:
            cf = rua.get('changed_fraction')
            rows.append([c, rua.get('attack', '–'), rua.get('attacked_points', '–'),
                         '–' if cf is None else f'{100 * cf:.1f}',
                         ', '.join(f'{v:.3f}' for v in rua.get('load_clean') or []),
                         ', '.join(f'{v:.3f}' for v in rua.get('load_adv') or [])])
        tr = e.get('transfer') or {}
        if tr.get('matrix'):
            m = tr['matrix']
            transfer += [f"**{c}** (crafted with {tr.get('attack', '?')} against row expert, accuracy % of column "
                         f"expert; {tr.get('n_images', '?')} images, attacked points per expert "
                         f"{tr.get('attacked_points', '?')})", '',
                         *md_table(['crafted on \\ evaluated on'] + [f'e{j}' for j in range(len(m[0]))],
                                   [[f'e{i}'] + [f'{v:.1f}' for v in row] for i, row in enumerate(m)])]
    out = ['## Routing under attack and transfer (first seed)', '']
    if not rows and not transfer:
        return out + ['Skipped: no first-seed MoE run stores routing under attack or a transfer matrix.', '']
    out += md_table(('config', 'crafting attack', 'attacked points', 'routing changed (% of attacked)',
                     'load clean', 'load adversarial'), rows) if rows else []
    return out + transfer


def sanity(study: an.Study) -> Lines:
    items = [f"- {e['grid']['cell']} ({e['grid'].get('stage', an.STAGE_MAIN)}): {f}"
             for e in study.entries() + study.autoattack for f in e.get('sanity_flags') or []]
    return ['## Sanity flags', '', *(items or ['None: every run passed the evaluation checks.']), '']


def budget_table(study: an.Study) -> Lines:
    """A study of budgets: the gap MoE − dense at every budget, per MoE arm (what the budget-response plot
    draws, stated exactly); the pre-registered section above decides, this table describes."""
    if not an.of_budgets(study):
        return []
    out = ['## The gap to dense at each budget', '']
    r = an.budget_response(study)
    if r is None:
        return out + ['Skipped: the runs do not span two budgets, each with a dense config and 2 seeds an arm.', '']
    rows = [[arm, f'{n} training images x {ep} epochs, width {w}', f"{w_['n_a']} / {w_['n_b']}",
             f"{w_['diff']:+.2f} [{w_['lo']:+.2f}, {w_['hi']:+.2f}]"]
            for arm, points in r['arms'].items() for (n, ep, w), w_ in points]
    return out + [f"Gap = MoE − dense in {r['metric']} (mean over seeds, Welch 95% interval; exploratory beside the "
                  'pre-registered contrasts).', ''] + md_table(('MoE arm', 'budget', 'seeds (MoE / dense)',
                                                               'gap [95%]'), rows) + ['']


TABLES = (overview, budget_table, upcycling, adversarial_gain, autoattack, routing_under_attack, sanity)


# ------------------------------------------------------------------------------------------ protocol and sizing

RECIPE_KEYS = ('epochs', 'batch_size', 'opt', 'lr', 'momentum', 'weight_decay', 'sched', 'warmup_epochs', 'augment',
               'training', 'eps', 'attack_step', 'attack_steps', 'random_start', 'trades_beta', 'amp', 'ema')
# training-config keys shown elsewhere: the model, its upcycling source, the training method (overview table)
OWN_KEYS = frozenset({'model', 'model_kwargs', 'upcycle_from', 'upcycle_sha256', 'training'})
SETTING_SKIP = ('name', 'label', 'seed', 'batch_size', 'eps', 'norm')


def _value(v: Any) -> str:
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)


def _recipe(e: Mapping[str, Any]) -> Dict[str, Any]:
    cfg = (e.get('training') or {}).get('config') or {}
    return {k: v for k, v in cfg.items() if k not in stats.TRAIN_NOISE_KEYS and k not in OWN_KEYS}


def training_recipe(study: an.Study) -> Lines:
    recipes = {c: _recipe(next(iter(study.runs[c].values()))) for c in study.configs}
    keys = sorted({k for r in recipes.values() for k in r})
    common = {k: recipes[study.configs[0]].get(k) for k in keys
              if all(_value(r.get(k)) == _value(recipes[study.configs[0]].get(k)) for r in recipes.values())}
    shown = [k for k in RECIPE_KEYS if k in common] + [k for k in sorted(common) if k not in RECIPE_KEYS]
    out = ['Training recipe shared by every config: ' + ', '.join(f'{k} {_value(common[k])}' for k in shown) + '.', '']
    rows = [[c, ', '.join(f'{k} {_value(r.get(k))}' for k in keys if k not in common)] for c, r in recipes.items()]
    rows = [r for r in rows if r[1]]
    return out + (['Where configs differ:', ''] + md_table(('config', 'own values'), rows) if rows else [])


def attacks(study: an.Study) -> Lines:
    """Every attack label with its exact stored settings, and which runs ran it."""
    settings: Dict[str, Any] = {}
    ran: Dict[str, List[str]] = {}
    for e in study.entries() + study.autoattack:
        for label, s in sorted((stats.attack_settings(e) or {}).items()):
            settings.setdefault(label, s)
            ran.setdefault(label, []).append(e['grid']['cell'] + (' (AutoAttack)' if e in study.autoattack else ''))
    rows = []
    for label in an.by_strength(settings):
        s = settings[label]
        rest = ', '.join(f'{k} {_value(s[k])}' for k in sorted(s) if k not in SETTING_SKIP)
        runs = len(set(ran[label]))
        where = 'every run' if runs == len(study.entries()) and label in study.metrics() else f'{runs} runs'
        rows.append([label, s.get('norm', '–'), s.get('eps', '–'), where, rest])
    return md_table(('label', 'norm', 'eps', 'runs', 'exact settings (seed = the training seed)'), rows)


def points(study: an.Study) -> Lines:
    main = study.entries()
    ranges = sorted({tuple((e.get('per_sample') or {}).get('index_range') or ()) for e in main})
    pe = sorted({pe.get('n_examples') for e in main for pe in e.get('per_expert') or [] if pe.get('n_examples')})
    aa = sorted({tuple((e.get('per_sample') or {}).get('index_range') or ()) for e in study.autoattack})
    fmt = lambda rs: ', '.join(f'[{r[0]}, {r[1]})' for r in rs if r) or '–'  # noqa: E731
    return [f'- Test points: every run on the test images {fmt(ranges)} of {main[0]["dataset"]} '
            f'({", ".join(str(n) for n in sorted({e["n_examples"] for e in main}))} points); eps {main[0]["eps"]:g} '
            f'({main[0]["threat_model"]}).',
            f'- Per-expert analyses (first seeds): the first {", ".join(map(str, pe)) or "–"} of them.',
            f'- AutoAttack: test images {fmt(aa)}.',
            f'- Seeds: {", ".join(map(str, study.plan.get("seeds") or []))}; per config: '
            + '; '.join(f'{c} {", ".join(map(str, sorted(study.runs[c])))}' for c in study.configs) + '.', '']


def protocol(study: an.Study) -> Lines:
    e = study.entries()[0]
    cfg = (e.get('training') or {}).get('config') or {}
    kw = e['model'].get('effective_kwargs') or e['model'].get('kwargs') or {}
    commits = sorted({str((x.get('provenance') or {}).get('git_commit')) for x in study.entries() + study.autoattack})
    devices = sorted({str((x.get('provenance') or {}).get('device')) for x in study.entries() + study.autoattack})
    out = ['## Protocol', '',
           f'- Data set: {cfg.get("dataset", e["dataset"])}, '
           f'{cfg.get("train_limit") or study.plan.get("train_images") or "all"} training images.',
           f'- Model: {e["model"].get("arch")} at width {kw.get("width", "default")} (stem {kw.get("stem", "default")}); '
           'per config in the table of all configurations.',
           f'- Code: commit{"s" if len(commits) > 1 else ""} {", ".join(commits)}; device{"s" if len(devices) > 1 else ""} '
           f'{", ".join(devices)}.', *points(study)]
    out += training_recipe(study) + ['Attacks:', ''] + attacks(study)
    out += ['Statistics: per config, mean, sd and 95% t-interval over seeds (one run: Wilson 95% interval over points). '
            'A vs B: paired by seed (compare_entries per seed pair, which refuses different attack settings and flags '
            'different point sets), the 95% t-interval over the seeds\' differences, and pooled over seeds the '
            f'per-point paired bootstrap 95% interval ({an.N_BOOT} resamples, seed {an.BOOT_SEED}) and the exact '
            'McNemar p. The pooled columns resample test points only: they describe these trained weights, not '
            'the configuration (a new seed trains other weights), so they decide no verdict.', '',
            f'Verdict rule: {an.VERDICT_RULE}', '']
    return out + sizing(study)


def _passes(e: Mapping[str, Any]) -> int:
    """Forward-backward passes per training image: the attack's steps plus the update (normal training: 1)."""
    cfg = (e.get('training') or {}).get('config') or {}
    if (e.get('training') or {}).get('method') == 'normal':
        return 1
    return int(cfg.get('attack_steps') or 0) + 1


def sizing(study: an.Study) -> Lines:
    rows, total = [], {'train': 0.0, 'evaluate': 0.0, 'audit': 0.0}
    for c in study.configs:
        runs = [e for _, e in sorted(study.runs[c].items())]
        timed = [e['timing'] for e in runs if e.get('timing')]
        mean = {k: sum(t.get(k, 0.0) for t in timed) / len(timed) if timed else None for k in total}
        e = runs[0]
        cfg = (e.get('training') or {}).get('config') or {}
        images = cfg.get('train_limit') or study.plan.get('train_images')
        epochs = (e.get('training') or {}).get('epochs') or 0
        thr = ('–' if not images or not mean['train'] else
               f"{images * epochs * _passes(e) / mean['train']:.0f}")
        rows.append([c, len(timed)] + ['–' if mean[k] is None else f'{mean[k]:.1f}' for k in total]
                    + [f'{_passes(e)}', thr])
    for e in study.entries() + study.autoattack:
        for k in total:
            total[k] += (e.get('timing') or {}).get(k, 0.0)
    all_s = sum(total.values())
    return ['### Sizing', '', 'Wall seconds per run (mean over the runs that recorded timing); throughput = training '
            'images × epochs × passes per image (attack steps + 1) / training seconds.', '',
            *md_table(('config', 'timed runs', 'train s', 'evaluate s', 'audit s', 'passes per image',
                       'images·passes per s'), rows),
            f"All {len(study.entries())} runs and {len(study.autoattack)} AutoAttack follow-ups: train {total['train']:.0f} s, "
            f"evaluate {total['evaluate']:.0f} s, audit {total['audit']:.0f} s; {all_s:.0f} s in all "
            f'({all_s / 3600:.2f} h).', ''] + pieces(study)


def _when(e: Mapping[str, Any]) -> Optional[datetime]:
    date = (e.get('provenance') or {}).get('date')
    return datetime.fromisoformat(date.replace('Z', '+00:00')) if date else None


def pieces(study: an.Study) -> Lines:
    """The study's pieces: its runs grouped by the code commit and device that made them (each piece of a study
    that outlives its machines runs from the commit of its day), with the wall time from the first run's start
    (its entry's time less its recorded seconds) to the last run's entry. Runs of a piece overlap (`--procs`), so
    its wall time is less than the sum of its runs' seconds."""
    groups: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    for e in study.entries() + study.autoattack:
        if _when(e) is None:
            return []  # entries from before provenance held a date: no pieces to show
        prov = e['provenance']
        groups.setdefault((str(prov.get('git_commit'))[:7], str(prov.get('device'))), []).append(e)
    rows = []
    for (commit, device), runs in sorted(groups.items(), key=lambda kv: min(_when(e) for e in kv[1])):
        start = min(_when(e) - timedelta(seconds=sum((e.get('timing') or {}).values())) for e in runs)
        end = max(_when(e) for e in runs)
        rows.append([commit, device, len(runs), f'{start:%Y-%m-%d %H:%M}', f'{end:%Y-%m-%d %H:%M}',
                     f'{(end - start).total_seconds() / 3600:.2f}'])
    return ['Pieces (runs grouped by the commit and device that made them; wall time from the first run\'s start to '
            'the last run\'s entry, UTC):', '',
            *md_table(('commit', 'device', 'runs', 'first run started', 'last run finished', 'wall h'), rows)]


# ------------------------------------------------------------------------------------------ pre-registration

def _paper_contrast(study: an.Study, paper: Optional[Mapping[str, Any]]) -> str:
    """The paper's effect for a pre-registered contrast: its named row minus the same table's dense baseline."""
    delta = an.paper_delta(study, paper)
    return delta if isinstance(delta, str) else an._fmt_delta(delta)


def scope(study: an.Study) -> Lines:
    """What the verdicts are about: this study's recipe, which is not the paper's, so a verdict tests the claim
    in this setting and the paper's effect beside it is a reference, not the thing tested."""
    e = study.entries()[0]
    cfg = (e.get('training') or {}).get('config') or {}
    kw = e['model'].get('effective_kwargs') or e['model'].get('kwargs') or {}
    images = cfg.get('train_limit') or study.plan.get('train_images') or 'all'
    what = (f"{cfg.get('dataset', e['dataset'])}, {images} training images, {e['model'].get('arch')} at width "
            f"{kw.get('width', 'default')}, {cfg.get('epochs')} epochs")
    p = study.plan.get('preregistration') or {}
    arms = [c for c in [p.get('baseline')] + [a for name, o in (p.get('primary') or {}).items()
                                              for a in [name] + list((o or {}).get('base') or [])] if study.runs.get(c)]
    budgets = sorted({an.budget(study, c) for c in arms}, key=lambda b: (b[0] * b[1], str(b[2])))
    if len(budgets) > 1:  # a study of budgets: each verdict is about the budgets its arms trained at
        what = (f"{e['model'].get('arch')} at the budgets " + '; '.join(
            f'{n} training images x {ep} epochs at width {w}' for n, ep, w in budgets))
    return [f"Scope: the verdicts are about this study's recipe: {what} of {cfg.get('training')} training with "
            f"{cfg.get('attack_steps')} attack steps at eps {cfg.get('eps')}. The paper's effects beside them come "
            f"from {an.PAPER_SOURCE}, another setting: they are a reference, not what the verdicts test.", '']


def preregistration(study: an.Study) -> Lines:
    """The pre-registration and each primary verdict with its interval, detectable difference and margin; or,
    for a study without one, the statement that everything in it is exploratory."""
    r = an.preregistered(study)
    if r is None:
        return ['## Pre-registration', '', 'None: this study did not name its primary contrasts, margin and analysis '
                'before it ran, so every comparison in this report is exploratory.', '']
    p = r['prereg']
    contrasts = ', '.join(c.get('label') or f"{c['config']} − {c['baseline']}" for c in r['contrasts'])
    out = ['## Pre-registered analysis', '',
           f"Pre-registered in the spec before the runs: primary contrasts {contrasts}; "
           f"metric {p['metric']} on the test points every run was attacked on; equivalence margin ±{p['margin']:g} "
           f"points; alpha {p['alpha']:g} (family-wise, Holm); power {p['power']:.0%}; analysis {p['analysis']} t "
           'over seeds' + (f"; sizing from a seed sd of {p['seed_sd']:g} points" if p.get('seed_sd') else '') + '.', '',
           'Rule: ' + an.PREREG_RULE.format(**p), '', VERDICTS_START, '']
    rows = []
    for c in r['contrasts']:
        if 'lo' not in c:
            rows.append([c.get('label') or f"{c['config']} − {c['baseline']}", f"{c['n_a']} / {c['n_b']}", '–', '–',
                         '–', '–', '–',
                         f"±{p['margin']:g}", _paper_contrast(study, c.get('paper')), c['verdict']])
            continue
        boot = c.get('boot')
        rows.append([c.get('label') or f"{c['config']} − {c['baseline']}", f"{c['n_a']} / {c['n_b']}",
                     f"{c['diff']:+.2f} [{c['lo']:+.2f}, {c['hi']:+.2f}] ({1 - c['level']:.1%})",
                     '–' if boot is None else f'[{boot[1]:+.2f}, {boot[2]:+.2f}]',
                     stats.format_p(c['p']), stats.format_p(c['p_holm']), f"{c['detectable']:.2f}", f"±{p['margin']:g}",
                     _paper_contrast(study, c.get('paper')), c['verdict']])
    out += md_table(('contrast', 'seeds (A / B)', f"Δ {p['metric']} [t-interval at Holm's level]",
                     'hierarchical bootstrap 95% (seeds, points)', 'p', 'p (Holm)', 'detectable Δ', 'margin',
                     "the paper's effect (PGD-20 / APGD-20)", 'verdict'), rows)
    sizing = r['sizing']
    words = [f'{n} seeds per arm at the spec\'s seed sd {sd:g}' for sd, n in [sizing['spec']]] if 'spec' in sizing else []
    if 'measured' in sizing:
        sd, n = sizing['measured']
        words.append(f'{n} at the largest sd measured here ({sd:.2f})')
    ran = sorted({len(study.runs.get(c, {})) for c in [p['baseline']] + list(p['primary'])
                  + [b for o in p['primary'].values() for b in o.get('base') or []]})
    if words:
        out += [f"Sizing: for a detectable difference of at most ±{p['margin']:g} points ({p['power']:.0%} power, "
                f"two-sided alpha {sizing['level']:g}, Holm's strictest level for {len(r['contrasts'])} contrast"
                f"{'s' if len(r['contrasts']) > 1 else ''}; two arms), {'; '.join(words)}; this study ran "
                f"{'/'.join(map(str, ran))} seeds per arm.", '']
    out += scope(study)
    arms = [p['baseline']] + list(p['primary']) + [b for o in p['primary'].values() for b in o.get('base') or []]
    planned = {c: len(study.plan['configs'][c].get('seeds') or study.plan.get('seeds') or []) for c in arms}
    short = [f"{c} {len(study.runs.get(c, {}))} of {planned[c]}" for c in arms
             if len(study.runs.get(c, {})) < planned[c]]
    if short:
        # the rule's error rates hold for one test at the planned seeds; a look before then is not that test
        out += [f"Interim: not every pre-registered seed has run ({'; '.join(short)} seeds), so these verdicts "
                'are a look at the data so far. The rule decides once every arm has its planned seeds; repeated '
                'looks raise the chance of a false "holds" or "worse".', '']
    return out + [VERDICTS_END, '', 'Everything below this section is exploratory.', '']

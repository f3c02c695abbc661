"""The study report's sections: for each, the data computed here and its text in a template
(`templates/*.md.j2`, filled by `document.render`): the claims (which configurations each compares, the paired
tests, the answer in words), the other tables (every config at a glance, upcycling at equal compute, the
adversarial-training gain, AutoAttack against the primary attack on the same points, routing under attack,
transfer, sanity flags), and the protocol and sizing. Each section is a list of markdown lines.

A claim's pairs are found by what the configurations are (`analysis.traits`), so a study without some of
them still renders: a comparison whose configurations are absent is skipped with the reason in the text.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from bench.core.errors import UserError
from bench.core import stats
from bench.results.compare import compare_entries
from bench.results.study import analysis as an
from bench.results.study.claims import fmt_delta
from bench.results.study.document import render

Lines = List[str]
Pairs = Tuple[List[Tuple[str, str]], List[str], Dict[Tuple[str, str], str]]  # pairs, left out and why, labels
Results = Dict[Tuple[str, str, str], Any]  # (A, B, metric) -> compare_configs

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
                labels: Optional[Mapping[Tuple[str, str], str]] = None) -> Tuple[Dict[str, Any], Results]:
    """The comparison table of `pairs` (A claimed better) on each metric, with every flag and refusal below it
    (`_comparisons.md.j2`), and the results."""
    rows, notes, results = [], [], {}
    for a, b in pairs:
        for m in metrics:
            r = compare(study, a, b, m)
            results[(a, b, m)] = r
            rows.append(comparison_row(study, a, b, m, r, (labels or {}).get((a, b), '')))
            notes += [f'- flag ({a} vs {b}, {m}): {f}' for f in r['flags']]
            notes += [f'- refused ({a} vs {b}, {m}): {f}' for f in r['refused']]
    return dict(header=COMPARISON_HEADER, rows=rows, notes=notes), results


def answer(results: Results, metric: Optional[str], what: str) -> Dict[str, Any]:
    """The answer to a claim on the primary metric (`_macros.answer`): each comparison's verdict, the numbers
    behind it and the points; `what` says why there is none."""
    parts = []
    for (a, b, m), r in results.items():
        if m != metric:
            continue
        s = r['seed_diff']
        parts.append(dict(a=a, b=b, verdict=r['verdict'], mean='–' if s is None else f"{s['mean']:+.2f} points",
                          seeds=len(r['seeds']), interval=an.fmt_interval(s),
                          points=an.points_note((r['pooled'] or {}).get('p'))))
    held = sum(p['verdict'] == 'holds' for p in parts)
    return dict(metric=metric, parts=parts, held=held, what=what)


def _metrics(study: an.Study) -> List[str]:
    return [m for m in (study.primary(), study.pgd()) if m]


def paper(study: an.Study, claim: int) -> Dict[str, str]:
    """What the paper's own table says on a claim (its index), beside ours (`_paper.md.j2`)."""
    effects, why = an.paper_effects(study)
    if effects is None:
        return dict(why=why)
    return dict(why='', source=an.claims_of(study).source, **effects[claim])


# ------------------------------------------------------------------------------------------ claims by pairs

def equal_flops_pairs(study: an.Study, test: Optional[Mapping[str, Any]] = None) -> Pairs:
    """(pairs, what is left out and why, labels): every adversarially trained MoE config at the dense model's
    FLOPs vs the dense config (`pairs: equal_flops` in a claims file)."""
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
    return pairs, skipped, budget_labels(study, pairs)


def budget_labels(study: an.Study, pairs: Sequence[Tuple[str, str]]) -> Dict[Tuple[str, str], str]:
    """In a budget study, each pair labelled with its budget ('convmoe_b2 vs dense_b2 (fashion-mnist, 60000
    training images x 2 epochs, width 8)'); no labels elsewhere, so other studies' tables stay what they were."""
    if not an.of_budgets(study):
        return {}
    return {(a, b): f'{a} vs {b} ({an.budget(study, a).label})' for a, b in pairs}


def budgets_unpaired(study: an.Study, pairs: Sequence[Tuple[str, str]]) -> List[str]:
    """In a budget study, each budget that no pair compares at yet, and the configs of it that have no run
    ('fashion-mnist, ... width 8: no pair yet (dense_b2, convmoe_b2 not run)')."""
    if not an.of_budgets(study):
        return []
    paired = {an.budget(study, a) for a, _ in pairs}
    out = []
    for b, configs in an.budgets(study).items():
        if b not in paired:
            idle = [c for c in configs if not study.runs.get(c)]
            out.append(f'{b.label}: no pair yet' + (f' ({", ".join(idle)} not run)' if idle else ''))
    return out


def _oriented(pairs: Sequence[Tuple[str, str]], better) -> List[Tuple[str, str]]:
    out = []
    for a, b in pairs:
        if better(a, b):
            out.append((a, b))
        elif better(b, a):
            out.append((b, a))
    return out


def _better(study: an.Study, field: str, better: str) -> Callable[[str, str], bool]:
    """Whether config a is the claimed-better side against b: `better` is the field's value it has (and b has
    not), or 'smaller' for the smaller value."""
    value = lambda c: an.traits(study, c).get(field)  # noqa: E731
    if better == 'smaller':
        return lambda a, b: (value(a) or 0) < (value(b) or 0)
    return lambda a, b: value(a) == better and value(b) != better


def _flops_words(study: an.Study, a: str, b: str) -> str:
    """'equal FLOPs: FLOPs 1.00 vs 1.00' or 'FLOPs differ: ...': whether a pair answers a claim at equal cost."""
    fa, fb = an.flops_ratio(study, a), an.flops_ratio(study, b)
    same = fa is not None and fb is not None and abs(fa - fb) <= an.FLOPS_TOL
    cost = '' if fa is None or fb is None else f'FLOPs {fa:.2f} vs {fb:.2f}'
    return f'{"equal FLOPs" if same else "FLOPs differ"}: {cost}'


def differing_pairs(study: an.Study, test: Mapping[str, Any]) -> Pairs:
    """Adversarially trained MoE configs that differ in the test's `field` and otherwise at most in its `also`
    fields, the `better` one as A, labelled by the test's `label` (`pairs: differ_in` in a claims file)."""
    field = test['field']
    value = lambda c: an.traits(study, c).get(field)  # noqa: E731
    pairs = _oriented(an.pairs_differing_in(study, (field, *test['also']), field),
                      _better(study, field, test['better']))
    labels = {(a, b): test['label'].format(a=a, b=b, va=value(a), vb=value(b), flops=_flops_words(study, a, b))
              for a, b in pairs}
    return pairs, [], labels


PAIR_FINDERS = {'equal_flops': equal_flops_pairs, 'differ_in': differing_pairs}


def claim_pairs(study: an.Study, test: Mapping[str, Any]) -> Pairs:
    return PAIR_FINDERS[test['kind']](study, test)


def claim_equal_flops(study: an.Study, n: int, claim: Mapping[str, Any]) -> Lines:
    pairs, skipped, labels = equal_flops_pairs(study)
    table, results = comparisons(study, pairs, _metrics(study), labels) if pairs else (None, {})
    return render('claim_equal_flops.md.j2', n=n, title=claim['title'], paper=paper(study, n - 1),
                  tol=an.FLOPS_TOL, primary=study.primary(), pgd=study.pgd(), comparisons=table, skipped=skipped,
                  answer=answer(results, study.primary(), 'no MoE config at equal FLOPs with a dense twin'))


def claim_differing(study: an.Study, n: int, claim: Mapping[str, Any]) -> Lines:
    """A claim answered by pairs that differ in one field: how pairs are formed (the test's `how`), their table
    (or the test's `none` when there are none) and the answer, the test's `after` appended."""
    pairs, _, labels = differing_pairs(study, claim['test'])
    table, results = comparisons(study, pairs, _metrics(study), labels) if pairs else (None, {})
    return render('claim_differing.md.j2', n=n, title=claim['title'], paper=paper(study, n - 1), test=claim['test'],
                  comparisons=table, answer=answer(results, study.primary(), ''))


# ------------------------------------------------------------------------------------------ routing collapse

def _mean_sd(values: Sequence[float]) -> str:
    s = an.stats.seed_summary(values)
    return f"{s['mean']:.3f}" if s['std'] is None else f"{s['mean']:.3f} ± {s['std']:.3f}"


def collapse_of(study: an.Study, config: str) -> Dict[int, float]:
    return {s: e['routing']['collapse'] for s, e in sorted(study.runs[config].items())
            if (e.get('routing') or {}).get('collapse') is not None}


def routing_rows(study: an.Study, field: str) -> List[List[str]]:
    rows = []
    for c in study.configs:
        if not (an.is_moe(study, c) and an.adversarial(study, c)):
            continue
        loads = [e['routing']['load'] for _, e in sorted(study.runs[c].items()) if (e.get('routing') or {}).get('load')]
        coll = collapse_of(study, c)
        load = ', '.join(_mean_sd([l[i] for l in loads]) for i in range(len(loads[0]))) if loads else '–'
        rows.append([c, an.traits(study, c).get(field), len(loads),
                     _mean_sd(list(coll.values())) if coll else '–', load])
    return rows


def subpath_comparison(entry: Mapping[str, Any], pe: Mapping[str, Any], metric: str) -> Dict[str, Any]:
    """compare_entries of one expert's subpath against the gated model on the subpath's points (its first n):
    the subpath is given the gated entry's data set and attack settings, which it ran with."""
    sub = {k: entry.get(k) for k in ('dataset', 'threat_model', 'eps', 'eval_settings', 'model', 'source')}
    sub.update(entry_id=f"{entry['entry_id']}/expert{pe['expert']}", per_sample=pe['per_sample'],
               clean_acc=pe['clean_acc'], robust_acc=pe['robust_acc'], n_examples=pe.get('n_examples'))
    return compare_entries(sub, entry, metric=metric, n_boot=an.N_BOOT, seed=an.BOOT_SEED)


def collapse_results(study: an.Study, test: Mapping[str, Any]) -> List[Tuple[str, str, Dict[str, Any]]]:
    """(A, B, seed-paired collapse difference) of each config whose test field (`collapse`) has the test's value
    vs its twins that differ only in that field (and its `also` fields)."""
    field, value = test['collapse'], test['value']
    pairs = _oriented(an.pairs_differing_in(study, (field, *test['also']), field), _better(study, field, value))
    return [(a, b, an.seed_paired(collapse_of(study, a), collapse_of(study, b))) for a, b in pairs]


def claim_collapse(study: an.Study, n: int, claim: Mapping[str, Any]) -> Lines:
    """The routing collapse of the test's config against its twins, and the expert subpaths against the gated
    model (`collapse: FIELD` in a claims file)."""
    test = claim['test']
    value = lambda c: an.traits(study, c).get(test['collapse'])  # noqa: E731
    results = collapse_results(study, test)
    rows = [[f'{a} ({value(a)}) vs {b} ({value(b)})', ', '.join(map(str, r['seeds'])),
             an.fmt_interval(r['seed_diff'], digits=3), r['verdict']] for a, b, r in results]
    return render('claim_collapse.md.j2', n=n, title=claim['title'], paper=paper(study, n - 1),
                  field=test['collapse'].replace('_', ' '), value=test['value'],
                  routing=routing_rows(study, test['collapse']), collapse=rows,
                  verdicts=[f"{a} vs {b}: {r['verdict']}" for a, b, r in results],
                  subpaths=subpaths(study), alpha=an.ALPHA)


def subpaths(study: an.Study) -> Dict[str, Any]:
    """dict(rows, flags, counts) (`_subpaths.md.j2`): every expert subpath of the first seeds against its gated
    model; counts per training ('adversarial', 'normal'): comparisons, more robust at p < ALPHA (named), less
    robust at p < ALPHA."""
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
    return dict(rows=rows, flags=flags, counts=counts)


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
    claims = an.claims_of(study)
    effects, why = an.paper_effects(study)
    rows, mdds, verdicts, subpaths_claim = [], [], [], None
    for n, claim in enumerate(claims.claims, 1):
        test, statement = claim['test'], f"{n}. {claim['claim']}"
        effect = '–' if effects is None else effects[n - 1]['effect']
        if test['kind'] == 'collapse':
            subpaths_claim = n
            for i, (a, b, r) in enumerate(collapse_results(study, test)):
                mdd = an.detectable(r['seed_diff'])
                rows.append([statement if i == 0 else '', effect if effects and i == 0 else '',
                             f'collapse, {a} − {b}', an.fmt_interval(r['seed_diff'], digits=3),
                             '–' if mdd is None else f'{mdd:.3f}', r['verdict'].split(' (')[0]])
            continue
        pairs, _, labels = claim_pairs(study, test)
        if metric is None:
            pairs = []
        mine = []
        for a, b in pairs:
            r = compare(study, a, b, metric)
            mdd = r.get('detectable')
            if mdd is not None:
                mdds.append(mdd)
            verdicts.append(r['verdict'])
            mine.append([labels.get((a, b), f'{a} vs {b}'), an.fmt_interval(r['seed_diff']),
                         '–' if mdd is None else f'{mdd:.2f}', r['verdict'].split(' (')[0]])
        # a budget study's pairs are one per budget: a budget yet to run says so in its own row
        unpaired = budgets_unpaired(study, pairs) if test['kind'] == 'equal_flops' else []
        mine += [[what, '–', '–', '–'] for what in unpaired]
        rows += [[statement if i == 0 else '', effect if i == 0 else '', *row]
                 for i, row in enumerate(mine or [['no pair in this study', '–', '–', '–']])]
    return render('summary.md.j2', start=SUMMARY_START, end=SUMMARY_END, metric=metric, power=an.POWER,
                  alpha=an.ALPHA, source=claims.source, why=why, metric_names=claims.metric_names(), rows=rows,
                  n_seeds=sorted({len(study.runs[c]) for c in study.configs if an.adversarial(study, c)}),
                  preregistered=bool(study.plan.get('preregistration')), verdicts=verdicts, mdds=mdds,
                  held=sum(v == 'holds' for v in verdicts), reversed=sum(v == 'reversed' for v in verdicts),
                  inconclusive=sum(v.startswith(an.INCONCLUSIVE) for v in verdicts),
                  counts=subpaths(study)['counts'], subpaths_claim=subpaths_claim)


# how each kind of test (`claims.TESTS`) draws its claim's section
CLAIM_SECTIONS = {'equal_flops': claim_equal_flops, 'differ_in': claim_differing, 'collapse': claim_collapse}


def claim_sections(study: an.Study) -> Lines:
    """Every claim of the study's claims file, a section each."""
    return [line for n, claim in enumerate(an.claims_of(study).claims, 1)
            for line in CLAIM_SECTIONS[claim['test']['kind']](study, n, claim)]


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
    worst = 'shown' if 'worst_case' in every else 'mixed' if study.mixed_worst_case() else ''
    return render('overview.md.j2', header=header, rows=rows, worst=worst, first=first, primary=study.primary())


def upcycling(study: an.Study) -> Lines:
    """Each upcycled config vs the same MoE from scratch (equal total epochs when source + fine-tune epochs
    equal the scratch run's) and vs the dense reference."""
    pairs, upcycled = [], []
    for u in study.configs:
        source = study.plan['configs'][u].get('upcycle_from')
        if not source:
            continue
        tu = an.traits(study, u)
        twin = next((c for c in study.configs if c != u and an.scratch(study, c)
                     and set(an.differing(study, u, c)) <= {'upcycled', 'epochs'}), None)
        source_epochs = an.traits(study, source)['epochs'] if source in study.runs else 0
        upcycled.append(dict(config=u, twin=twin, source=source, source_epochs=source_epochs, epochs=tu['epochs'],
                             total=(tu['epochs'] or 0) + source_epochs,
                             twin_epochs=an.traits(study, twin)['epochs'] if twin is not None else None))
        if twin is not None:
            pairs.append((u, twin))
        dense = an.dense_reference(study, twin) if twin else None
        if dense:
            pairs.append((u, dense))
    table = comparisons(study, pairs, _metrics(study))[0] if pairs else None
    return render('upcycling.md.j2', upcycled=upcycled, comparisons=table)


def adversarial_gain(study: an.Study) -> Lines:
    """Each normally trained config vs the adversarially trained config of the same model, on their shared
    seeds (the normal ones run one seed)."""
    pairs, seeds, alone = [], {}, []
    for n in study.configs:
        if an.adversarial(study, n):
            continue
        twin = next((c for c in study.configs if an.adversarial(study, c) and an.scratch(study, c)
                     and set(an.differing(study, n, c)) <= {'training'}), None)
        if twin:
            pairs.append((twin, n))
            seeds.setdefault(twin, set()).update(study.runs[n])
        else:
            alone.append(n)
    table = None
    if pairs:
        # on the normal configs' seeds only: the adversarial twin's other seeds have nothing to pair with
        view = an.Study(study.name, study.plan, {**study.runs, **{t: {s: e for s, e in study.runs[t].items() if s in ss}
                                                                for t, ss in seeds.items()}}, study.autoattack)
        table = comparisons(view, pairs, ['clean'] + _metrics(study))[0]
    return render('adversarial_gain.md.j2', alone=alone, comparisons=table)


def _aa_metric(entry: Mapping[str, Any]) -> Optional[str]:
    keys = [k for k in entry.get('robust_acc') or {} if k.startswith('autoattack')]
    return an.by_strength(keys)[0] if keys else None


def _bits_on(entry: Mapping[str, Any], metric: str, lo: int, hi: int) -> np.ndarray:
    (start, stop), vectors = stats.per_sample_vectors(entry)
    if lo < start or hi > stop:
        raise UserError(f"entry {entry['entry_id']}: test points [{lo}, {hi}) are not all among its [{start}, {stop})")
    return vectors[metric][lo - start:hi - start]


def autoattack(study: an.Study) -> Lines:
    """AutoAttack vs the primary attack on the AutoAttack entry's points, per AutoAttack entry; and whether each
    later config's gap differs from the first's (dense, then the MoEs), with a bootstrap over the points."""
    primary = study.primary()
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
    # each later config's gap against the first's (the baseline, dense, comes first in the spec) on the same points
    differences = []
    if gaps:
        ca, points, pa, aa_a = gaps[0]
        for cb, other, pb, aa_b in gaps[1:]:
            if other == points:
                differences.append(dict(a=ca, b=cb, **an.bootstrap_mean(
                    100.0 * ((pa.astype(int) - aa_a) - (pb.astype(int) - aa_b)))))
    return render('autoattack.md.j2', primary=primary, rows=rows, notes=notes, differences=differences,
                  **superseded(study))


def superseded(study: an.Study) -> Dict[str, Any]:
    """For a study superseded by a later one (`superseded_by` in its spec): the later study, the AutoAttack
    follow-ups this one planned and never ran, closed rather than run, the later study's first seeds (shipped as
    pretrained tags) that have had their AutoAttack on the same points there (`done`: a table row each) and those
    that have not (`left`: a command each) (`_superseded.md.j2`)."""
    later = study.plan.get('superseded_by')
    if not later:
        return dict(later=None, closed=[], done=[], left=[])
    ran = {x for e in study.autoattack for x in (e['grid'].get('config'), e['grid'].get('selected_as')) if x}
    # the later study's first seeds that have their AutoAttack entry (of the same seed), and those still without
    theirs = {e['grid'].get('config'): e for e in study.later_autoattack if _aa_metric(e)}
    done = [s for s in later['first_seeds']
            if s['config'] in theirs and theirs[s['config']]['grid'].get('seed') == s['seed']]
    rows = [[s['config'], s['seed'], theirs[s['config']]['entry_id'], theirs[s['config']]['n_examples'],
             f"{theirs[s['config']]['robust_acc'][_aa_metric(theirs[s['config']])]:.1f}"] for s in done]
    return dict(later=later, closed=[c for c in later.get('autoattack_configs') or [] if c not in ran],
                done=rows, left=[s for s in later['first_seeds'] if s not in done])


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
    """The closed follow-ups of a superseded study and the commands that give the later study's first seeds
    (shipped as pretrained tags) their AutoAttack on the same points; nothing for a study that stands."""
    return render('_superseded.md.j2', **superseded(study))


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
            transfer.append(dict(config=c, attack=tr.get('attack', '?'), n_images=tr.get('n_images', '?'),
                                 attacked_points=tr.get('attacked_points', '?'),
                                 header=['crafted on \\ evaluated on'] + [f'e{j}' for j in range(len(m[0]))],
                                 rows=[[f'e{i}'] + [f'{v:.1f}' for v in row] for i, row in enumerate(m)]))
    return render('routing_under_attack.md.j2', rows=rows, transfer=transfer)


def sanity(study: an.Study) -> Lines:
    return render('sanity.md.j2', flags=[f"{e['grid']['cell']} ({e['grid'].get('stage', an.STAGE_MAIN)}): {f}"
                                         for e in study.entries() + study.autoattack for f in e.get('sanity_flags') or []])


def budget_table(study: an.Study) -> Lines:
    """A study of budgets: the gap MoE − dense at every budget, per MoE arm (what the budget-response plot
    draws, stated exactly); the pre-registered section above decides, this table describes."""
    if not an.of_budgets(study):
        return []
    r = an.budget_response(study)
    rows = None if r is None else [
        [arm, b.label, f"{w['n_a']} / {w['n_b']}", f"{w['diff']:+.2f} [{w['lo']:+.2f}, {w['hi']:+.2f}]"]
        for arm, points in r['arms'].items() for b, w in points]
    return render('budget_table.md.j2', rows=rows, metric=None if r is None else r['metric'])


def layer_collapse(load: Sequence[float]) -> float:
    """1 − H(load)/log E of one layer's load (`timm_moe` computes a run's collapse so, per layer, and stores
    their mean; an entry keeps each layer's load only)."""
    from scipy.stats import entropy

    return 1.0 - float(entropy(load, base=len(load))) if len(load) > 1 else 0.0


def _first_seed(study: an.Study, config: str) -> Any:
    return (study.plan['configs'][config].get('seeds') or ['?'])[0]


def _trend(values: Sequence[float]) -> str:
    rising = all(x < y for x, y in zip(values, values[1:]))
    falling = all(x > y for x, y in zip(values, values[1:]))
    return 'more' if rising else 'less' if falling else 'no trend'


def usage_answer(metric: Optional[str], found: Sequence[Dict[str, Any]], missing: Sequence[str]) -> List[str]:
    """Do the experts specialise more as training grows: one sentence per MoE arm, the gated model's lead over
    its average expert subpath and the mean per-layer collapse at each budget, smallest first; or, while a
    budget lacks its first-seed run, the sentence that says so and what there is so far."""
    def numbers(rows: Sequence[Dict[str, Any]]) -> str:
        return '; '.join(f"{u['budget'].short} ({u['config']}): lead {u['lead']:+.2f} points, "
                         f"collapse {u['collapse']:.3f}" for u in rows)

    if missing or not found:
        return [f"Not yet answerable: {'; '.join(missing) or 'no MoE config'} "
                f"lack{'s' if len(missing) == 1 else ''} a first-seed run with per-expert analyses"
                + (f"; so far, on {metric}: {numbers(found)}." if found else '.')]
    arms: Dict[str, List[Dict[str, Any]]] = {}
    for u in found:
        arms.setdefault(u['arm'], []).append(u)
    out = []
    for arm, rows in arms.items():
        if len({u['budget'] for u in rows}) < 2:
            out.append(f'{arm}: one budget only ({numbers(rows)}), so no trend to read.')
            continue
        trend = _trend([u['lead'] for u in rows])
        words = {'more': 'yes, the experts specialise more as training grows',
                 'less': 'no, the experts specialise less as training grows',
                 'no trend': 'no steady trend, so no sign that the experts specialise more as training grows'}[trend]
        out.append(f"{arm}, from the smallest budget to the largest, on {metric}: {numbers(rows)}: {words} "
                   f"(one run per budget, its first seed: no interval over seeds).")
    return out


def expert_usage(study: an.Study) -> Lines:
    """A budget study's MoE configs, budget by budget (their first seed, which ran the per-expert analyses):
    each MoE layer's load and collapse, each expert's subpath accuracy beside the gated model's on the same
    points, and whether the experts specialise more as training grows (`usage_answer`)."""
    if not an.of_budgets(study):
        return []
    metric = study.primary()
    loads, subs, found, missing, flags = [], [], [], [], []
    for b, configs in an.budgets(study).items():
        for c in [c for c in configs if an.planned_moe(study, c)]:
            e = study.first(c) if study.runs.get(c) else None
            routing = (e or {}).get('routing') or {}
            experts = sorted([pe for pe in (e or {}).get('per_expert') or [] if pe.get('per_sample')],
                             key=lambda pe: pe['expert'])
            if e is None or not routing.get('layers') or not experts or metric is None:
                missing.append(f'{b.short} ({c} seed {_first_seed(study, c)})')
                continue
            seed = e['grid'].get('seed')
            for layer, load in routing['layers'].items():
                loads.append([b.label, c, seed, layer, ', '.join(f'{v:.3f}' for v in load),
                              f'{layer_collapse(load):.3f}'])
            loads.append([b.label, c, seed, 'mean of the layers', ', '.join(f'{v:.3f}' for v in routing['load']),
                          '–' if routing.get('collapse') is None else f"{routing['collapse']:.3f}"])
            for m in ('clean', metric):
                try:
                    rs = [subpath_comparison(e, pe, m) for pe in experts]
                except UserError as err:  # as in `subpaths`: a refused comparison is named, not drawn
                    flags.append(f'- refused ({c} seed {seed}, {m}): {err}')
                    if m == metric:
                        missing.append(f'{b.short} ({c} seed {seed}, its subpaths refused)')
                    continue
                gated, mean = rs[0]['b']['acc'], float(np.mean([r['a']['acc'] for r in rs]))
                subs.append([b.label, c, seed, m, rs[0]['n'], f'{gated:.2f}',
                             ', '.join(f"{r['a']['acc']:.2f}" for r in rs), f'{gated - mean:+.2f}'])
                if m == metric:
                    found.append(dict(budget=b, config=c, arm=an.moe_arm(study, c), lead=gated - mean,
                                      collapse=float(np.mean([layer_collapse(v) for v in routing['layers'].values()]))))
    return render('expert_usage.md.j2', loads=loads, subpaths=subs, metric=metric, flags=flags,
                  answers=usage_answer(metric, found, missing))


TABLES = (overview, budget_table, expert_usage, upcycling, adversarial_gain, autoattack, routing_under_attack, sanity)


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


def training_recipe(study: an.Study) -> Dict[str, Any]:
    """dict(shared: [(key, value)] every config trains with, own: [[config, its other values]])."""
    recipes = {c: _recipe(next(iter(study.runs[c].values()))) for c in study.configs}
    keys = sorted({k for r in recipes.values() for k in r})
    common = {k: recipes[study.configs[0]].get(k) for k in keys
              if all(_value(r.get(k)) == _value(recipes[study.configs[0]].get(k)) for r in recipes.values())}
    shown = [k for k in RECIPE_KEYS if k in common] + [k for k in sorted(common) if k not in RECIPE_KEYS]
    rows = [[c, ', '.join(f'{k} {_value(r.get(k))}' for k in keys if k not in common)] for c, r in recipes.items()]
    return dict(shared=[(k, _value(common[k])) for k in shown], own=[r for r in rows if r[1]])


def attacks(study: an.Study) -> List[List[Any]]:
    """Every attack label with its exact stored settings, and which runs ran it (table rows)."""
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
    return rows


def points(study: an.Study) -> Dict[str, Any]:
    """The test points and seeds every run used."""
    main = study.entries()
    ranges = sorted({tuple((e.get('per_sample') or {}).get('index_range') or ()) for e in main})
    aa = sorted({tuple((e.get('per_sample') or {}).get('index_range') or ()) for e in study.autoattack})
    fmt = lambda rs: ', '.join(f'[{r[0]}, {r[1]})' for r in rs if r) or '–'  # noqa: E731
    return dict(ranges=fmt(ranges), aa_ranges=fmt(aa), dataset_name=main[0]['dataset'], eps=main[0]['eps'],
                threat_model=main[0]['threat_model'], n_examples=sorted({e['n_examples'] for e in main}),
                per_expert=sorted({pe.get('n_examples') for e in main for pe in e.get('per_expert') or []
                                   if pe.get('n_examples')}),
                seeds=study.plan.get('seeds') or [],
                config_seeds=[(c, sorted(study.runs[c])) for c in study.configs])


def protocol(study: an.Study) -> Lines:
    e = study.entries()[0]
    cfg = (e.get('training') or {}).get('config') or {}
    kw = e['model'].get('effective_kwargs') or e['model'].get('kwargs') or {}
    everything = study.entries() + study.autoattack
    return render('protocol.md.j2', dataset=cfg.get('dataset', e['dataset']),
                  images=cfg.get('train_limit') or study.plan.get('train_images') or 'all',
                  arch=e['model'].get('arch'), width=kw.get('width', 'default'), stem=kw.get('stem', 'default'),
                  commits=sorted({str((x.get('provenance') or {}).get('git_commit')) for x in everything}),
                  devices=sorted({str((x.get('provenance') or {}).get('device')) for x in everything}),
                  attacks=attacks(study), n_boot=an.N_BOOT, boot_seed=an.BOOT_SEED, verdict_rule=an.VERDICT_RULE,
                  **points(study), **training_recipe(study)) + sizing(study)


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
    return render('sizing.md.j2', rows=rows, total=total, all_s=sum(total.values()), runs=len(study.entries()),
                  autoattack=len(study.autoattack)) + pieces(study)


def _when(e: Mapping[str, Any]) -> Optional[datetime]:
    date = (e.get('provenance') or {}).get('date')
    return datetime.fromisoformat(date.replace('Z', '+00:00')) if date else None


PIECE_GAP = timedelta(minutes=10)  # no run going for longer than this between two runs: they are two pieces


def pieces(study: an.Study) -> Lines:
    """The study's pieces: its runs grouped by the code commit and device that made them (each piece of a study
    that outlives its machines runs from the commit of its day), and split where no run was going for over
    `PIECE_GAP` (a study pinned to one commit runs its pieces in several sessions), with the wall time from the
    first run's start (its entry's time less its recorded seconds) to the last run's entry. Runs of a piece
    overlap (`--procs`), so its wall time is less than the sum of its runs' seconds."""
    groups: Dict[Tuple[str, str], List[Tuple[datetime, datetime]]] = {}
    for e in study.entries() + study.autoattack:
        if _when(e) is None:
            return []  # entries from before provenance held a date: no pieces to show
        prov = e['provenance']
        span = (_when(e) - timedelta(seconds=sum((e.get('timing') or {}).values())), _when(e))
        groups.setdefault((str(prov.get('git_commit'))[:7], str(prov.get('device'))), []).append(span)
    found = []
    for (commit, device), spans in groups.items():
        spans.sort()
        piece = [spans[0]]
        for span in spans[1:]:
            if span[0] - max(end for _, end in piece) > PIECE_GAP:
                found.append((commit, device, piece))
                piece = []
            piece.append(span)
        found.append((commit, device, piece))
    rows = []
    for commit, device, piece in sorted(found, key=lambda f: f[2][0][0]):
        start, end = piece[0][0], max(end for _, end in piece)
        rows.append([commit, device, len(piece), f'{start:%Y-%m-%d %H:%M}', f'{end:%Y-%m-%d %H:%M}',
                     f'{(end - start).total_seconds() / 3600:.2f}'])
    return render('pieces.md.j2', rows=rows)


# ------------------------------------------------------------------------------------------ pre-registration

def _paper_contrast(study: an.Study, paper: Optional[Mapping[str, Any]]) -> str:
    """The paper's effect for a pre-registered contrast: its named row minus the same table's dense baseline."""
    delta = an.paper_delta(study, paper)
    return delta if isinstance(delta, str) else fmt_delta(delta)


def _scope(study: an.Study) -> Dict[str, Any]:
    """What the verdicts are about: this study's recipe; in a budget study, every budget it plans, with its
    configs and whether a pre-registered contrast tests it."""
    e = study.entries()[0]
    cfg = (e.get('training') or {}).get('config') or {}
    kw = e['model'].get('effective_kwargs') or e['model'].get('kwargs') or {}
    p = study.plan.get('preregistration') or {}
    arms = {a for name, o in (p.get('primary') or {}).items() for a in [name] + list((o or {}).get('base') or [])}
    arms.add(p.get('baseline'))
    budgets = [dict(label=b.label, configs=configs, tested=bool(arms & set(configs)))
               for b, configs in an.budgets(study).items()] if an.of_budgets(study) else []
    return dict(dataset=cfg.get('dataset', e['dataset']), arch=e['model'].get('arch'),
                images=cfg.get('train_limit') or study.plan.get('train_images') or 'all',
                width=kw.get('width', 'default'), epochs=cfg.get('epochs'), training=cfg.get('training'),
                attack_steps=cfg.get('attack_steps'), eps=cfg.get('eps'), source=an.claims_of(study).source,
                budgets=budgets)


def scope(study: an.Study) -> Lines:
    """This study's recipe, which is not the paper's, so a verdict tests the claim in this setting and the
    paper's effect beside it is a reference, not the thing tested."""
    return render('scope.md.j2', **_scope(study))


def preregistration(study: an.Study) -> Lines:
    """The pre-registration and each primary verdict with its interval, detectable difference and margin; or,
    for a study without one, the statement that everything in it is exploratory."""
    r = an.preregistered(study)
    if r is None:
        return render('preregistration.md.j2', p=None)
    p = r['prereg']
    rows = []
    for c in r['contrasts']:
        label, seeds = c.get('label') or f"{c['config']} − {c['baseline']}", f"{c['n_a']} / {c['n_b']}"
        if 'lo' not in c:
            rows.append([label, seeds, '–', '–', '–', '–', '–', f"±{p['margin']:g}",
                         _paper_contrast(study, c.get('paper')), c['verdict']])
            continue
        boot = c.get('boot')
        rows.append([label, seeds, f"{c['diff']:+.2f} [{c['lo']:+.2f}, {c['hi']:+.2f}] ({1 - c['level']:.1%})",
                     '–' if boot is None else f'[{boot[1]:+.2f}, {boot[2]:+.2f}]',
                     stats.format_p(c['p']), stats.format_p(c['p_holm']), f"{c['detectable']:.2f}", f"±{p['margin']:g}",
                     _paper_contrast(study, c.get('paper')), c['verdict']])
    arms = [p['baseline']] + list(p['primary']) + [b for o in p['primary'].values() for b in o.get('base') or []]
    planned = {c: len(study.plan['configs'][c].get('seeds') or study.plan.get('seeds') or []) for c in arms}
    return render('preregistration.md.j2', p=p, rule=an.PREREG_RULE.format(**p), rows=rows, sizing=r['sizing'],
                  contrasts=[c.get('label') or f"{c['config']} − {c['baseline']}" for c in r['contrasts']],
                  metric_names=an.claims_of(study).metric_names(), verdicts_start=VERDICTS_START,
                  verdicts_end=VERDICTS_END, ran=sorted({len(study.runs.get(c, {})) for c in arms}),
                  short=[f"{c} {len(study.runs.get(c, {}))} of {planned[c]}" for c in arms
                         if len(study.runs.get(c, {})) < planned[c]],
                  **_scope(study))

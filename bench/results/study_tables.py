"""The study report's other tables: every config at a glance, upcycling at equal compute, the adversarial-
training gain, AutoAttack against APGD-CE on the same points, routing under attack, transfer and sanity flags.
Each returns markdown lines."""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from bench.core.errors import UserError
from bench.results import stats
from bench.results import study_configs as sc
from bench.results import study_stats as st
from bench.results.compare import compare_entries
from bench.results.study_claims import Lines, comparisons, md_table

METRIC_NAMES = {'clean': 'clean', 'ensemble': 'worst case'}


def overview(study: sc.Study) -> Lines:
    every, first = study.metrics(), study.first_seed_metrics()
    metrics = ['clean'] + list(reversed([m for m in every if m != 'ensemble'])) + \
              (['ensemble'] if 'ensemble' in every else []) + first
    header = ['config', 'model', 'training', 'seeds'] + [METRIC_NAMES.get(m, m) + (' (first seed)' if m in first else '')
                                                         for m in metrics] + ['FLOPs ratio', 'params (active / total)']
    rows = []
    for c in study.configs:
        t, e = sc.traits(study, c), study.first(c) or next(iter(study.runs[c].values()))
        runs = study.runs[c]
        ratio, params = sc.flops_ratio(study, c), e.get('params') or {}
        rows.append([c, e['model']['name'], f"{t['training']}{', upcycled' if t['upcycled'] else ''}, "
                     f"{t['epochs']} ep", ', '.join(map(str, sorted(runs)))]
                    + [st.fmt_summary(st.summary(runs, m)) for m in metrics]
                    + ['–' if ratio is None else f'{ratio:.3f}',
                       f"{params.get('active', '–')} / {params.get('total', '–')}"])
    return ['## All configurations', '',
            'Accuracy in %: mean ± sd over seeds [95% t-interval over seeds]; a single run: its Wilson 95% interval '
            '[W lo, hi] over the test points. Worst case: per point, broken by any attack of the run.', '',
            *md_table(header, rows)]


def upcycling(study: sc.Study) -> Lines:
    """Each upcycled config vs the same MoE from scratch (equal total epochs when source + fine-tune epochs
    equal the scratch run's) and vs the dense reference."""
    out = ['## Upcycling at equal compute', '']
    pairs, words = [], []
    for u in study.configs:
        source = study.plan['configs'][u].get('upcycle_from')
        if not source:
            continue
        tu = sc.traits(study, u)
        twin = next((c for c in study.configs if c != u and sc.scratch(study, c)
                     and set(sc.differing(study, u, c)) <= {'upcycled', 'epochs'}), None)
        source_epochs = sc.traits(study, source)['epochs'] if source in study.runs else 0
        total = (tu['epochs'] or 0) + source_epochs
        if twin is not None:
            pairs.append((u, twin))
            te = sc.traits(study, twin)['epochs']
            words.append(f'{u}: {total} epochs in all ({source_epochs} of {source}, then {tu["epochs"]} as MoE), {twin}: {te} epochs: '
                         f'{"equal" if total == te else "unequal"} training compute')
        else:
            words.append(f'{u}: no MoE config from scratch with the same model to compare with')
        dense = sc.dense_reference(study, twin) if twin else None
        if dense:
            pairs.append((u, dense))
    if not words:
        return out + ['Skipped: no upcycled config in the study.', '']
    out += [f'- {w}' for w in words] + ['']
    if pairs:
        out += comparisons(study, pairs, [m for m in (study.primary(), study.pgd()) if m])[0]
    return out


def adversarial_gain(study: sc.Study) -> Lines:
    """Each normally trained config vs the adversarially trained config of the same model, on their shared
    seeds (the normal ones run one seed)."""
    out = ['## Adversarial-training gain', '', 'Δ = adversarially trained − normally trained, same model, '
           'same seeds (the normally trained configs run fewer seeds).', '']
    pairs, seeds = [], {}
    for n in study.configs:
        if sc.adversarial(study, n):
            continue
        twin = next((c for c in study.configs if sc.adversarial(study, c) and sc.scratch(study, c)
                     and set(sc.differing(study, n, c)) <= {'training'}), None)
        if twin:
            pairs.append((twin, n))
            seeds.setdefault(twin, set()).update(study.runs[n])
        else:
            out.append(f'- {n}: no adversarially trained config of the same model')
    if not pairs:
        return out + ['Skipped: no normally trained config with an adversarially trained twin.', '']
    # on the normal configs' seeds only: the adversarial twin's other seeds have nothing to pair with
    view = sc.Study(study.name, study.plan, {**study.runs, **{t: {s: e for s, e in study.runs[t].items() if s in ss}
                                                            for t, ss in seeds.items()}}, study.autoattack)
    return out + comparisons(view, pairs, ['clean'] + [m for m in (study.primary(), study.pgd()) if m])[0]


def _aa_metric(entry: Mapping[str, Any]) -> Optional[str]:
    keys = [k for k in entry.get('robust_acc') or {} if k.startswith('autoattack')]
    return sc.by_strength(keys)[0] if keys else None


def _bits_on(entry: Mapping[str, Any], metric: str, lo: int, hi: int) -> np.ndarray:
    (start, stop), vectors = stats.per_sample_vectors(entry)
    if lo < start or hi > stop:
        raise UserError(f"entry {entry['entry_id']}: test points [{lo}, {hi}) are not all among its [{start}, {stop})")
    return vectors[metric][lo - start:hi - start]


def autoattack(study: sc.Study) -> Lines:
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
        try:
            check = compare_entries(main, aa, metric='clean')  # same data set, overlapping points, consistent bits
            lo, hi = check['overlap']['index_range']
            x_pri, x_aa = _bits_on(main, primary, lo, hi), _bits_on(aa, key, lo, hi)
        except UserError as err:
            notes.append(f"- refused ({aa['entry_id']}): {err}")
            continue
        gap, glo, ghi = stats.paired_bootstrap(x_pri, x_aa, n_boot=st.N_BOOT, seed=st.BOOT_SEED)
        gaps.append((aa['grid']['config'], (lo, hi), x_pri, x_aa))
        chosen = aa['grid'].get('selected_as')
        rows.append([aa['grid']['config'] + (f' ({chosen})' if chosen else ''), key, f'[{lo}, {hi})',
                     f'{100 * x_pri.mean():.2f}', f'{100 * x_aa.mean():.2f}', f'{gap:+.2f} [{glo:+.2f}, {ghi:+.2f}]',
                     f'{stats.mcnemar_exact(x_pri, x_aa):.3g}'])
    if not rows:
        return out + ['Skipped: no AutoAttack entry with its main run.', ''] + notes
    out += md_table(('config', 'AutoAttack', 'points', primary, 'AutoAttack', 'gap [95% bootstrap]', 'McNemar p'),
                    rows) + notes + ([''] if notes else [])
    if len(gaps) >= 2 and gaps[0][1] == gaps[1][1]:
        (ca, _, pa, aa_a), (cb, _, pb, aa_b) = gaps[:2]
        d = st.bootstrap_mean(100.0 * ((pa.astype(int) - aa_a) - (pb.astype(int) - aa_b)))
        verdict = 'the gaps differ' if d['lo'] > 0 or d['hi'] < 0 else 'no evidence that the gaps differ'
        out += [f'Difference of gaps, {ca} − {cb}: {d["mean"]:+.2f} points, 95% bootstrap over points '
                f'[{d["lo"]:+.2f}, {d["hi"]:+.2f}]: {verdict} (the weaker attack overstates one model\'s robustness '
                'more than the other\'s only if the interval excludes 0).', '']
    return out


def routing_under_attack(study: sc.Study) -> Lines:
    rows, transfer = [], []
    for c in study.configs:
        e = study.first(c)
        if e is None or not sc.is_moe(study, c):
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


def sanity(study: sc.Study) -> Lines:
    items = [f"- {e['grid']['cell']} ({e['grid'].get('stage', sc.STAGE_MAIN)}): {f}"
             for e in study.entries() + study.autoattack for f in e.get('sanity_flags') or []]
    return ['## Sanity flags', '', *(items or ['None: every run passed the evaluation checks.']), '']


TABLES = (overview, upcycling, adversarial_gain, autoattack, routing_under_attack, sanity)

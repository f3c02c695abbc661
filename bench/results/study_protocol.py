"""The study report's protocol (data, model, recipe, attacks with their exact settings, points, seeds, the
verdict rule) and its sizing (wall seconds per stage, training throughput), all read from the entries."""
from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping

from bench.results import stats
from bench.results import study_configs as sc
from bench.results import study_stats as st
from bench.results.study_claims import Lines, md_table

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


def training_recipe(study: sc.Study) -> Lines:
    recipes = {c: _recipe(next(iter(study.runs[c].values()))) for c in study.configs}
    keys = sorted({k for r in recipes.values() for k in r})
    common = {k: recipes[study.configs[0]].get(k) for k in keys
              if all(_value(r.get(k)) == _value(recipes[study.configs[0]].get(k)) for r in recipes.values())}
    shown = [k for k in RECIPE_KEYS if k in common] + [k for k in sorted(common) if k not in RECIPE_KEYS]
    out = ['Training recipe shared by every config: ' + ', '.join(f'{k} {_value(common[k])}' for k in shown) + '.', '']
    rows = [[c, ', '.join(f'{k} {_value(r.get(k))}' for k in keys if k not in common)] for c, r in recipes.items()]
    rows = [r for r in rows if r[1]]
    return out + (['Where configs differ:', ''] + md_table(('config', 'own values'), rows) if rows else [])


def attacks(study: sc.Study) -> Lines:
    """Every attack label with its exact stored settings, and which runs ran it."""
    settings: Dict[str, Any] = {}
    ran: Dict[str, List[str]] = {}
    for e in study.entries() + study.autoattack:
        for label, s in sorted((stats.attack_settings(e) or {}).items()):
            settings.setdefault(label, s)
            ran.setdefault(label, []).append(e['grid']['cell'] + (' (AutoAttack)' if e in study.autoattack else ''))
    rows = []
    for label in sc.by_strength(settings):
        s = settings[label]
        rest = ', '.join(f'{k} {_value(s[k])}' for k in sorted(s) if k not in SETTING_SKIP)
        runs = len(set(ran[label]))
        where = 'every run' if runs == len(study.entries()) and label in study.metrics() else f'{runs} runs'
        rows.append([label, s.get('norm', '–'), s.get('eps', '–'), where, rest])
    return md_table(('label', 'norm', 'eps', 'runs', 'exact settings (seed = the training seed)'), rows)


def points(study: sc.Study) -> Lines:
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


def protocol(study: sc.Study) -> Lines:
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
            f'per-point paired bootstrap 95% interval ({st.N_BOOT} resamples, seed {st.BOOT_SEED}) and the exact '
            'McNemar p.', '', f'Verdict rule: {st.VERDICT_RULE}', '']
    return out + sizing(study)


def _passes(e: Mapping[str, Any]) -> int:
    """Forward-backward passes per training image: the attack's steps plus the update (normal training: 1)."""
    cfg = (e.get('training') or {}).get('config') or {}
    if (e.get('training') or {}).get('method') == 'normal':
        return 1
    return int(cfg.get('attack_steps') or 0) + 1


def sizing(study: sc.Study) -> Lines:
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
            f'({all_s / 3600:.2f} h).', '']

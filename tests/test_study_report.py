"""`timm-moe report --study`: STUDY.md and its plots from a study's registry entries.

Synthetic entries follow the registry contract of a study grid (grid, timing, per-expert bits, routing under
attack, transfer); their per-point bits are built so that each verdict of the rule fires: a config that
beats another by the same points at every seed ('holds'), one that loses at every seed ('reversed'), one
that wins some seeds and loses others ('inconclusive at this power', with its detectable difference).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

from bench.attacks import build_attack
from bench.cli import main
from bench.core.errors import UserError
from bench.evaluation.result import EvalResult
from bench.results.study import analysis as st
from bench.results.study import claims
from bench.results.entries import measured_entry
from bench.results.registry import write_entry
from bench.results.study import report_text
from bench.results.study.render import SUMMARY_END, SUMMARY_START, VERDICTS_END, VERDICTS_START
from bench.results.study.analysis import collect
from registry_fakes import PROVENANCE
from timm_moe import ModelSpec

N = 200
SEEDS = [0, 1, 2]
ATTACKS = ('pgd20', 'apgd-ce')
AA_SETTINGS = {'attack': 'AutoAttack', 'version': 'standard', 'eps': 0.1, 'norm': 'Linf', 'seed': 0}
# config -> (model, extra kwargs, training, epochs, upcycle_from, seeds, FLOPs ratio, extra robust points per seed)
CONFIGS = {
    'dense': ('resnet18_dense', {}, 'pgd', 2, None, SEEDS, 1.0, [0, 0, 0]),
    'e4k1': ('resnet18_blockmoe_e4_k1', {'aux_loss': 'entropy'}, 'pgd', 2, None, SEEDS, 1.0002, [30, 32, 31]),
    'switch': ('resnet18_blockmoe_e4_k1', {'aux_loss': 'switch'}, 'pgd', 2, None, SEEDS, 1.0002, [50, 52, 51]),
    'e4k2': ('resnet18_blockmoe_e4_k2', {}, 'pgd', 2, None, SEEDS, 1.31, [40, 20, 33]),
    'dense_half': ('resnet18_dense', {}, 'pgd', 1, None, SEEDS, 1.0, [-5, -5, -5]),
    'upcycled': ('resnet18_blockmoe_e4_k1', {}, 'pgd', 1, 'dense_half', SEEDS, 1.0002, [20, 21, 22]),
    'dense_normal': ('resnet18_dense', {}, 'normal', 2, None, [0], 1.0, [-60]),
}


def plan(configs: Dict[str, Any] = CONFIGS, name: str = 'study_synth') -> Dict[str, Any]:
    return {'name': name, 'seeds': SEEDS, 'configs': {c: {'model': v[0], 'training': v[2], 'seeds': v[5],
                                                          'upcycle_from': v[4]} for c, v in configs.items()}}


def _bits(seed: int, extra: int, base: float, n: int = N) -> np.ndarray:
    """The seed's shared base vector (both configs fail the same hard points) plus `extra` more points right:
    configs nest, so a larger `extra` wins every discordant point."""
    rng = np.random.default_rng(1000 + seed)
    order = rng.permutation(n)
    k = int(base * n) + extra
    out = np.zeros(n, dtype=bool)
    out[order[:k]] = True
    return out


def _result(correct: Dict[str, np.ndarray], seed: int, settings: Dict[str, Any], **extra: Any) -> EvalResult:
    n = len(correct['clean'])
    acc = {k: 100.0 * v.sum() / n for k, v in correct.items()}
    return EvalResult(n_examples=n, eps=0.1, threat_model='Linf', clean_acc=acc['clean'],
                      robust_acc={k: v for k, v in acc.items() if k != 'clean'},
                      counts={k: int(v.sum()) for k, v in correct.items()},
                      correct={k: v.tolist() for k, v in correct.items()},
                      settings=dict(attacks=settings, eps=0.1, norm='Linf', seed=seed, batch_size=n, n_examples=n),
                      **extra)


def make_run(config: str, seed: int, spec_name: str = 'study_synth', stage: str = 'main',
             configs: Dict[str, Any] = CONFIGS, index_start: int = 0, other_weights: bool = False) -> Dict[str, Any]:
    """One entry of the synthetic study; `other_weights`: an AutoAttack follow-up that attacked other weights than
    its run's (a shipped float16 tag), with APGD-CE run again on them and one clean and one APGD-CE point flipped."""
    model, kwargs, method, epochs, source, seeds, ratio, extras = configs[config]
    extra = extras[seeds.index(seed)]
    first = seed == seeds[0]
    kwargs = {'width': 8, 'num_classes': 10, 'in_chans': 1, **kwargs}
    spec = ModelSpec.from_timm_kwargs(model, kwargs)[0]
    moe = spec.experts > 0
    robust = _bits(seed, extra, 0.3)
    attacks = list(ATTACKS) + (['apgd-t'] if first else [])
    correct = {'clean': _bits(seed, extra, 0.7) | robust, **{a: robust for a in attacks}, 'worst_case': robust}
    settings = {a: build_attack(a, 0.1, 'Linf', seed).settings() for a in attacks}
    more: Dict[str, Any] = {}
    if stage == 'autoattack':
        n = 100
        aa = robust[:n].copy()
        aa[np.flatnonzero(aa)[:3 if moe else 6]] = False  # AutoAttack breaks a few points APGD-CE did not
        correct, settings = {'clean': correct['clean'][:n], 'autoattack': aa}, {'autoattack': AA_SETTINGS}
        if other_weights:
            own = robust[:n].copy()
            own[np.flatnonzero(own & ~aa)[:1]] = False  # one point APGD-CE breaks on these weights only
            correct['clean'] = correct['clean'].copy()
            correct['clean'][np.flatnonzero(~correct['clean'])[:1]] = True
            correct['apgd-ce'] = own
            settings['apgd-ce'] = build_attack('apgd-ce', 0.1, 'Linf', seed).settings()
    elif first and moe:
        n = 100
        rows = []
        for i in range(spec.experts):
            sub = robust[:n].copy()
            sub[np.flatnonzero(~sub)[:30]] = i == 0  # expert 0 is more robust than the gated model, the others equal
            rows.append(dict(expert=i, clean_acc=100.0 * correct['clean'][:n].mean(), n_examples=n,
                             robust_acc={a: 100.0 * sub.mean() for a in ATTACKS},
                             correct={'clean': correct['clean'][:n], **{a: sub for a in ATTACKS}}))
        more = dict(per_expert=rows, transfer=[[50.0, 60.0, 55.0, 58.0]] * 4,
                    transfer_info=dict(attack='pgd20', attacked_points=[70, 70, 70, 70], n_images=n),
                    routing_under_attack=dict(changed_fraction=0.25, attacked_points=60, n_images=n,
                                              load_clean=[0.25] * 4, load_adv=[0.4, 0.2, 0.2, 0.2], attack='pgd20'))
    collapse = 0.6 + 0.01 * seed if kwargs.get('aux_loss') == 'switch' else 0.05 + 0.01 * seed
    return measured_entry(
        spec=spec, model_kwargs=kwargs, dataset='fashion-mnist-bundled', method=method,
        eval_result=_result(correct, seed, settings, **more),
        provenance=dict(PROVENANCE, seed=seed, **({'checkpoint_sha256': 'b' * 64} if other_weights else {})),
        notes=['weights: the pretrained tag resnet18_dense.fmnist_x (float16)'] if other_weights else None,
        training_config={'dataset': 'fashion-mnist-bundled', 'train_limit': 10000, 'epochs': epochs, 'lr': 0.05,
                         'training': method, 'attack_steps': 7, 'eps': 0.1, 'seed': seed, 'out': f'/abs/{config}'},
        epochs=epochs, flops={'active': 7.3e6 * ratio, 'total': 1e7, 'dense': 7.3e6, 'ratio': ratio},
        params={'total': 400000 if moe else 176000, 'active': 176000},
        routing={'load': [0.7, 0.1, 0.1, 0.1] if kwargs.get('aux_loss') == 'switch' else [0.25] * 4,
                 'collapse': collapse} if moe else None,
        grid=dict(spec=spec_name, config=config, seed=seed, cell=f'{config}-seed{seed}', stage=stage),
        timing={'train': 100.0 + seed, 'evaluate': 20.0, 'audit': 1.0}, index_start=index_start,
        entry_id=f"{spec_name}-{config}-seed{seed}{'-aa' if stage == 'autoattack' else ''}")


def make_entries(configs: Dict[str, Any] = CONFIGS, aa: bool = True) -> List[Dict[str, Any]]:
    out = [make_run(c, s, configs=configs) for c, v in configs.items() for s in v[5]]
    if aa:
        out += [make_run(c, 0, stage='autoattack', configs=configs) for c in ('dense', 'e4k1') if c in configs]
        out[-1]['grid']['selected_as'] = 'best_moe'
    return out


@pytest.fixture(scope='module')
def entries() -> List[Dict[str, Any]]:
    return make_entries()


def _row(text: str, start: str, metric: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f'| {start}') and f'| {metric} |' in line)


# ------------------------------------------------------------------------------------------ verdicts

def test_the_verdict_rule():
    assert st.verdict(dict(n=3, lo=0.5, hi=2.0)) == 'holds'
    assert st.verdict(dict(n=3, lo=-2.0, hi=-0.1)) == 'reversed'
    # 3 seeds, sd 1.0: detectable (4.303 + 1.061) / sqrt(3) = 3.10 points
    assert st.verdict(dict(n=3, lo=-1.0, hi=2.0, std=1.0)) == 'inconclusive at this power (detectable Δ 3.10)'
    assert st.verdict(dict(n=1, lo=None, hi=None)).startswith('undecided')


def test_each_verdict_fires_on_constructed_runs(entries):
    study = collect(entries, plan())
    assert st.compare_configs(study.runs['e4k1'], study.runs['dense'], 'apgd-ce')['verdict'] == 'holds'
    assert st.compare_configs(study.runs['e4k1'], study.runs['switch'], 'apgd-ce')['verdict'] == 'reversed'
    r = st.compare_configs(study.runs['e4k2'], study.runs['e4k1'], 'apgd-ce')
    assert r['verdict'].startswith('inconclusive at this power (detectable Δ ')
    assert r['detectable'] == pytest.approx(st.stats.minimum_detectable_difference(r['seed_diff']['std'] / 3 ** 0.5, 2))
    assert [round(p['diff'], 2) for p in r['per_seed']] == [5.0, -6.0, 1.0]
    assert r['pooled']['n'] == 3 * N and not r['flags'] and not r['refused']


def test_the_claims_read_their_verdicts_from_the_data(entries):
    text = report_text(collect(entries, plan()))
    assert _row(text, 'e4k1 vs dense', 'apgd-ce').endswith('| holds |')
    assert _row(text, 'e4k1 (entropy) vs switch (switch)', 'apgd-ce').endswith('| reversed |')
    assert '| inconclusive at this power (detectable Δ ' in _row(text, 'e4k1 (k=1) vs e4k2 (k=2), FLOPs differ', 'apgd-ce')
    assert 'e4k2: FLOPs ratio 1.310, not equal to dense' in text  # claim 1 states why it leaves a config out
    assert 'upcycled: 2 epochs in all (1 of dense_half, then 1 as MoE), e4k1: 2 epochs: equal training compute' in text
    assert 'switch (switch) vs e4k1 (entropy)' in text  # claim 4: switch collapses more, paired by seed
    assert 'adversarially trained: 8 of 32 subpath comparisons are more robust than the gated model' in text
    assert '| dense_normal |' not in text.split('## Claim 2')[0].split('## Claim 1')[1]  # normal runs: own table
    assert 'Difference of gaps, dense − e4k1: +3.00 points' in text


def test_a_comparison_on_different_points_is_flagged():
    configs = dict(CONFIGS)
    entries = make_entries(configs, aa=False)
    shifted = make_run('dense', 1, configs=configs, index_start=10)  # seed 1 of dense ran on other test points
    entries = [shifted if e['entry_id'] == shifted['entry_id'] else e for e in entries]
    r = st.compare_configs(*(collect(entries, plan()).runs[c] for c in ('e4k1', 'dense')), 'apgd-ce')
    assert len(r['flags']) == 1 and r['flags'][0].startswith('seed 1: the point sets differ')
    assert r['per_seed'][1]['n'] == N - 10
    assert '- flag (e4k1 vs dense, apgd-ce): seed 1: the point sets differ' in report_text(collect(entries, plan()))


def test_different_attack_settings_are_refused_not_compared(entries):
    study = collect(entries, plan())
    odd = dict(study.runs['dense'][2], eval_settings=dict(study.runs['dense'][2]['eval_settings']))
    odd['eval_settings']['attacks'] = dict(odd['eval_settings']['attacks'],
                                           pgd20=dict(odd['eval_settings']['attacks']['pgd20'], steps=10))
    r = st.compare_configs(study.runs['e4k1'], {**study.runs['dense'], 2: odd}, 'pgd20')
    assert r['seeds'] == [0, 1] and 'steps: 20 vs 10' in r['refused'][0]


# ------------------------------------------------------------------------------------------ absent configs

def test_a_study_without_the_compared_configs_renders_with_reasons():
    configs = {c: CONFIGS[c] for c in ('dense', 'e4k1', 'dense_normal')}
    text = report_text(collect(make_entries(configs, aa=False), plan(configs)))
    assert 'Skipped: no two configs differ only in the aux loss with one of them entropy.' in text
    assert 'Skipped: no two configs differ only in k (or in k and expert width).' in text
    assert 'Collapse comparison skipped: no switch config' in text
    assert 'Skipped: no upcycled config in the study.' in text
    assert 'Skipped: no AutoAttack entry with its main run.' in text
    assert _row(text, 'e4k1 vs dense', 'apgd-ce').endswith('| holds |')


def test_missing_seeds_and_foreign_entries_are_named(entries):
    kept = [e for e in entries if e['entry_id'] != 'study_synth-switch-seed2']
    kept.append(make_run('dense', 0, spec_name='other_study'))
    study = collect(kept, plan())
    assert study.notes == ['config switch: no run for seed 2 (not finished, or failed)']
    assert 'seed 2 only in A' in st.compare_configs(study.runs['e4k1'], study.runs['switch'], 'pgd20')['flags']


def test_bad_registries_are_user_errors(entries):
    with pytest.raises(UserError, match='no registry entry belongs to study'):
        collect(entries, plan(name='nope'))
    dup = dict(entries[0], entry_id='study_synth-dense-seed0-again')
    with pytest.raises(UserError, match='has two entries'):
        collect(entries + [dup], plan())


# ------------------------------------------------------------------------------------------ files

def test_the_cli_regenerates_the_same_bytes(tmp_path, entries):
    registry = tmp_path / 'registry'
    for e in entries:
        write_entry(e, registry)
    spec = tmp_path / 'study_synth.yaml'
    spec.write_text(_SPEC_YAML)
    outs = []
    for name in ('a', 'b'):
        assert main(['report', '--study', str(spec), '--registry', str(registry), '--out', str(tmp_path / name)]) == 0
        outs.append(sorted(p.relative_to(tmp_path / name) for p in (tmp_path / name).rglob('*') if p.is_file()))
    assert outs[0] == outs[1] == [Path('STUDY.md')] + [Path('study') / n for n in
                                                       ('expert_load.png', 'flops_vs_robust.png',
                                                        'robust_vs_clean.png', 'subpaths.png')]
    for rel in outs[0]:
        assert (tmp_path / 'a' / rel).read_bytes() == (tmp_path / 'b' / rel).read_bytes(), rel
    text = (tmp_path / 'a' / 'STUDY.md').read_text()
    assert str(tmp_path) not in text and '/abs/' not in text  # no absolute path of the machine or the runs
    assert 'Verdict rule:' in text and '\n### Sizing\n' in text


def test_report_without_study_is_unchanged(tmp_path):
    assert main(['report', '--registry', str(tmp_path / 'none'), '--out', str(tmp_path / 'o')]) == 2


# the synthetic study as a grid spec: the CLI reads configs, seeds and upcycling sources from it
_SPEC_YAML = """
model_kwargs: {width: 8}
train: {dataset: fashion-mnist-bundled, epochs: 2, eps: 0.1, attack_steps: 7}
seeds: [0, 1, 2]
configs:
  dense: {model: resnet18_dense}
  e4k1: {model: resnet18_blockmoe_e4_k1, model_kwargs: {aux_loss: entropy}}
  switch: {model: resnet18_blockmoe_e4_k1, model_kwargs: {aux_loss: switch}}
  e4k2: {model: resnet18_blockmoe_e4_k2}
  dense_half: {model: resnet18_dense, train: {epochs: 1}}
  upcycled: {model: resnet18_blockmoe_e4_k1, upcycle_from: dense_half, train: {epochs: 1}}
  dense_normal: {model: resnet18_dense, training: normal, seeds: [0]}
eval: {attacks: 'pgd20,apgd-ce', n_examples: 200}
"""


FIXTURE = Path(__file__).parent / 'fixtures' / 'study_tiny'


@pytest.mark.skipif(not (FIXTURE / 'registry').is_dir(), reason='the tiny study fixture is not there yet')
def test_the_tiny_study_fixture_renders_twice_the_same(tmp_path):
    outs = []
    for name in ('a', 'b'):
        assert main(['report', '--study', str(FIXTURE.parent / 'study_tiny.yaml'), '--registry',
                     str(FIXTURE / 'registry'), '--out', str(tmp_path / name)]) == 0
        outs.append({p.relative_to(tmp_path / name): p.read_bytes() for p in (tmp_path / name).rglob('*')
                     if p.is_file()})
    assert outs[0] == outs[1]
    text = outs[0][Path('STUDY.md')].decode()
    assert '## Claim 1' in text and '## Claim 4' in text and 'Skipped: no two configs differ only in k' in text


# ------------------------------------------------------------------------------------------ part-1 corrections

def test_the_summary_quotes_the_papers_table_and_states_the_detectable_difference(entries):
    text = report_text(collect(entries, plan()))
    summary = text.split(SUMMARY_START)[1].split(SUMMARY_END)[0]
    # the paper's effects are computed from its table (registry/sources), never typed: at the study's e4k1
    # settings (entropy, GAP-FC) one last-block BlockMoE is +3.09 PGD-20 over dense, and k=1 is ahead of k=2
    assert '| 1. a sparse MoE in conv5_x (E=4, k=1) is more robust than dense' in summary
    assert 'BlockMoE at the last block +3.09 / +2.77; ConvMoE in all four conv5_x convolutions +8.16' in summary
    assert '| 3. k=1 is more robust than k=2' in summary and '+1.35 / +1.93 (k=1 − k=2' in summary
    assert 'k=1 is ahead of k=2 in 3 of 6 BlockMoE loss × gate families on PGD-20 and 6 of 6 on APGD-20' in text
    assert '| e4k1 vs dense | ' in summary and '| holds |' in summary
    assert 'detectable Δ' in summary and 'adversarially trained: 8 of 32' in summary
    # the per-seed rows use the orientation of the table: the smaller k is A
    assert 'e4k1 (k=1) vs e4k2 (k=2), FLOPs differ' in summary


def test_paper_effects_say_what_the_table_says_when_it_changes(tmp_path):
    known = claims.load_claims()
    rows = claims.table_rows(known)
    flipped = [dict(r, pgd20=r['pgd20'] + 5) if (r['table'], r['loss'], r['gate'], r['k']) ==
               ('resnet18', 'L_ent', 'GAP-FC', '2') else r for r in rows]
    assert claims.effects(known, rows)[2]['effect'].startswith('+1.35 / +1.93')
    assert claims.effects(known, flipped)[2]['effect'].startswith('-3.65 / +1.93')  # computed, not typed
    moved = tmp_path / 'claims.yaml'
    moved.write_text(known.path.read_text(encoding='utf-8').replace(f'table: {known.table.name}', 'table: none.csv'),
                     encoding='utf-8')
    text = report_text(collect(make_entries(), {**plan(), 'claims': str(moved)}))
    assert "the paper's table is not at none.csv: its effects are left out" in text


def test_claim_1_quotes_the_paper_effect_of_each_kind_of_moe_it_pairs_with_dense():
    """The study pairs dense with a BlockMoE and with a ConvMoE: claim 1 names both effects, each computed from
    its own rows of the table (52.14 -> dense; 25.03 - 16.87 = +8.16 for the all-convolutions ConvMoE)."""
    known = claims.load_claims()
    claim = claims.effects(known, claims.table_rows(known))[0]
    assert claim['claim'].startswith('a sparse MoE in conv5_x')
    assert 'BlockMoE at the last block +3.09 / +2.77' in claim['effect']
    assert 'ConvMoE in all four conv5_x convolutions +8.16 / +6.04' in claim['effect']
    assert 'the all-convolutions ConvMoE in 4 of 4 loss × gate rows on PGD-20 and 4 of 4 on APGD-20' in claim['detail']


def test_a_worst_case_over_different_attack_sets_is_not_pooled(entries):
    """Every first seed adds apgd-t, so its worst case is over another attack set: the overview leaves the
    worst case out and says why; the headline metric is the strongest attack every run shares."""
    study = collect(entries, plan())
    assert study.mixed_worst_case() and 'worst_case' not in study.metrics() and study.primary() == 'apgd-ce'
    overview = report_text(study).split('## All configurations')[1].split('\n## ')[0]
    assert 'Worst case: not shown, because the runs attacked with different attack sets' in overview
    assert 'worst case' not in overview.split('\n| config |')[1].split('\n')[0]


README = Path(__file__).resolve().parents[1] / 'README.md'
DOCS_STUDY = Path(__file__).resolve().parents[1] / 'docs' / 'STUDY.md'


DOCS_POWERED = DOCS_STUDY.parent / 'study_powered' / 'STUDY.md'
DOCS_BUDGET = DOCS_STUDY.parent / 'study_budget' / 'STUDY.md'  # interim until every cell has run
QUOTED = [(DOCS_STUDY, SUMMARY_START, SUMMARY_END), (DOCS_POWERED, VERDICTS_START, VERDICTS_END)]


def _block(text: str, start: str = SUMMARY_START, end: str = SUMMARY_END) -> str:
    assert text.count(start) == 1 and text.count(end) == 1
    return text[text.index(start):text.index(end)]


@pytest.mark.parametrize('doc, start, end', QUOTED, ids=['summary', 'verdicts'])
def test_the_readme_quotes_the_generated_reports_verbatim(doc, start, end):
    """The README's study numbers are the reports' summary (docs/STUDY.md) and pre-registered verdicts
    (docs/study_powered/STUDY.md), copied between the markers: never restated."""
    assert _block(README.read_text(encoding='utf-8'), start, end) == _block(doc.read_text(encoding='utf-8'), start, end)


@pytest.mark.parametrize('doc, start, end', QUOTED, ids=['summary', 'verdicts'])
def test_the_readme_check_fires_on_a_hand_edit(doc, start, end):
    text = doc.read_text(encoding='utf-8')
    edited = text.replace('inconclusive at this power', 'within noise', 1).replace('| worse |', '| holds |', 1)
    assert _block(edited, start, end) != _block(text, start, end)


@pytest.mark.slow
@pytest.mark.parametrize('spec, doc', [('study_fashion_mnist', DOCS_STUDY), ('study_powered_fashion_mnist', DOCS_POWERED),
                                       ('study_budget_fashion_mnist', DOCS_BUDGET)])
def test_docs_study_regenerates_from_the_registry(spec, doc):
    """Each study's report in docs/ is the report of the shipped registry, byte for byte (about a minute on one
    core): the pre-registered study's is regenerated whenever its entries are committed."""
    from bench.cli.report import study_plan
    from bench.pipeline.grid import load_spec
    from bench.results.registry import load_entries

    registry = README.parent / 'registry'
    text = report_text(collect(load_entries(registry), study_plan(load_spec(spec))))
    assert text == doc.read_text(encoding='utf-8')


def test_the_report_times_each_piece_of_a_study():
    """A piece is the runs of one commit on one device; its wall time runs from its first run's start (entry time
    less the run's seconds) to its last entry, so two runs in parallel count once."""
    from bench.results.study.analysis import Study
    from bench.results.study.render import pieces

    def run(commit, date, seconds):
        return {'provenance': {'git_commit': commit, 'device': 'cpu', 'date': date},
                'timing': {'train': seconds - 60.0, 'evaluate': 60.0}}
    runs = {'dense': {0: run('aaaaaaa1', '2026-01-01T01:00:00Z', 3600), 1: run('aaaaaaa1', '2026-01-01T01:00:00Z', 3600),
                      2: run('bbbbbbb2', '2026-01-02T10:30:00Z', 1800)}}
    text = '\n'.join(pieces(Study(name='s', plan={'configs': {'dense': {}}}, runs=runs, autoattack=[])))
    assert '| aaaaaaa | cpu | 2 | 2026-01-01 00:00 | 2026-01-01 01:00 | 1.00 |' in text
    assert '| bbbbbbb | cpu | 1 | 2026-01-02 10:00 | 2026-01-02 10:30 | 0.50 |' in text


def test_a_study_pinned_to_one_commit_has_a_piece_per_session():
    # the budget study runs every piece at one commit: grouped by commit alone, two sessions an hour apart were
    # one piece whose wall time counted the hour between them
    from bench.results.study.analysis import Study
    from bench.results.study.render import pieces

    def run(date, seconds):
        return {'provenance': {'git_commit': 'aaaaaaa1', 'device': 'cpu', 'date': date},
                'timing': {'train': seconds, 'evaluate': 0.0}}
    runs = {'dense': {0: run('2026-01-01T01:00:00Z', 3600), 1: run('2026-01-01T01:55:00Z', 3300),
                      2: run('2026-01-01T04:00:00Z', 1800), 3: run('2026-01-01T04:30:00Z', 1795)}}
    text = '\n'.join(pieces(Study(name='s', plan={'configs': {'dense': {}}}, runs=runs, autoattack=[])))
    assert '| aaaaaaa | cpu | 2 | 2026-01-01 00:00 | 2026-01-01 01:55 | 1.92 |' in text
    assert '| aaaaaaa | cpu | 2 | 2026-01-01 03:30 | 2026-01-01 04:30 | 1.00 |' in text


def test_a_preregistered_studys_summary_says_it_decides_nothing(entries):
    """The primary contrasts show up in the summary too, paired by seed at alpha 0.05: the summary says that the
    pre-registered section, not it, decides them; a study without a pre-registration has no such line."""
    from bench.results.study.render import summary
    study = collect(entries, plan())
    assert 'Exploratory, for every claim alike' not in '\n'.join(summary(study))
    study.plan = dict(study.plan, preregistration={'baseline': 'dense', 'primary': {}})
    assert 'Exploratory, for every claim alike' in '\n'.join(summary(study))


def test_every_moe_s_autoattack_gap_is_compared_with_dense_s():
    # three follow-ups (dense and two MoEs): the report compared only the first two, so the third MoE's gap went
    # without a comparison
    entries = make_entries()
    entries.append(make_run('switch', 0, stage='autoattack'))
    text = report_text(collect(entries, plan()))
    assert 'Difference of gaps, dense − e4k1: +3.00 points' in text
    assert re.search(r'Difference of gaps, dense − switch: [+-]\d+\.\d\d points', text)

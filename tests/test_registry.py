"""The results registry: schema (versions 1 and 2), shipped entries, safe writes, provenance, paper import.

The leaderboard is tested in test_leaderboard.py, the CLI's error handling in test_cli.py."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
import hashlib
import json
import multiprocessing as mp
from typing import Any, Dict

import pytest

from bench import cli
from bench.core import provenance as prov
from bench.core.errors import UserError
from bench.results import import_paper, leaderboard
from bench.results.entries import measured_entry
from bench.results.registry import (DEFAULT_REGISTRY, dumps_entry, entry_path, load_entries, load_entry, load_schema,
                                    make_entry_id, validate_entry, write_entry)
from timm_moe import ModelSpec
from registry_fakes import make_entry


# --- schema and shipped entries ---------------------------------------------------------------

def test_schema_is_valid_json_schema():
    import jsonschema

    schema = load_schema()
    jsonschema.validators.validator_for(schema).check_schema(schema)


def test_every_file_under_registry_validates():
    sources = DEFAULT_REGISTRY / 'sources'  # the reported tables the paper entries are imported from
    files = sorted(p for p in DEFAULT_REGISTRY.rglob('*') if p.is_file() and sources not in p.parents)
    allowed_other = {DEFAULT_REGISTRY / 'schema.json', DEFAULT_REGISTRY / 'LEADERBOARD.md'}
    strays = [p for p in files if p.suffix != '.json' and p not in allowed_other]
    assert not strays, f'unexpected files in registry/: {strays}'
    entries = load_entries(DEFAULT_REGISTRY)  # validates each and checks its location
    n_json = sum(p.suffix == '.json' for p in files) - 1  # minus schema.json
    assert len(entries) == n_json > 0
    assert len({(e['dataset'], e['threat_model'], e['entry_id']) for e in entries}) == len(entries)
    for e in entries:  # the reported numbers carry their citation; measured ones their provenance
        if e['source'] != 'measured':
            assert e['citation']
        else:
            assert set(e['provenance']) >= {'git_commit', 'torch', 'timm', 'device', 'command', 'seed', 'date'}


def test_shipped_leaderboard_is_up_to_date():
    text = (DEFAULT_REGISTRY / leaderboard.FILENAME).read_text(encoding='utf-8')
    assert text == leaderboard.render_markdown(load_entries(DEFAULT_REGISTRY)), \
        'registry/LEADERBOARD.md is stale: run `timm-moe leaderboard`'


def test_shipped_reference_points():
    by_id = {e['entry_id']: e for e in load_entries(DEFAULT_REGISTRY)}
    rb = by_id['robustbench-addepalli2022efficient-rn18']
    assert (rb['source'], rb['clean_acc'], rb['robust_acc']) == ('robustbench', 65.45, {'autoattack': 27.67})
    rice = by_id['robustbench-rice2020overfitting']
    assert (rice['clean_acc'], rice['robust_acc']['autoattack']) == (53.83, 18.95)
    # the paper's reference rows: dense and the single layer4.1 BlockMoE (entropy, GAP-FC, k=1), both PGD-trained
    dense = by_id['paper-resnet18-dense-pgd']
    assert (dense['clean_acc'], dense['robust_acc']) == (52.14, {'pgd20': 16.87, 'apgd20': 17.99})
    best = by_id['paper-resnet18-blockmoe-last-entropy-gap-fc-k1-pgd']
    assert (best['clean_acc'], best['robust_acc']) == (54.91, {'pgd20': 19.96, 'apgd20': 20.76})
    assert best['model']['name'] == 'resnet18_blockmoe_e4_k1' and best['model']['kwargs']['placement'] == 'last'
    # the paper's most robust model: ConvMoE over every conv of layer4, entropy, GAP-FC, k=1
    conv = by_id['paper-resnet18-convmoe-all-entropy-gap-fc-k1-pgd']
    assert (conv['clean_acc'], conv['robust_acc']) == (50.96, {'pgd20': 25.03, 'apgd20': 24.03})
    assert conv['model']['name'] == 'resnet18_convmoe_e4_k1' and conv['model']['kwargs']['placement'] == 'all'
    for e in by_id.values():
        if e['source'] == 'paper':
            assert set(e['robust_acc']) == {'pgd20', 'apgd20'} and 'not AutoAttack' in e['attack_note']
            assert e['eps'] == 8 / 255 and e['dataset'] == 'cifar100' and e['threat_model'] == 'Linf'


def test_every_paper_entry_names_a_registered_timm_model():
    import timm
    import timm_moe  # noqa: F401  (registers the models)

    paper = [e for e in load_entries(DEFAULT_REGISTRY) if e['source'] == 'paper']
    assert len(paper) == 219  # 215 MoE configurations (219 rows, 4 listed in two tables) and 4 dense ones
    names = {e['model']['name'] for e in paper}
    assert names <= set(timm.list_models()), names - set(timm.list_models())
    assert any('_convmoe_' in n for n in names) and any(n.endswith('_k3') for n in names)
    # tests/test_paper_rows.py builds every one of them


def test_stored_moe_blocks_kwarg_reads_as_placement(tmp_path):
    entry = next(e for e in load_entries(DEFAULT_REGISTRY) if e['entry_id'] == 'paper-resnet18-dense-pgd')
    old = copy.deepcopy(entry)
    old['model']['kwargs'] = {'stem': 'cifar', 'moe_blocks': 'all'}
    old['model']['effective_kwargs'] = {'moe_blocks': 'all', 'width': 8}
    path = tmp_path / 'old.json'
    path.write_text(json.dumps(old))
    model = load_entry(path)['model']
    assert model['kwargs'] == {'stem': 'cifar', 'placement': 'all'}
    assert model['effective_kwargs'] == {'placement': 'all', 'width': 8}


# --- validation -------------------------------------------------------------------------------

def _set(entry: Dict[str, Any], dotted: str, value: Any) -> Dict[str, Any]:
    e = copy.deepcopy(entry)
    *parents, last = dotted.split('.')
    node = e
    for p in parents:
        node = node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return e


_DELETE = object()


@pytest.mark.parametrize('field, value, expect', [
    ('clean_acc', 101.0, 'clean_acc'),
    ('clean_acc', '60.0', 'clean_acc'),  # numbers are stored as numbers
    ('robust_acc.pgd20', '19.9', 'robust_acc.pgd20'),
    ('robust_acc.autoattack', -1, 'robust_acc.autoattack'),
    ('dataset', 'imagenet', 'dataset'),
    ('threat_model', 'Linf2', 'threat_model'),
    ('entry_id', 'Bad ID!', 'entry_id'),
    ('source', 'blog', 'source'),
    ('model.experts', -1, 'model.experts'),
    ('model.name', _DELETE, 'name'),
    ('provenance.seed', _DELETE, 'seed'),  # measured entries carry the full provenance
    ('provenance.checkpoint_sha256', 'xyz', 'provenance.checkpoint_sha256'),
    ('flops.ratio', 0, 'flops.ratio'),
    ('routing.load', [1.5, -0.5], 'routing.load[0]'),
    ('training.method', 'magic', 'training.method'),
    ('unknown_field', 1, 'unknown_field'),
])
def test_invalid_entry_is_refused_with_field_and_reason(field, value, expect):
    bad = _set(make_entry(), field, value)
    with pytest.raises(UserError) as info:
        validate_entry(bad)
    msg = str(info.value)
    assert expect in msg and ':' in msg, msg


def test_reported_entry_needs_citation_and_dense_has_no_k():
    with pytest.raises(UserError, match='citation'):
        validate_entry(make_entry(source='paper'))
    validate_entry(make_entry(source='paper', citation='Someone et al. 2025'))
    dense = make_entry(experts=0)
    validate_entry(dense)
    with pytest.raises(UserError, match='model.k'):
        validate_entry(_set(dense, 'model.k', 2))


def test_nan_is_refused(tmp_path):
    with pytest.raises(UserError, match='NaN'):
        write_entry(make_entry(clean_acc=float('nan')), tmp_path)
    assert not list(tmp_path.rglob('*.json'))


def test_invalid_entry_is_never_written(tmp_path):
    with pytest.raises(UserError, match='clean_acc'):
        write_entry(make_entry(clean_acc=250.0), tmp_path)
    assert not [p for p in tmp_path.rglob('*') if p.is_file()]


# --- writing ------------------------------------------------------------------------------------

def test_write_places_entry_and_roundtrips(tmp_path):
    e = make_entry()
    path = write_entry(e, tmp_path)
    assert path == tmp_path / 'fashion-mnist-bundled' / 'Linf' / f"{e['entry_id']}.json" == entry_path(e, tmp_path)
    assert json.loads(path.read_text()) == e
    assert isinstance(json.loads(path.read_text())['clean_acc'], float)
    assert load_entries(tmp_path) == [e]
    assert not [p for p in path.parent.iterdir() if p.name.startswith('.')]  # no temp file left


def test_no_overwrite_without_flag(tmp_path):
    path = write_entry(make_entry(clean=60.0), tmp_path)
    before = path.read_bytes()
    with pytest.raises(UserError) as info:
        write_entry(make_entry(clean=70.0), tmp_path)
    assert str(path) in str(info.value) and 'overwrite' in str(info.value)
    assert path.read_bytes() == before
    write_entry(make_entry(clean=70.0), tmp_path, overwrite=True)
    assert json.loads(path.read_text())['clean_acc'] == 70.0


def _racer(registry: str, worker: int, rounds: int, barrier, results) -> None:
    """One writer process: a shared id per round (racing the others) and one id of its own."""
    won = []
    for r in range(rounds):
        barrier.wait()  # line the writers up so they really collide
        try:
            write_entry(make_entry(entry_id=f'race-{r}', clean=float(worker)), registry)
            won.append(r)
        except UserError:
            pass
    write_entry(make_entry(entry_id=f'own-{worker}', clean=float(worker)), registry)
    for r in range(rounds):  # with overwrite, every writer succeeds and the file stays whole
        write_entry(make_entry(entry_id='shared-overwrite', clean=float(worker), robust=float(r)), registry,
                    overwrite=True)
    results.put((worker, won))


def test_concurrent_writers_one_winner_per_id(tmp_path):
    ctx = mp.get_context('fork')  # fork: the workers need this module's helpers, and it starts fast
    workers, rounds = 4, 12
    barrier, queue = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(str(tmp_path), w, rounds, barrier, queue)) for w in range(workers)]
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    results = [got[w] for w in range(workers)]
    for r in range(rounds):
        winners = [w for w, won in enumerate(results) if r in won]
        assert len(winners) == 1, f'race-{r}: winners {winners}'
        e = json.loads((tmp_path / 'fashion-mnist-bundled' / 'Linf' / f'race-{r}.json').read_text())
        assert e['clean_acc'] == float(winners[0])  # the file holds the winner's entry, whole
    entries = load_entries(tmp_path)  # every file is valid JSON and a valid entry
    ids = sorted(e['entry_id'] for e in entries)
    assert ids == sorted([f'race-{r}' for r in range(rounds)] + [f'own-{w}' for w in range(workers)]
                         + ['shared-overwrite'])
    assert not [p for p in tmp_path.rglob('*') if p.name.startswith('.')]  # no temp files left behind


# --- loading -----------------------------------------------------------------------------------

def test_load_names_the_bad_file(tmp_path):
    write_entry(make_entry(), tmp_path)
    bad = tmp_path / 'fashion-mnist-bundled' / 'Linf' / 'broken.json'
    bad.write_text('{"entry_id": ')
    with pytest.raises(UserError, match='broken.json'):
        load_entries(tmp_path)
    bad.write_text(json.dumps(make_entry(entry_id='broken', clean_acc=300.0)))
    with pytest.raises(UserError, match=r'broken\.json.*clean_acc'):
        load_entries(tmp_path)


def test_load_refuses_misplaced_entry(tmp_path):
    e = make_entry(entry_id='misplaced')
    (tmp_path / 'cifar100' / 'Linf').mkdir(parents=True)
    (tmp_path / 'cifar100' / 'Linf' / 'misplaced.json').write_text(dumps_entry(e))
    with pytest.raises(UserError, match='misplaced'):
        load_entries(tmp_path)


def test_load_missing_dir_and_filters(tmp_path):
    with pytest.raises(UserError, match='does not exist'):
        load_entries(tmp_path / 'nope')
    write_entry(make_entry(entry_id='a'), tmp_path)
    write_entry(make_entry(entry_id='b', dataset='cifar10'), tmp_path)
    assert [e['entry_id'] for e in load_entries(tmp_path, dataset=['cifar10'])] == ['b']
    assert load_entries(tmp_path, threat_model=['L2']) == []


def test_make_entry_id_is_stable_and_safe():
    a = make_entry_id('resnet18_blockmoe_e8_k1', 'pgd', 'Fashion MNIST', payload={'lr': 0.1, 'seed': 0})
    assert a == make_entry_id('resnet18_blockmoe_e8_k1', 'pgd', 'Fashion MNIST', payload={'seed': 0, 'lr': 0.1})
    assert a.startswith('resnet18_blockmoe_e8_k1-pgd-fashion-mnist-') and len(a.split('-')[-1]) == 6
    assert a != make_entry_id('resnet18_blockmoe_e8_k1', 'pgd', 'Fashion MNIST', payload={'lr': 0.2, 'seed': 0})
    validate_entry(make_entry(entry_id=a))


# --- provenance ------------------------------------------------------------------------------------

def test_provenance_fields(tmp_path):
    ckpt = tmp_path / 'model.pth'
    ckpt.write_bytes(b'\x00weights' * 100_000)
    p = prov.provenance(seed=7, checkpoint=ckpt, command='timm-moe eval --x "a b"')
    assert set(p) == {'package_version', 'git_commit', 'torch', 'timm', 'device', 'command', 'seed', 'date',
                      'checkpoint_sha256'}
    assert p['checkpoint_sha256'] == hashlib.sha256(ckpt.read_bytes()).hexdigest() == prov.sha256_file(ckpt)
    assert p['seed'] == 7 and p['date'].endswith('Z') and p['torch'] and p['device']
    validate_entry(make_entry(provenance=p))
    with pytest.raises(UserError, match='missing.pth'):
        prov.sha256_file(tmp_path / 'missing.pth')


def test_git_commit_and_command_line(tmp_path):
    assert prov.git_commit(tmp_path) is None  # not a git checkout
    commit = prov.git_commit()
    if commit is not None:
        assert len(commit.split('-')[0]) == 40
    assert prov.command_line(['/usr/bin/timm-moe', 'eval', '--model', 'a b']) == "timm-moe eval --model 'a b'"


# --- paper import ---------------------------------------------------------------------------------

def test_import_paper_reproduces_shipped_entries(tmp_path):
    res = import_paper.import_all(import_paper.DEFAULT_CSV, tmp_path)
    assert res['written'] and not res['unchanged']
    for path in res['written']:
        shipped = DEFAULT_REGISTRY / path.relative_to(tmp_path)
        assert shipped.read_bytes() == path.read_bytes(), f'{shipped} differs from the import: re-run import_paper'
    shipped_reported = [e for e in load_entries(DEFAULT_REGISTRY) if e['source'] != 'measured']
    assert len(shipped_reported) == len(res['written'])
    again = import_paper.import_all(import_paper.DEFAULT_CSV, tmp_path)  # idempotent
    assert not again['written'] and len(again['unchanged']) == len(res['written'])
    victim = res['written'][0]
    victim.write_text(victim.read_text().replace('"schema_version": 2', '"schema_version": 2 '))
    with pytest.raises(UserError, match='exists'):
        import_paper.import_all(import_paper.DEFAULT_CSV, tmp_path)
    assert cli.main(['import-paper', '--registry', str(tmp_path), '--overwrite']) == 0
    assert victim.read_bytes() == (DEFAULT_REGISTRY / victim.relative_to(tmp_path)).read_bytes()


def test_import_paper_covers_every_row_and_flags_anomalies():
    rows = import_paper.read_csv(import_paper.DEFAULT_CSV)
    entries = import_paper.paper_entries(import_paper.DEFAULT_CSV)
    keys = {import_paper.row_to_entry(r, 'x')[0] for r in rows}
    assert len(entries) == len(keys)  # one entry per distinct experiment, none lost
    triples = {(float(r['clean']), float(r['pgd20']), float(r['apgd20'])) for r in rows}
    assert triples == {(e['clean_acc'], e['robust_acc']['pgd20'], e['robust_acc']['apgd20']) for e in entries}
    flagged = [e for e in entries if 'apgd_above_pgd20' in e['sanity_flags']]
    assert all(e['robust_acc']['apgd20'] > e['robust_acc']['pgd20'] for e in flagged) and flagged
    assert any('source_duplicate_numbers' in e['sanity_flags'] for e in entries)


def test_import_paper_bad_csv(tmp_path):
    with pytest.raises(UserError, match='does not exist'):
        import_paper.read_csv(tmp_path / 'nope.csv')
    bad = tmp_path / 'bad.csv'
    bad.write_text('table,moe\nresnet18,Baseline\n')
    with pytest.raises(UserError, match='lacks columns'):
        import_paper.read_csv(bad)
    assert cli.main(['import-paper', '--csv', str(bad), '--registry', str(tmp_path / 'r')]) == 2


# --- schema 2: exact settings, per-sample results, the model as built; schema 1 still loads ----------------

def test_measured_entry_stores_exact_attack_settings_and_effective_kwargs():
    e = make_entry(seed=3)
    assert e['schema_version'] == 2
    pgd = e['eval_settings']['attacks']['pgd20']
    assert (pgd['attack'], pgd['steps'], pgd['restarts'], pgd['random_start'], pgd['seed']) == ('PGD', 20, 1, False, 3)
    assert pgd['step_size'] == pytest.approx(0.1 / 4)  # eps / 4
    apgd = e['eval_settings']['attacks']['apgd-ce']
    assert (apgd['attack'], apgd['steps'], apgd['loss']) == ('APGD', 100, 'ce')
    assert e['eval_settings']['seed'] == 3
    model = e['model']
    # every setting as built, the plugin's defaults filled in; the name fixes E and k
    assert model['effective_kwargs']['noisy_gating'] is model['noisy_gating'] and isinstance(model['noisy_gating'], bool)
    assert {'gate', 'aux_loss', 'aux_weight', 'placement', 'expert_width', 'stem', 'width'} <= set(model['effective_kwargs'])
    assert 'num_experts' not in model['effective_kwargs'] and model['gate'] == 'gap_fc'
    dense = make_entry(experts=0)
    assert dense['model']['noisy_gating'] is None and dense['model']['gate'] is None


def test_per_sample_bits_round_trip():
    from bench.core.stats import per_sample_vectors

    e = make_entry(robust=20.0)
    (start, stop), vectors = per_sample_vectors(e)
    assert (start, stop) == (0, 200) and set(vectors) == {'clean', 'pgd20', 'apgd-ce', 'worst_case'}
    assert 100 * vectors['pgd20'].sum() / 200 == e['robust_acc']['pgd20'] == 21.0


def test_per_sample_bits_must_match_the_accuracies():
    e = make_entry()
    with pytest.raises(UserError, match=r'per_sample.bits.pgd20 has 42 of 200 .* robust_acc.pgd20 is 30'):
        validate_entry(_set(e, 'robust_acc.pgd20', 30.0))
    with pytest.raises(UserError, match='per_sample covers 200 points but n_examples is 100'):
        validate_entry(_set(e, 'n_examples', 100))
    extra = copy.deepcopy(e)
    extra['per_sample']['bits']['fgsm'] = extra['per_sample']['bits']['pgd20']
    del extra['per_sample']['sha256']  # as an entry written before the checksum: the key check still holds
    with pytest.raises(UserError, match='per_sample.bits.fgsm is not clean_acc or a robust_acc key'):
        validate_entry(extra)
    with pytest.raises(UserError, match='bytes'):
        validate_entry(_set(e, 'per_sample.bits.clean', 'AAAA'))


def test_every_accuracy_needs_its_attack_settings():
    e = make_entry()
    del e['eval_settings']['attacks']['pgd20']
    with pytest.raises(UserError, match='no settings for robust_acc.pgd20'):
        validate_entry(e)


@pytest.mark.parametrize('field', ['eval_settings', 'per_sample', 'model.effective_kwargs', 'model.noisy_gating'])
def test_schema2_measured_entry_needs_the_new_fields(field):
    with pytest.raises(UserError, match=field.split('.')[-1]):
        validate_entry(_set(make_entry(), field, _DELETE))


# the quickstart's entries as shipped before schema 2, kept to prove that old entries still load
SCHEMA1_REGISTRY = Path(__file__).parent / 'fixtures' / 'registry_schema1'
# a study's entries as stored before the worst case was called `worst_case` (`ensemble`)
STUDY_TINY_REGISTRY = Path(__file__).parent / 'fixtures' / 'study_tiny' / 'registry'


def test_schema1_entries_still_load(tmp_path):
    old = [e for e in load_entries(SCHEMA1_REGISTRY) if e['source'] == 'measured']
    assert old and all(e['schema_version'] == 1 and 'per_sample' not in e for e in old)
    versionless = copy.deepcopy(old[0])
    del versionless['schema_version']  # written before versions were recorded
    write_entry(versionless, tmp_path)
    assert load_entries(tmp_path) == [versionless]


def test_old_field_names_load_through_the_one_migration(tmp_path):
    """Entries written by older code say `moe_blocks` (now `placement`) in the model's kwargs and `method`
    (now `training`) in the training config: reading them renames the keys, and nothing else reads them."""
    from bench.results.registry import migrate

    old = [e for e in load_entries(SCHEMA1_REGISTRY) if e['source'] == 'measured'][0]
    raw = copy.deepcopy(old)
    raw['model']['kwargs'] = {'moe_blocks': 'last', 'width': 8}
    raw['training']['config'] = {'method': 'pgd', 'lr': 0.1}
    raw['robust_acc'] = {'pgd20': 30.0, 'ensemble': 29.0}  # the per-sample worst case, under its old name
    raw['sanity_flags'] = ['ensemble_reverified']
    path = tmp_path / raw['dataset'] / raw['threat_model'] / f"{raw['entry_id']}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(raw))
    (loaded,) = load_entries(tmp_path)
    assert loaded['model']['kwargs'] == {'placement': 'last', 'width': 8}
    assert loaded['training']['config'] == {'training': 'pgd', 'lr': 0.1}
    assert loaded['robust_acc'] == {'pgd20': 30.0, 'worst_case': 29.0}
    assert loaded['sanity_flags'] == ['worst_case_reverified']
    # the per-sample bits of an entry stored with the old name (the study fixture) are read under the new one
    bits = [e['per_sample']['bits'] for e in load_entries(STUDY_TINY_REGISTRY)]
    assert bits and all('worst_case' in b and 'ensemble' not in b for b in bits)
    # a new name written beside the old one wins; an entry without old names is left as it is
    both = migrate({'model': {'kwargs': {'moe_blocks': 'all', 'placement': 'last'}}})
    assert both['model']['kwargs'] == {'placement': 'last'}
    assert migrate(copy.deepcopy(loaded)) == loaded


def test_measured_entry_without_per_sample_results_is_a_bug_not_bad_input():
    from registry_fakes import fake_eval_result

    result = dataclasses.replace(fake_eval_result(60.0, {'pgd20': 20.0}), correct={})
    with pytest.raises(ValueError, match='correct') as info:
        measured_entry(spec=ModelSpec.from_name('resnet18_dense'), model_kwargs={}, dataset='cifar10',
                       method='normal', eval_result=result, provenance={})
    assert not isinstance(info.value, UserError)


def test_measured_entry_refuses_kwargs_of_another_spec():
    """The entry's model fields come from the spec, its kwargs from the build: the two must describe one model."""
    from registry_fakes import fake_eval_result

    spec = ModelSpec.from_name('resnet18_blockmoe_e4_k1', width=8)
    with pytest.raises(ValueError, match='not the spec') as info:
        measured_entry(spec=spec, model_kwargs={'width': 8, 'gate': 'conv_gap'}, dataset='cifar10', method='normal',
                       eval_result=fake_eval_result(60.0, {'pgd20': 20.0}), provenance={})
    assert not isinstance(info.value, UserError)


def test_paper_entries_store_their_attacks_and_noisy_gating():
    by_id = {e['entry_id']: e for e in load_entries(DEFAULT_REGISTRY) if e['source'] != 'measured'}
    best = by_id['paper-resnet18-blockmoe-last-entropy-gap-fc-k1-pgd']
    assert best['eval_settings']['attacks']['pgd20']['steps'] == 20
    assert best['eval_settings']['attacks']['apgd20']['implementation'] == 'torchattacks'
    # the paper code adds gate noise with the switch and KL losses only
    assert best['model']['noisy_gating'] is False
    assert by_id['paper-resnet18-blockmoe-all-switch-gap-fc-k2-pgd']['model']['noisy_gating'] is True
    assert by_id['paper-resnet18-dense-pgd']['model']['noisy_gating'] is None
    rb = by_id['robustbench-rice2020overfitting']
    assert rb['eval_settings']['attacks']['autoattack']['version'] == 'standard'
    assert 'DESIGN' not in json.dumps(rb)


def test_a_rewritten_leaderboard_does_not_make_the_code_dirty(tmp_path):
    import subprocess

    def git(*args):
        subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *args], cwd=tmp_path, check=True,
                       capture_output=True)
    (tmp_path / 'registry').mkdir()
    (tmp_path / 'code.py').write_text('x = 1\n')
    (tmp_path / 'registry' / 'LEADERBOARD.md').write_text('old\n')
    git('init', '-q')
    git('add', '.')
    git('commit', '-qm', 'first')
    commit = prov.git_commit(tmp_path)
    assert commit and not commit.endswith('-dirty')
    (tmp_path / 'registry' / 'LEADERBOARD.md').write_text('rewritten by a grid\n')
    assert prov.git_commit(tmp_path) == commit
    (tmp_path / 'code.py').write_text('x = 2\n')
    assert prov.git_commit(tmp_path) == f'{commit}-dirty'

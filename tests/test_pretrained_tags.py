"""Pretrained tags: `timm-moe ship` fills a folder from a finished study, and timm loads its tags offline by name.

The study here is a fake one (its cells, run directories and registry made in tmp_path, `bench.pipeline.grid`'s
study functions patched to point at them), holding a tiny real checkpoint: a width-4 Fashion-MNIST model.
"""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
from safetensors.torch import load_file

import timm_moe  # noqa: F401 - registers the models and the shipped tags
from timm_moe import ModelSpec
from timm_moe.models import register_tags
from timm_moe.models.pretrained import package_folder, read_manifest, tag_record

from bench import cli
from bench.core.atomic import atomic_save_safetensors
from bench.core.errors import UserError
from bench.core.provenance import sha256_file
from bench.data import dataset_info
from bench.pipeline import grid
from bench.pipeline import ship as ship_module
from bench.pipeline.ship import PACKAGE_LIMIT, ship
from bench.results.registry import write_entry
from registry_fakes import make_entry

NAME = 'resnet18_blockmoe_e4_k2'
TAG = 'fmnist_pgd'
KWARGS = dict(width=4, gate='conv_gap', aux_loss='switch', placement='last', expert_width='full')
DATASET = 'fashion-mnist-bundled'


def _cell(config, seed, tag):
    spec, timm_kwargs = ModelSpec.from_timm_kwargs(NAME, KWARGS)
    return dict(config=config, seed=seed, tag=tag, cell=f'{config}-seed{seed}', spec=spec, timm_kwargs=timm_kwargs)


def _make_run(run: Path, seed: int) -> None:
    """A run directory as `timm-moe train` leaves it: config.yaml and the weights as safetensors."""
    import yaml
    run.mkdir(parents=True)
    torch.manual_seed(seed)
    model = timm.create_model(NAME, num_classes=10, in_chans=1, **KWARGS)
    atomic_save_safetensors(model.state_dict(), run / 'model.safetensors')
    torch.save(model.state_dict(), run / 'model.pth')
    cfg = dict(model=NAME, dataset=DATASET, model_kwargs=KWARGS, training='pgd', epochs=1, seed=seed, lr=0.1)
    (run / 'config.yaml').write_text(yaml.safe_dump(cfg))


@pytest.fixture
def study(tmp_path, monkeypatch):
    """A finished study: config a tagged (seeds 0 and 1), config b untagged; the runs and a's entries exist."""
    out = tmp_path / 'study'
    cells = [_cell('a', 0, TAG), _cell('a', 1, TAG), _cell('b', 0, None)]
    spec = SimpleNamespace(out=str(out), name='study', registry=None)  # the real registry_dir: out/registry
    monkeypatch.setattr(grid, 'load_spec', lambda path: spec)
    monkeypatch.setattr(grid, 'cells', lambda s: list(cells), raising=False)
    monkeypatch.setattr(grid, 'run_dir', lambda c, s: out / 'cells' / c['cell'] / 'run', raising=False)
    for c in cells[:2]:
        _make_run(out / 'cells' / c['cell'] / 'run', c['seed'])
        for stage in ('main', 'autoattack'):
            entry = make_entry(entry_id=f'{c["cell"]}-{stage}', seed=c['seed'],
                               grid=dict(spec='study.yaml', config='a', seed=c['seed'], cell=c['cell'], stage=stage))
            entry['provenance']['checkpoint_sha256'] = sha256_file(out / 'cells' / c['cell'] / 'run' / 'model.pth')
            write_entry(entry, out / 'registry')
    return SimpleNamespace(out=out, cells=cells, spec='study.yaml', first_run=out / 'cells' / 'a-seed0' / 'run')


@pytest.fixture
def registered():
    """Register a folder's tags with timm; afterwards the default folder's tags again."""
    yield register_tags
    register_tags()


# ---------------------------------------------------------------------------------------------- ship

def test_ship_writes_the_first_seed_of_each_tagged_config(study, tmp_path):
    out, manifest = ship(study.spec, tmp_path / 'pretrained', dtype='float32')
    key = f'{NAME}.{TAG}'
    assert sorted(manifest) == [key] and sorted(p.name for p in out.iterdir()) == ['manifest.json', f'{key}.safetensors']
    assert json.loads((out / 'manifest.json').read_text()) == manifest
    record, info = manifest[key], dataset_info(DATASET)
    assert record['model_kwargs'] == dict(KWARGS, num_classes=10, in_chans=1)
    assert (record['input_size'], record['mean'], record['std']) == (
        list(info['input_size']), list(info['mean']), list(info['std']))
    assert record['entry_id'] == 'a-seed0-main' and record['dtype'] == 'float32' and record['dataset'] == DATASET
    assert record['spec'] == 'study'
    assert record['source_run'] == 'study/cells/a-seed0/run' and record['training']['seed'] == 0
    assert record['sha256'] == sha256_file(out / record['file'])
    shipped, run = load_file(out / record['file']), load_file(study.first_run / 'model.safetensors')
    assert shipped.keys() == run.keys() and all(torch.equal(shipped[k], run[k]) for k in run)
    assert not list(tmp_path.glob('.pretrained*')), 'no temporary folder left behind'


def test_ship_auto_dtype_falls_back_to_float16_over_the_limit(study, tmp_path, monkeypatch):
    monkeypatch.setattr(ship_module, 'AUTO_FLOAT32_LIMIT', 1000)
    _, manifest = ship(study.spec, tmp_path / 'pretrained')
    record = manifest[f'{NAME}.{TAG}']
    assert record['dtype'] == 'float16'
    assert load_file(tmp_path / 'pretrained' / record['file'])['conv1.weight'].dtype == torch.float16


@pytest.mark.parametrize('missing', ['run', 'entry'])
def test_ship_refuses_a_tagged_config_without_its_first_seed_and_keeps_the_old_folder(study, tmp_path, missing):
    out = tmp_path / 'pretrained'
    out.mkdir()
    (out / 'manifest.json').write_text('{}\n')
    if missing == 'run':
        (study.first_run / 'config.yaml').unlink()
    else:
        (study.out / 'registry' / DATASET).rename(tmp_path / 'elsewhere')
    with pytest.raises(UserError, match=r'tagged config a \(tag fmnist_pgd\): .*a-seed0') as e:
        ship(study.spec, out)
    assert '\n' not in str(e.value)
    assert sorted(p.name for p in out.iterdir()) == ['manifest.json'] and not list(tmp_path.glob('.pretrained*'))


@pytest.mark.parametrize('how', ['retrained', 'gone'])
def test_ship_refuses_weights_other_than_the_ones_its_entry_measured(study, tmp_path, how):
    # the cell trained again on another machine (other weights), or its model.pth lost
    torch.manual_seed(123)
    if how == 'retrained':
        torch.save(timm.create_model(NAME, num_classes=10, in_chans=1, **KWARGS).state_dict(),
                   study.first_run / 'model.pth')
    else:
        (study.first_run / 'model.pth').unlink()
    with pytest.raises(UserError, match=r'tagged config a \(tag fmnist_pgd\): .* but entry a-seed0-main was '
                                        r'measured on sha256 [0-9a-f]{12}') as e:
        ship(study.spec, tmp_path / 'pretrained')
    assert ('no model.pth' in str(e.value)) == (how == 'gone') and not (tmp_path / 'pretrained').exists()


def test_ship_seed_ships_another_seed_and_refuses_one_the_study_lacks(study, tmp_path):
    _, manifest = ship(study.spec, tmp_path / 'pretrained', dtype='float32', seed=1)
    record = manifest[f'{NAME}.{TAG}']
    assert record['entry_id'] == 'a-seed1-main' and record['training']['seed'] == 1
    with pytest.raises(UserError, match=r'^--seed 7: tagged config a has no such seed; its seeds: 0, 1$'):
        ship(study.spec, tmp_path / 'pretrained', seed=7)
    assert read_manifest(tmp_path / 'pretrained')[f'{NAME}.{TAG}']['entry_id'] == 'a-seed1-main'


def test_ship_reads_the_registry_it_is_given(study, tmp_path):
    (study.out / 'registry').rename(tmp_path / 'elsewhere')
    with pytest.raises(UserError, match='no main registry entry'):
        ship(study.spec, tmp_path / 'pretrained')
    _, manifest = ship(study.spec, tmp_path / 'pretrained', registry=tmp_path / 'elsewhere')
    assert manifest[f'{NAME}.{TAG}']['entry_id'] == 'a-seed0-main'


def _other_specs_tag(folder: Path, spec='other', key='resnet18_dense.other_tag'):
    """A folder as another study's ship left it: one tag with its file."""
    folder.mkdir()
    (folder / f'{key}.safetensors').write_bytes(b'weights of another study')
    record = dict(file=f'{key}.safetensors', sha256='0' * 64, dtype='float32', model_kwargs={'num_classes': 10},
                  input_size=[1, 28, 28], mean=[0.5], std=[0.5], spec=spec)
    (folder / 'manifest.json').write_text(json.dumps({key: record}))
    return key, record


def test_ship_replaces_its_own_tags_and_keeps_other_specs(study, tmp_path):
    out = tmp_path / 'pretrained'
    key, record = _other_specs_tag(out)
    ship(study.spec, out, dtype='float32', seed=1)
    ship(study.spec, out, dtype='float32')  # again: this spec's tag is replaced, the other one kept as it was
    manifest = json.loads((out / 'manifest.json').read_text())
    assert sorted(manifest) == sorted([key, f'{NAME}.{TAG}']) and manifest[key] == record
    assert manifest[f'{NAME}.{TAG}']['entry_id'] == 'a-seed0-main'
    assert (out / record['file']).read_bytes() == b'weights of another study'


def test_ship_auto_dtype_counts_the_tags_it_keeps(study, tmp_path, monkeypatch):
    out = tmp_path / 'pretrained'
    _other_specs_tag(out)
    alone = ship(study.spec, tmp_path / 'alone', dtype='float32')[0]
    monkeypatch.setattr(ship_module, 'AUTO_FLOAT32_LIMIT', sum(p.stat().st_size for p in alone.glob('*.safetensors')) + 1)
    assert ship(study.spec, tmp_path / 'alone')[1][f'{NAME}.{TAG}']['dtype'] == 'float32'
    assert ship(study.spec, out)[1][f'{NAME}.{TAG}']['dtype'] == 'float16'  # the kept file tips it over


@pytest.mark.parametrize('case, message', [
    ('nameless', r"tag resnet18_dense.other_tag names no spec, so ship cannot tell whether to replace or keep it"),
    ('taken', rf"tag {NAME}.{TAG} is already shipped by spec other in .*; give the config another tag"),
    ('file gone', r"tag resnet18_dense.other_tag of spec other has no file resnet18_dense.other_tag.safetensors"),
])
def test_ship_refuses_a_folder_whose_other_tags_it_cannot_keep(study, tmp_path, case, message):
    out = tmp_path / 'pretrained'
    key, record = _other_specs_tag(out, key=f'{NAME}.{TAG}' if case == 'taken' else 'resnet18_dense.other_tag')
    if case == 'nameless':
        (out / 'manifest.json').write_text(json.dumps({key: {k: v for k, v in record.items() if k != 'spec'}}))
    if case == 'file gone':
        (out / record['file']).unlink()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(UserError, match=message):
        ship(study.spec, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and not list(tmp_path.glob('.pretrained*'))


def test_every_shipped_tag_names_the_study_that_shipped_it():
    """So that shipping one study's tags keeps the others' (the package ships the tags of several studies)."""
    from bench.pipeline.grid import load_spec
    for key, record in read_manifest(package_folder()).items():
        assert record['source_run'].split('/')[0] == Path(load_spec(record['spec']).out).name, key


def test_ship_refuses_a_folder_it_did_not_write(study, tmp_path):
    (tmp_path / 'code.py').write_text('')
    with pytest.raises(UserError, match="holds 'code.py'"):
        ship(study.spec, tmp_path)


def test_ship_verb(study, tmp_path, capsys):
    assert cli.main(['ship', study.spec, '--out', str(tmp_path / 'p'), '--dtype', 'float16']) == 0
    assert f'{NAME}.{TAG}: {NAME}.{TAG}.safetensors (float16' in capsys.readouterr().out
    with pytest.raises(SystemExit, match='2'):
        cli.main(['ship', study.spec, '--dtype', 'bfloat16'])
    assert "invalid choice: 'bfloat16'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- loading

@pytest.fixture
def shipped(study, tmp_path, registered):
    """The study shipped (float16, to test the cast) and registered: (its folder, the file's state_dict)."""
    out, manifest = ship(study.spec, tmp_path / 'pretrained', dtype='float16')
    assert registered(out) == [f'{NAME}.{TAG}']
    return out, load_file(out / manifest[f'{NAME}.{TAG}']['file'])


def test_registering_tags_builds_new_default_cfgs_and_leaves_the_old_ones(study, tmp_path, registered):
    from timm_moe.models import registry as family_registry
    old = family_registry.default_cfgs[NAME]
    before = (list(old.tags), dict(old.cfgs), old.is_pretrained)
    registered(ship(study.spec, tmp_path / 'pretrained', dtype='float16')[0])
    # timm's registry may hold the old object: it is replaced on re-registration, never changed under timm's feet
    assert (list(old.tags), dict(old.cfgs), old.is_pretrained) == before
    new = family_registry.default_cfgs[NAME]
    assert new is not old and list(new.tags) == ['', TAG] and new.cfgs[''] is old.cfgs[''] and new.is_pretrained


def test_tag_loads_offline_with_its_architecture_and_weights(shipped):
    model = timm.create_model(f'{NAME}.{TAG}', pretrained=True)
    assert {k: model.moe_config[k] for k in KWARGS} == KWARGS and model.moe_config['k'] == 2
    assert (model.num_classes, model.in_chans) == (10, 1)
    cfg, info = model.pretrained_cfg, dataset_info(DATASET)
    assert (cfg['tag'], cfg['input_size'], cfg['pool_size']) == (TAG, (1, 28, 28), (4, 4))
    assert (cfg['mean'], cfg['std']) == (tuple(info['mean']), tuple(info['std']))
    state = model.state_dict()
    assert all(state[k].dtype != torch.float16 for k in state)  # the float16 file is cast into the fp32 model
    assert all(torch.equal(state[k], v.to(state[k].dtype)) for k, v in shipped[1].items())
    assert model.eval()(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert tag_record(f'{NAME}.{TAG}')['entry_id'] == 'a-seed0-main'


def test_tag_without_pretrained_builds_its_architecture_and_user_kwargs_win(shipped):
    model = timm.create_model(f'{NAME}.{TAG}')
    model.load_state_dict(shipped[1])
    assert timm.create_model(f'{NAME}.{TAG}', pretrained=True, drop_rate=0.3).drop_rate == 0.3
    assert timm.create_model(f'{NAME}.{TAG}', pretrained=True, num_classes=3).fc.out_features == 3


def test_tags_are_listed_and_the_untagged_default_is_unchanged(shipped):
    assert f'{NAME}.{TAG}' in timm.list_pretrained('resnet18*')
    assert NAME not in timm.list_pretrained('resnet18*')
    plain = timm.create_model(NAME, device='meta')
    assert plain.moe_config['width'] == 64 and plain.pretrained_cfg['num_classes'] == 100
    assert plain.pretrained_cfg.get('tag') is None and 'file' not in plain.pretrained_cfg


def test_a_missing_weights_file_is_named(shipped):
    (shipped[0] / f'{NAME}.{TAG}.safetensors').unlink()
    with pytest.raises(FileNotFoundError, match=rf'{NAME}.{TAG}: its weights file .*{TAG}.safetensors is missing'):
        timm.create_model(f'{NAME}.{TAG}', pretrained=True)


@pytest.mark.parametrize('damage', ['truncate', 'flip'])
def test_a_corrupt_weights_file_is_named_in_one_line(shipped, capsys, damage):
    file = shipped[0] / f'{NAME}.{TAG}.safetensors'
    data = file.read_bytes()
    # truncated: safetensors itself would fail; one byte flipped in a weight: it would load wrong weights silently
    file.write_bytes(data[:len(data) // 2] if damage == 'truncate' else data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])
    with pytest.raises(ValueError, match=rf'{NAME}.{TAG}: its weights file .*{TAG}.safetensors is corrupt'):
        timm.create_model(f'{NAME}.{TAG}', pretrained=True)
    assert cli.main(['eval', '--model', f'{NAME}.{TAG}', '--pretrained', '--dataset', DATASET]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'is corrupt' in err and str(file) in err and 'Traceback' not in err


def test_a_folder_without_manifest_is_refused(tmp_path, registered):
    with pytest.raises(FileNotFoundError, match='manifest.json does not exist'):
        registered(tmp_path)


# ---------------------------------------------------------------------------------------------- package data

def test_the_shipped_tags_are_consistent_and_load():
    folder = package_folder()
    records = read_manifest(folder)
    files = sorted(p.name for p in folder.iterdir())
    assert files == sorted(['manifest.json', *(r['file'] for r in records.values())]), 'files without a tag'
    assert sum((folder / f).stat().st_size for f in files) < PACKAGE_LIMIT
    for key, record in records.items():
        assert sha256_file(folder / record['file']) == record['sha256'], key
        assert key in timm.list_pretrained()
        model = timm.create_model(key, pretrained=True)
        assert model.num_classes == record['model_kwargs']['num_classes']
        assert tuple(model.pretrained_cfg['input_size']) == tuple(record['input_size'])

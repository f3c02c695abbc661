"""`timm-moe export`: a hub folder that timm loads (local-dir:, pretrained_cfg_overlay), a model card from the
registry, and one-line refusals of weights from another architecture, E or k."""
import json
import shutil
from pathlib import Path

import pytest
import timm
import torch

import timm_moe  # noqa: F401  registers the models
from bench.cli import main
from bench.core.errors import UserError
from bench.pipeline.export import export_run
from bench.results.export import (CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, check_compatible, load_exported, read_export,
                                  training_of, what_ran)
from bench.core.provenance import sha256_file
from trained_run import NAME, two_step_run

REPO = Path(__file__).resolve().parent.parent
# the shipped quickstart entry of that model (scripts/refresh_quickstart_entries.py renames it when it regenerates it)
ENTRY = next(p for p in sorted((REPO / 'registry' / 'fashion-mnist-bundled' / 'Linf').glob(f'{NAME}-pgd-*.json'))
             if '"attack_note": "quickstart:' in p.read_text())


def _has_local_dir() -> bool:
    """Newer timm reads `local-dir:` folders; 1.0.9 (robustbench's pin) does not."""
    from timm.models import _hub
    return hasattr(_hub, 'load_model_config_from_path')


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    """A real (two-step) training run, as `timm-moe train` writes it."""
    return two_step_run(tmp_path_factory.mktemp('run') / 'run')


@pytest.fixture(scope='module')
def exported(run_dir, tmp_path_factory):
    empty_registry = tmp_path_factory.mktemp('registry')
    return export_run(run_dir, tmp_path_factory.mktemp('export') / 'hub', registry_dir=empty_registry)


def _run_weights(run_dir: Path) -> dict:
    return torch.load(run_dir / 'model.pth', map_location='cpu', weights_only=True)


def _assert_same_weights(model: torch.nn.Module, weights: dict) -> None:
    got = model.state_dict()
    assert got.keys() == weights.keys()
    for k, v in weights.items():
        assert torch.equal(got[k], v), k


def test_export_writes_hub_folder(exported, run_dir):
    assert sorted(p.name for p in exported.iterdir()) == sorted([CARD_FILE, CONFIG_FILE, WEIGHTS_FILE])
    cfg = json.loads((exported / CONFIG_FILE).read_text())
    assert cfg['architecture'] == NAME and cfg['num_classes'] == 10
    assert cfg['model_args'] == dict(num_classes=10, in_chans=1, width=4)
    # the preprocessing the weights were trained with: Fashion-MNIST's, not the CIFAR-100 default
    pcfg = cfg['pretrained_cfg']
    assert pcfg['input_size'] == [1, 28, 28] and pcfg['mean'] == [0.286] and pcfg['std'] == [0.353]
    assert pcfg['num_classes'] == 10 and 'url' not in pcfg and 'file' not in pcfg
    state_dict, source = read_export(exported)
    assert source == {'architecture': NAME, 'model_args': cfg['model_args']}
    weights = _run_weights(run_dir)
    assert state_dict.keys() == weights.keys() and all(torch.equal(state_dict[k], weights[k]) for k in weights)
    card = (exported / CARD_FILE).read_text()
    assert 'No registry entry was given or found' in card and 'accuracy %' not in card
    assert sha256_file(exported / WEIGHTS_FILE) in card
    # what the run was and what actually ran: a max_steps=2 run of a 200-epoch config trained 2 steps
    assert f'# {NAME} (fashion-mnist-bundled, normal training)' in card and '? training' not in card
    assert '| trained for | 2 optimizer steps: 1 complete epoch of 200 (stopped by max_steps=2) |' in card


def test_card_says_what_ran():
    history = [dict(kind='epoch', epoch=0, step=20, complete=False)]
    assert what_ran(dict(epochs=2, max_steps=20), dict(steps=20, history=history)) == \
        '20 optimizer steps: 0 complete epochs of 2 and part of epoch 1 (stopped by max_steps=20)'
    full = [dict(kind='epoch', epoch=e, step=10 * (e + 1), complete=True) for e in range(2)]
    assert what_ran(dict(epochs=2, max_steps=None), dict(steps=20, history=full)) == '20 optimizer steps: 2 complete epochs of 2'
    assert what_ran(dict(epochs=2), None).startswith('unknown')
    assert training_of(dict(method='pgd')) == 'pgd' and training_of(dict(training='trades')) == 'trades'


@pytest.mark.skipif(not _has_local_dir(), reason=f"timm {timm.__version__} has no 'local-dir:' model source "
                    '(newer timm has it); test_pretrained_cfg_overlay_loads_safetensors covers this version')
def test_local_dir_loads_export(exported, run_dir):
    model = timm.create_model(f'local-dir:{exported}', pretrained=True)
    assert type(model).__name__ == 'ResNet' and model.moe_config['num_experts'] == 4
    _assert_same_weights(model, _run_weights(run_dir))
    data_cfg = timm.data.resolve_data_config(model=model)
    assert tuple(data_cfg['input_size']) == (1, 28, 28) and tuple(data_cfg['mean']) == (0.286,)


def test_pretrained_cfg_overlay_loads_safetensors(exported, run_dir):
    # the model card's recipe for every timm version
    cfg = json.loads((exported / CONFIG_FILE).read_text())
    model = timm.create_model(cfg['architecture'], pretrained=True, **cfg['model_args'],
                              pretrained_cfg_overlay=dict(cfg['pretrained_cfg'], file=str(exported / WEIGHTS_FILE)))
    _assert_same_weights(model, _run_weights(run_dir))
    assert tuple(model.pretrained_cfg['mean']) == (0.286,)
    assert "pretrained_cfg_overlay=dict(cfg['pretrained_cfg'], file=" in (exported / CARD_FILE).read_text()


def test_load_exported_round_trip(exported, run_dir):
    model = load_exported(exported)
    _assert_same_weights(model, _run_weights(run_dir))


@pytest.mark.parametrize('target, kwargs, differs', [
    ('resnet18_blockmoe_e8_k1', {}, 'experts 4 vs 8'),
    ('resnet18_blockmoe_e4_k2', {}, 'k 1 vs 2'),  # identical keys and shapes: only the metadata tells
    ('resnet50_blockmoe_e4_k1', {}, 'arch resnet18 vs resnet50'),
    ('resnet18_convmoe_e4_k1', {}, 'kind block vs conv'),
    ('resnet18_dense', {}, 'experts 4 vs 0'),
    (NAME, dict(gate='conv_gap'), 'gate gap_fc vs conv_gap'),
    (NAME, dict(placement='all'), 'placement last vs all'),
    (NAME, dict(width=8), 'width 4 vs 8'),
])
def test_wrong_architecture_fails_in_one_line(exported, target, kwargs, differs):
    with pytest.raises(UserError) as err:
        load_exported(exported, target, num_classes=10, in_chans=1, **{'width': 4, **kwargs})
    msg = str(err.value)
    assert differs in msg and '\n' not in msg and target in msg


def test_check_compatible_names_keys_when_layout_matches():
    model = timm.create_model('resnet18_dense', width=4)
    weights = dict(model.state_dict())
    weights['fc.extra'] = torch.zeros(1)
    with pytest.raises(UserError, match=r'1 unexpected keys \(fc.extra\)'):
        check_compatible(weights, model)
    check_compatible(model.state_dict(), model)  # fits: no error


def test_card_from_registry_entry(run_dir, tmp_path):
    # the shipped quickstart entry, re-pointed at this run's weights, in a registry of its own
    registry = tmp_path / 'registry'
    entry = json.loads(ENTRY.read_text())
    entry['provenance']['checkpoint_sha256'] = sha256_file(run_dir / 'model.pth')
    target = registry / ENTRY.relative_to(REPO / 'registry')
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps(entry))
    shutil.copy(REPO / 'registry' / 'schema.json', registry / 'schema.json')

    out = export_run(run_dir, tmp_path / 'hub', registry_dir=registry)  # found by checkpoint sha256
    card = (out / CARD_FILE).read_text()
    assert f'| clean | {entry["clean_acc"]:.2f} |' in card
    assert f'| pgd20 | {entry["robust_acc"]["pgd20"]:.2f} |' in card
    assert entry['attack_note'] in card and entry['provenance']['git_commit'] in card
    assert f'ratio {entry["flops"]["ratio"]:.4f}' in card
    by_id = export_run(run_dir, tmp_path / 'hub2', entry=entry['entry_id'], registry_dir=registry)
    assert (by_id / CARD_FILE).read_text() == card
    with pytest.raises(UserError, match='no entry with that id'):
        export_run(run_dir, tmp_path / 'hub3', entry='no-such-entry', registry_dir=registry)


def test_cli_refuses_non_empty_out(run_dir, tmp_path, capsys):
    out = tmp_path / 'hub'
    out.mkdir()
    (out / 'keep.txt').write_text('mine')
    args = ['export', '--checkpoint', str(run_dir), '--out', str(out), '--registry', str(tmp_path / 'none')]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert 'is not empty; pass --overwrite' in err and len(err.splitlines()) == 1
    assert (out / 'keep.txt').read_text() == 'mine'
    assert main(args + ['--overwrite']) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([CARD_FILE, CONFIG_FILE, WEIGHTS_FILE])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.hub.')]  # no temporary folder left


@pytest.mark.parametrize('make, message', [
    (lambda run, tmp: tmp / 'missing', 'does not exist'),
    (lambda run, tmp: tmp, 'holds no model.pth'),
])
def test_cli_bad_checkpoint(run_dir, tmp_path, capsys, make, message):
    assert main(['export', '--checkpoint', str(make(run_dir, tmp_path)), '--out', str(tmp_path / 'o')]) == 2
    assert message in capsys.readouterr().err

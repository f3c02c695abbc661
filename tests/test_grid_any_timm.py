"""A grid cell and a registry entry of any timm model, plain or converted to MoE (`convert:` in a grid config).

One tiny grid (ConvNeXt-atto plain and converted at E=4 k=1, two PGD training steps each on Fashion-MNIST
resized to 32 px, 16 attacked images) runs once for the module; the tests read its registry: the entries, their
rebuild from the entry alone, the leaderboard in its three forms, and the checks of the conversion record.
"""
import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from rich.console import Console

from bench.cli import main
from bench.core.errors import UserError
from bench.data import dataset_info, eval_tensors
from bench.checkpoints import load_checkpoint
from bench.models import build_model, normalized
from bench.pipeline.grid import cells, load_spec
from bench.results.entries import model_of_entry
from bench.results.leaderboard import print_table, render_markdown
from bench.results.leaderboard.html import render_html
from bench.results.registry import load_entries, validate_entry
from timm_moe.conversion import TimmSpec

CONVERT = {'targets': 'stages.3.blocks.*', 'num_experts': 4, 'k': 1, 'copy_weights': True}
SPEC = dict(
    configs={'plain': {'model': 'convnext_atto'}, 'moe': {'model': 'convnext_atto', 'convert': CONVERT}},
    train=dict(dataset='fashion-mnist-bundled', epochs=1, batch_size=16, train_limit=32, lr=0.05, eval_limit=0,
               workers=0, img_size=32),
    eval=dict(attacks='quick', n_examples=16, batch_size=16, n_check=8))


def _write(folder: Path, **changes) -> Path:
    spec = dict(copy.deepcopy(SPEC), out=str(folder / 'grid'), **changes)
    path = folder / 'grid_timm.yaml'
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope='module')
def grid(tmp_path_factory):
    """(spec path, {config: entry}) of the tiny grid, run once through the CLI."""
    folder = tmp_path_factory.mktemp('grid_timm')
    path = _write(folder)
    assert main(['grid', str(path), '--no-progress']) == 0
    entries = load_entries(folder / 'grid' / 'registry')  # validates every file
    return path, {e['grid']['config']: e for e in entries}


def test_the_cells_name_the_timm_family_and_say_converted(grid, capsys):
    path, _ = grid
    by_config = {c['config']: c for c in cells(load_spec(path))}
    assert by_config['moe']['spec'] == TimmSpec('convnext_atto', CONVERT)
    assert [(c['arch'], c['kind'], c['experts'], c['k']) for c in (by_config['plain'], by_config['moe'])] == [
        ('convnext', None, 0, None), ('convnext', 'converted', 4, 1)]
    assert main(['grid', str(path), '--dry-run']) == 0
    rows = {line.split()[1]: line for line in capsys.readouterr().out.splitlines() if 'convnext_atto' in line}
    assert 'converted' in rows['moe'] and 'dense' in rows['plain'] and all('done' in r for r in rows.values())


def test_the_entry_records_the_timm_name_and_the_conversion(grid):
    _, entries = grid
    plain, moe = entries['plain']['model'], entries['moe']['model']
    assert (moe['name'], moe['arch'], moe['experts'], moe['k']) == ('convnext_atto', 'convnext', 4, 1)
    assert moe['convert'] == CONVERT and moe['placement'] == CONVERT['targets'] and moe['gate'] == 'gap_fc'
    assert isinstance(moe['noisy_gating'], bool)
    # the plain model's block has no conversion at all, as every entry before conversions existed
    assert 'convert' not in plain and (plain['experts'], plain['k']) == (0, None)
    assert entries['moe']['training']['config']['convert'] == CONVERT
    assert entries['moe']['entry_id'] != entries['plain']['entry_id']
    # the audit: the converted model against its unconverted self, at k=1 the dense FLOPs plus the gates
    assert entries['plain']['flops']['ratio'] == 1.0
    assert 1.0 < entries['moe']['flops']['ratio'] < 1.001


def test_the_entry_alone_rebuilds_the_model_that_was_measured(grid):
    _, entries = grid
    entry = entries['moe']
    run = Path(entry['training']['config_path']).parent
    rebuilt = model_of_entry(entry)
    load_checkpoint(rebuilt, run / 'model.pth')  # strict: every key and shape of the trained model
    assert getattr(rebuilt, 'moe_conversion') == CONVERT
    info = dataset_info(entry['dataset'])
    measured = build_model(TimmSpec('convnext_atto', CONVERT), info['num_classes'], info['in_chans'],
                           checkpoint=run / 'model.pth')
    size = entry['training']['config']['img_size']
    x, y = eval_tensors(entry['dataset'], entry['n_examples'])
    with torch.no_grad():
        logits = normalized(rebuilt.eval(), info['mean'], info['std'], size)(x)
        assert torch.equal(logits, normalized(measured.eval(), info['mean'], info['std'], size)(x))
    # and the entry's own clean accuracy, to the point
    assert 100.0 * (logits.argmax(1) == y).float().mean().item() == pytest.approx(entry['clean_acc'])


def test_the_leaderboard_shows_the_converted_model_in_every_form(grid):
    _, entries = grid
    shown = 'convnext_atto converted E=4 k=1'
    assert shown in render_markdown(list(entries.values()))
    page = render_html(list(entries.values()), lambda e: f'{e["entry_id"]}.json')
    assert shown in page
    for wide in (False, True):
        console = Console(record=True, width=300)
        print_table(list(entries.values()), wide=wide, console=console)
        assert shown in console.export_text()


@pytest.mark.parametrize('change, message', [
    (lambda m: m['convert'].update(gaet='gap_fc'), "model.convert: convert key gaet='gap_fc': not an argument"),
    (lambda m: m['convert'].update(k=5), 'model.convert: k=5'),
    (lambda m: m.update(experts=8), 'model.experts is 8 but model.convert converts with 4'),
    (lambda m: m['convert'].pop('targets'), "model.convert: 'targets' is a required property"),
])
def test_a_malformed_conversion_record_is_refused_in_one_line(grid, change, message):
    _, entries = grid
    entry = copy.deepcopy(entries['moe'])
    change(entry['model'])
    with pytest.raises(UserError) as e:
        validate_entry(entry)
    assert message in str(e.value) and '\n' not in str(e.value)


@pytest.mark.parametrize('config, message', [
    ({'model': 'resnet18_blockmoe_e4_k1', 'convert': CONVERT}, 'convert with resnet18_blockmoe_e4_k1: it is '
                                                               'already a timm-moe model'),
    ({'model': 'convnext_atto', 'convert': dict(CONVERT, experts=4)}, 'convert key experts=4'),
    ({'model': 'convnext_atto', 'convert': 'stages.3'}, "config 'bad'"),
    ({'model': 'convnext_attoo'}, "'convnext_attoo': expected a timm-moe name"),
])
def test_a_bad_config_is_refused_when_the_spec_loads(tmp_path, config, message):
    with pytest.raises(UserError) as e:
        load_spec(_write(tmp_path, configs={'bad': config}))
    assert message in str(e.value) and '\n' not in str(e.value)


def test_the_entry_passes_the_schema_and_json_round_trip(grid):
    _, entries = grid
    validate_entry(json.loads(json.dumps(entries['moe'])))


def test_a_recipe_per_arch_that_misses_the_timm_family_is_refused(tmp_path):
    path = _write(tmp_path, train_config={'resnet18': 'fashion_mnist_quick'})
    with pytest.raises(UserError, match="has no recipe for arch 'convnext'"):
        load_spec(path)

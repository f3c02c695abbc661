"""The pipeline: one cell (spec -> training config -> entry), registration, and the grid's shards (2 processes)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.cli import main
from bench.core.errors import UserError
from bench.pipeline.cell import Evaluation, Output, register, run_cell, training_config
from bench.pipeline.grid import cells, load_spec, shard_cells
from bench.results.registry import load_entries
from registry_fakes import make_entry
from timm_moe import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(arch=['resnet18'], experts=[2], k=[1], gate=['gap_fc', 'conv_gap'], aux_loss=['entropy'],
            placement=['last'], training=['normal'], dense=True, model_kwargs=dict(width=4),
            train=dict(dataset='fashion-mnist-bundled', epochs=1, batch_size=32, train_limit=64, lr=0.05,
                       eval_limit=0, workers=0),
            eval=dict(attacks='quick', n_examples=32, batch_size=32, n_check=16))


def _spec(tmp_path: Path, **kw) -> Path:
    path = tmp_path / 'grid.yaml'
    path.write_text(yaml.safe_dump(dict(TINY, out=str(tmp_path / 'grid'), **kw)))
    return path


# --- one cell ----------------------------------------------------------------------------------------------

def test_training_config_takes_model_and_kwargs_from_the_spec():
    spec = ModelSpec.from_name('resnet18_blockmoe_e4_k2', width=8, gate='conv_gap')
    cfg = training_config(spec, timm_kwargs={'drop_rate': 0.1}, epochs=1)
    assert cfg.model == spec.name and cfg.epochs == 1
    assert cfg.model_kwargs == {'drop_rate': 0.1, 'width': 8, 'gate': 'conv_gap'}
    assert ModelSpec.from_timm_kwargs(cfg.model, cfg.model_kwargs) == (spec, {'drop_rate': 0.1})


def test_run_cell_refuses_a_config_of_another_model_before_training(tmp_path):
    spec = ModelSpec.from_name('resnet18_blockmoe_e2_k1', width=4)
    other = training_config(ModelSpec.from_name('resnet18_dense', width=4), out=str(tmp_path / 'run'))
    with pytest.raises(ValueError, match='not the spec') as info:
        run_cell(spec, other, Evaluation(), Output(registry=tmp_path / 'registry'))
    assert not isinstance(info.value, UserError)  # a caller's bug, not the user's input
    assert not (tmp_path / 'run').exists() and not (tmp_path / 'registry').exists()


def test_register_keeps_an_existing_entry_unless_told(tmp_path):
    first = make_entry(entry_id='same-run', clean=60.0)
    path = register(first, Output(registry=tmp_path))
    text = path.read_text()
    again = make_entry(entry_id='same-run', clean=61.0)  # the same id: the same run, measured again
    assert register(again, Output(registry=tmp_path)) == path and path.read_text() == text
    assert register(again, Output(registry=tmp_path, overwrite_entry=True)) == path
    assert json.loads(path.read_text())['clean_acc'] == 61.0


def test_an_unknown_eval_key_is_refused_before_any_cell(tmp_path, capsys):
    path = _spec(tmp_path, eval=dict(TINY['eval'], bogus=1))
    assert main(['grid', str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown eval key 'bogus'" in err[0]
    assert not (tmp_path / 'grid' / 'cells').exists()


# --- shards ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('count', [1, 2, 3, 7, 200])
def test_shards_partition_the_cells(count):
    grid = cells(load_spec('grid_paper_cifar100'))
    slices = [[c['cell'] for c in shard_cells(grid, (i, count))] for i in range(count)]
    flat = [c for s in slices for c in s]
    assert sorted(flat) == sorted(c['cell'] for c in grid) and len(flat) == len(set(flat))  # each cell once
    assert [c['cell'] for c in shard_cells(grid, None)] == [c['cell'] for c in grid]


@pytest.mark.parametrize('shard', [(2, 2), (-1, 2), (0, 0)])
def test_a_bad_shard_pair_is_a_bug(shard):
    with pytest.raises(ValueError, match='shard') as info:
        shard_cells(cells(load_spec('grid_tiny')), shard)
    assert not isinstance(info.value, UserError)


@pytest.mark.parametrize('text', ['2/2', '1', 'a/b', '0/0', '-1/2', '1/2/3'])
def test_a_bad_shard_flag_is_one_line(tmp_path, capsys, text):
    assert main(['grid', str(_spec(tmp_path)), '--dry-run', f'--shard={text}']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f'--shard {text!r}' in err[0] and 'I/N' in err[0]


def test_dry_run_of_a_shard_lists_its_slice_only(tmp_path, capsys):
    assert main(['grid', str(_spec(tmp_path)), '--dry-run', '--shard', '1/2']) == 0
    out = capsys.readouterr().out
    assert '(shard 1/2): 1 cells' in out and 'gap_fc-entropy-last-normal' in out
    assert 'resnet18_dense-normal' not in out and 'conv_gap' not in out


def test_two_shards_in_two_processes_fill_one_registry(tmp_path):
    spec = _spec(tmp_path, eval=dict(attacks='pgd10', n_examples=16, batch_size=16, n_check=8, per_expert=False))
    # one thread each: two processes that each take every core slow each other down many times over
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    procs = [subprocess.Popen([sys.executable, '-m', 'bench.cli', 'grid', str(spec), '--shard', f'{i}/2'],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert 'grid: 2 done' in outs[0] and 'grid: 1 done' in outs[1]  # cells [0, 2] and [1] of 3
    entries = load_entries(tmp_path / 'grid' / 'registry')  # every file valid: none torn
    names = sorted((e['model']['name'], e['model']['gate']) for e in entries)
    assert names == [('resnet18_blockmoe_e2_k1', 'conv_gap'), ('resnet18_blockmoe_e2_k1', 'gap_fc'),
                     ('resnet18_dense', None)]
    for c in cells(load_spec(spec)):
        done = json.loads((tmp_path / 'grid' / 'cells' / c['cell'] / 'done.json').read_text())
        assert Path(done['entry']).exists()

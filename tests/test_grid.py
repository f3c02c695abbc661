"""The sweep runner: dry run, entries that validate, resume without redoing cells, and a failing cell."""
import json
from pathlib import Path

import pytest
import yaml

from bench.cli import main
from bench.grid import cells, load_spec
from bench.registry import load_entries

TINY = dict(arch=['resnet18'], experts=[2], k=[1], gate=['gap_fc'], aux_loss=['entropy'], placement=['last'],
            training=['normal'], dense=True, model_kwargs=dict(width=4),
            train=dict(dataset='fashion-mnist-bundled', epochs=1, batch_size=32, train_limit=64, lr=0.05,
                       eval_limit=0, workers=0),
            eval=dict(attacks='quick', n_examples=32, batch_size=32, n_check=16))


def _spec(tmp_path: Path, **kw) -> Path:
    spec = dict(TINY, out=str(tmp_path / 'grid'), **kw)
    path = tmp_path / 'grid.yaml'
    path.write_text(yaml.safe_dump(spec))
    return path


def test_cells_follow_the_axes_and_skip_k_above_e():
    spec = load_spec('grid_paper_cifar100')
    grid = cells(spec)
    # 2 arch x 2 training x (1 dense + 1 E x 2 k x 2 gates x 3 losses x 2 placements)
    assert len(grid) == 2 * 2 * (1 + 2 * 2 * 3 * 2)
    assert len({c['cell'] for c in grid}) == len(grid)
    spec.k = [1, 8]
    assert all(c['k'] in (None, 1) for c in cells(spec))


def test_dry_run_lists_and_runs_nothing(tmp_path, capsys):
    assert main(['grid', str(_spec(tmp_path)), '--dry-run']) == 0
    out = capsys.readouterr().out
    assert 'resnet18_dense-normal' in out and 'resnet18_blockmoe_e2_k1-gap_fc-entropy-last-normal' in out
    assert not (tmp_path / 'grid' / 'cells').exists()


def test_tiny_sweep_writes_valid_entries_and_resumes(tmp_path, capsys):
    spec = _spec(tmp_path)
    assert main(['grid', str(spec)]) == 0
    registry = tmp_path / 'grid' / 'registry'
    entries = load_entries(registry)  # validates every file
    assert len(entries) == 2 and all(e['source'] == 'measured' for e in entries)
    moe = next(e for e in entries if e['model']['experts'] == 2)
    assert moe['per_expert'] and moe['flops']['ratio'] == pytest.approx(1.0, abs=1e-3)
    assert moe['provenance']['checkpoint_sha256'] and (registry / 'LEADERBOARD.md').exists()
    stamps = {p: p.stat().st_mtime_ns for p in registry.rglob('*.json')}
    capsys.readouterr()
    assert main(['grid', str(spec)]) == 0
    assert 'grid: 0 done, 2 skipped' in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in registry.rglob('*.json')} == stamps  # nothing rewritten


def test_a_failing_cell_is_reported_and_the_rest_run(tmp_path, capsys):
    # gate 'conv_gap' on a 1x1 feature map cannot run (3x3 conv, no padding): that cell fails, the dense one runs
    spec = _spec(tmp_path, gate=['conv_gap'], model_kwargs=dict(width=4, stem='imagenet'))
    assert main(['grid', str(spec)]) == 1
    out = capsys.readouterr().out
    assert 'failed' in out and 'grid: 1 done' in out
    failed = tmp_path / 'grid' / 'cells' / 'resnet18_blockmoe_e2_k1-conv_gap-entropy-last-normal' / 'failed.txt'
    assert failed.exists() and 'Traceback' in failed.read_text()
    done = json.loads((tmp_path / 'grid' / 'cells' / 'resnet18_dense-normal' / 'done.json').read_text())
    assert Path(done['entry']).exists()


@pytest.mark.parametrize('content, message', [
    ('arch: [resnet34]\n', "arch 'resnet34' is not allowed"),
    ('experts: [2]\nbogus: 1\n', "unknown grid key 'bogus'"),
])
def test_bad_spec_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / 'bad.yaml'
    path.write_text(content)
    assert main(['grid', str(path), '--dry-run']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]

"""Faults a user can cause (issue 19, section 4): each refused in one line with exit status 2, and nothing the
user made (a run, a registry entry, a shipped folder) lost or corrupted. Every test here failed before its fix."""
from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import yaml

import timm_moe  # noqa: F401  registers the models
from bench.cli import main
from bench.core.errors import UserError

STUDY = Path(__file__).parent / 'fixtures' / 'study_tiny.yaml'
NAME = 'resnet18_blockmoe_e4_k1'
RUN_FILES = ('config.yaml', 'model.pth', 'last.pth.tar', 'metrics.jsonl', 'result.json')


def _one_line(capsys, *needles: str) -> str:
    """The CLI's stderr, which must be one line holding every needle and no traceback."""
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'Traceback' not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    """A real two-step training run, as `timm-moe train` writes it (a pristine copy per test: `run`)."""
    from bench.training.config import load_config
    from bench.training.trainer import run_training
    out = tmp_path_factory.mktemp('run') / 'run'
    cfg = load_config(None, model=NAME, model_kwargs=dict(width=4), dataset='fashion-mnist-bundled', batch_size=16,
                      train_limit=32, eval_limit=0, workers=0, max_steps=2, progress=False, out=str(out))
    run_training(cfg)
    return out


@pytest.fixture
def run(run_dir, tmp_path):
    copy = tmp_path / 'runs' / 'x'
    shutil.copytree(run_dir, copy)
    return copy


def _study(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load(STUDY.read_text())
    data.update(out=str(tmp_path / 'study'), **changes)
    path = tmp_path / 'study_tiny.yaml'
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ------------------------------------------------------------------ 1. an --out that overlaps the source

@pytest.mark.parametrize('where', ['same', 'inside', 'contains'])
def test_export_refuses_an_out_that_overlaps_the_run(run, tmp_path, capsys, where):
    out = {'same': run, 'inside': run / 'hub', 'contains': run.parent}[where]
    assert main(['export', '--checkpoint', str(run), '--out', str(out), '--overwrite',
                 '--registry', str(tmp_path / 'none')]) == 2
    _one_line(capsys, '--out', 'overlaps')
    assert all((run / name).is_file() for name in RUN_FILES)
    assert not (run / 'hub').exists()


def test_export_refuses_an_out_that_overlaps_the_registry(run, tmp_path, capsys):
    registry = tmp_path / 'registry'
    (registry / 'fashion-mnist-bundled').mkdir(parents=True)
    assert main(['export', '--checkpoint', str(run), '--out', str(registry), '--overwrite',
                 '--registry', str(registry)]) == 2
    _one_line(capsys, '--out', 'registry')
    assert (registry / 'fashion-mnist-bundled').is_dir()


def test_ship_refuses_an_out_inside_the_study_or_its_registry(tmp_path, capsys):
    spec = _study(tmp_path)
    for out in (tmp_path / 'study' / 'tags', tmp_path / 'study' / 'registry' / 'tags'):
        assert main(['ship', str(spec), '--out', str(out)]) == 2
        _one_line(capsys, '--out', 'overlaps')
        assert not out.exists()


def test_report_refuses_an_out_that_overlaps_the_registry(tmp_path, capsys):
    registry = tmp_path / 'registry'
    registry.mkdir()
    for out in (registry, registry / 'plots'):
        assert main(['report', '--registry', str(registry), '--out', str(out)]) == 2
        _one_line(capsys, '--out', 'overlaps')
    assert sorted(registry.iterdir()) == []

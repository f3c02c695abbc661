"""`timm-moe export` loses nothing and writes no card that describes other weights (issue 25, sections 2 and 3): an
`--overwrite` killed at any point leaves the old or the new export, and the next export finishes or rolls back
the swap and removes what the killed one left; a linked `--out`, an `--entry` id in two data sets and an entry
measured on other weights are refused in one line."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from bench.cli import main
from bench.core.provenance import sha256_file
from bench.pipeline.export import export_run
from bench.results.export import CARD_FILE, WEIGHTS_FILE
from test_export import ENTRY, REPO
from test_ship import Killed, _dead_pid, _kill_at
from trained_run import two_step_run
from contract import one_line as _one_line

FILES = ['README.md', 'config.json', 'model.safetensors']


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    return two_step_run(tmp_path_factory.mktemp('run') / 'run')


def test_an_overwrite_killed_at_any_point_loses_nothing(run_dir, tmp_path, monkeypatch):
    out, none = tmp_path / 'hub', tmp_path / 'no-registry'
    export_run(run_dir, out, registry_dir=none)
    n = 1
    while True:
        with monkeypatch.context() as m:
            _kill_at(m, n)
            m.setattr(os, 'getpid', lambda dead=_dead_pid(): dead)  # the killed export's temporaries are a dead pid's
            try:
                export_run(run_dir, out, registry_dir=none, overwrite=True)
                finished = True
            except Killed:
                finished = False
        # nothing lost: a whole export is in place, or aside where the next export finds it
        assert any(sorted(p.name for p in d.iterdir()) == FILES for d in (out, tmp_path / '.hub.old') if d.is_dir()), n
        export_run(run_dir, out, registry_dir=none, overwrite=True)  # the next export
        assert sorted(p.name for p in out.iterdir()) == FILES, n
        assert sorted(p.name for p in tmp_path.iterdir()) == ['hub'], n  # nothing hidden left beside it
        if finished:
            break
        n += 1
    assert n > 3


def test_export_refuses_an_out_that_is_a_link(run_dir, tmp_path, capsys):
    real = tmp_path / 'real'
    export_run(run_dir, real, registry_dir=tmp_path / 'none')
    before = {p.name: p.read_bytes() for p in real.iterdir()}
    (tmp_path / 'link').symlink_to(real)
    assert main(['export', '--checkpoint', str(run_dir), '--out', str(tmp_path / 'link'), '--overwrite',
                 '--registry', str(tmp_path / 'none')]) == 2
    _one_line(capsys, '--out', 'symbolic link')
    assert (tmp_path / 'link').is_symlink() and {p.name: p.read_bytes() for p in real.iterdir()} == before


def _registry(tmp_path, entry: dict, datasets) -> tuple:
    registry = tmp_path / 'registry'
    registry.mkdir(parents=True)
    shutil.copy(REPO / 'registry' / 'schema.json', registry / 'schema.json')
    for dataset in datasets:
        target = registry / dataset / entry['threat_model'] / f'{entry["entry_id"]}.json'
        target.parent.mkdir(parents=True)
        target.write_text(json.dumps(dict(entry, dataset=dataset)))
    return registry


def test_export_refuses_an_entry_id_in_two_data_sets(run_dir, tmp_path, capsys):
    entry = json.loads(ENTRY.read_text())
    entry['provenance']['checkpoint_sha256'] = sha256_file(run_dir / 'model.pth')
    registry = _registry(tmp_path, entry, ['fashion-mnist-bundled', 'fashion-mnist'])
    assert main(['export', '--checkpoint', str(run_dir), '--out', str(tmp_path / 'hub'), '--entry',
                 entry['entry_id'], '--registry', str(registry)]) == 2
    _one_line(capsys, entry['entry_id'], '2 places', 'fashion-mnist-bundled', f'fashion-mnist{os.sep}')
    assert not (tmp_path / 'hub').exists()


@pytest.mark.parametrize('how', ['id', 'path'])
def test_export_refuses_an_entry_measured_on_other_weights(run_dir, tmp_path, capsys, how):
    entry = json.loads(ENTRY.read_text())  # the quickstart's entry: its checkpoint_sha256 is not this run's
    registry = _registry(tmp_path, entry, ['fashion-mnist-bundled'])
    given = entry['entry_id'] if how == 'id' else str(ENTRY)
    assert main(['export', '--checkpoint', str(run_dir), '--out', str(tmp_path / 'hub'), '--entry', given,
                 '--registry', str(registry)]) == 2
    _one_line(capsys, '--entry', 'measured on weights with sha256', entry['provenance']['checkpoint_sha256'][:12])
    assert not (tmp_path / 'hub').exists()
    # the entry of this run's weights is taken, and its card says so
    entry['provenance']['checkpoint_sha256'] = sha256_file(run_dir / 'model.pth')
    registry = _registry(tmp_path / 'own', entry, ['fashion-mnist-bundled'])
    out = export_run(run_dir, tmp_path / 'hub', entry=entry['entry_id'], registry_dir=registry)
    assert entry['entry_id'] in (out / CARD_FILE).read_text() and (out / WEIGHTS_FILE).is_file()

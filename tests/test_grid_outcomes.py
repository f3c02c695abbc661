"""What a grid run says about each cell: a cell another process holds, or one that failed, never reads as done on
the board; and `--only` selects AutoAttack follow-ups as it selects cells."""
import io
import json
import subprocess
import sys
from pathlib import Path

import yaml
from rich.console import Console

from bench.core.progress import RunBoard, report_outcome, reporting_to
from bench.pipeline import grid as grid_module
from bench.pipeline.grid import LOCK, cells, load_spec, run_grid

FIXTURE = Path(__file__).parent / 'fixtures' / 'study_tiny.yaml'


def _spec(tmp_path: Path, **autoattack):
    data = yaml.safe_load(FIXTURE.read_text())
    data.update(out=str(tmp_path / 'study'), autoattack=dict(n_examples=4, attacks='apgd-ce10', **autoattack))
    path = tmp_path / 'study_tiny.yaml'
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_spec(path)


def _all_cells_done(tmp_path: Path, spec) -> None:
    for c in cells(spec):
        folder = tmp_path / 'study' / 'cells' / c['cell']
        folder.mkdir(parents=True)
        (folder / 'done.json').write_text(json.dumps(dict(cell=c['cell'], robust_acc={'apgd-ce10': 1.0})))
    (tmp_path / 'study' / 'registry').mkdir()  # where the finished cells' entries would be


def test_the_board_names_how_a_run_ended():
    out = io.StringIO()
    with RunBoard('grid', ['a', 'b', 'c'], procs=1, stream=out) as board:
        with reporting_to(board.handle, 'a'):
            pass
        with reporting_to(board.handle, 'b'):
            report_outcome('skipped, running in another process (host 42)')
        with reporting_to(board.handle, 'c'):
            report_outcome('failed (cells/c/failed.txt)')
    lines = out.getvalue().splitlines()
    assert any(l.startswith('grid: a: done (1/3 runs') for l in lines), lines
    assert any(l.startswith('grid: b: skipped, running in another process (host 42) (2/3 runs') for l in lines)
    assert any(l.startswith('grid: c: failed (cells/c/failed.txt) (3/3 runs') for l in lines)


def test_a_follow_up_another_process_runs_is_reported_as_skipped_not_done(tmp_path, capsys):
    # two grids on one spec: the second found the first's follow-ups locked, skipped them, and its board said
    # "done" for each, as if it had run them
    spec = _spec(tmp_path, configs=['dense'])
    _all_cells_done(tmp_path, spec)
    folder = tmp_path / 'study' / 'cells' / 'autoattack-dense-seed0'
    folder.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, '-c', (
        'import sys, time; from bench.core import locks; locks.acquire(sys.argv[1]); print("held", flush=True); '
        'time.sleep(60)'), str(folder / LOCK)], stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout.readline().strip() == 'held'
        out = run_grid(spec, console=Console(file=io.StringIO()), progress=True)
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert 'grid: autoattack-dense-seed0: skipped, running in another process ' in err, err
    assert 'autoattack-dense-seed0: done' not in err
    assert [o['cell'] for o in out['busy']] == ['autoattack-dense-seed0'] and not out['done']


def test_only_selects_the_follow_ups_too(tmp_path, monkeypatch):
    spec = _spec(tmp_path, configs=['dense', 'e2k1'])
    _all_cells_done(tmp_path, spec)
    asked = []
    monkeypatch.setattr(grid_module, 'run_wave', lambda wave, *a, **k: asked.append([c['cell'] for c in wave]) or [])
    run_grid(spec, only='autoattack-e2k1', console=Console(file=io.StringIO()), progress=False)
    assert [w for w in asked if w] == [['autoattack-e2k1-seed0']]
    # and the dry run lists only the selected follow-ups
    console = Console(record=True, width=200, file=io.StringIO())
    run_grid(spec, only='autoattack-e2k1', dry_run=True, console=console, progress=False)
    text = console.export_text()
    assert 'autoattack-e2k1-seed0' in text and 'autoattack-dense-seed0' not in text

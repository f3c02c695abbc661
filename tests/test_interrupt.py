"""One Ctrl-C stops `quickstart`, `grid` and `eval` cleanly: a real SIGINT to the process group (what a terminal
sends), then exit status 130, one line that says what is kept, no traceback, no process left, finished
artefacts intact, and a rerun that resumes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, List, Sequence

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


class Run:
    """A command in its own session, its stderr lines collected as they come."""

    def __init__(self, argv: Sequence[str], cwd: Path = ROOT, env_path: Sequence[Path] = ()) -> None:
        env = dict(os.environ, OMP_NUM_THREADS='1',
                   PYTHONPATH=os.pathsep.join([str(ROOT), *map(str, env_path), os.environ.get('PYTHONPATH', '')]))
        # SIGINT as a terminal leaves it: pytest-xdist's workers ignore SIGINT, a child inherits that, and a Python
        # started with SIGINT ignored never raises KeyboardInterrupt
        self.proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.err: List[str] = []
        self.out: List[str] = []
        self._readers = [threading.Thread(target=lambda f=f, to=to: to.extend(iter(f.readline, '')), daemon=True)
                         for f, to in ((self.proc.stderr, self.err), (self.proc.stdout, self.out))]
        for r in self._readers:
            r.start()

    def wait_for(self, ready: Callable[[], bool], timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, f'ended before it was interrupted: {"".join(self.err)}'
            assert time.monotonic() < deadline, f'not ready after {timeout} s: {"".join(self.err)}'
            time.sleep(0.05)

    def ctrl_c(self, timeout: float = 60) -> str:
        """SIGINT to every process of the session, once, as a terminal's Ctrl-C; returns stderr."""
        os.killpg(self.proc.pid, signal.SIGINT)
        self.proc.wait(timeout=timeout)
        for r in self._readers:
            r.join(timeout=10)
        return ''.join(self.err)

    def survivors(self, timeout: float = 10) -> List[str]:
        """Processes of the session still alive (zombies aside), after up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            ps = subprocess.run(['ps', '-e', '-o', 'pid=,sid=,stat=,args='], capture_output=True, text=True).stdout
            alive = [line for line in ps.splitlines()
                     if line.split()[1] == str(self.proc.pid) and not line.split()[2].startswith('Z')]
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.1)


def _check_one_interrupt_line(err: str, verb: str, proc: subprocess.Popen) -> str:
    assert proc.returncode == 130, err
    assert 'Traceback' not in err and 'KeyboardInterrupt' not in err, err
    lines = [line for line in err.splitlines() if 'interrupt' in line.lower()]
    assert len(lines) == 1 and lines[0].startswith(f'{verb}: interrupted'), err
    assert err.rstrip('\n').splitlines()[-1] == lines[0], err  # nothing after it either
    return lines[0]


def test_run_parallel_one_sigint_cancels_queued_jobs_and_stops_the_workers(tmp_path):
    # job0 ends at once; job1 and job2 would sleep a minute; job3 is queued behind them
    run = Run([sys.executable, '-c', 'import parallel_jobs as p; p.main()', str(tmp_path), '0', '60', '60', '60'],
              env_path=[TESTS])
    run.wait_for(lambda: (tmp_path / 'job0.json').exists() and any('job1: sleep' in l for l in run.err)
                 and any('job2: sleep' in l for l in run.err), timeout=60)
    t0 = time.monotonic()
    err = run.ctrl_c(timeout=30)
    assert time.monotonic() - t0 < 10, 'workers were not stopped at once'
    _check_one_interrupt_line(err, 'jobs', run.proc)
    assert run.survivors() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ['job0.json']  # the finished job's, whole; no temp file
    assert json.loads((tmp_path / 'job0.json').read_text())['name'] == 'job0'
    assert not any('job3' in l for l in run.err)  # the queued job never started


def _tiny_grid(tmp_path: Path) -> Path:
    spec = dict(arch=['resnet18'], experts=[2], k=[1], gate=['gap_fc', 'conv_gap'], aux_loss=['entropy'],
                placement=['last'], training=['normal'], dense=True, model_kwargs=dict(width=4),
                train=dict(dataset='fashion-mnist-bundled', epochs=1, batch_size=32, train_limit=64, lr=0.05,
                           eval_limit=0, workers=0),
                eval=dict(attacks='quick', n_examples=16, batch_size=16, n_check=8, per_expert=False),
                out=str(tmp_path / 'grid'))
    path = tmp_path / 'grid.yaml'
    path.write_text(yaml.safe_dump(spec))
    return path


def test_grid_one_ctrl_c_keeps_finished_cells_and_a_rerun_resumes(tmp_path):
    spec = _tiny_grid(tmp_path)
    cells = tmp_path / 'grid' / 'cells'
    run = Run([sys.executable, '-m', 'bench.cli', 'grid', str(spec), '--procs', '2'])
    run.wait_for(lambda: any(': done (1/3 runs' in l for l in run.err))
    err = run.ctrl_c()
    line = _check_one_interrupt_line(err, 'timm-moe grid', run.proc)
    assert 'finished cells are kept' in line and 'rerun the same command' in line
    assert run.survivors() == []
    done = sorted(p.parent.name for p in cells.glob('*/done.json'))
    assert 1 <= len(done) < 3
    for d in done:
        assert json.loads((cells / d / 'done.json').read_text())['cell'] == d  # whole, readable
    assert not list(cells.glob('*/failed.txt'))  # an interrupted cell is not a failed one
    rerun = subprocess.run([sys.executable, '-m', 'bench.cli', 'grid', str(spec)], cwd=ROOT,
                           capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert rerun.returncode == 0, rerun.stderr
    assert f'grid: {3 - len(done)} done, {len(done)} skipped' in rerun.stdout


def test_quickstart_one_ctrl_c_stops_every_worker(tmp_path):
    out = tmp_path / 'qs'
    run = Run([sys.executable, '-m', 'bench.cli', 'quickstart', '--plan', 'smoke', '--out', str(out)])
    run.wait_for(lambda: sum(': started' in l for l in run.err) >= 2)  # both workers are training
    err = run.ctrl_c()
    line = _check_one_interrupt_line(err, 'timm-moe quickstart', run.proc)
    assert str(out) in line and '--resume' in line
    assert run.survivors() == []
    assert not (out / 'summary.json').exists()


def test_eval_one_ctrl_c_keeps_finished_batches_and_resume_continues(tmp_path):
    result = tmp_path / 'eval.json'
    sidecar = Path(str(result) + '.partial.jsonl')
    argv = [sys.executable, '-m', 'bench.cli', 'eval', '--model', 'resnet18_blockmoe_e4_k1.fmnist_pgd',
            '--pretrained', '--dataset', 'fashion-mnist-bundled', '--attacks', 'pgd20', '--n-examples', '24',
            '--batch-size', '4', '--no-per-expert', '--n-check', '8', '--json', str(result)]
    run = Run(argv)
    run.wait_for(lambda: sidecar.exists() and len(sidecar.read_text().splitlines()) >= 3)  # header + 2 batches
    err = run.ctrl_c()
    line = _check_one_interrupt_line(err, 'timm-moe eval', run.proc)
    assert str(sidecar) in line and '--resume' in line
    assert run.survivors() == []
    assert not result.exists()
    kept = len(sidecar.read_text().splitlines())
    resumed = subprocess.run(argv + ['--resume'], cwd=ROOT, capture_output=True, text=True, timeout=600,
                             env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert resumed.returncode == 0, resumed.stderr
    r = json.loads(result.read_text())
    assert r['n_examples'] == 24 and 'pgd20' in r['robust_acc'] and not sidecar.exists()
    assert kept >= 3

"""Nothing from a file is executed (issue 25, section 1): every torch file is read with `weights_only=True`, our own
`last.pth.tar` that `train --resume` reads included, since a run folder can come from someone else."""
from __future__ import annotations

import builtins
import re
import shutil
from pathlib import Path

import pytest
import torch

from bench.cli import main
from trained_run import NAME, two_step_run

REPO = Path(__file__).resolve().parents[2]
PACKAGE = ('bench', 'timm_moe', 'benchmarks', 'scripts')


class _Payload:
    """Unpickling this calls open(marker, 'w'): had it run, the marker file exists."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), 'w')


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    return two_step_run(tmp_path_factory.mktemp('run') / 'run')


def resume_args(out: Path, *extra: str) -> list:
    """`timm-moe train --resume` with the options of `two_step_run`."""
    return ['train', '--model', NAME, '--model-kwargs', 'width=4', '--dataset', 'fashion-mnist-bundled',
            '--batch-size', '16', '--train-limit', '32', '--eval-limit', '0', '--workers', '0', '--max-steps', '2',
            '--no-progress', '--out', str(out), '--resume', *extra]


def test_resume_refuses_a_train_state_that_would_run_code(run_dir, tmp_path, capsys):
    run = tmp_path / 'run'
    shutil.copytree(run_dir, run)
    marker = tmp_path / 'pwned'
    state = torch.load(run / 'last.pth.tar', weights_only=True)
    torch.save({**state, 'history': [_Payload(marker)]}, run / 'last.pth.tar')
    before = (run / 'last.pth.tar').read_bytes()
    assert main(resume_args(run)) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'Traceback' not in err, err
    assert 'last.pth.tar' in err and 'refusing to unpickle' in err, err
    assert not marker.exists()
    assert (run / 'last.pth.tar').read_bytes() == before  # kept for the user to inspect


def test_the_trainers_own_state_loads_without_unpickling(run_dir):
    # what the trainer saves is tensors and plain containers: `weights_only=True` needs no allow-list
    state = torch.load(run_dir / 'last.pth.tar', weights_only=True)
    assert state['global_step'] == 2 and state['config']['model'] == NAME


def test_no_torch_load_in_the_package_unpickles_freely():
    pattern = re.compile(r'weights_only\s*=\s*False')
    found = [f'{path.relative_to(REPO)}:{n}' for folder in PACKAGE for path in sorted((REPO / folder).rglob('*.py'))
             for n, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1) if pattern.search(line)]
    assert not found, found
    assert sum(1 for folder in PACKAGE for _ in (REPO / folder).rglob('*.py')) > 50  # the folders were searched

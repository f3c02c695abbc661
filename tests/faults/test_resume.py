"""`train --resume` continues the same run (issue 25, section 2): a resume whose config trains something else is
refused in one line naming the keys, with nothing in the run changed; what a resume may change (how far it goes,
where it runs) is recorded in config.yaml, which never describes another run."""
from __future__ import annotations

import shutil

import pytest
import yaml

from bench.cli import main
from test_no_pickles import resume_args
from trained_run import two_step_run


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    return two_step_run(tmp_path_factory.mktemp('run') / 'run')


@pytest.fixture
def run(run_dir, tmp_path):
    copy = tmp_path / 'run'
    shutil.copytree(run_dir, copy)
    return copy


@pytest.mark.parametrize('extra, keys', [
    (('--lr', '0.5', '--epochs', '2'), ('lr=0.1', 'lr=0.5', 'epochs=200', 'epochs=2')),
    (('--training', 'fast'), ('training=normal', 'training=fast')),
    (('--model-kwargs', 'width=8'), ("model_kwargs={'width': 4}", "model_kwargs={'width': 8}")),
], ids=['lr-epochs', 'training', 'width'])
def test_a_resume_that_changes_the_run_is_refused_by_name(run, capsys, extra, keys):
    files = {p.name: p.read_bytes() for p in run.iterdir()}
    assert main(resume_args(run, *extra)) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'Traceback' not in err, err
    assert '--resume' in err and all(key in err for key in keys), err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == files  # the run as it was


def test_what_a_resume_may_change_is_recorded_in_config_yaml(run, capsys):
    assert main(resume_args(run, '--max-steps', '3')) == 0
    config = yaml.safe_load((run / 'config.yaml').read_text())
    assert config['max_steps'] == 3  # it trained to step 3: the file must not say 2
    assert '"step": 3' in (run / 'metrics.jsonl').read_text()


def test_the_docs_name_what_a_resume_may_change():
    from pathlib import Path
    from bench.training.config import RESUME_MAY_CHANGE
    text = (Path(__file__).resolve().parents[2] / 'docs' / 'TRAINING.md').read_text(encoding='utf-8')
    paragraph = text[text.index('`--resume` continues the same run'):]
    paragraph = paragraph[:paragraph.index('\n\n')]
    assert [key for key in RESUME_MAY_CHANGE if f'`{key}`' not in paragraph] == []

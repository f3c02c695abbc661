"""One line, not a traceback (issue 25, section 3): the command line's own faults. A value the user typed is
parsed once, bounded and refused in one line naming it; the standard streams the shell hands over (a closed
stdout, a pipe whose reader left, an ASCII or Latin-1 encoding) never turn into a traceback. Every test here
failed before its fix."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.core.errors import UserError
from bench.core.values import parse_mapping
from contract import one_line as _one_line

REPO = Path(__file__).resolve().parents[2]
MAX_VALUE_CHARS = 2000  # bench.core.values.MAX_VALUE_CHARS

# 'billion laughs': six levels of nine aliases stand for 9**6 = 531,441 strings in 150 characters
ALIAS_BOMB = '{a: &a [x,x,x,x,x,x,x,x,x], ' + ', '.join(
    f'{n}: &{n} [{",".join([f"*{p}"] * 9)}]' for p, n in zip('abcde', 'bcdef')) + '}'


def _cli(*args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    """`python -m bench.cli ARGS` in a process of its own, from this checkout."""
    environ = {**os.environ, 'PYTHONPATH': str(REPO), 'OMP_NUM_THREADS': '1', **(env or {})}
    return subprocess.Popen([sys.executable, '-m', 'bench.cli', *args], env=environ, cwd=REPO, **popen)


# ------------------------------------------------------------------ values typed on the command line

@pytest.mark.parametrize('text', ['width=4,width=6', 'width=4, gate=conv_gap ,width=6', '{width: 4, width: 6}'])
def test_a_key_given_twice_is_refused(text):
    """YAML and the k=v split both kept the last value silently: width=4,width=6 built width 6."""
    with pytest.raises(UserError, match='width.*twice'):
        parse_mapping('--model-kwargs', text)


def test_a_yaml_alias_bomb_is_refused_quickly_and_echoed_short():
    """An alias bomb built a 531,441-string value, echoed back as a 6 MB 'one line'."""
    t0 = time.perf_counter()
    with pytest.raises(UserError, match='aliases') as caught:
        parse_mapping('--model-kwargs', ALIAS_BOMB)
    assert time.perf_counter() - t0 < 1.0
    message = str(caught.value)
    assert '\n' not in message and len(message) < 300, message


def test_a_value_longer_than_the_bound_is_refused_with_a_short_echo():
    text = 'width=4,gate=' + 'x' * MAX_VALUE_CHARS
    with pytest.raises(UserError, match=f'longer than {MAX_VALUE_CHARS} characters') as caught:
        parse_mapping('--model-kwargs', text)
    assert len(str(caught.value)) < 300


def test_the_cli_refuses_a_duplicate_key_in_one_line(capsys):
    assert main(['audit', '--model', 'resnet18_blockmoe_e4_k1', '--model-kwargs', 'width=4,width=6',
                 '--no-latency']) == 2
    _one_line(capsys, '--model-kwargs', 'width twice')


# ------------------------------------------------------------------ num_classes and in_chans in --model-kwargs

def test_train_takes_num_classes_and_in_chans_that_fit_the_data(tmp_path):
    """`--model-kwargs num_classes=10` (the data set's own value) gave `dict() got multiple values`."""
    from bench.training.config import load_config
    from bench.training.trainer import Trainer
    cfg = load_config(None, model='resnet18_blockmoe_e2_k1', dataset='fashion-mnist-bundled', workers=0,
                      model_kwargs=parse_mapping('--model-kwargs', 'num_classes=12,in_chans=1,width=4'),
                      out=str(tmp_path / 'run'), progress=False)
    trainer = Trainer(cfg)
    assert trainer.model.get_classifier().out_features == 12 and trainer.model.conv1.in_channels == 1


@pytest.mark.parametrize('kwargs, message', [
    ('num_classes=5', 'num_classes=5 does not fit fashion-mnist-bundled, which has 10 classes: give 10 or more'),
    ('in_chans=3', 'in_chans=3 does not fit fashion-mnist-bundled, which has 1-channel images: give 1'),
    ('in_chans=true', 'in_chans=True does not fit'),
])
def test_train_refuses_num_classes_or_in_chans_that_cannot_fit_in_one_line(tmp_path, capsys, kwargs, message):
    out = tmp_path / 'run'
    assert main(['train', '--config', 'fashion_mnist_quick', '--model-kwargs', kwargs, '--out', str(out)]) == 2
    _one_line(capsys, message)
    assert not out.exists()


# ------------------------------------------------------------------ the standard streams

@pytest.mark.parametrize('encoding', ['ascii', 'latin-1'])
def test_an_encoding_without_the_output_characters_degrades_instead_of_failing(encoding):
    """PYTHONIOENCODING=ascii (or a Latin-1 locale): UnicodeEncodeError on `·` or a box-drawing line, exit 1."""
    proc = _cli('models', env={'PYTHONIOENCODING': encoding}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and b'Traceback' not in err, err.decode(errors='replace')
    assert b'resnet18_blockmoe_e4_k1' in out
    out.decode(encoding)  # everything written is in the encoding asked for


def test_a_closed_stdout_drops_the_output_without_a_traceback(tmp_path):
    """`timm-moe models >&-`: AttributeError: 'NoneType' object has no attribute 'isatty'."""
    err = tmp_path / 'err'
    done = subprocess.run(f'"{sys.executable}" -m bench.cli models >&- 2>"{err}"', shell=True, cwd=REPO,
                          env={**os.environ, 'PYTHONPATH': str(REPO), 'OMP_NUM_THREADS': '1'}, timeout=120)
    assert done.returncode == 0 and err.read_text() == '', err.read_text()


def test_a_pipe_whose_reader_left_exits_quietly_as_git_and_ls_do():
    """`timm-moe models | head -2`: exit 1 (rich's SystemExit). Now 141, what a shell shows for git or ls,
    which SIGPIPE ends, and nothing on stderr. The reader leaves before the first write: no race."""
    proc = _cli('models', stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and err == b'', err.decode(errors='replace')

"""`timm-moe ship` loses nothing and ships only what its entry measured (issue 25, sections 2 and 3): a ship killed
at any point is finished or rolled back by the next one, which keeps other studies' tags and leaves no temporary
folder; the tag is made from the weights file whose sha256 the entry records."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from bench.cli import main
from bench.core.errors import UserError
from bench.pipeline.ship import ship
from bench.results.export import load_exported
from test_pretrained_tags import KWARGS, NAME, TAG, _other_specs_tag, study  # noqa: F401 - `study` is a fixture

KEY = f'{NAME}.{TAG}'


class Killed(BaseException):
    """The process died here: nothing after it runs, no `except` or `finally` of the code under test cleans up."""


def _kill_at(monkeypatch, n: int) -> list:
    """Make the `n`-th file-system change (rename, replace, unlink, rmdir) of what runs next a kill: it and every
    later change raise `Killed`. Returns a list that holds the count of changes made."""
    made = [0]
    for name in ('rename', 'replace', 'unlink', 'rmdir'):
        real = getattr(os, name)

        def change(*args, real=real, **kwargs):
            made[0] += 1
            if made[0] >= n:
                raise Killed(f'{real.__name__} {args[0]}')
            return real(*args, **kwargs)
        monkeypatch.setattr(os, name, change)
    return made


def _dead_pid() -> int:
    proc = subprocess.Popen(['true'])
    proc.wait()
    return proc.pid


def _leftovers(folder) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith('.pretrained'))


def test_a_ship_killed_at_any_point_is_recovered_by_the_next(study, tmp_path, monkeypatch):
    out = tmp_path / 'pretrained'
    other, record = _other_specs_tag(out)
    pristine = tmp_path / 'pristine'
    shutil.copytree(out, pristine)
    ship(study.spec, out, dtype='float32')  # the folder already holds this spec's tag: the swap replaces a folder
    shutil.copytree(out, tmp_path / 'shipped_once')
    n = 1
    while True:
        shutil.rmtree(out)
        shutil.copytree(tmp_path / 'shipped_once', out)
        with monkeypatch.context() as m:
            made = _kill_at(m, n)
            m.setattr(os, 'getpid', lambda dead=_dead_pid(): dead)  # the killed ship's temporaries are a dead pid's
            try:
                ship(study.spec, out, dtype='float32')
                finished = True
            except Killed:
                finished = False
        ship(study.spec, out, dtype='float32')  # the next ship
        manifest = json.loads((out / 'manifest.json').read_text())
        assert sorted(manifest) == sorted([other, KEY]) and manifest[other] == record, n
        assert (out / record['file']).read_bytes() == (pristine / record['file']).read_bytes(), n
        assert load_file(out / manifest[KEY]['file']).keys(), n
        assert _leftovers(tmp_path) == [], (n, _leftovers(tmp_path))
        if finished:
            break
        n += 1
    assert n > 5  # every change of a whole ship was a kill point once (made[0] counts them: the last run's)
    assert made[0] == n - 1


def test_ship_makes_the_tag_from_the_weights_its_entry_measured(study, tmp_path):
    # the run's model.safetensors replaced by other weights; model.pth is what the entry's sha256 names
    torch.manual_seed(7)
    other = timm.create_model(NAME, num_classes=10, in_chans=1, **KWARGS).state_dict()
    save_file({k: v.contiguous() for k, v in other.items()}, study.first_run / 'model.safetensors')
    _, manifest = ship(study.spec, tmp_path / 'pretrained', dtype='float32')
    shipped = load_file(tmp_path / 'pretrained' / manifest[KEY]['file'])
    measured = torch.load(study.first_run / 'model.pth', weights_only=True)
    assert all(torch.equal(shipped[k], measured[k]) for k in measured)


def _damage(path, how: str) -> None:
    data = path.read_bytes()
    if how == 'truncated':
        path.write_bytes(data[:len(data) // 2])
    else:  # a header length of 2**62
        path.write_bytes(struct.pack('<Q', 2 ** 62) + data[8:])


@pytest.mark.parametrize('how', ['truncated', 'huge-header'])
def test_a_damaged_model_safetensors_is_one_line_or_not_read(study, tmp_path, capsys, how):
    _damage(study.first_run / 'model.safetensors', how)
    assert main(['ship', study.spec, '--out', str(tmp_path / 'pretrained'), '--dtype', 'float32']) == 0
    assert 'Traceback' not in capsys.readouterr().err
    # and where such a file is read, as an export's weights: one line
    hub = tmp_path / 'hub'
    hub.mkdir()
    shutil.copy(study.first_run / 'model.safetensors', hub / 'model.safetensors')
    with pytest.raises(UserError, match='is not a readable safetensors file') as e:
        load_exported(hub, NAME, **KWARGS)
    assert '\n' not in str(e.value)


def test_ship_refuses_an_out_that_is_a_link(study, tmp_path, capsys):
    real = tmp_path / 'real'
    _other_specs_tag(real)
    before = {p.name: p.read_bytes() for p in real.iterdir()}
    (tmp_path / 'link').symlink_to(real)
    assert main(['ship', study.spec, '--out', str(tmp_path / 'link')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'symbolic link' in err, err
    assert (tmp_path / 'link').is_symlink() and {p.name: p.read_bytes() for p in real.iterdir()} == before


# ------------------------------------------------------------------ the tags folder that ship writes, read back

def _bad_manifest(folder, how: str):
    folder.mkdir()
    record = dict(file='w.safetensors', sha256='0' * 64, dtype='float32', model_kwargs={'num_classes': 10},
                  input_size=[1, 28, 28], mean=[0.5], std=[0.5])
    text = {'not-json': '{"resnet18_dense.x": {', 'lacks-a-field': json.dumps({'resnet18_dense.x': {'file': 'w'}}),
            'not-utf8': None, 'mean-a-string': json.dumps({'resnet18_dense.x': dict(record, mean='0.5')})}[how]
    (folder / 'manifest.json').write_bytes(b'\xff\xfe{' if text is None else text.encode())
    return folder


@pytest.mark.parametrize('how', ['not-json', 'lacks-a-field', 'not-utf8', 'mean-a-string'])
def test_a_bad_manifest_is_one_manifest_error(tmp_path, how):
    from timm_moe.models.pretrained import ManifestError, read_manifest
    with pytest.raises(ManifestError, match='manifest.json') as e:
        read_manifest(_bad_manifest(tmp_path / 'tags', how))
    assert '\n' not in str(e.value)


@pytest.mark.parametrize('verb, how', [(['models'], 'not-json'),
                                       (['eval', '--model', 'resnet18_dense', '--n-examples', '4'], 'lacks-a-field')])
def test_a_bad_manifest_is_one_line_in_models_and_eval(tmp_path, verb, how):
    # the manifest is read when timm_moe is imported: a process of its own, pointed at the folder
    import sys
    env = dict(os.environ, TIMM_MOE_PRETRAINED_DIR=str(_bad_manifest(tmp_path / 'tags', how)), OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-m', 'bench.cli', *verb], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count('\n') == 1 and 'manifest.json' in proc.stderr, proc.stderr[-2000:]

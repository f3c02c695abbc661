"""`timm-moe train --upcycle-from`: an MoE run that starts from a dense run through timm_moe.upcycle."""
import re
from pathlib import Path

import pytest
import torch
import yaml

import timm
from bench.cli import main
from bench.training.config import load_config
from bench.core.provenance import sha256_file
from bench.training.trainer import Trainer, run_training

TINY = dict(model_kwargs=dict(width=4), dataset='fashion-mnist-bundled', batch_size=16, train_limit=32,
            eval_limit=0, workers=0, progress=False, max_steps=1)
MOE = 'resnet18_blockmoe_e4_k1'


@pytest.fixture(scope='module')
def dense_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('dense') / 'run'
    run_training(load_config(None, model='resnet18_dense', out=str(out), **TINY))
    return out


def _moe_cfg(tmp_path, source, **kw):
    return load_config(None, **{**TINY, 'model': MOE, 'out': str(tmp_path / 'moe'), 'upcycle_from': str(source),
                                **kw})


def test_upcycled_run_starts_from_the_dense_weights(tmp_path, dense_run):
    dense = torch.load(dense_run / 'model.pth')
    trainer = Trainer(_moe_cfg(tmp_path, dense_run))
    try:
        start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        result = trainer.fit()
    finally:
        trainer.close()
    moe_keys = {k for k in start if '.experts.' in k or '.gate.' in k}
    assert moe_keys and len(start) - len(moe_keys) == len(dense) - len([k for k in dense if k.startswith('layer4.1.')])
    for k, v in start.items():
        if k not in moe_keys:
            assert torch.equal(v, dense[k]), k  # step 0: every weight outside the MoE layer is the dense one
    # each expert starts as the dense block plus 1% noise, so the experts differ from each other
    dense_w = dense['layer4.1.conv1.weight']
    for e in range(4):
        w = start[f'layer4.1.experts.{e}.conv1.weight']
        assert not torch.equal(w, dense_w) and (w - dense_w).std() < 0.02 * dense_w.std()
    digest = sha256_file(dense_run / 'model.pth')
    assert result.upcycled_from == dict(path=str(dense_run / 'model.pth'), sha256=digest, noise=0.01, seed=12345)
    saved = yaml.safe_load((Path(result.run_dir) / 'config.yaml').read_text())
    assert saved['upcycle_sha256'] == digest and saved['upcycle_from'] == str(dense_run)
    after = torch.load(Path(result.run_dir) / 'model.pth')
    assert any(not torch.equal(after[k], start[k]) for k in start if after[k].is_floating_point())  # it trained


def test_upcycle_from_a_weights_file_on_the_command_line(tmp_path, dense_run, capsys):
    args = ['train', '--model', MOE, '--model-kwargs', 'width=4', '--dataset', 'fashion-mnist-bundled',
            '--batch-size', '16', '--train-limit', '32', '--eval-limit', '0', '--workers', '0', '--max-steps', '1',
            '--progress', 'false', '--out', str(tmp_path / 'cli'), '--upcycle-from', str(dense_run / 'model.pth')]
    assert main(args) == 0, capsys.readouterr().err
    saved = yaml.safe_load((tmp_path / 'cli' / 'config.yaml').read_text())
    assert saved['upcycle_sha256'] == sha256_file(dense_run / 'model.pth')


@pytest.mark.parametrize('case, message', [
    ('width', "model_kwargs width=4 there, 8 here"),
    ('bare-width', "conv1.weight has shape (4, 1, 3, 3) there, (8, 1, 3, 3)"),
    ('arch', "trained resnet18_dense; resnet50_blockmoe_e4_k1 upcycles from resnet50_dense"),
    ('dense-target', "needs a timm-moe MoE model such as resnet18_blockmoe_e4_k1, not resnet18_dense"),
    ('missing', "does not exist; give a dense run directory"),
    ('sha', "not the upcycle_sha256 " + '0' * 64),
    ('moe-source', "keys resnet18_dense lacks, e.g. 'layer4.1.gate"),
])
def test_upcycle_mismatch_is_one_line(tmp_path, dense_run, capsys, case, message):
    source, extra = dense_run, []
    if case == 'width':
        extra = ['--model-kwargs', 'width=8']
    elif case == 'bare-width':
        source, extra = dense_run / 'model.pth', ['--model-kwargs', 'width=8']
    elif case == 'arch':
        extra = ['--model', 'resnet50_blockmoe_e4_k1']
    elif case == 'dense-target':
        extra = ['--model', 'resnet18_dense']
    elif case == 'missing':
        source = tmp_path / 'nowhere'
    elif case == 'sha':
        extra = ['--upcycle-sha256', '0' * 64]
    elif case == 'moe-source':
        source = tmp_path / 'moe.pth'
        torch.save(timm.create_model(MOE, width=4, num_classes=10, in_chans=1).state_dict(), source)
    args = ['train', '--model', MOE, '--model-kwargs', 'width=4', '--dataset', 'fashion-mnist-bundled',
            '--batch-size', '16', '--train-limit', '32', '--eval-limit', '0', '--workers', '0', '--max-steps', '1',
            '--progress', 'false', '--out', str(tmp_path / 'bad'), '--upcycle-from', str(source)] + extra
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / 'bad').exists()  # checked before the run directory is made


def test_upcycle_sha256_must_look_like_one():
    with pytest.raises(ValueError, match=re.escape("upcycle_sha256='abc' is not a sha256")):
        load_config(None, upcycle_sha256='abc')

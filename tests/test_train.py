"""Training: one step per method, exact kill-and-resume, DDP over gloo equal to one process, config and CLI errors."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch

import timm_moe  # noqa: F401  registers the models
from bench.cli import main
from bench.training.config import load_config
from bench.training.sampler import ShardedBatches
from bench.training.trainer import run_training
from free_port import free_port

REPO = Path(__file__).resolve().parent.parent
TINY = dict(model='resnet18_blockmoe_e2_k1', model_kwargs=dict(width=4), dataset='fashion-mnist-bundled',
            batch_size=16, train_limit=64, eval_limit=32, workers=0, lr=0.05, progress=False, log_every=1)


def _cfg(tmp_path: Path, **kw) -> 'object':
    return load_config(None, **{**TINY, 'out': str(tmp_path / 'run'), **kw})


def _weights(run_dir: Path) -> dict:
    return torch.load(Path(run_dir) / 'model.pth', map_location='cpu')


def _cli_args(out: Path, **kw) -> list:
    args = {**TINY, **kw}
    tokens = ['train', '--out', str(out)]
    for k, v in args.items():
        if k == 'model_kwargs':
            v = ','.join(f'{a}={b}' for a, b in v.items())
        tokens += [f'--{k.replace("_", "-")}', str(v)]
    return tokens


@pytest.mark.parametrize('method', ['normal', 'pgd', 'trades'])
def test_one_step_per_method(tmp_path, method):
    cfg = _cfg(tmp_path, training=method, max_steps=1, attack_steps=2)
    torch.manual_seed(cfg.seed)  # the trainer seeds the same way before it builds the model
    before = timm.create_model(cfg.model, num_classes=10, in_chans=1, **cfg.model_kwargs).state_dict()
    result = run_training(cfg)
    assert result.steps == 1
    record = result.history[-1]
    assert torch.isfinite(torch.tensor(record['train_loss']))
    assert record['train_aux'] != 0.0  # the entropy aux loss of the BlockMoE is part of the objective
    assert 'layer4.1' in record['routing']
    after = _weights(result.run_dir)
    assert any(not torch.equal(before[k], after[k]) for k in before if after[k].is_floating_point())
    # the saved weights load in timm as local pretrained weights; the overlay says they have 10 classes,
    # or timm drops the classifier as it does for any head of another size
    overlay = dict(file=str(Path(result.run_dir) / 'model.pth'), num_classes=10, input_size=(1, 28, 28))
    m = timm.create_model(cfg.model, num_classes=10, in_chans=1, pretrained=True, pretrained_cfg_overlay=overlay,
                          **cfg.model_kwargs)
    assert all(torch.equal(v, after[k]) for k, v in m.state_dict().items())
    lines = (Path(result.run_dir) / 'metrics.jsonl').read_text().splitlines()
    assert any('"kind": "step"' in line for line in lines) and any('"kind": "epoch"' in line for line in lines)
    assert (Path(result.run_dir) / 'config.yaml').exists()


def test_ema_and_amp_bf16_run_with_safetensors(tmp_path):
    cfg = _cfg(tmp_path, training='normal', max_steps=2, ema=True, amp=True, channels_last=True)
    result = run_training(cfg)
    run_dir = Path(result.run_dir)
    assert torch.isfinite(torch.tensor(result.history[-1]['train_loss']))
    assert result.safetensors == str(run_dir / 'model.safetensors')
    # channels_last weights are strided, which safetensors cannot store as they are: the file holds copies
    for stem in ('model', 'model_ema'):
        expected = torch.load(run_dir / f'{stem}.pth', map_location='cpu')
        overlay = dict(file=str(run_dir / f'{stem}.safetensors'), num_classes=10, input_size=(1, 28, 28))
        m = timm.create_model(cfg.model, num_classes=10, in_chans=1, pretrained=True, pretrained_cfg_overlay=overlay,
                              **cfg.model_kwargs)
        got = m.state_dict()
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected), stem
    assert not list(run_dir.glob('.*.tmp'))  # atomic writes leave no temporary files behind


def test_sharded_batches_agree_across_ranks_and_resume():
    # samplers: N ranks and N micro-batches take the same images
    full = next(iter(ShardedBatches(64, 16, seed=1, epoch=0)))
    ranks = [next(iter(ShardedBatches(64, 16, seed=1, epoch=0, rank=r, world_size=2))) for r in range(2)]
    assert ranks[0] == full[0::2] and ranks[1] == full[1::2]
    assert list(ShardedBatches(64, 16, seed=1, epoch=0, start=2)) == list(ShardedBatches(64, 16, 1, 0))[2:]


def _train_subprocess(args: list, launcher: tuple = ()) -> subprocess.Popen:
    # one thread in every run compared: another thread count changes float summation order, and PGD's
    # gradient signs turn such last-bit differences into different adversarial examples
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.Popen([sys.executable, *launcher, '-m', 'bench.cli'] + args, cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_kill_and_resume_is_exact(tmp_path):
    common = dict(training='pgd', attack_steps=2, epochs=2, deterministic=True, checkpoint_every=1, eval_limit=0)
    reference = _train_subprocess(_cli_args(tmp_path / 'ref', **common))
    out = tmp_path / 'killed'
    proc = _train_subprocess(_cli_args(out, **common))
    state = out / 'last.pth.tar'
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-epoch: the first checkpoint is written after step 1 of 4
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    saved = torch.load(state, weights_only=False)
    assert saved['global_step'] < 8  # killed before the end; resuming must redo nothing and skip nothing
    resumed = _train_subprocess(_cli_args(out, **common) + ['--resume'])
    for p in (reference, resumed):
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    expected, got = _weights(tmp_path / 'ref'), _weights(out)
    for k in expected:
        assert torch.equal(got[k], expected[k]), k


# torchrun is a feature: its PGD case runs by default; Free-AT's replays are the slow variant
@pytest.mark.parametrize('training', [
    dict(training='pgd', attack_steps=2, max_steps=3),
    # Free-AT: each rank carries its own positions' perturbation, as each micro-batch does; 2 minibatches, 2 replays
    pytest.param(dict(training='free', free_replays=2, max_steps=4, free_reset_prob=0.25),
                 marks=pytest.mark.slow)], ids=['pgd', 'free'])
def test_ddp_two_processes_match_one_process(tmp_path, training):
    # DDP averages the two ranks' gradients; one process with two micro-batches of the same images sums the
    # halves' gradients / 2: the same update, BatchNorm batch statistics included (each half normalises alone)
    common = dict(eval_limit=0, deterministic=True, **training)
    single = _train_subprocess(_cli_args(tmp_path / 'single', accum_steps=2, **common))
    ddp = _train_subprocess(_cli_args(tmp_path / 'ddp', **common), launcher=[
        '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={free_port()}'])
    for p in (single, ddp):
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    a, b = _weights(tmp_path / 'single'), _weights(tmp_path / 'ddp')
    compared = 0
    for k in a:
        if 'running' in k or 'num_batches' in k:
            # BN running statistics are rank 0's own in DDP (broadcast from rank 0), not the average
            continue
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
        compared += 1
    assert compared > 50


def test_config_parsing(tmp_path):
    cfg = load_config('cifar100_resnet18_pgd', ['--eps', '4/255', '--model-kwargs', 'width=16,gate=conv_gap',
                                                 '--amp', '--epochs=3'])
    assert cfg.eps == pytest.approx(4 / 255) and cfg.amp is True and cfg.epochs == 3
    assert cfg.model_kwargs == dict(width=16, gate='conv_gap')  # a command-line mapping replaces the file's
    assert cfg.training == 'pgd' and cfg.attack_steps == 7 and cfg.batch_size == 640
    yaml_file = tmp_path / 'c.yaml'
    yaml_file.write_text('epochs: 2\nmodel_kwargs: {width: 8}\n')
    assert load_config(yaml_file, ['--model_kwargs.gate', 'conv_gap']).model_kwargs == dict(width=8, gate='conv_gap')
    assert cfg.sha256() != load_config('cifar100_resnet18_pgd').sha256()


@pytest.mark.parametrize('kwargs, message', [
    (dict(overrides=['--epochz', '3']), "unknown config key 'epochz'"),
    (dict(overrides=['--epochs', 'three']), "epochs='three' has the wrong type: expected int"),
    (dict(overrides=['--training', 'fgsm']), "training='fgsm' is not allowed"),
    (dict(overrides=['--eps', '2']), 'eps=2.0 is outside [0, 1]'),
    (dict(overrides=['--eps', '8/0']), 'not a number or a fraction'),
    (dict(path='nope.yaml'), "config 'nope.yaml' not found"),
])
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError) as e:
        load_config(kwargs.get('path'), kwargs.get('overrides'))
    assert message in str(e.value)


def test_yaml_unknown_key(tmp_path):
    f = tmp_path / 'bad.yaml'
    f.write_text('lr: 0.1\nlearning_rate: 0.2\n')
    with pytest.raises(ValueError, match="unknown config key 'learning_rate'"):
        load_config(f)


@pytest.mark.parametrize('extra, message', [
    (['--dataset', 'mnist'], "unknown data set 'mnist'"),
    (['--model', 'resnet18_blockmoe_e3_k1'], "unknown model 'resnet18_blockmoe_e3_k1'"),
    (['--batch-size', 'x'], "batch_size='x' has the wrong type"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, extra, message):
    rc = main(_cli_args(tmp_path / 'run', max_steps=1) + extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0]


def test_non_empty_out_needs_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / 'run'
    out.mkdir()
    (out / 'precious.txt').write_text('keep me')
    assert main(_cli_args(out, max_steps=1)) == 2
    assert 'is not empty; pass --resume' in capsys.readouterr().err
    assert (out / 'precious.txt').read_text() == 'keep me'
    assert main(_cli_args(out, max_steps=1) + ['--resume']) == 2  # nothing to resume there
    assert (out / 'precious.txt').exists()


def test_corrupt_checkpoint_on_resume_is_one_line_and_kept(tmp_path, capsys):
    out = tmp_path / 'run'
    assert main(_cli_args(out, max_steps=1)) == 0
    state = out / 'last.pth.tar'
    state.write_bytes(state.read_bytes()[:100])  # as if truncated by a full disk
    capsys.readouterr()
    assert main(_cli_args(out, max_steps=2) + ['--resume']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'is not a readable torch file' in err[0]
    assert len(state.read_bytes()) == 100  # left for the user to inspect, not replaced

"""Fast-AT and Free-AT: the fast step is one random-start PGD step of 1.25 eps (checked against Wong et al.'s
algorithm written out), Free-AT carries its perturbation across replays and minibatches with m updates per
minibatch and epochs counted as data passes, resume is exact, bad settings are one line, and both give real
robustness on the bundled data (slow) and run end to end through `timm-moe train` (default run)."""
import json
import math
import shutil
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import timm_moe  # noqa: F401  registers the models
from bench.attacks import PGD, accuracy, predict
from bench.cli import main
from bench.data import dataset_info, load_tensors
from bench.models import normalized
from bench.training import free as free_at
from bench.training.adversarial import fast_examples, madry_examples
from bench.training.free import FreePerturbation
from bench.training.config import load_config
from bench.training.trainer import Trainer, run_training

TINY = dict(model='resnet18_blockmoe_e2_k1', model_kwargs=dict(width=4), dataset='fashion-mnist-bundled',
            batch_size=16, train_limit=64, eval_limit=0, workers=0, lr=0.05, progress=False, log_every=1)


def _cfg(tmp_path: Path, name: str = 'run', **kw):
    return load_config(None, **{**TINY, 'out': str(tmp_path / name), **kw})


def _tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model('resnet18_dense', width=4, in_chans=1, num_classes=10)
    return normalized(model, (0.5,), (0.5,)).eval()


def _images(n: int = 8) -> tuple:
    x = torch.rand(n, 1, 28, 28)
    x[:, :, :4] = 0.0  # pixels on the box's edges, where the [0, 1] clamp is active
    x[:, :, -4:] = 1.0
    return x, torch.arange(n) % 10


# -- Fast-AT
def test_fast_step_is_one_random_start_pgd_step_of_1_25_eps():
    net, (x, y), eps = _tiny_net(), _images(), 0.1
    torch.manual_seed(7)
    got = fast_examples(net, x, y, eps)
    # Wong et al. (2020), Algorithm 3, written out: a uniform start in the ball (inside the image box), one FGSM
    # step of alpha = 1.25 eps on the cross-entropy, back into the ball and the box
    torch.manual_seed(7)
    delta = torch.empty_like(x).uniform_(-eps, eps)
    x0 = (x + delta).clamp(0, 1)
    x0.requires_grad_(True)
    grad, = torch.autograd.grad(F.cross_entropy(net(x0), y), x0)
    delta = ((x0.detach() - x) + 1.25 * eps * grad.sign()).clamp(-eps, eps)
    expected = (x + delta).clamp(0, 1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert (got - x).abs().max() <= eps + 1e-6 and got.min() >= 0 and got.max() <= 1
    # the start is random: without it (or with PGD-7's small step) the examples are others
    assert (got - x).abs().max() > 0.9 * eps
    torch.manual_seed(7)
    assert torch.equal(got, madry_examples(net, x, y, eps, 1.25 * eps, 1, random_start=True))  # the PGD core
    torch.manual_seed(7)
    assert not torch.allclose(got, madry_examples(net, x, y, eps, 1.25 * eps, 1, random_start=False))
    torch.manual_seed(7)
    assert not torch.allclose(got, madry_examples(net, x, y, eps, eps / 4, 1, random_start=True))


# -- Free-AT
def test_free_perturbation_carries_across_replays_and_minibatches():
    # the loss w . x has the input gradient w: its sign is known, so every step is known
    eps, step = 0.1, 0.04
    w = torch.tensor([1.0, -1.0, 1.0, -1.0]).view(1, 4, 1, 1).expand(2, 4, 3, 3)
    free = FreePerturbation(eps, step)
    x1 = torch.full((2, 4, 3, 3), 0.5)
    x1[0, 0] = 1.0  # at the box's edge the clamp zeroes the gradient: that coordinate never moves
    free.begin(x1)
    seen = []
    for _ in range(3):  # three replays of minibatch 1
        x_adv, leaf = free.inputs(x1, slice(None))
        seen.append(x_adv.detach())
        (w * x_adv).sum().backward()
        free.ascend(leaf, slice(None))
    sign = w.sign()
    assert torch.equal(seen[0], x1)  # the first minibatch starts from 0, as the reference
    torch.testing.assert_close(seen[1][1], (x1 + step * sign)[1])
    torch.testing.assert_close(seen[2][1], (x1 + 2 * step * sign)[1])
    torch.testing.assert_close(free.delta[1], (eps * sign)[1])  # 3 steps of 0.04, clipped to the 0.1 ball
    assert torch.all(free.delta[0, 0] == 0)
    x2 = torch.full((2, 4, 3, 3), 0.3)  # minibatch 2 starts from the carried perturbation
    x_adv, _ = free.inputs(x2, slice(None))
    torch.testing.assert_close(x_adv[1], (x2 + eps * sign)[1])
    # micro-batch slices address their own positions only
    x_adv, leaf = free.inputs(x2, slice(1, None, 2))
    (w[1:] * x_adv).sum().neg().backward()
    before = free.delta[0].clone()
    free.ascend(leaf, slice(1, None, 2))
    assert torch.equal(free.delta[0], before)
    torch.testing.assert_close(free.delta[1], ((eps - step) * sign)[1])


def test_free_reset_probability_restarts_perturbations():
    free = FreePerturbation(0.1, 0.1, reset_prob=1.0)
    x = torch.full((4, 1, 2, 2), 0.5)
    free.begin(x)
    free.delta.fill_(0.1)
    x_adv, _ = free.inputs(x, slice(None))
    assert torch.equal(x_adv, x) and torch.all(free.delta == 0)
    kept = FreePerturbation(0.1, 0.1, reset_prob=0.0)
    kept.begin(x)
    kept.delta.fill_(0.1)
    assert torch.allclose(kept.inputs(x, slice(None))[0], x + 0.1)


def test_free_trainer_replays_each_minibatch_m_times_and_carries_delta(tmp_path):
    m, eps = 3, 0.1
    trainer = Trainer(_cfg(tmp_path, training='free', free_replays=m, eps=eps, train_limit=32))
    try:
        seen, steps = [], []
        trainer.net.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
        step = trainer.optimizer.step

        def counted(*a, **kw):
            steps.append(1)
            return step(*a, **kw)
        trainer.optimizer.step = counted
        data = [trainer.train_set[i] for i in range(32)]
        x1, y1 = torch.stack([d[0] for d in data[:16]]), torch.tensor([d[1] for d in data[:16]])
        x2, y2 = torch.stack([d[0] for d in data[16:]]), torch.tensor([d[1] for d in data[16:]])
        out = trainer.train_step(x1, y1)
        assert out['updates'] == m and len(steps) == m and trainer.global_step == m and len(seen) == m
        assert torch.equal(seen[0], x1)  # delta starts at 0
        for a, b in zip(seen, seen[1:]):  # one ascent step of eps per replay, on the same images
            assert not torch.equal(a, b) and (b - a).abs().max() <= eps + 1e-6
        assert all((s - x1).abs().max() <= eps + 1e-6 for s in seen)
        carried = trainer.free.delta.clone()
        assert carried.abs().max() > 0
        trainer.train_step(x2, y2)
        assert len(steps) == 2 * m and trainer.global_step == 2 * m
        torch.testing.assert_close(seen[m], (x2 + carried).clamp(0, 1))  # minibatch 2 starts where 1 ended
    finally:
        trainer.close()


def test_free_epochs_count_data_passes_with_m_updates_per_minibatch(tmp_path):
    # 32 images, batch 16: 2 minibatches per epoch; with 2 replays, 4 updates, and a per-update poly schedule spans
    # them (the per-epoch default: tests/test_fidelity_init.py)
    result = run_training(_cfg(tmp_path, training='free', free_replays=2, epochs=1, train_limit=32,
                               sched_step='update'))
    assert result.steps == 4
    assert [(r['epoch'], r['complete']) for r in result.history] == [(0, True)]
    lrs = {}
    for line in (Path(result.run_dir) / 'metrics.jsonl').read_text().splitlines():
        if '"kind": "step"' in line:
            rec = json.loads(line)
            lrs[rec['step']] = rec['lr']
    assert sorted(lrs) == [2, 4]  # a step line per minibatch, at its last update
    assert lrs[2] == pytest.approx(0.05 * (1 - 2 / 4) ** 0.9)
    assert lrs[4] == pytest.approx(0.0)


def test_free_resume_continues_the_carried_perturbation(tmp_path, monkeypatch):
    # 2 epochs of 2 minibatches of 2 replays: 8 updates; the interrupted run stops after the first minibatch
    common = dict(training='free', free_replays=2, epochs=2, deterministic=True, free_reset_prob=0.25, train_limit=32)
    run_training(_cfg(tmp_path, 'ref', **common))
    expected = torch.load(tmp_path / 'ref' / 'model.pth')

    run_training(_cfg(tmp_path, 'resumed', **common, max_steps=2))  # stops mid-epoch 0
    shutil.copytree(tmp_path / 'resumed', tmp_path / 'forgot')
    run_training(_cfg(tmp_path, 'resumed', **common), resume=True)
    got = torch.load(tmp_path / 'resumed' / 'model.pth')
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    # control: a resume that forgets the perturbation does not reproduce the run
    monkeypatch.setattr(free_at, 'load_state', lambda *args: None)
    run_training(_cfg(tmp_path, 'forgot', **common), resume=True)
    forgot = torch.load(tmp_path / 'forgot' / 'model.pth')
    assert any(not torch.equal(forgot[k], expected[k]) for k in expected if expected[k].is_floating_point())


@pytest.mark.parametrize('training', ['fast', 'free'])
def test_fast_and_free_with_amp_ema_and_accumulation(tmp_path, training):
    cfg = _cfg(tmp_path, training=training, free_replays=2, max_steps=4, amp=True, ema=True, accum_steps=2,
               channels_last=True)
    result = run_training(cfg)
    assert result.steps == 4 and math.isfinite(result.history[-1]['train_loss'])
    assert (Path(result.run_dir) / 'model_ema.pth').exists()


@pytest.mark.parametrize('extra, message', [
    (['--free-replays', '0'], 'free_replays=0 must be at least 1'),
    (['--fast-step', '-1'], 'fast_step=-1.0 must be positive'),
    (['--free-step', '0'], 'free_step=0.0 must be positive'),
    (['--free-reset-prob', '1.5'], 'free_reset_prob=1.5 must be in [0, 1]'),
    (['--training', 'fast', '--random-start', 'false'], 'random_start=False with training=fast'),
    (['--training', 'free', '--attack-mode', 'eval'], "attack_mode='eval' with training=free"),
    (['--training', 'free', '--free-replays', '2', '--max-steps', '3'], 'max_steps=3 with training=free must be'),
    (['--training', 'fastest'], "training='fastest' is not allowed; choose one of normal, pgd, trades, fast, free"),
])
def test_bad_fast_free_settings_are_one_line(tmp_path, capsys, extra, message):
    assert main(['train', '--out', str(tmp_path / 'run'), '--dataset', 'fashion-mnist-bundled'] + extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and 'Traceback' not in err
    assert not (tmp_path / 'run').exists()


def test_fast_free_keys_hash_only_into_their_own_runs(tmp_path):
    pgd = _cfg(tmp_path, training='pgd')
    assert pgd.sha256() == _cfg(tmp_path, training='pgd', free_replays=8, fast_step=0.01).sha256()
    assert _cfg(tmp_path, training='free').sha256() != _cfg(tmp_path, training='free', free_replays=8).sha256()
    assert _cfg(tmp_path, training='fast').sha256() != _cfg(tmp_path, training='fast', fast_step=0.01).sha256()
    assert _cfg(tmp_path, training='fast').sha256() == _cfg(tmp_path, training='fast', free_replays=8).sha256()


@pytest.mark.parametrize('training', ['fast', 'free'])
def test_cli_trains_fast_and_free_end_to_end(tmp_path, capsys, training):
    out = tmp_path / training
    args = ['train', '--config', 'fashion_mnist_' + training, '--out', str(out), '--train-limit', '32',
            '--batch-size', '16', '--epochs', '1', '--eval-limit', '16', '--model-kwargs', 'width=4',
            '--progress', 'false']
    assert main(args) == 0
    steps = 2 * (2 if training == 'free' else 1)  # 2 minibatches; the recipe's free_replays is 2
    assert capsys.readouterr().out.startswith(f'done: {steps} steps')
    cfg = load_config(out / 'config.yaml')
    assert cfg.training == training
    state = torch.load(out / 'last.pth.tar', weights_only=False)
    if training == 'free':  # the carried perturbation is saved, inside the ball
        assert state['free']['delta'].shape == (16, 1, 28, 28)
        assert 0 < state['free']['delta'].abs().max() <= cfg.eps + 1e-7
    else:
        assert state['free'] is None


# -- robustness: each gives PGD-20 accuracy far above normal training's, trained the same short way
@pytest.mark.slow
def test_fast_and_free_give_real_robustness(tmp_path):
    eps, steps = 0.1, 150
    images, labels = load_tensors('fashion-mnist-bundled', 'test')
    x, y = images[:500].float().div_(255), labels[:500]
    info = dataset_info('fashion-mnist-bundled')
    acc = {}
    for training in ('normal', 'fast', 'free'):
        # the same model, data, batch, schedule and number of optimizer updates (150) for all three: Free-AT's
        # epochs are divided by its replays, as the reference does it. The schedule steps per update: per epoch,
        # Free-AT's single epoch would keep its LR constant while the others decay once, another comparison
        cfg = load_config(None, model='resnet18_blockmoe_e4_k1', model_kwargs=dict(width=8),
                          dataset='fashion-mnist-bundled', train_limit=75 * 64, epochs=1 if training == 'free' else 2,
                          sched_step='update',
                          batch_size=64, lr=0.05, eps=eps, free_replays=2, training=training, seed=0, eval_limit=0,
                          workers=0, progress=False, out=str(tmp_path / training))
        assert run_training(cfg).steps == steps
        model = timm.create_model(cfg.model, width=8, in_chans=1, num_classes=10)
        model.load_state_dict(torch.load(tmp_path / training / 'model.pth'))
        net = normalized(model, info['mean'], info['std']).eval()
        acc[training] = accuracy(predict(net, PGD(eps, steps=20, step_size=eps / 4)(net, x, y)) == y)
    assert acc['normal'] < 10, acc
    assert acc['fast'] > acc['normal'] + 25 and acc['free'] > acc['normal'] + 25, acc

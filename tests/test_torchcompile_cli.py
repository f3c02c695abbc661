"""`timm-moe train --torchcompile` and `timm-moe eval --torchcompile` (issue 11): timm's flag, and the same numbers.

timm's train.py takes `--torchcompile [BACKEND]` (bare: inductor) and `--torchcompile-mode`, compiles after the
DDP wrap and saves the raw module. Here: the flag parses as timm's does; bad values are one-line errors; a PGD
step's input gradient through the compiled model is eager's; a compiled training run trains its attack through
the compiled model, settles (no recompile per step) and saves timm-loadable weights; a compiled evaluation gives
eager's per-sample results, per-expert subpaths included.

The compile tests run with `aot_eager` (dynamo's graph breaks, guards and recompiles, and AOT autograd's compiled
backward, without generating code) and, marked slow, with inductor, whose cold C++ compiles take minutes on a
2-core CPU. Also slow: DDP compiled after the wrap against eager DDP, and the subpaths of 8 experts staying compiled.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch._dynamo.eval_frame import OptimizedModule
from torch._dynamo.utils import counters

import timm_moe
from bench.cli import build_parser, main
from bench.core.compile import TORCHCOMPILE_DEFAULT, torchcompile_settings
from bench.models import unwrap
from bench.training import trainer as train_module
from bench.training.config import load_config
from bench.training.trainer import Trainer, run_training
from free_port import free_port

DATA = 'fashion-mnist-bundled'
TINY = dict(model='resnet18_blockmoe_e2_k1', model_kwargs=dict(width=4), dataset=DATA, batch_size=16,
            train_limit=64, eval_limit=16, workers=0, epochs=1, lr=0.05, training='pgd', attack_steps=1,
            progress=False, log_every=1)


def _has_cxx() -> bool:
    """Inductor's CPU backend compiles C++: without a compiler only the aot_eager runs can be checked."""
    from torch._inductor import cpp_builder
    try:
        return bool(cpp_builder.get_cpp_compiler())
    except Exception:  # noqa: BLE001 - it raises its own error types when no compiler is found
        return False


BACKENDS = ['aot_eager', pytest.param('inductor', marks=[
    pytest.mark.slow, pytest.mark.skipif(not _has_cxx(), reason='inductor on CPU needs a C++ compiler')])]

pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()  # no guards or graphs from another test
    counters.clear()
    yield
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------------------ the flag

def test_flag_follows_timm_bare_means_inductor(tmp_path):
    train = build_parser('train').parse_args(['train', '--torchcompile', '--out', 'x'])
    assert train.cfg_torchcompile == TORCHCOMPILE_DEFAULT == 'inductor' and train.cfg_out == 'x'
    train = build_parser('train').parse_args(['train', '--torchcompile', 'aot_eager', '--torchcompile-mode', 'm'])
    assert (train.cfg_torchcompile, train.cfg_torchcompile_mode) == ('aot_eager', 'm')
    assert build_parser('train').parse_args(['train']).cfg_torchcompile is None
    ev = build_parser('eval').parse_args(['eval', '--model', 'm', '--torchcompile', '--no-progress'])
    assert ev.torchcompile == 'inductor' and ev.no_progress and ev.torchcompile_mode is None
    assert build_parser('eval').parse_args(['eval', '--model', 'm']).torchcompile is None
    # the config key: bare override token, YAML bool, an explicit backend and mode
    assert load_config(None, ['--torchcompile']).torchcompile == 'inductor'
    (tmp_path / 'on.yaml').write_text('torchcompile: true\n')
    (tmp_path / 'off.yaml').write_text('torchcompile: false\n')
    assert load_config(tmp_path / 'on.yaml').torchcompile == 'inductor'
    assert load_config(tmp_path / 'off.yaml').torchcompile is None
    cfg = load_config(None, ['--torchcompile', 'inductor', '--torchcompile-mode', 'max-autotune'])
    assert (cfg.torchcompile, cfg.torchcompile_mode) == ('inductor', 'max-autotune')
    # compiling is how a run executes, not what it trains: the config hash ignores it
    assert cfg.sha256() == load_config(None).sha256()


@pytest.mark.parametrize('verb', ['train', 'eval'])
@pytest.mark.parametrize('extra, message', [
    (['--torchcompile', 'nope'], "--torchcompile 'nope' is not a torch.compile backend; choose one of"),
    (['--torchcompile', 'inductor', '--torchcompile-mode', 'fast'], "'fast' is not an inductor mode"),
    (['--torchcompile', 'aot_eager', '--torchcompile-mode', 'max-autotune'], '--torchcompile aot_eager takes none'),
    (['--torchcompile-mode', 'max-autotune'], 'needs --torchcompile'),
])
def test_bad_backend_or_mode_is_one_line(tmp_path, capsys, verb, extra, message):
    out = tmp_path / 'out'
    argv = (['train', '--out', str(out), '--dataset', DATA] if verb == 'train' else
            ['eval', '--model', 'resnet18_dense', '--dataset', DATA, '--json', str(out)]) + extra
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f'timm-moe {verb}: error:') and message in err, err
    if 'nope' in extra:
        from bench.core.compile import _installed
        # every recommended backend whose package imports (tvm, openxla need theirs)
        assert all(b in err for b in torch._dynamo.list_backends() if _installed(b)), err
    assert not out.exists()


def test_compile_settings_apply_only_inside():
    import torch._inductor.config
    dynamo, functorch, inductor = torch._dynamo.config, torch._functorch.config, torch._inductor.config
    before = (dynamo.recompile_limit, dynamo.allow_unspec_int_on_nn_module, functorch.donated_buffer,
              inductor.layout_optimization)
    assert inductor.layout_optimization  # torch's default, which the CPU setting must change
    with torchcompile_settings(8, retain_graph=True):
        # 8 experts forced one by one, with and without grad, fit under the limit
        assert dynamo.recompile_limit >= 2 * (8 + 1) + 8 and dynamo.allow_unspec_int_on_nn_module
        assert functorch.donated_buffer is False
        assert inductor.layout_optimization  # CUDA keeps channels_last convolutions
    with torchcompile_settings(0, cpu=True):
        assert functorch.donated_buffer == before[2]  # training keeps buffer donation
        assert not inductor.layout_optimization  # wrong conv weight gradients on CPU (docs/ECOSYSTEM.md)
    assert (dynamo.recompile_limit, dynamo.allow_unspec_int_on_nn_module, functorch.donated_buffer,
            inductor.layout_optimization) == before


# ------------------------------------------------------------------------------------------------ gradients

def _pgd_grad(model, x, y):
    """The input gradient one PGD step takes the sign of."""
    x = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    return grad


@pytest.mark.parametrize('backend', BACKENDS)
def test_pgd_step_input_grads_match_eager(tmp_path, backend):
    trainer = Trainer(load_config(None, **TINY, out=str(tmp_path / 'run'), torchcompile=backend))
    assert isinstance(trainer.local_net, OptimizedModule) and trainer.local_net._orig_mod is trainer.net
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)
    with torchcompile_settings(timm_moe.num_experts(trainer.model), cpu=True), \
            timm_moe.paused_routing_stats(trainer.model):
        for mode in ('train', 'eval'):  # the training attack ('train' attack_mode) and the evaluation's
            trainer.net.train(mode == 'train')
            eager, compiled = _pgd_grad(trainer.net, x, y), _pgd_grad(trainer.local_net, x, y)
            assert eager.abs().max() > 0, mode
            tol = 1e-4 * float(eager.abs().max())
            torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=tol, msg=lambda m: f'{mode}: {m}')
            # the step itself: the same sign wherever the gradient is not within rounding of zero
            clear = eager.abs() > tol
            assert torch.equal(compiled.sign()[clear], eager.sign()[clear]), mode
    trainer.close()


# ------------------------------------------------------------------------------------------------ train

@pytest.mark.parametrize('backend', BACKENDS)
def test_train_compiled_epoch_saves_timm_weights(tmp_path, monkeypatch, backend):
    attacked_with, graphs = [], []
    real_attack, real_step = train_module.madry_examples, Trainer.train_step

    def attack(model, *args, **kwargs):
        attacked_with.append(model)
        return real_attack(model, *args, **kwargs)

    def step(self, x, y):
        out = real_step(self, x, y)
        graphs.append(counters['stats']['unique_graphs'])
        return out

    monkeypatch.setattr(train_module, 'madry_examples', attack)
    monkeypatch.setattr(Trainer, 'train_step', step)
    # one epoch of 6 steps. Seed 1: its first steps route images to both experts, so every routing pattern's
    # graph is compiled within the epoch (at seed 12345 the reference's init sends all 16 images to one expert
    # for 3 steps, and the two-expert graphs compile only at steps 4-5, too late for a steady tail here)
    epoch = dict(TINY, train_limit=96, ema=True, seed=1)
    cfg = load_config(None, **epoch, out=str(tmp_path / 'run'), torchcompile=backend)
    result = run_training(cfg)
    run = Path(result.run_dir)
    assert result.steps == 6 and all(torch.isfinite(torch.tensor(r['train_loss'])) for r in result.history)
    # the training attack ran through the compiled (normalised) model
    assert attacked_with and all(isinstance(m, OptimizedModule) for m in attacked_with)
    # compiled in the first steps (attack, training, first routing patterns), then steady: BlockMoE's Python
    # counters on the module, which change every forward, do not recompile each step (torch's defaults do)
    assert graphs[0] > 0 and graphs[-3] == graphs[-2] == graphs[-1], graphs
    plain = timm.create_model(cfg.model, num_classes=10, in_chans=1, **cfg.model_kwargs).state_dict()
    for stem in ('model', 'model_ema'):
        saved = torch.load(run / f'{stem}.pth', map_location='cpu')
        assert list(saved) == list(plain), stem  # no '_orig_mod.' prefix, nothing missing or extra
        overlay = dict(file=str(run / f'{stem}.pth'), num_classes=10, input_size=(1, 28, 28))
        m = timm.create_model(cfg.model, num_classes=10, in_chans=1, pretrained=True, pretrained_cfg_overlay=overlay,
                              **cfg.model_kwargs)
        assert all(torch.equal(v, saved[k]) for k, v in m.state_dict().items()), stem
    assert list(torch.load(run / 'last.pth.tar', map_location='cpu', weights_only=False)['model']) == list(plain)
    # the same run in eager mode: step 1's loss (compiled attack and forward) and step 2's (after the update
    # from compiled gradients) are eager's to rounding. Later steps drift apart, as under any change of
    # summation order: top-1 routing and the attack's sign steps turn rounding into discrete differences.
    eager = run_training(load_config(None, **epoch, out=str(tmp_path / 'eager')))
    compiled_losses, eager_losses = (_step_losses(Path(r.run_dir)) for r in (result, eager))
    assert compiled_losses[:2] == pytest.approx(eager_losses[:2], rel=1e-5)


def _step_losses(run: Path) -> list:
    records = (json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines())
    return [r['loss'] for r in records if r['kind'] == 'step']


# ------------------------------------------------------------------------------------------------ eval

@pytest.mark.parametrize('backend', BACKENDS)
def test_eval_compiled_gives_eager_per_sample_results(tmp_path, capsys, tiny_trained, backend):
    run = tmp_path / 'run'
    run.mkdir()
    torch.save(unwrap(tiny_trained).state_dict(), run / 'model.pth')
    (run / 'config.yaml').write_text('model: resnet18_blockmoe_e4_k1\nmodel_kwargs:\n  width: 8\n')
    argv = ['eval', '--model', 'resnet18_blockmoe_e4_k1', '--checkpoint', str(run / 'model.pth'), '--dataset', DATA,
            '--n-examples', '8', '--batch-size', '8', '--attacks', 'pgd10', '--n-check', '8', '--no-progress']
    assert main(argv + ['--json', str(tmp_path / 'eager.json')]) == 0
    assert main(argv + ['--json', str(tmp_path / 'compiled.json'), '--torchcompile', backend]) == 0
    capsys.readouterr()
    eager, compiled = (json.loads((tmp_path / f'{n}.json').read_text()) for n in ('eager', 'compiled'))
    assert compiled['settings']['torchcompile'] == backend and eager['settings']['torchcompile'] is None
    assert counters['stats']['unique_graphs'] > 0  # it did compile
    assert 0 < compiled['clean_acc'] and compiled['robust_acc']['pgd10'] < compiled['clean_acc']  # a real attack
    # per sample: clean, PGD and their worst case; then the subpaths (force_expert), routing and transfer
    assert compiled['correct'] == eager['correct']
    assert compiled['per_expert'] == eager['per_expert'] and len(compiled['per_expert']) == 4
    assert compiled['routing_under_attack'] == eager['routing_under_attack']
    assert compiled['transfer'] == eager['transfer']
    assert compiled['sanity'] == eager['sanity'] and compiled['flags'] == eager['flags']


@pytest.mark.slow
def test_eval_compiled_subpaths_of_eight_experts_stay_compiled(tmp_path, capsys):
    # 8 forced experts x grad modes pass torch's default of 8 recompiles per function, after which dynamo
    # would quietly run that code eagerly; the evaluation raises the limit with E, and here a hit fails
    argv = ['eval', '--model', 'resnet18_blockmoe_e8_k1', '--model-kwargs', 'width=4', '--dataset', DATA,
            '--n-examples', '16', '--batch-size', '8', '--attacks', 'pgd10', '--n-check', '8', '--no-progress',
            '--torchcompile', 'aot_eager', '--json', str(tmp_path / 'e8.json')]
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        assert main(argv) == 0
    capsys.readouterr()
    result = json.loads((tmp_path / 'e8.json').read_text())
    assert len(result['per_expert']) == 8 and result['settings']['torchcompile'] == 'aot_eager'


def _train_ddp(out: Path, *extra: str):
    import os
    import subprocess
    import sys
    args = ['train', '--out', str(out), '--model', TINY['model'], '--model-kwargs', 'width=4', '--dataset', DATA,
            '--batch-size', '16', '--train-limit', '64', '--eval-limit', '0', '--workers', '0', '--epochs', '1',
            '--training', 'pgd', '--attack-steps', '1', '--progress', 'false', *extra]
    env = dict(os.environ, OMP_NUM_THREADS='1')  # the thread count changes summation order
    return subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
                             f'--master_port={free_port()}', '-m', 'bench.cli', *args],
                            cwd=Path(__file__).resolve().parent.parent, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


@pytest.mark.slow
def test_ddp_compiled_after_wrap_matches_eager_ddp(tmp_path):
    # timm's order: DDP wrap, then torch.compile; the attack's net is compiled apart, without DDP
    runs = [_train_ddp(tmp_path / 'eager'), _train_ddp(tmp_path / 'compiled', '--torchcompile', 'aot_eager')]
    for p in runs:  # one after the other would double the wall time; two ranks each on 2 cores is the limit
        assert p.wait(timeout=600) == 0, p.stderr.read().decode()[-2000:]
    eager, compiled = (torch.load(tmp_path / n / 'model.pth', map_location='cpu') for n in ('eager', 'compiled'))
    assert list(compiled) == list(eager)
    for k, v in eager.items():
        torch.testing.assert_close(compiled[k], v, rtol=1e-4, atol=1e-5, msg=lambda m: f'{k}: {m}')

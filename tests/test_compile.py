"""torch.compile (inductor, CPU): compiled BlockMoE models give eager's outputs, training gradients (aux loss
included) and attack input gradients, and their graph breaks are counted exactly.

The breaks come from data-dependent routing: `torch.bincount` of the chosen experts has a data-dependent
shape and `counts.tolist()` moves the per-expert image counts to the host to split the batch. Each BlockMoE
therefore splits the model's graph; docs/ECOSYSTEM.md lists them. A change that adds a break (or removes
one) fails `test_graph_breaks_are_counted`, so the number in the docs stays true.
"""
import copy
import shutil

import pytest
import timm
import torch
import torch.nn.functional as F

import timm_moe
from bench.core.compile import torchcompile_settings

# (k, mode) -> graph breaks of a resnet18 BlockMoE with one MoE layer (the default placement='last'), as
# torch._dynamo.explain counts them (a break inside a nested call counts in each enclosing frame): the
# bincount of the routing (data-dependent output shape), `_in_backward()` (a torch._C query returning a
# bool) and `counts.tolist()` (data-dependent split sizes); the train step's extra one is its own frame.
GRAPH_BREAKS = {(1, 'eval'): 6, (2, 'eval'): 6, (1, 'train'): 7, (2, 'train'): 7}
BREAK_REASONS = {'Dynamic shape operator', 'torch.* op returned non-Tensor', 'Data dependent operator'}
ATOL, RTOL = 1e-5, 1e-4  # fp32: inductor fuses and reorders reductions


def _has_cxx() -> bool:
    """Inductor's CPU backend compiles C++; without a compiler only the graph-break count can be checked."""
    from torch._inductor import cpp_builder
    try:
        return bool(cpp_builder.get_cpp_compiler())
    except Exception:  # noqa: BLE001 - it raises its own error types when no compiler is found
        return shutil.which('g++') is not None


needs_inductor = pytest.mark.skipif(not _has_cxx(), reason='inductor on CPU needs a C++ compiler (g++ or clang++)')


def _model(k: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(f'resnet18_blockmoe_e4_k{k}', width=4, num_classes=10)


def _batch(n: int = 8):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()  # each test compiles from scratch: no guards or caches from another test
    yield
    torch._dynamo.reset()


def _train_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y) + timm_moe.aux_loss(model)


@pytest.mark.parametrize('k', [1, pytest.param(2, marks=pytest.mark.slow)])  # k=2 breaks where k=1 does
@pytest.mark.parametrize('mode', ['eval', 'train'])
def test_graph_breaks_are_counted(k, mode):
    model = _model(k).train(mode == 'train')
    x, y = _batch()
    if mode == 'eval':
        with torch.no_grad():
            explained = torch._dynamo.explain(model)(x)
    else:
        explained = torch._dynamo.explain(lambda a, b: _train_loss(model, a, b))(x, y)
    reasons = [r.reason.splitlines()[0] for r in explained.break_reasons]
    assert explained.graph_break_count == GRAPH_BREAKS[k, mode], reasons
    assert set(reasons) == BREAK_REASONS
    assert explained.graph_count == explained.graph_break_count + 1


def _assert_close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL, msg=lambda m: f'{what}: {m}')


def _check_eval(k: int) -> None:
    model = _model(k).eval()
    compiled = torch.compile(model)
    x, y = _batch()
    with torchcompile_settings(timm_moe.num_experts(model), cpu=True), torch.no_grad():
        _assert_close(compiled(x), model(x), 'eval logits')
    # an attack's step: the input gradient of the loss, through the compiled model
    grads = []
    for m in (model, compiled):
        xr = x.clone().requires_grad_(True)
        with torchcompile_settings(timm_moe.num_experts(model), cpu=True):
            F.cross_entropy(m(xr), y).backward()
        grads.append(xr.grad)
    _assert_close(grads[1], grads[0], 'input gradient')


def _check_train_step(k: int) -> None:
    eager = _model(k).train()
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin)
    x, y = _batch()
    loss_e = _train_loss(eager, x, y)
    # the settings `--torchcompile` trains under; on CPU they turn off the layout optimisation that makes
    # torch 2.14.1's inductor get layer2.0.downsample's weight gradient wrong (docs/ECOSYSTEM.md)
    with torchcompile_settings(timm_moe.num_experts(twin), cpu=True):
        loss_c = F.cross_entropy(compiled(x), y) + timm_moe.aux_loss(twin)
        assert timm_moe.aux_loss(twin).requires_grad  # the aux loss set inside the compiled graph keeps its grad
        _assert_close(loss_c, loss_e, 'loss')
        loss_e.backward()
        loss_c.backward()
    for (name, p_e), p_c in zip(eager.named_parameters(), twin.parameters()):
        assert (p_e.grad is None) == (p_c.grad is None), name
        if p_e.grad is not None:
            _assert_close(p_c.grad, p_e.grad, f'grad of {name}')
    for (name, b_e), b_c in zip(eager.named_buffers(), twin.buffers()):  # BN running statistics
        _assert_close(b_c.float(), b_e.float(), name)
    stats_c, stats_e = timm_moe.routing_stats(twin)['layer4.1'], timm_moe.routing_stats(eager)['layer4.1']
    assert stats_c['load'] == stats_e['load'] and stats_c['images'] == stats_e['images']  # counts: exact
    assert stats_c['importance'] == pytest.approx(stats_e['importance'], rel=RTOL, abs=ATOL)


@needs_inductor
def test_compiled_eval_and_input_grads_match_eager_k1():
    _check_eval(1)


@needs_inductor
def test_compiled_train_step_matches_eager_k1():
    _check_train_step(1)


@needs_inductor
@pytest.mark.slow
def test_compiled_eval_and_input_grads_match_eager_k2():
    _check_eval(2)


@needs_inductor
@pytest.mark.slow
def test_compiled_train_step_matches_eager_k2():
    _check_train_step(2)


@needs_inductor
@pytest.mark.slow
def test_bench_compile_prints_every_candidate(capsys):
    from benchmarks.bench_compile import VARIANTS, main
    assert main(['--width', '4', '--input-size', '16', '--batch', '2', '--repeats', '1', '--warmup', '0']) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [(r[1], r[2]) for r in rows] == [(v, kind) for v in VARIANTS for kind in ('eager', 'compiled')]
    assert float(rows[0][5]) == 1.0  # eager dense is the reference

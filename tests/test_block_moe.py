"""MoE: routing, sparse dispatch against a dense reference, aux losses, inspection API."""
import math
import warnings

import pytest
import timm
import torch
from timm.models.resnet import BasicBlock
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import timm_moe
from timm_moe.layers import AUX_LOSSES, MoE, route
from timm_moe.layers.routing import Routing


def _layer(num_experts=4, k=2, chs=8, **kw):
    return MoE([BasicBlock(chs, chs) for _ in range(num_experts)], chs, k=k, **kw)


def _dense_reference(layer: MoE, x: torch.Tensor) -> torch.Tensor:
    """Run every expert on every image, then mask: the (E, B, C, H, W) way we avoid."""
    r = route(layer.gate(x), layer.k, straight_through=layer.straight_through)
    all_out = torch.stack([e(x) for e in layer.experts])  # E, B, C, H, W
    mask = torch.zeros(x.shape[0], layer.num_experts).scatter(1, r.indices, r.weights)
    return torch.einsum('be,ebchw->bchw', mask, all_out)


@pytest.mark.parametrize('k', [1, 2, 4])
def test_sparse_dispatch_equals_dense_reference(k):
    layer = _layer(num_experts=4, k=k).eval()
    for m in layer.modules():  # non-trivial BN statistics, so that a wrong image-expert pairing shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(16, 8, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _dense_reference(layer, x), rtol=1e-5, atol=1e-5)


def test_experts_only_see_their_images():
    layer = _layer(num_experts=8, k=2).eval()
    seen = [0] * 8
    for i, e in enumerate(layer.experts):
        e.register_forward_hook(lambda m, inp, out, i=i: seen.__setitem__(i, seen[i] + inp[0].shape[0]))
    x = torch.randn(32, 8, 4, 4)
    layer(x)
    counts = torch.bincount(layer.last_routing.indices.flatten(), minlength=8).tolist()
    assert seen == counts and sum(seen) == 32 * 2


def test_k1_straight_through_weight_is_exactly_one_and_reaches_the_gate():
    layer = _layer(num_experts=4, k=1).train()
    x = torch.randn(8, 8, 4, 4)
    out = layer(x)
    assert torch.equal(layer.last_routing.weights, torch.ones(8, 1))
    out.sum().backward()
    assert layer.gate.fc.weight.grad.abs().sum() > 0


def test_k2_weights_are_renormalised_and_reach_the_gate():
    layer = _layer(num_experts=4, k=2).train()
    layer(torch.randn(8, 8, 4, 4)).square().sum().backward()
    torch.testing.assert_close(layer.last_routing.weights.sum(1), torch.ones(8))
    assert layer.gate.fc.weight.grad.abs().sum() > 0


class _AllocationMeter(TorchDispatchMode):
    """Records the size (in elements) of every new storage an op creates, factory functions included."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            # views and in-place ops return an input's storage: only new storages are allocations
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.sizes.append(t.untyped_storage().nbytes() // t.element_size())
        return out


class _BufferedMoE(MoE):
    """The reference's dispatch: an (E, B, C, H, W) zero buffer, masked and summed. Only for the test below."""

    def _dispatch(self, x, r, counts):
        buffer = torch.zeros((self.num_experts,) + tuple(x.shape), dtype=x.dtype)
        for e, expert in enumerate(self.experts):
            rows = (r.indices == e).any(dim=1).nonzero().flatten()
            if len(rows):
                buffer[e, rows] = expert(x[rows])
        mask = torch.zeros(x.shape[0], self.num_experts).scatter(1, r.indices, r.weights)
        return torch.einsum('be,ebchw->bchw', mask, buffer)


def _largest_allocation(layer, x):
    with _AllocationMeter() as meter:
        out = layer(x)
    return max(meter.sizes), out


@pytest.mark.parametrize('train', [False, True])
def test_no_buffer_of_experts_times_batch(train):
    num_experts, k = 8, 2
    layer = _layer(num_experts=num_experts, k=k).train(train)
    x = torch.randn(16, 8, 4, 4)
    largest, out = _largest_allocation(layer, x)
    # the biggest tensor is the k-fold gather of the batch (each image once per selected expert)
    assert largest <= k * x.numel() < num_experts * x.numel()

    # the meter does see such a buffer: the reference-style variant allocates E x the batch
    buffered = _BufferedMoE(list(layer.experts), 8, k=k).train(train)
    buffered.gate.load_state_dict(layer.gate.state_dict())
    buffered_largest, buffered_out = _largest_allocation(buffered, x)
    assert buffered_largest >= num_experts * x.numel() > largest
    if not train:  # same numbers, so the variant is a fair stand-in (train-mode BN differs per expert batch)
        torch.testing.assert_close(buffered_out, out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', ['resnet18_blockmoe_e4_k2', 'resnet18_blockmoe_e8_k4', 'resnet50_blockmoe_e4_k2'])
def test_logits_are_routing_weighted_sum_of_forced_expert_logits(name):
    # pool and fc are linear after the last block, and renormalised weights sum to 1
    model = timm.create_model(name, width=8).eval()
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        (layer_name, _), = timm_moe.moe_layers(model)
        r = timm_moe.last_routing(model)[layer_name]
        forced = []
        for e in range(timm_moe.num_experts(model)):
            with timm_moe.force_expert(model, e):
                forced.append(model(x))
    forced = torch.stack(forced, dim=1)  # B, E, classes
    expected = (r['weights'].unsqueeze(-1) * forced.gather(1, r['indices'].unsqueeze(-1).expand(-1, -1, forced.shape[-1]))).sum(1)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)


def test_force_expert_runs_that_expert_alone_and_restores_routing():
    model = timm.create_model('resnet18_blockmoe_e4_k1', width=8).eval()
    x = torch.rand(4, 3, 32, 32)
    before = model(x)
    layer = model.layer4[1]
    seen = {}
    handle = layer.register_forward_hook(lambda m, inp, out: seen.update(inp=inp[0], out=out))
    with timm_moe.force_expert(model, 3):
        forced = model(x)
    handle.remove()
    torch.testing.assert_close(seen['out'], layer.experts[3](seen['inp']), rtol=0, atol=0)
    # the layer's output is what the model continued with
    torch.testing.assert_close(forced, model.forward_head(seen['out']), rtol=0, atol=0)
    torch.testing.assert_close(model(x), before)
    with pytest.raises(ValueError, match=r'expert=4: expected an integer in \[0, 4\)'):
        with timm_moe.force_expert(model, 4):
            pass
    with pytest.raises(ValueError, match="no MoE layer"):
        with timm_moe.force_expert(timm.create_model('resnet18_dense', width=8), 0):
            pass


# probs of two images over three experts, chosen so every term is easy to compute by hand
P = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])


def _routing_from_probs(p: torch.Tensor) -> Routing:
    logits = p.log().requires_grad_()
    return route(logits, k=1)


def _h(ps):
    return -sum(v * math.log(v) for v in ps if v > 0)


def test_aux_losses_against_hand_computed_values():
    r = _routing_from_probs(P)
    p_bar = [0.4, 0.5, 0.1]
    # switch: argmax picks experts 0 and 1 once each -> f = (.5, .5, 0)
    assert AUX_LOSSES['switch'](r).item() == pytest.approx(3 * (0.5 * 0.4 + 0.5 * 0.5), rel=1e-6)
    h_rows = (_h([0.7, 0.2, 0.1]) + _h([0.1, 0.8, 0.1])) / 2
    assert AUX_LOSSES['entropy'](r).item() == pytest.approx(h_rows - _h(p_bar), rel=1e-5)
    assert AUX_LOSSES['kl'](r).item() == pytest.approx(math.log(3) - _h(p_bar), rel=1e-5)
    # logits = log p, so logsumexp = log(sum p) = 0
    assert AUX_LOSSES['z_loss'](r).item() == pytest.approx(0.0, abs=1e-6)
    z = route(torch.tensor([[1.0, 2.0], [0.0, 0.0]]), k=1)
    expected_z = (math.log(math.e + math.e ** 2) ** 2 + math.log(2) ** 2) / 2
    assert AUX_LOSSES['z_loss'](z).item() == pytest.approx(expected_z, rel=1e-6)


@pytest.mark.parametrize('aux_loss,changes_gate_grad', [('none', False), ('entropy', True)])
def test_aux_loss_none_leaves_the_task_gradient_alone(aux_loss, changes_gate_grad):
    # 'none' must add nothing to the gate's gradient, whatever the routing; a real loss must add something
    model = timm.create_model('resnet18_blockmoe_e4_k2', width=8, num_classes=5, aux_loss=aux_loss).train()
    x = torch.rand(8, 3, 32, 32)
    torch.manual_seed(1)
    task = model(x).logsumexp(1).mean()
    task_grad, = torch.autograd.grad(task, model.layer4[1].gate.fc.weight, retain_graph=True)
    total_grad, = torch.autograd.grad(task + timm_moe.aux_loss(model), model.layer4[1].gate.fc.weight)
    assert torch.equal(task_grad, total_grad) is not changes_gate_grad


def test_aux_loss_of_model_is_weighted_and_differentiable():
    model = timm.create_model('resnet18_blockmoe_e4_k2', width=8, aux_loss='kl', aux_weight=0.25, placement='all')
    model(torch.rand(4, 3, 32, 32))
    loss = timm_moe.aux_loss(model)
    # KL(p_bar || uniform) = sum_i p_bar_i * log(E * p_bar_i), from the probabilities, in float64
    by_hand = 0.0
    for _, m in timm_moe.moe_layers(model):
        p_bar = m.last_routing.probs.double().mean(0).tolist()
        by_hand += 0.25 * sum(p * math.log(len(p_bar) * p) for p in p_bar)
    assert len(timm_moe.moe_layers(model)) == 2 and by_hand > 0
    assert loss.item() == pytest.approx(by_hand, rel=1e-5)
    loss.backward()
    assert model.layer4[0].gate.fc.weight.grad is not None
    assert timm_moe.aux_loss(timm.create_model('resnet18_dense', width=8)).item() == 0.0


def test_routing_stats_load_importance_and_collapse():
    layer = _layer(num_experts=4, k=1).eval()
    with torch.no_grad():
        layer.gate.fc.weight.zero_()
        layer.gate.fc.bias.copy_(torch.tensor([10.0, 0, 0, 0]))  # everything to expert 0
    layer(torch.randn(8, 8, 4, 4))
    s = layer.stats()
    assert s['load'] == [1.0, 0.0, 0.0, 0.0] and s['images'] == 8
    assert s['collapse'] == pytest.approx(1.0)
    assert sum(s['importance']) == pytest.approx(1.0)

    with torch.no_grad():
        layer.gate.fc.bias.zero_()
        layer.gate.fc.weight.normal_()
    layer.reset_stats()
    layer(torch.randn(256, 8, 4, 4))
    s = layer.stats()
    assert sum(s['load']) == pytest.approx(1.0) and 0.0 <= s['collapse'] < 0.5


def test_model_level_routing_api():
    model = timm.create_model('resnet18_blockmoe_e8_k2', width=8).eval()
    timm_moe.reset_routing_stats(model)
    model(torch.rand(5, 3, 32, 32))
    model(torch.rand(3, 3, 32, 32))
    stats = timm_moe.routing_stats(model)['layer4.1']
    assert stats['images'] == 8 and len(stats['load']) == 8
    assert timm_moe.last_routing(model)['layer4.1']['indices'].shape == (3, 2)


@pytest.mark.parametrize('name', ['resnet18_blockmoe_e4_k1', 'resnet18_blockmoe_e4_k2'])
def test_upcycle_without_noise_reproduces_the_dense_model(name):
    dense = timm.create_model('resnet18_dense', width=8, num_classes=10).eval()
    for m in dense.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
    moe = timm_moe.upcycle(dense, name, noise=0.0, width=8, num_classes=10).eval()
    x = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(moe(x), dense(x), rtol=1e-5, atol=1e-5)
    noisy = timm_moe.upcycle(dense.state_dict(), name, noise=0.05, width=8, num_classes=10)
    e0, e1 = noisy.layer4[1].experts[0], noisy.layer4[1].experts[1]
    assert not torch.equal(e0.conv1.weight, e1.conv1.weight)


def test_upcycle_rejects_mismatched_dense_model():
    dense = timm.create_model('resnet18_dense', width=16)
    with pytest.raises(ValueError, match='shape'):
        timm_moe.upcycle(dense, 'resnet18_blockmoe_e4_k1', width=8)


def test_block_moe_rejects_bad_arguments():
    with pytest.raises(ValueError, match='num_experts=0'):
        MoE([], 8)
    with pytest.raises(ValueError, match='k=3 > num_experts=2'):
        _layer(num_experts=2, k=3)
    with pytest.raises(ValueError, match='4-D input'):
        _layer()(torch.randn(8, 4, 4))


def test_paused_routing_stats_keep_probing_forwards_out():
    model = timm.create_model('resnet18_blockmoe_e4_k1', width=8, num_classes=10).eval()
    x = torch.rand(6, 3, 32, 32)
    timm_moe.reset_routing_stats(model)
    model(x)
    before = timm_moe.routing_stats(model)
    with timm_moe.paused_routing_stats(model):
        model(torch.rand(5, 3, 32, 32))
        probed = timm_moe.last_routing(model)['layer4.1']['indices']
    assert probed.shape[0] == 5  # the last forward is still visible
    assert timm_moe.routing_stats(model) == before and before['layer4.1']['images'] == 6
    model(x)
    assert timm_moe.routing_stats(model)['layer4.1']['images'] == 12  # recording is back on


def test_eval_forward_keeps_no_aux_graph_and_aux_loss_says_so():
    model = timm.create_model('resnet18_blockmoe_e4_k1', width=4, num_classes=10)
    x = torch.randn(4, 3, 32, 32)
    model.train()(x)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # train mode: the aux loss trains the gate, nothing to warn about
        assert timm_moe.aux_loss(model).requires_grad
    model.eval()(x)
    with pytest.warns(RuntimeWarning, match='eval mode'):
        assert not timm_moe.aux_loss(model).requires_grad


def test_meta_device_forward_gives_shapes():
    # timm runs some of its model tests on the meta device, where data-dependent routing cannot run
    model = timm.create_model('resnet18_blockmoe_e8_k2', width=4, num_classes=10, device='meta')
    out = model(torch.empty(3, 3, 32, 32, device='meta'))
    assert out.is_meta and out.shape == (3, 10)

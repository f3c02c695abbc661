"""drop_idle_expert_grads: an expert that got no image in a step is left exactly where it was."""
import os

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.resnet import BasicBlock

import timm_moe
from timm_moe.layers import MoE
from free_port import free_port

BIG = 20.0  # a logit gap that makes the other experts' probabilities ~2e-9: never selected, still finite


def _route_all_to(model, experts):
    """Zero the gate's weights and give `experts` the top bias, so every image goes to experts[0]."""
    gate = model.layer4[1].gate.fc
    with torch.no_grad():
        gate.weight.zero_()
        gate.bias.fill_(-BIG)
        gate.bias[list(experts)] = 0.0


def _step(model, opt, x, y, drop):
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y) + timm_moe.aux_loss(model)
    loss.backward()
    dropped = timm_moe.drop_idle_expert_grads(model) if drop else None
    opt.step()
    return dropped


def _expert_state(model, opt, e):
    expert = model.layer4[1].experts[e]
    weights = [p.detach().clone() for p in expert.parameters()]
    # an expert whose grad was None at every step so far has no momentum buffer yet
    momenta = [opt.state[p]['momentum_buffer'].clone() if p in opt.state else None for p in expert.parameters()]
    return weights, momenta


def _run_two_steps(drop):
    torch.manual_seed(0)
    model = timm.create_model('resnet18_blockmoe_e4_k1', width=4, num_classes=3).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x, y = torch.rand(8, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    _route_all_to(model, [3])  # step 1: expert 3 gets every image, so it has a momentum buffer afterwards
    first = _step(model, opt, x, y, drop)
    _route_all_to(model, [0])  # step 2: expert 0 gets every image, expert 3 none
    before = {e: _expert_state(model, opt, e) for e in (0, 3)}
    second = _step(model, opt, x, y, drop)
    after = {e: _expert_state(model, opt, e) for e in (0, 3)}
    return first, second, before, after


def _same(a, b):
    return all((u is None and v is None) or (u is not None and v is not None and torch.equal(u, v))
               for u, v in zip(a, b))


def test_idle_expert_weights_and_momentum_are_bit_for_bit_unchanged():
    first, second, before, after = _run_two_steps(drop=True)
    assert first == {'layer4.1': [0, 1, 2]} and second == {'layer4.1': [1, 2, 3]}
    weights, momenta = before[3]
    assert all(m is not None for m in momenta)  # expert 3 was used in step 1, so momentum could move it
    assert _same(weights, after[3][0]) and _same(momenta, after[3][1])
    assert not _same(before[0][0], after[0][0]), 'the used expert did not move'


def test_without_the_call_momentum_and_weight_decay_move_the_idle_expert():
    # the control for the test above: the zero grad of the idle anchor alone does not keep expert 3 still
    _, _, before, after = _run_two_steps(drop=False)
    assert not _same(before[3][0], after[3][0])


def test_counts_span_micro_batches_and_reset():
    layer = MoE([BasicBlock(4, 4) for _ in range(4)], 4, k=1).train()
    with torch.no_grad():
        layer.gate.fc.weight.zero_()
        layer.gate.fc.bias.copy_(torch.tensor([BIG, 0, 0, 0]))
    layer(torch.rand(2, 4, 4, 4)).sum().backward()  # micro-batch 1: expert 0
    with torch.no_grad():
        layer.gate.fc.bias.copy_(torch.tensor([0, 0, BIG, 0]))
    layer(torch.rand(2, 4, 4, 4)).sum().backward()  # micro-batch 2: expert 2
    assert all(p.grad is not None for p in layer.parameters())  # the idle anchor at work
    assert timm_moe.drop_idle_expert_grads(layer) == {'': [1, 3]}
    assert layer.experts[1].conv1.weight.grad is None and layer.experts[2].conv1.weight.grad is not None
    # counters were reset: nothing counted since, so nothing can be judged idle
    assert timm_moe.drop_idle_expert_grads(layer) == {'': []}


def test_uncounted_forwards_do_not_count():
    layer = MoE([BasicBlock(4, 4) for _ in range(2)], 4, k=1).train()
    with torch.no_grad():
        layer.gate.fc.weight.zero_()
        layer.gate.fc.bias.copy_(torch.tensor([BIG, 0]))
    x = torch.rand(2, 4, 4, 4)
    layer(x).sum().backward()  # counted: expert 0
    with timm_moe.paused_routing_stats(layer):
        layer(x)
    with torch.no_grad():
        layer.gate.fc.bias.copy_(torch.tensor([0, BIG]))  # expert 1 from here on, but not counted
    with timm_moe.paused_routing_stats(layer):
        layer(x)
    with torch.no_grad():
        layer(x)
    layer.eval()(x)
    layer.train()
    with timm_moe.force_expert(layer, 1):
        layer(x)
    assert timm_moe.drop_idle_expert_grads(layer) == {'': [1]}


def test_dense_model_has_nothing_to_drop():
    assert timm_moe.drop_idle_expert_grads(timm.create_model('resnet18_dense', width=4)) == {}


def _ddp_worker(rank, port, results):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        layer = MoE([BasicBlock(4, 4) for _ in range(4)], 4, k=1).train()
        with torch.no_grad():
            layer.gate.fc.weight.zero_()
            layer.gate.fc.bias.fill_(0.0)
            layer.gate.fc.bias[rank] = BIG  # rank 0 uses expert 0 only, rank 1 expert 1 only
        layer(torch.rand(2, 4, 4, 4)).sum().backward()
        results[rank] = timm_moe.drop_idle_expert_grads(layer)['']
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason='torch built without distributed')
def test_counts_are_summed_over_ranks():
    # each rank alone would call 3 experts idle; summed over both, only experts 2 and 3 are
    import torch.multiprocessing as mp
    results = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(free_port(), results), nprocs=2, join=True)
    assert dict(results) == {0: [2, 3], 1: [2, 3]}

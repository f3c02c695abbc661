"""MoE against the paper's equations, written out here with no use of timm_moe's routing code.

Per image b with block input x_b: logits s_b = gate(x_b); p_b = softmax(s_b); M_b = top-k mask of p_b.
  k = 1: y_b = expert_{argmax}(x_b), weight 1 forward, gradient of p_b * M_b backward (straight-through);
  k > 1: y_b = sum_i w_bi * expert_i(x_b) with w_b = p_b * M_b / sum(p_b * M_b).
Aux loss (entropy): mean_b H(p_b) - H(mean_b p_b), weighted by 0.5.
In train mode BatchNorm inside an expert sees only the images routed to it, so the reference runs each
expert on its routed subset; in eval mode it runs every expert on every image (the dense loop).
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from timm.models.resnet import BasicBlock

from timm_moe.layers import MoE

NUM_EXPERTS, CHS = 4, 8


def _gate_logits(layer: MoE, x: torch.Tensor) -> torch.Tensor:
    if layer.gate_type == 'conv_gap':
        return F.conv2d(x, layer.gate.conv.weight).mean(dim=(2, 3))
    fc = layer.gate.fc
    return x.mean(dim=(2, 3)) @ fc.weight.T + fc.bias


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.log()).sum(-1)  # fine here: softmax of small random logits has no zeros


def _reference(layer: MoE, x: torch.Tensor, k: int):
    """(output, aux loss) by the equations above."""
    p = _gate_logits(layer, x).softmax(-1)
    top = p.topk(k, dim=-1).indices
    mask = torch.zeros_like(p).scatter(1, top, 1.0)
    if k == 1:
        masked = p * mask
        weights = mask + masked - masked.detach()  # forward: the mask (1 for the chosen expert); backward: p*M
    else:
        weights = p * mask / (p * mask).sum(-1, keepdim=True)
    if layer.training:
        out = torch.zeros_like(x)
        for e, expert in enumerate(layer.experts):
            rows = mask[:, e].nonzero().flatten()
            if len(rows):
                out = out.index_add(0, rows, weights[rows, e].view(-1, 1, 1, 1) * expert(x[rows]))
    else:
        every = torch.stack([expert(x) for expert in layer.experts], dim=1)  # B, E, C, H, W
        out = (weights.view(*weights.shape, 1, 1, 1) * every).sum(1)
    aux = 0.5 * (_entropy(p).mean() - _entropy(p.mean(0)))
    return out, aux


def _layer(k: int, gate: str) -> MoE:
    torch.manual_seed(0)
    layer = MoE([BasicBlock(CHS, CHS) for _ in range(NUM_EXPERTS)], CHS, k=k, gate=gate, aux_loss='entropy')
    with torch.no_grad():  # non-trivial BN and gate, so that a wrong pairing or weight shows
        for m in layer.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
        for w in layer.gate.parameters():
            w.mul_(8.0)  # spread the probabilities so the gate gradient is not tiny
    return layer


def _loss(out: torch.Tensor, aux: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    return (out * probe).sum() + aux


@pytest.mark.parametrize('train', [False, True], ids=['eval', 'train'])
@pytest.mark.parametrize('gate', ['gap_fc', 'conv_gap'])
@pytest.mark.parametrize('k', [1, 2])
def test_block_moe_matches_the_papers_equations(k, gate, train):
    layer = _layer(k, gate).train(train)
    ref = copy.deepcopy(layer)
    x = torch.randn(12, CHS, 4, 4)
    probe = torch.randn(12, CHS, 4, 4)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()

    out = layer(x_ours)
    expected_out, expected_aux = _reference(ref, x_ref, k)
    assert layer.noisy_gating is False  # entropy loss: no selection noise, as the reference
    torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.last_aux, expected_aux, rtol=1e-5, atol=1e-6)
    used = layer.last_routing.indices.unique().numel()
    assert used > 1, 'every image took one expert: the test would not see a wrong pairing'

    # the aux loss trains the gate in train mode; in eval the layer keeps it as a detached value (a graph
    # held by the module would leak the model under checkpointing), so only the output's gradient counts
    assert layer.last_aux.requires_grad == train
    _loss(out, layer.last_aux if train else 0, probe).backward()
    _loss(expected_out, expected_aux if train else 0, probe).backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    for (name, g), (_, g_ref) in zip(layer.gate.named_parameters(), ref.gate.named_parameters()):
        assert g_ref.grad.abs().sum() > 0
        torch.testing.assert_close(g.grad, g_ref.grad, rtol=1e-4, atol=1e-6, msg=f'gate {name}')
    for (name, e), (_, e_ref) in zip(layer.experts.named_parameters(), ref.experts.named_parameters()):
        expected = e_ref.grad if e_ref.grad is not None else torch.zeros_like(e)  # idle: our anchor gives 0
        torch.testing.assert_close(e.grad, expected, rtol=1e-4, atol=1e-5, msg=f'expert {name}')

"""Routing and aux losses stay finite, values and gradients, for any finite logits (saturated gates)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from timm_moe.layers import AUX_LOSSES, route

DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}
LIMIT = 1e4  # the contract: any finite logits up to ±1e4 (fp16 holds up to 65504)


@st.composite
def logits_and_k(draw):
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    batch = draw(st.integers(1, 6))
    experts = draw(st.integers(1, 8))
    k = draw(st.integers(1, experts))
    # mix extreme and ordinary values so that both saturated and soft rows are drawn
    value = st.one_of(st.sampled_from([-LIMIT, LIMIT, 0.0]),
                      st.floats(-LIMIT, LIMIT, allow_nan=False, width=32))
    rows = draw(st.lists(st.lists(value, min_size=experts, max_size=experts), min_size=batch, max_size=batch))
    return torch.tensor(rows, dtype=torch.float32).to(DTYPES[dtype]), k


@pytest.mark.parametrize('loss_name', sorted(AUX_LOSSES))
@settings(max_examples=60, deadline=None)
@given(case=logits_and_k(), noisy=st.booleans())
def test_every_loss_and_the_routing_are_finite_with_finite_gradients(loss_name, case, noisy):
    logits, k = case
    logits = logits.clone().requires_grad_()
    r = route(logits, k, noise_std=0.1 if noisy else 0.0)
    loss = AUX_LOSSES[loss_name](r)
    assert torch.isfinite(loss), f'{loss_name} = {loss} for logits {logits}'
    assert torch.isfinite(r.weights).all() and torch.isfinite(r.probs).all()
    # the routing weights reach the gate too: STE at k=1, renormalisation at k>1
    (loss + (r.weights.float() * torch.arange(1, k + 1)).sum()).backward()
    assert torch.isfinite(logits.grad.float()).all(), f'{loss_name}: non-finite grad for logits {logits}'


def _old_entropy(p):
    return -torch.special.xlogy(p, p).sum(dim=-1)


def test_the_old_xlogy_entropy_gave_nan_gradients_where_ours_does_not():
    # a logit gap of 200 > ~104 underflows the float32 softmax to an exact 0
    logits = torch.tensor([[200.0, 0.0, 0.0, 0.0], [0.0, 1.0, 2.0, 3.0]], requires_grad=True)
    p = logits.softmax(-1)
    assert (p[0, 1:] == 0).all()
    old = _old_entropy(p).mean() - _old_entropy(p.mean(0))
    old_grad, = torch.autograd.grad(old, logits)
    assert torch.isnan(old_grad).any(), 'the old formula no longer shows the bug: this test lost its point'
    new_grad, = torch.autograd.grad(AUX_LOSSES['entropy'](route(logits, 1)), logits)
    assert torch.isfinite(new_grad).all()


def test_the_guard_keeps_values_and_gradients_where_p_is_positive():
    logits = torch.randn(16, 8, dtype=torch.float64, requires_grad=True)
    p = logits.softmax(-1)
    old = _old_entropy(p).mean() - _old_entropy(p.mean(0))
    new = AUX_LOSSES['entropy'](route(logits, 2))
    # route() computes in float32, so compare to float32 precision
    torch.testing.assert_close(new.double(), old, rtol=1e-5, atol=1e-6)
    g_old, = torch.autograd.grad(old, logits)
    g_new, = torch.autograd.grad(new, logits)
    torch.testing.assert_close(g_new.double(), g_old, rtol=1e-4, atol=1e-6)


def test_saturated_gate_keeps_k1_straight_through_and_k2_renormalisation():
    logits = torch.tensor([[1e4, 0.0, -1e4], [0.0, 0.0, 5.0]], requires_grad=True)
    r1 = route(logits, 1)
    assert torch.equal(r1.weights, torch.ones(2, 1))
    r2 = route(logits, 2)
    torch.testing.assert_close(r2.weights.sum(1), torch.ones(2))
    assert r2.weights[0, 1] == 0.0  # the second expert's probability underflowed: weight exactly 0

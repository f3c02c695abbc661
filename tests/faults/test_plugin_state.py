"""The plugin's own state (issue 25, section 4): what an MoE layer keeps between forwards is the last forward's, and
what `expert_width='matched'` builds is the block it narrows, with only its width changed. Every test here failed
before its fix."""
from __future__ import annotations

import functools
import sys
import warnings

import pytest
import timm
import torch
from timm.layers import BatchNormAct2d
from torch import nn

import timm_moe


def _model(**kwargs):
    torch.manual_seed(0)
    return timm.create_model('resnet18_blockmoe_e4_k1', width=4, num_classes=10, **kwargs)


def _images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------ a forced forward leaves no stale state

def test_a_forced_forward_clears_the_routing_and_aux_loss_of_the_forward_before():
    model = _model().train()
    model(_images())
    assert timm_moe.aux_loss(model).requires_grad and 'layer4.1' in timm_moe.last_routing(model)
    with timm_moe.force_expert(model, 2):
        model(_images())
    # no gate ran: the earlier forward's routing and loss are not this forward's
    assert timm_moe.last_routing(model) == {}
    assert model.layer4[1].last_aux is None and float(timm_moe.aux_loss(model)) == 0.0


def test_fine_tuning_one_forced_expert_steps_without_touching_a_freed_graph():
    # the paper code's fine-tuning of one fixed expert: each step's loss adds the aux loss, as a training loop does
    model = _model().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = _images(), torch.arange(4)
    (nn.functional.cross_entropy(model(x), y) + timm_moe.aux_loss(model)).backward()  # one routed step first
    opt.step()
    with timm_moe.force_expert(model, 1):
        for _ in range(2):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y) + timm_moe.aux_loss(model)
            loss.backward()  # the routed step's aux graph was freed by its backward: reusing it raised here
            opt.step()


def test_forcing_one_layer_keeps_the_other_layers_routing():
    model = _model(placement='all').train()
    model(_images())
    with timm_moe.force_expert(model, 0, layers='layer4.1'):
        model(_images())
    assert list(timm_moe.last_routing(model)) == ['layer4.0']
    assert model.layer4[0].last_aux is not None and model.layer4[1].last_aux is None


def test_a_meta_forward_clears_the_stale_state_too():
    model = _model().train()
    model(_images())
    model.to('meta')
    model(torch.empty(2, 3, 32, 32, device='meta'))
    assert timm_moe.last_routing(model) == {} and model.layer4[1].last_aux is None


# ------------------------------------------------------------------ aux_loss warns on the loss, not the mode

def test_a_train_forward_read_after_eval_gives_a_loss_with_grad_and_no_warning():
    model = _model().train()
    model(_images())
    model.eval()  # e.g. a validation pass is about to start: the stored loss still trains the gate
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert timm_moe.aux_loss(model).requires_grad


def test_an_eval_forward_read_after_train_warns_that_its_loss_has_no_grad():
    model = _model().eval()
    model(_images())
    model.train()  # the mode is right now, but the loss came from the eval forward
    with pytest.warns(RuntimeWarning, match='no gradient'):
        assert not timm_moe.aux_loss(model).requires_grad


def test_a_train_forward_without_grad_warns():
    model = _model().train()
    with torch.no_grad():
        model(_images())
    with pytest.warns(RuntimeWarning, match='without grad'):
        timm_moe.aux_loss(model)


@pytest.mark.parametrize('kwargs', [dict(aux_loss='none'), dict(aux_weight=0.0)])
def test_an_aux_loss_that_trains_nothing_does_not_warn_in_eval(kwargs):
    model = _model(**kwargs).eval()
    model(_images())
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert float(timm_moe.aux_loss(model)) == 0.0


# ------------------------------------------------------------------ expert_width='matched' keeps the block's layers

def _matched_expert(model: nn.Module, path: str = 'layer4.1') -> nn.Module:
    timm_moe.convert(model, path, num_experts=2, k=2, expert_width='matched')
    return model.get_submodule(path).experts[0]


def test_matched_experts_keep_the_norm_layers_settings():
    norm = functools.partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01)
    expert = _matched_expert(timm.create_model('resnet18', norm_layer=norm))
    assert expert.conv1.out_channels < 512  # narrowed
    for bn in (expert.bn1, expert.bn2):
        assert (type(bn), bn.eps, bn.momentum) == (nn.BatchNorm2d, 1e-3, 0.01)


def test_matched_experts_keep_a_batchnormact_and_its_activation():
    norm = functools.partial(BatchNormAct2d, act_layer=nn.SiLU, eps=1e-3)
    expert = _matched_expert(timm.create_model('resnet18', norm_layer=norm))
    assert type(expert.bn1) is BatchNormAct2d and isinstance(expert.bn1.act, nn.SiLU) and expert.bn1.eps == 1e-3
    assert expert.bn1.num_features == expert.conv1.out_channels == expert.bn1.weight.numel()


def test_matched_experts_keep_a_norm_without_affine_or_running_stats():
    norm = functools.partial(nn.BatchNorm2d, affine=False, track_running_stats=False)
    model = timm.create_model('resnet18', norm_layer=norm)
    expert = _matched_expert(model)
    assert expert.bn1.weight is None and expert.bn1.running_mean is None
    model.eval()(torch.randn(2, 3, 64, 64))  # and the narrowed block runs


def test_matched_experts_keep_the_convs_padding_mode():
    model = timm.create_model('resnet18')
    for conv in (model.layer4[1].conv1, model.layer4[1].conv2):
        conv.padding_mode = 'reflect'
    expert = _matched_expert(model)
    assert (expert.conv1.padding_mode, expert.conv2.padding_mode) == ('reflect', 'reflect')


def test_matched_experts_of_a_bf16_model_are_bf16():
    model = timm.create_model('resnet18_dense', width=8, num_classes=10).to(torch.bfloat16)
    expert = _matched_expert(model)
    assert {p.dtype for p in expert.parameters()} == {torch.bfloat16}
    assert model.eval()(torch.rand(2, 3, 32, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16



# ------------------------------------------------------------------ register_tags leaves the module's exports alone

def test_registering_tags_again_does_not_grow_the_modules_all(monkeypatch):
    from timm_moe.models import register_tags, registry

    def register_model_of_older_timm(fn):  # appends to __all__ even when the name is there already
        sys.modules[fn.__module__].__all__.append(fn.__name__)
        return timm.models.register_model(fn)

    monkeypatch.setattr(registry, 'register_model', register_model_of_older_timm)
    before = list(registry.__all__)
    # the module whose __all__ timm grows: the one that holds the entry points
    assert timm.models.model_entrypoint('resnet18_dense').__module__ == registry.__name__
    register_tags()
    register_tags()
    assert registry.__all__ == before

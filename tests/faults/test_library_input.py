"""Bad input to the library (issue 25, section 3): `convert`, the layer and the registered models refuse it in one
`ValueError` line naming the value and what is allowed, before anything is built or changed. Every test here failed
before its fix."""
from __future__ import annotations

import math

import pytest
import timm
import torch

import timm_moe
from timm_moe import MoE


def _refused(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(ValueError, match=match) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert '\n' not in message, message
    return message


def _small():
    return timm.create_model('resnet18_dense', width=4, num_classes=10)


@pytest.mark.parametrize('targets', [None, 3, {'layer4.1': 1}])
def test_convert_refuses_targets_that_are_no_paths(targets):
    _refused(r"targets=.*: expected module paths or patterns", timm_moe.convert, _small(), targets, 2)


@pytest.mark.parametrize('target, what', [('maxpool', 'Identity'), ('fc', 'Linear'), ('global_pool', 'Selec')])
def test_convert_refuses_a_target_without_a_conv(target, what):
    # the CIFAR stem's max-pool is an Identity: no parameter at all (a bare StopIteration before)
    _refused(rf"target '{target}' is a {what}\w* with no Conv2d: expected a module with a Conv2d",
             timm_moe.convert, _small(), target, 2)


def test_a_refused_target_leaves_the_model_unconverted():
    model = _small()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _refused(r"target 'fc' is a Linear", timm_moe.convert, model, 'layer1.0+fc', 2)
    assert timm_moe.moe_layers(model) == [] and model.state_dict().keys() == before.keys()


@pytest.mark.parametrize('bad, num_experts, k', [('num_experts', True, 1), ('k', 4, True)])
def test_bool_counts_are_refused(bad, num_experts, k):
    # bool is an int to Python: num_experts=True built a 1-expert MoE
    value = num_experts if bad == 'num_experts' else k
    _refused(rf"{bad}={value!r}: expected an integer >= 1", timm_moe.convert, _small(), 'layer4.1', num_experts, k)


BAD_NUMBERS = [math.nan, math.inf, -0.5, 'x', True]


@pytest.mark.parametrize('value', BAD_NUMBERS, ids=repr)
def test_convert_refuses_a_bad_aux_weight(value):
    _refused(rf"aux_weight={value!r}: expected a finite number >= 0", timm_moe.convert, _small(), 'layer4.1', 2,
             aux_weight=value)


@pytest.mark.parametrize('value', BAD_NUMBERS, ids=repr)
def test_a_registered_model_refuses_a_bad_aux_weight(value):
    _refused(rf"aux_weight={value!r}: expected a finite number >= 0", timm.create_model,
             'resnet18_blockmoe_e2_k1', width=4, aux_weight=value)


@pytest.mark.parametrize('value', BAD_NUMBERS, ids=repr)
def test_the_layer_refuses_a_bad_noise_std(value):
    # noise_std=nan routed every image to one expert (nan scores sort first)
    experts = [torch.nn.Conv2d(4, 4, 3, padding=1) for _ in range(2)]
    _refused(rf"noise_std={value!r}: expected a finite number >= 0", MoE, experts, 4, noise_std=value)


def test_convert_refuses_a_nan_noise_std():
    _refused(r"noise_std=nan: expected a finite number >= 0", timm_moe.convert, _small(), 'layer4.1', 2,
             noise_std=math.nan)


@pytest.mark.parametrize('in_chans', [0, -1, True, 3.0])
def test_a_registered_model_refuses_bad_in_chans(in_chans):
    _refused(rf"in_chans={in_chans!r}: expected an integer >= 1", timm.create_model, 'resnet18_blockmoe_e2_k1',
             width=4, in_chans=in_chans)
    _refused(rf"in_chans={in_chans!r}: expected an integer >= 1",
             timm_moe.ModelSpec.from_name('resnet18_dense').create, in_chans=in_chans)


def test_the_layer_refuses_a_straight_through_that_is_no_bool():
    experts = [torch.nn.Conv2d(4, 4, 3, padding=1) for _ in range(2)]
    _refused(r"straight_through='yes': expected True or False", MoE, experts, 4, straight_through='yes')


def test_matched_experts_refuse_a_norm_they_cannot_narrow():
    # a GroupNorm was rebuilt as GroupNorm(inner): a TypeError deep inside
    model = timm.create_model('resnet18', device='meta')
    block = model.layer4[1]
    block.bn1, block.bn2 = (torch.nn.GroupNorm(4, bn.num_features, device='meta') for bn in (block.bn1, block.bn2))
    _refused(r"expert_width='matched' narrows BatchNorm layers, not GroupNorm: use expert_width='full'",
             timm_moe.convert, model, 'layer4.1', 2, 2, expert_width='matched')


def test_matched_experts_refuse_a_width_that_breaks_the_conv_groups():
    model = timm.create_model('resnext50_32x4d', device='meta')
    _refused(r"expert_width='matched': \d+ -> \d+ channels do not divide into the conv's groups=32; use "
             r"expert_width='full'", timm_moe.convert, model, 'layer4.2', 2, 2, expert_width='matched')

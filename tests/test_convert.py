"""`timm_moe.convert`: MoE as a transform over the modules of a built model (BlockMoE, ConvMoE, any placement)."""
import math

import pytest
import timm
import torch
from torch import nn

import timm_moe
from timm_moe.introspection import moe_layers

SMALL = dict(width=8, num_classes=10)


def _randomise_bn_stats(model: nn.Module) -> None:
    # eval-mode BatchNorm with running statistics far from (0, 1), so that copying them is visible
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def _dense_from_expert(model: nn.Module, dense_name: str, expert: int, **kwargs) -> nn.Module:
    """The dense model whose every MoE layer's module holds expert `expert`'s weights."""
    state = {}
    for key, value in model.state_dict().items():
        if '.gate.' in key:
            continue
        for path, _ in moe_layers(model):
            prefix = f'{path}.experts.{expert}.'
            if key.startswith(prefix):
                key = f'{path}.{key[len(prefix):]}'
                break
            if key.startswith(f'{path}.experts.'):
                key = None
                break
        if key is not None:
            state[key] = value
    dense = timm.create_model(dense_name, **kwargs)
    dense.load_state_dict(state)
    return dense.eval()


@pytest.mark.parametrize('name,kwargs', [
    ('resnet18_convmoe_e4_k1', {}),  # the done-when case: every conv of layer4, k=1
    ('resnet18_convmoe_e4_k2', dict(placement='layer4.*.conv*')),
    ('resnet18_blockmoe_e4_k1', dict(placement='layer3+layer4')),
    ('resnet50_convmoe_e2_k1', dict(placement='layer4.0')),
])
def test_upcycled_at_noise_0_gives_the_dense_logits(name, kwargs):
    dense = timm.create_model(name.split('_')[0] + '_dense', **SMALL)
    _randomise_bn_stats(dense)
    dense.eval()
    moe = timm_moe.upcycle(dense, name, noise=0.0, **SMALL, **kwargs).eval()
    assert len(moe_layers(moe)) >= 1
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(moe(x), dense(x), rtol=1e-5, atol=1e-5)
    assert moe.pretrained_cfg['architecture'] == name and moe.moe_config['num_experts'] == int(name.split('_e')[1][0])


@pytest.mark.parametrize('name,kwargs,layers', [
    ('resnet18_convmoe_e4_k1', {}, 5),  # every conv of layer4: 4 3x3 convs and the 1x1 shortcut
    ('resnet18_convmoe_e4_k2', dict(placement='layer4.0.conv1'), 1),
    ('resnet18_blockmoe_e4_k1', dict(placement='all'), 2),  # two MoE layers
    ('resnet18_blockmoe_e4_k3', dict(placement='layer3.0+layer4.1'), 2),
])
def test_forcing_expert_e_everywhere_is_the_dense_model_of_expert_e(name, kwargs, layers):
    torch.manual_seed(0)
    model = timm.create_model(name, **SMALL, **kwargs)
    _randomise_bn_stats(model)
    model.eval()
    assert len(moe_layers(model)) == layers
    x = torch.rand(3, 3, 32, 32)
    outs = []
    for e in range(4):
        dense = _dense_from_expert(model, name.split('_')[0] + '_dense', e, **SMALL)
        with torch.no_grad(), timm_moe.force_expert(model, e):
            forced = model(x)
            torch.testing.assert_close(forced, dense(x), rtol=0, atol=1e-6)
        outs.append(forced)
    assert not torch.allclose(outs[0], outs[1])  # the experts are re-initialised independently


def test_force_expert_per_layer():
    torch.manual_seed(0)
    model = timm.create_model('resnet18_blockmoe_e4_k1', **SMALL, placement='all').eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        with timm_moe.force_expert(model, 2):
            everywhere = model(x)
        with timm_moe.force_expert(model, 2, layers='layer4.0'):
            assert model.layer4[0].forced_expert == 2 and model.layer4[1].forced_expert is None
            one = model(x)
            with timm_moe.force_expert(model, 2, layers=['layer4.1']):
                both = model(x)
        assert model.layer4[0].forced_expert is None
    torch.testing.assert_close(both, everywhere, rtol=0, atol=0)
    assert not torch.equal(one, everywhere)
    with pytest.raises(ValueError, match=r"layers='layer4.2': expected MoE layer paths of the model, some of "
                                         r"\['layer4.0', 'layer4.1'\]"):
        with timm_moe.force_expert(model, 0, layers='layer4.2'):
            pass


def test_convmoe_shares_the_batchnorm_and_gates_see_the_conv_input():
    model = timm.create_model('resnet18_convmoe_e4_k1', **SMALL)
    paths = [n for n, _ in moe_layers(model)]
    assert paths == ['layer4.0.conv1', 'layer4.0.conv2', 'layer4.0.downsample.0', 'layer4.1.conv1', 'layer4.1.conv2']
    block = model.layer4[0]
    assert isinstance(block.bn1, nn.BatchNorm2d) and block.conv1.kind == 'conv'
    assert all(isinstance(e, nn.Conv2d) for e in block.conv1.experts)
    assert block.conv1.gate.fc.in_features == block.conv1.experts[0].in_channels == 32
    assert block.conv2.gate.fc.in_features == 64
    assert 'kind=conv' in repr(block.conv1)
    # the 3x3 convs only, as the paper's placement table counts them
    only = timm.create_model('resnet18_convmoe_e4_k1', **SMALL, placement='layer4.*.conv*')
    assert [n for n, _ in moe_layers(only)] == [p for p in paths if 'downsample' not in p]


@pytest.mark.parametrize('placement,expected', [
    ('last', ['layer4.1']), ('all', ['layer4.0', 'layer4.1']), ('layer4.0', ['layer4.0']),
    ('layer3', ['layer3.0', 'layer3.1']), ('layer3.1', ['layer3.1']),
    ('layer3+layer4', ['layer3.0', 'layer3.1', 'layer4.0', 'layer4.1']),
])
def test_blockmoe_placements(placement, expected):
    model = timm.create_model('resnet18_blockmoe_e4_k2', **SMALL, placement=placement)
    assert [n for n, _ in moe_layers(model)] == expected
    assert all(m.kind == 'block' and m.name == n for n, m in moe_layers(model))
    assert model.moe_config['placement'] == placement
    assert timm_moe.ModelSpec.from_name('resnet18_blockmoe_e4_k2', placement=placement).targets() == expected
    model(torch.rand(2, 3, 32, 32)).mean().backward()


@pytest.mark.parametrize('name,kwargs,match', [
    ('resnet18_blockmoe_e4_k1', dict(placement='layer5'), r"placement='layer5': target 'layer5' selects no residual "
                                                          r"block of ResNet: expected paths or patterns over the "
                                                          r"blocks \['layer1.0', .*'layer4.1'\] or the convs "
                                                          r"\['conv1', .*\]; or one of \['last', 'all'\]"),
    ('resnet18_convmoe_e4_k1', dict(placement='fc'), r"placement='fc': target 'fc' selects no conv"),
    ('resnet18_convmoe_e4_k1', dict(expert_width='matched'),
     r"expert_width='matched': a convmoe model takes no expert_width \(a kwarg of blockmoe models\)"),
    ('resnet18_dense', dict(gate='conv_gap'), r"gate='conv_gap': a dense model takes no gate"),
    ('resnet18_blockmoe_e2_k1', dict(placement=3), r'placement=3: expected a string'),
    ('resnet18_blockmoe_e4_k1', dict(width=7), r'width=7: expected an even integer >= 2'),
])
def test_bad_model_kwargs_are_one_line(name, kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        timm.create_model(name, **SMALL if 'width' not in kwargs else {}, **kwargs)
    assert '\n' not in str(err.value)


def test_k_above_e_and_unknown_names_are_refused():
    assert not timm.is_model('resnet18_blockmoe_e2_k3')
    with pytest.raises(ValueError, match=r'k=3 > num_experts=2: expected 1 <= k <= num_experts'):
        timm_moe.convert(timm.create_model('resnet18'), 'layer4.1', num_experts=2, k=3)
    with pytest.raises(ValueError, match=r'k=3 with experts=2: expected one of \[1, 2\]'):
        timm_moe.ModelSpec(arch='resnet18', experts=2, k=3, kind='conv')


def test_convert_any_timm_resnet():
    torch.manual_seed(0)
    model = timm.create_model('resnet18', num_classes=10)  # timm's own model, ImageNet stem
    conv = model.layer4[1].conv2
    moe = timm_moe.convert(model, 'layer4.*.conv2', num_experts=3, k=2, gate='conv_gap')
    assert moe is model and [n for n, _ in moe_layers(model)] == ['layer4.0.conv2', 'layer4.1.conv2']
    layer = model.layer4[1].conv2
    # re-initialised copies: Kaiming fan_out, each expert its own draw; the gate keeps PyTorch's default init
    fan_out = conv.out_channels * 9
    for expert in layer.experts:
        assert expert.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)
        assert not torch.equal(expert.weight, conv.weight)
    assert not torch.equal(layer.experts[0].weight, layer.experts[1].weight)
    assert layer.gate.conv.weight.abs().max() <= 1 / math.sqrt(conv.in_channels * 9)
    # layer4 sees the input 32-fold reduced: the unpadded Conv-GAP gate needs 3x3 there, 65x65 model pixels
    assert layer.min_image_size == 65
    with pytest.raises(ValueError, match=r'layer4.0.conv2: the conv_gap gate needs an input of at least 3x3 '
                                         r'\(model input at least 65x65\), got 2x2'):
        model(torch.rand(2, 3, 64, 64))
    model(torch.rand(2, 3, 96, 96)).mean().backward()
    # exact copies for upcycling, and targets that select nothing, or one another
    copies = timm_moe.convert(timm.create_model('resnet18'), 'layer3.0', num_experts=2, copy_weights=True)
    assert torch.equal(copies.layer3[0].experts[1].conv1.weight, copies.layer3[0].experts[0].conv1.weight)
    with pytest.raises(ValueError, match=r"target 'layer9\.\*' selects no module of ResNet"):
        timm_moe.convert(timm.create_model('resnet18'), 'layer9.*', num_experts=2)
    with pytest.raises(ValueError, match=r"select 'layer4.0.conv1' inside 'layer4.0'"):
        timm_moe.convert(timm.create_model('resnet18'), ['layer4.0', 'layer4.0.conv1'], num_experts=2)
    with pytest.raises(ValueError, match=r"expert_width='matched' applies to residual blocks, not to 'layer4.0.conv1'"):
        timm_moe.convert(timm.create_model('resnet18'), 'layer4.0.conv1', num_experts=2, expert_width='matched')
    with pytest.raises(ValueError, match=r"kind='stage': expected one of \['block', 'conv'\] or None"):
        timm_moe.convert(timm.create_model('resnet18'), 'layer4', num_experts=2, kind='stage')


def test_wide_resnet50_2_is_timms_architecture():
    ours = timm.create_model('wide_resnet50_2_dense', stem='imagenet', num_classes=1000, device='meta')
    theirs = timm.create_model('wide_resnet50_2', device='meta')
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    moe = timm.create_model('wide_resnet50_2_blockmoe_e4_k1', width=8, num_classes=10)
    assert [n for n, _ in moe_layers(moe)] == ['layer4.2']
    assert moe.layer4[2].experts[0].conv1.out_channels == 2 * moe.layer4[2].experts[0].conv3.out_channels // 4
    out = moe(torch.rand(2, 3, 32, 32))
    (out.mean() + timm_moe.aux_loss(moe)).backward()


def test_spec_of_a_built_model():
    spec = timm_moe.ModelSpec.from_name('resnet18_convmoe_e4_k3', placement='layer4.1.conv2', gate='conv_gap', width=8)
    model = spec.create(num_classes=10, device='meta')
    assert timm_moe.ModelSpec.of_model(model) == spec and spec.noisy_gating is False  # 'auto' resolved once
    assert timm_moe.ModelSpec.of_model(timm.create_model('resnet18', device='meta')) is None

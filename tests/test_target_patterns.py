"""`convert`'s target patterns (issue 28, section 3): `*` and `?` stay within one path component, `**` crosses dots.

fnmatch's `*` crossed dots, so 'layer4.*' of a ResNet-50 also selected the convs inside each layer4 block, and
`convert` refused it as "an expert cannot contain another MoE layer"."""
from __future__ import annotations

import pytest
import timm
import torch

import timm_moe
from timm_moe.convert import resolve_targets


def _meta(name: str, **kwargs):
    with torch.device('meta'):  # shapes only: patterns are matched against module paths
        return timm.create_model(name, **kwargs)


def test_a_star_after_a_stage_selects_its_blocks():
    model = timm_moe.convert(_meta('resnet50'), 'layer4.*', 4, 2)
    assert [name for name, _ in timm_moe.moe_layers(model)] == ['layer4.0', 'layer4.1', 'layer4.2']


@pytest.mark.parametrize('name, pattern, expected', [
    ('convnext_atto', 'stages.3.blocks.*', ['stages.3.blocks.0', 'stages.3.blocks.1']),
    ('efficientnet_b0', 'blocks.6.*', ['blocks.6.0']),
    ('resnet18', 'layer*', ['layer1', 'layer2', 'layer3', 'layer4']),
    ('resnet18', 'layer4.?.conv[12]', ['layer4.0.conv1', 'layer4.0.conv2', 'layer4.1.conv1', 'layer4.1.conv2']),
    ('resnet18', 'layer[!123].*.conv2', ['layer4.0.conv2', 'layer4.1.conv2']),
])
def test_star_and_question_mark_stay_within_one_component(name, pattern, expected):
    assert resolve_targets(_meta(name), pattern) == expected


def test_a_double_star_crosses_dots():
    model = _meta('resnet18')
    assert resolve_targets(model, 'layer4.**.conv2') == ['layer4.0.conv2', 'layer4.1.conv2']
    assert resolve_targets(model, 'layer4.**', kind='conv') == [
        'layer4.0.conv1', 'layer4.0.conv2', 'layer4.0.downsample.0', 'layer4.1.conv1', 'layer4.1.conv2']


def test_a_pattern_that_selects_nested_modules_says_how_patterns_match():
    with pytest.raises(ValueError, match=r"select 'layer4.0.conv1' inside 'layer4.0'.*`\*` stays within one path "
                                         r"component, `\*\*` crosses dots"):
        timm_moe.convert(_meta('resnet18'), 'layer4.**', 2)

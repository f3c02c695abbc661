"""Renamed public names keep working for one release, with a DeprecationWarning naming the new one."""
import importlib
import sys

import pytest
import torch

import timm_moe
from timm_moe import introspection


def test_last_routing_replaces_routing_which_warns():
    model = timm_moe.ModelSpec.from_name('resnet18_blockmoe_e4_k2', width=4).create(num_classes=3).eval()
    with torch.no_grad():
        model(torch.rand(2, 3, 32, 32))
    assert timm_moe.last_routing(model)['layer4.1']['indices'].shape == (2, 2)
    with pytest.warns(DeprecationWarning, match='timm_moe.last_routing'):
        old = timm_moe.routing
    assert old is timm_moe.last_routing


def test_the_inspect_module_is_introspection_and_no_longer_shadows_the_stdlib():
    assert 'timm_moe.inspect' not in sys.modules and importlib.util.find_spec('timm_moe.inspect') is None
    with pytest.warns(DeprecationWarning, match='timm_moe.introspection'):
        old = timm_moe.inspect
    assert old is introspection and old.moe_layers is timm_moe.moe_layers


def test_unknown_attributes_still_raise():
    with pytest.raises(AttributeError, match='no_such_name'):
        timm_moe.no_such_name  # noqa: B018 - the lookup is the test


def test_placement_is_the_model_kwarg_and_moe_blocks_a_deprecated_alias():
    import timm
    every = timm.create_model('resnet18_blockmoe_e4_k1', width=4, placement='all')
    assert [n for n, _ in timm_moe.moe_layers(every)] == ['layer4.0', 'layer4.1']
    assert every.moe_config['placement'] == 'all' and 'moe_blocks' not in every.moe_config
    with pytest.warns(DeprecationWarning, match="use placement='all'"):
        old = timm.create_model('resnet18_blockmoe_e4_k1', width=4, moe_blocks='all')
    assert [n for n, _ in timm_moe.moe_layers(old)] == ['layer4.0', 'layer4.1']
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match='one setting under two names'):
        timm.create_model('resnet18_blockmoe_e4_k1', width=4, moe_blocks='last', placement='all')

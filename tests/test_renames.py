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

"""One home for the MoE arguments (issue 28, section 2): `timm_moe.layers.MoEConfig`.

Each surface that takes MoE arguments (the layer, `convert`, `validate_moe_args`, `MODEL_DEFAULTS`, `KIND_KWARGS`,
`ModelSpec`, the registered models' build and `upcycle`) takes their names and defaults from it, and
`noisy_gating='auto'` is resolved once, so that a model read back is the spec it was built from."""
from __future__ import annotations

import dataclasses
import inspect

import pytest
import timm
import torch

import timm_moe
from timm_moe import MODEL_DEFAULTS, ModelSpec, MoE
from timm_moe.layers import MOE_DEFAULTS, MoEConfig, validate_moe_args
from timm_moe.models import KIND_KWARGS, KINDS
from timm_moe.models import resnet_moe


def _defaults(fn) -> dict:
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize('fn', [MoE.__init__, timm_moe.convert, validate_moe_args], ids=lambda f: f.__qualname__)
def test_every_signature_takes_its_defaults_from_the_config(fn):
    shared = {name: default for name, default in _defaults(fn).items() if name in MOE_DEFAULTS}
    assert shared and shared == {name: MOE_DEFAULTS[name] for name in shared}


def test_the_layer_and_convert_take_every_field_of_the_config():
    assert set(MoEConfig.layer_kwargs(MoEConfig())) <= set(_defaults(MoE.__init__))
    assert set(MOE_DEFAULTS) <= set(_defaults(timm_moe.convert))


def test_the_models_kwargs_and_defaults_are_the_configs():
    for kind in KINDS:
        assert KIND_KWARGS[kind] == ('placement', *MoEConfig.model_kwargs(kind))
    moe_keys = {key for keys in KIND_KWARGS.values() for key in keys} - {'placement'}
    assert {key: MODEL_DEFAULTS[key] for key in moe_keys} == {key: MOE_DEFAULTS[key] for key in moe_keys}
    assert set(MODEL_DEFAULTS) - moe_keys == {'stem', 'width'}  # the base model's own


def test_the_spec_has_a_field_for_every_model_kwarg_and_fills_it_from_the_config():
    fields = {f.name for f in dataclasses.fields(ModelSpec)}
    assert set(MoEConfig.model_kwargs('block')) <= fields
    for name in ('resnet18_blockmoe_e4_k1', 'resnet18_convmoe_e4_k1'):
        spec = ModelSpec.from_name(name)
        resolved = MoEConfig()
        assert {key: getattr(spec, key) for key in MoEConfig.model_kwargs(spec.kind)} == \
            {key: getattr(resolved, key) for key in MoEConfig.model_kwargs(spec.kind)}


@pytest.mark.parametrize('kwargs', [{}, dict(aux_loss='switch'), dict(aux_loss='switch', noisy_gating=False),
                                    dict(noisy_gating=True, aux_weight=1, gate='conv_gap')])
@pytest.mark.parametrize('name', ['resnet18_blockmoe_e4_k2', 'resnet18_convmoe_e2_k1', 'resnet50_blockmoe_e2_k1'])
def test_a_model_read_back_is_the_spec_it_was_built_from(name, kwargs):
    spec = ModelSpec.from_name(name, width=8, **kwargs)
    assert ModelSpec.of_model(spec.create(device='meta')) == spec
    assert ModelSpec.of_model(timm.create_model(name, width=8, device='meta', **kwargs)) == spec
    assert ModelSpec.from_dict(spec.to_dict()) == spec and isinstance(spec.noisy_gating, bool)


@pytest.mark.parametrize('build', ['models', 'upcycle'])
def test_the_registered_models_and_upcycle_pass_the_config_to_convert(build, monkeypatch):
    seen = []
    module = resnet_moe if build == 'models' else pytest.importorskip('timm_moe.upcycle')

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return timm_moe.convert(*args, **kwargs)

    monkeypatch.setattr(module, 'convert', spy)
    kwargs = dict(aux_loss='kl', aux_weight=0.25, gate='conv_gap', noisy_gating=False)
    if build == 'models':
        timm.create_model('resnet18_blockmoe_e4_k1', width=4, device='meta', **kwargs)
    else:
        dense = timm.create_model('resnet18_dense', width=4)
        timm_moe.upcycle(dense, 'resnet18_blockmoe_e4_k1', width=4, **kwargs)
    passed = {key: value for key, value in seen[-1].items() if key in MOE_DEFAULTS}
    assert passed == {**{key: MOE_DEFAULTS[key] for key in MoEConfig.model_kwargs('block')}, **kwargs}


def test_noisy_gating_auto_is_resolved_once_in_the_config():
    assert MoEConfig().noisy_gating is False and MoEConfig(aux_loss='switch').noisy_gating is True
    assert MoEConfig(aux_loss='switch', noisy_gating=False).noisy_gating is False
    assert MOE_DEFAULTS['noisy_gating'] == 'auto'  # the argument's default; the record holds the bool
    layer = MoE([torch.nn.Conv2d(4, 4, 3, padding=1) for _ in range(2)], 4, aux_loss='z_loss')
    assert layer.noisy_gating is True

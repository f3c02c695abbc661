"""timm_moe.ModelSpec: parsing, validation, JSON round trips, and that it builds the model it describes."""
import dataclasses
import json
import math

import pytest
import timm

import timm_moe
from timm_moe import MODEL_DEFAULTS, ModelSpec

REGISTERED = timm_moe.model_names()

# one spec per non-default value of every field, so that each field's effect on name/kwargs/label is seen
VARIANTS = [
    dict(gate='conv_gap'), dict(aux_loss='switch'), dict(placement='all'), dict(placement='layer3+layer4.0'),
    dict(expert_width='matched'),
    dict(noisy_gating=True), dict(aux_weight=0.1), dict(width=8), dict(stem='imagenet'),
]


def _json_round_trip(spec):
    return ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))


def _expected_moe_config(spec):
    """What `model.moe_config` holds for a spec (the model keeps its own names and the effective noise flag)."""
    if not spec.is_moe:
        return dict(num_experts=0, stem=spec.stem, width=spec.width)
    out = dict(num_experts=spec.experts, k=spec.k, gate=spec.gate, placement=spec.placement,
               aux_loss=spec.aux_loss, aux_weight=spec.aux_weight, noisy_gating=spec.noisy_gating,
               stem=spec.stem, width=spec.width)
    if spec.kind == 'block':
        out['expert_width'] = spec.expert_width
    return out


def _moe_config_subset(model, spec):
    return {key: model.moe_config[key] for key in _expected_moe_config(spec)}


def test_every_registered_name_round_trips():
    assert len(REGISTERED) == 93  # 90 MoE variants and 3 dense baselines: the list is not empty
    specs = [ModelSpec.from_name(name) for name in REGISTERED]
    for name, spec in zip(REGISTERED, specs):
        assert spec.name == name
        assert spec.kwargs == {}  # registered defaults need no kwargs
        assert _json_round_trip(spec) == spec
        assert ModelSpec.from_name(spec.name, **{k: v for k, v in spec.to_dict().items()
                                                if k not in ('arch', 'experts', 'k', 'kind') and v is not None}) == spec
    assert len({s.label for s in specs}) == len(specs)


def test_create_builds_the_model_the_spec_describes_for_every_registered_name():
    for name in REGISTERED:
        spec = dataclasses.replace(ModelSpec.from_name(name), width=4)  # tiny: 93 models in a few seconds
        model = spec.create(num_classes=10)
        assert model.pretrained_cfg['architecture'] == name
        assert _moe_config_subset(model, spec) == _expected_moe_config(spec)
        assert timm_moe.num_experts(model) == spec.experts


@pytest.mark.parametrize('change', VARIANTS, ids=lambda c: '-'.join(f'{k}={v}' for k, v in c.items()))
def test_non_default_fields_reach_the_model_through_name_and_kwargs(change):
    spec = ModelSpec.from_name('resnet18_blockmoe_e4_k2', **change)
    assert _json_round_trip(spec) == spec
    (field, value), = change.items()
    assert spec.kwargs == {field: value}
    # the documented contract: timm.create_model(spec.name, **spec.kwargs) builds it
    model = timm.create_model(spec.name, **spec.kwargs, device='meta')
    assert _moe_config_subset(model, spec) == _expected_moe_config(spec)


def test_labels_are_short_and_tell_every_variant_apart():
    specs = [ModelSpec.from_name('resnet18_blockmoe_e4_k2', **c) for c in VARIANTS]
    specs += [ModelSpec.from_name('resnet18_blockmoe_e4_k2'), ModelSpec.from_name('resnet18_dense', width=8)]
    labels = [s.label for s in specs]
    assert len(set(labels)) == len(labels)
    assert ModelSpec.from_name('resnet18_blockmoe_e4_k2').label == 'resnet18-e4k2'
    assert ModelSpec.from_name('resnet50_dense', width=8).label == 'resnet50-dense w8'
    assert ModelSpec.from_name('resnet18_blockmoe_e8_k1', gate='conv_gap', placement='all').label == \
        'resnet18-e8k1 conv_gap all-blocks'
    assert ModelSpec.from_name('resnet18_convmoe_e4_k1', placement='layer4.0.conv1').label == \
        'resnet18-conv-e4k1 @layer4.0.conv1'




def test_dense_twin_keeps_arch_stem_and_width_and_drops_the_moe_fields():
    spec = ModelSpec.from_name('resnet50_blockmoe_e8_k2', width=8, stem='imagenet', gate='conv_gap')
    dense = spec.dense()
    assert dense == ModelSpec(arch='resnet50', width=8, stem='imagenet')
    assert dense.name == 'resnet50_dense'
    assert dense.kwargs == {'width': 8, 'stem': 'imagenet'}
    assert all(dense.to_dict()[f] is None for f in ('k', 'gate', 'aux_loss', 'placement', 'aux_weight'))
    assert dense.dense() == dense
    assert dense.noisy_gating is None


@pytest.mark.parametrize('field, value', [
    ('gate', 'gap_fc'), ('gate', 'conv_gap'), ('aux_loss', 'entropy'), ('placement', 'last'), ('k', 1), ('kind', 'block'),
    ('noisy_gating', False), ('aux_weight', 0.5), ('expert_width', 'full')])
def test_dense_spec_rejects_moe_only_fields_even_at_their_default(field, value):
    with pytest.raises(ValueError, match=f"takes no MoE field, got \\['{field}'\\]"):
        ModelSpec('resnet18', experts=0, **{field: value})
    with pytest.raises(ValueError, match='takes no MoE field'):
        ModelSpec.from_dict({'arch': 'resnet18', 'experts': 0, field: value})
    if field not in ('k', 'kind'):  # the name fixes k and kind: from_name refuses them as duplicates (tested below)
        with pytest.raises(ValueError, match='takes no MoE field'):
            ModelSpec.from_name('resnet18_dense', **{field: value})


@pytest.mark.parametrize('name', [
    'resnet34_dense', 'resnet18_blockmoe_e3_k1', 'resnet18_blockmoe_e2_k4', 'resnet18_blockmoe_e8_k5',
    'wide_resnet50_2_convmoe_e4_k1',
    'resnet18_blockmoe_e8', 'vit_base_patch16_224', 'resnet18', 'RESNET18_DENSE', 'resnet18_blockmoe_e64_k1'])
def test_bad_names_raise_naming_the_value(name):
    with pytest.raises(ValueError) as err:
        ModelSpec.from_name(name)
    msg = str(err.value)
    assert '\n' not in msg
    assert name in msg
    assert 'expected a timm-moe name' in msg  # names are looked up in the table of entry points, not parsed


def test_bad_name_types_raise_value_error():
    with pytest.raises(ValueError, match='expected a timm-moe name'):
        ModelSpec.from_name(None)


@pytest.mark.parametrize('field, value, match', [
    ('gate', 'gap', r"gate='gap': expected one of"),
    ('gate', ['gap_fc'], r"gate=\['gap_fc'\]: expected a string"),
    ('aux_loss', 'load', r"aux_loss='load': expected one of"),
    ('placement', 'first', r"placement='first': target 'first' selects no residual block of ResNet: expected "
                           r"paths or patterns over the blocks \['layer1.0', .*\]; or one of \['last', 'all'\]"),
    ('placement', 'layer4.1.conv1', r"placement='layer4.1.conv1': target 'layer4.1.conv1' selects no residual block"),
    ('placement', ['last'], r"placement=\['last'\]: expected a string"),
    ('expert_width', 'half', r"expert_width='half': expected one of \['full', 'matched'\]"),
    ('noisy_gating', 'yes', r"noisy_gating='yes': expected one of 'auto', True, False"),
    ('noisy_gating', 1, r"noisy_gating=1: expected one of 'auto', True, False"),
    ('aux_weight', -0.1, r'aux_weight=-0.1: expected a finite number >= 0'),
    ('aux_weight', math.nan, r'aux_weight=nan: expected a finite number >= 0'),
    ('aux_weight', True, r'aux_weight=True: expected a finite number >= 0'),
    ('aux_weight', '0.5', r"aux_weight='0.5': expected a finite number >= 0"),
    ('width', 0, r'width=0: expected an integer >= 2'),
    ('width', True, r'width=True: expected an integer >= 2'),
    ('width', 8.0, r'width=8.0: expected an integer >= 2'),
    ('width', 7, r'width=7: expected an even integer >= 2'),
    ('stem', 'vit', r"stem='vit': expected one of \['cifar', 'imagenet'\]"),
])
def test_bad_values_raise_one_line_naming_value_and_allowed(field, value, match):
    with pytest.raises(ValueError, match=match) as err:
        ModelSpec.from_name('resnet18_blockmoe_e4_k2', **{field: value})
    assert '\n' not in str(err.value)


@pytest.mark.parametrize('kwargs, match', [
    (dict(arch='resnet34'), r"arch='resnet34': expected one of \['resnet18', 'resnet50', 'wide_resnet50_2'\]"),
    (dict(arch='wide_resnet50_2', experts=4, k=1, kind='conv'), r"kind='conv': expected one of \['block'\]"),
    (dict(arch='resnet18', experts=4, k=1, kind='conv', expert_width='matched'),
     r"expert_width='matched': a convmoe spec takes no expert_width"),
    (dict(arch='resnet18', experts=3, k=1), r'experts=3: expected 0 \(dense\) or one of \[2, 4, 8, 16, 32\]'),
    (dict(arch='resnet18', experts=-1), r'experts=-1: expected an integer >= 0'),
    (dict(arch='resnet18', experts=True, k=1), r'experts=True: expected an integer >= 0'),
    (dict(arch='resnet18', experts=8), r'k=None: an MoE spec \(experts=8\) needs k, one of \[1, 2, 3, 4\]'),
    (dict(arch='resnet18', experts=2, k=4), r'k=4 with experts=2: expected one of \[1, 2\]'),
    (dict(arch='resnet18', experts=2, k=3), r'k=3 with experts=2: expected one of \[1, 2\]'),
    (dict(arch='resnet18', experts=8, k=0), r'k=0: expected an integer >= 1'),
])
def test_bad_constructor_values_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelSpec(**kwargs)


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_classes=10), r'num_classes=10: not a ModelSpec field.*go to ModelSpec.create\(\)'),
    (dict(moe_blocks='all'), r"moe_blocks='all': not a ModelSpec field"),
    (dict(k=2), r"k=2: already given by the name 'resnet18_blockmoe_e4_k2'"),
    (dict(experts=8), r"experts=8: already given by the name"),
    (dict(num_experts=8), r'num_experts=8: not a ModelSpec field'),
])
def test_from_name_rejects_unknown_and_duplicate_kwargs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelSpec.from_name('resnet18_blockmoe_e4_k2', **kwargs)


def test_from_dict_rejects_unknown_keys_missing_arch_and_non_mappings():
    good = ModelSpec.from_name('resnet18_blockmoe_e4_k2').to_dict()
    with pytest.raises(ValueError, match=r"name='x': not a ModelSpec field"):
        ModelSpec.from_dict(dict(good, name='x'))
    with pytest.raises(ValueError, match='needs arch'):
        ModelSpec.from_dict({k: v for k, v in good.items() if k != 'arch'})
    with pytest.raises(ValueError, match='expected a mapping'):
        ModelSpec.from_dict([('arch', 'resnet18')])
    # missing optional fields take their defaults
    default = ModelSpec.from_dict({'arch': 'resnet18', 'experts': 4, 'k': 2})
    assert default == ModelSpec.from_name('resnet18_blockmoe_e4_k2')


def test_specs_are_frozen_and_replace_revalidates():
    spec = ModelSpec.from_name('resnet18_blockmoe_e4_k2')
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.k = 4
    assert dataclasses.replace(spec, k=4).name == 'resnet18_blockmoe_e4_k4'
    with pytest.raises(ValueError, match='k=4 with experts=2'):
        dataclasses.replace(spec, experts=2, k=4)
    assert hash(spec) == hash(ModelSpec.from_name('resnet18_blockmoe_e4_k2', gate='gap_fc'))  # defaults filled


def test_equal_values_are_one_spec_and_explicit_noise_is_not_auto():
    one = ModelSpec.from_name('resnet18_blockmoe_e4_k2', aux_weight=1)
    assert one == ModelSpec.from_name('resnet18_blockmoe_e4_k2', aux_weight=1.0)
    assert one.kwargs == {'aux_weight': 1.0} and isinstance(one.to_dict()['aux_weight'], float)
    # noisy_gating is stored as the bool the model uses: the one 'auto' gives builds the same model, so it is one
    # spec and no kwarg; the other bool is a kwarg
    switch = ModelSpec.from_name('resnet18_blockmoe_e4_k2', aux_loss='switch', noisy_gating=True)
    assert switch == ModelSpec.from_name('resnet18_blockmoe_e4_k2', aux_loss='switch', noisy_gating='auto')
    assert switch.kwargs == {'aux_loss': 'switch'} and switch.noisy_gating is True
    quiet = ModelSpec.from_name('resnet18_blockmoe_e4_k2', aux_loss='switch', noisy_gating=False)
    assert quiet.kwargs == {'aux_loss': 'switch', 'noisy_gating': False} and quiet.label.endswith('no-noise')
    assert ModelSpec.from_name('resnet18_blockmoe_e4_k2', noisy_gating=False) == \
        ModelSpec.from_name('resnet18_blockmoe_e4_k2')


@pytest.mark.parametrize('aux_loss, noisy, effective', [
    ('entropy', 'auto', False), ('none', 'auto', False), ('switch', 'auto', True), ('kl', 'auto', True),
    ('z_loss', 'auto', True), ('entropy', True, True), ('switch', False, False)])
def test_noisy_gating_is_resolved_on_construction_as_the_model_resolves_it(aux_loss, noisy, effective):
    spec = ModelSpec.from_name('resnet18_blockmoe_e2_k1', aux_loss=aux_loss, noisy_gating=noisy)
    assert spec.noisy_gating is effective and spec.to_dict()['noisy_gating'] is effective
    assert spec.create(device='meta').moe_config['noisy_gating'] is effective


@pytest.mark.parametrize('kwarg', ['gate', 'placement', 'width', 'noisy_gating', 'num_experts', 'k', 'kind'])
def test_create_refuses_kwargs_the_spec_owns(kwarg):
    # a default-valued field is not in spec.kwargs, so timm would take this silently and build another model
    with pytest.raises(ValueError, match=f"\\['{kwarg}'\\]: part of the spec"):
        ModelSpec.from_name('resnet18_blockmoe_e4_k2').create(**{kwarg: 1})


def test_create_passes_timm_kwargs_through():
    model = ModelSpec.from_name('resnet18_dense', width=4).create(num_classes=7, in_chans=1)
    assert model.num_classes == 7 and model.conv1.in_channels == 1


def test_from_timm_kwargs_splits_spec_from_timm_kwargs():
    kwargs = dict(width=8, placement='all', noisy_gating=True, num_classes=10, in_chans=1)
    spec, rest = ModelSpec.from_timm_kwargs('resnet18_blockmoe_e4_k1', kwargs)
    assert spec == ModelSpec.from_name('resnet18_blockmoe_e4_k1', width=8, placement='all', noisy_gating=True)
    assert rest == dict(num_classes=10, in_chans=1)
    assert kwargs['placement'] == 'all'  # the caller's dict is left alone
    # and back: the same call timm would have been given
    assert {**spec.kwargs, **rest} == kwargs
    with pytest.raises(ValueError, match=r"\['num_experts'\]: fixed by the model name"):
        ModelSpec.from_timm_kwargs('resnet18_blockmoe_e4_k1', dict(num_experts=8))
    with pytest.raises(ValueError, match='takes no MoE field'):
        ModelSpec.from_timm_kwargs('resnet18_dense', dict(gate='conv_gap'))

"""docs/EXTENDING.md's four recipes, run from the doc itself: each adds a toy architecture family, MoE kind, gate
or attack, and the test checks that it works end to end (timm builds it, it routes, it converts, the evaluation
runs it), then takes the registration back and checks that it is gone, so that no other test sees it.

The doc marks its blocks `skip` for tests/test_doc_snippets.py, which runs every other block of the docs but
cannot undo a registration.
"""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Dict, Iterator

import pytest
import timm
import torch

import timm_moe
from bench.attacks import ATTACK_SETTINGS, build_attack, is_white_box, resolve_attacks
from bench.core.errors import UserError
from bench.evaluation.loop import evaluate_model
from test_doc_snippets import blocks
from timm_moe import ModelSpec
from timm_moe.introspection import moe_layers
from timm_moe.layers import GATES, KINDS, MoEConfig, register_gate, register_kind
from timm_moe.models import ARCHS, FAMILIES, RESNETS, model_names, register_family, unregister_family
from timm_moe.models.registry import ENTRYPOINTS

DOC = Path(__file__).resolve().parent.parent / 'docs' / 'EXTENDING.md'
RECIPES = ('An architecture family', 'An MoE kind', 'A gate', 'An attack')


def recipe(title: str) -> str:
    """The python block under the doc's `## {title}` heading (exactly one per recipe)."""
    text = DOC.read_text(encoding='utf-8')
    found = []
    for block in blocks(DOC):
        if block.lang != 'python':
            continue
        offset = sum(len(line) + 1 for line in text.split('\n')[:block.line - 1])
        headings = [line for line in text[:offset].split('\n') if line.startswith('## ')]
        if headings and headings[-1] == f'## {title}':
            found.append(block.code)
    assert len(found) == 1, f'docs/EXTENDING.md: {len(found)} python blocks under "## {title}", expected 1'
    return found[0]


@contextlib.contextmanager
def registrations() -> Iterator[None]:
    """Whatever the body registers is taken back on exit: families (from timm too), kinds, gates, attacks."""
    tables = (KINDS, GATES, ATTACK_SETTINGS, RESNETS)
    saved = [dict(t) for t in tables]
    families = set(FAMILIES)
    try:
        yield
    finally:
        for arch in [a for a in FAMILIES if a not in families]:
            unregister_family(arch)
        for table, before in zip(tables, saved):
            table.clear()
            table.update(before)


def run_recipe(title: str) -> Dict[str, object]:
    namespace: dict = {'__name__': '__doc_extending__'}
    # dont_inherit: the doc's code runs without this module's `from __future__ import annotations`
    code = compile(recipe(title), f'{DOC.name}: {title}', 'exec', dont_inherit=True)
    exec(code, namespace)  # noqa: S102 - the doc's own code: what is tested
    return namespace


def test_the_doc_has_the_four_recipes_and_each_is_skipped_by_the_snippet_runner():
    for title in RECIPES:
        recipe(title)
    skipped = [b for b in blocks(DOC) if b.lang == 'python' and 'skip' in b.options]
    assert len(skipped) == len(RECIPES)


# ------------------------------------------------------------------------------------------- architecture

def test_the_architecture_recipe_registers_a_family_that_timm_and_modelspec_build():
    with registrations():
        ns = run_recipe('An architecture family')
        assert 'resnet10' in ARCHS and FAMILIES['resnet10'] == ('block', 'conv')
        names = model_names('resnet10')
        assert len(names) == 1 + 2 * 18 and 'resnet10_dense' in names and timm.is_model('resnet10_convmoe_e32_k4')
        model = ns['model']
        assert [(path, layer.kind, layer.num_experts) for path, layer in moe_layers(model)] == \
            [('layer4.0', 'block', 4)]  # the last (only) block of layer4
        assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)
        spec = ns['spec']
        assert spec.name == 'resnet10_convmoe_e4_k2'
        assert spec.targets() == ['layer4.0.conv1', 'layer4.0.conv2', 'layer4.0.downsample.0']  # every conv of layer4
        built = spec.create(num_classes=10, device='meta')
        assert ModelSpec.of_model(built) == spec and timm_moe.num_experts(built) == 4
    assert 'resnet10' not in ARCHS and 'resnet10' not in RESNETS and not model_names('resnet10')
    assert not timm.is_model('resnet10_dense') and not timm.list_models('resnet10_*')
    with pytest.raises(ValueError, match='resnet10'):
        ModelSpec.from_name('resnet10_blockmoe_e4_k1')


def test_a_family_of_another_base_model_registers_through_the_generic_registry():
    def create(name, pretrained=False, **kwargs):
        entry = ENTRYPOINTS[name]
        model = timm.create_model('resnet10t', **kwargs)
        if entry.kind is not None:
            timm_moe.convert(model, 'layer4', entry.experts, entry.k, kind=entry.kind)
        return model

    with registrations():
        names = register_family('tiny10t', ['block'], create, cfg=dict(input_size=(3, 32, 32), num_classes=10))
        assert names[0] == 'tiny10t_dense' and names == model_names('tiny10t')
        model = timm.create_model('tiny10t_blockmoe_e2_k1', num_classes=10)
        assert [p for p, _ in moe_layers(model)] == ['layer4.0']
        assert timm.models.get_pretrained_cfg('tiny10t_blockmoe_e2_k1').input_size == (3, 32, 32)
        assert timm_moe.num_experts(timm.create_model('tiny10t_dense')) == 0
        with pytest.raises(ValueError, match='registered already'):
            register_family('tiny10t', ['block'], create)
        with pytest.raises(ValueError, match="kind 'nope'"):
            register_family('tiny11t', ['nope'], create)
    assert not timm.is_model('tiny10t_dense') and 'tiny10t' not in FAMILIES
    assert not [n for n in ENTRYPOINTS if n.startswith('tiny1')]


def test_a_family_whose_names_timm_has_is_refused(monkeypatch):
    from timm_moe.models import registry
    monkeypatch.setattr(registry, 'is_model', lambda name: name == 'clash_dense')  # as if another plugin had it
    with pytest.raises(ValueError, match="timm has a model called 'clash_dense' already"):
        register_family('clash', [], lambda name, pretrained=False, **kwargs: None)
    assert 'clash' not in FAMILIES and 'clash_dense' not in ENTRYPOINTS
    for bad in ('', 'a-b', None):
        with pytest.raises(ValueError, match='arch='):
            register_family(bad, [], lambda name, pretrained=False, **kwargs: None)


# ------------------------------------------------------------------------------------------------- kind

def test_the_kind_recipe_converts_convnext_blocks_that_keep_the_dense_function(monkeypatch):
    before, convert = {}, timm_moe.convert

    def convert_and_keep_the_dense(model, *args, **kwargs):
        before['model'] = copy.deepcopy(model).eval()
        return convert(model, *args, **kwargs)

    with registrations():
        monkeypatch.setattr(timm_moe, 'convert', convert_and_keep_the_dense)
        ns = run_recipe('An MoE kind')
        monkeypatch.undo()
        assert KINDS['cnblock'] == (timm.models.convnext.ConvNeXtBlock,)
        model = ns['model']
        layers = moe_layers(model)
        assert [(p, layer.kind, layer.num_experts) for p, layer in layers] == \
            [('stages.3.blocks.0', 'cnblock', 4), ('stages.3.blocks.1', 'cnblock', 4)]
        x = torch.rand(3, 3, 32, 32)
        with torch.no_grad():  # exact copies at k=1: the dense model's function
            torch.testing.assert_close(model.eval()(x), before['model'](x))
        model.train()(x).sum().backward()  # and it trains: the gates get gradients
        assert all(layer.gate.fc.weight.grad is not None for _, layer in layers)
        with pytest.raises(ValueError, match="'cnblock' is registered already"):
            register_kind('cnblock', [torch.nn.Conv2d])
    assert 'cnblock' not in KINDS
    with pytest.raises(ValueError, match="kind='cnblock'"):
        timm_moe.convert(timm.create_model('convnext_atto'), 'stages.3', 4, 1, kind='cnblock')


def test_a_kind_name_must_fit_in_a_model_name():
    for bad in ('Block', 'a-b', '', '1x', None):
        with pytest.raises(ValueError, match='kind name'):
            register_kind(bad, [torch.nn.Conv2d])
    with pytest.raises(ValueError, match='nn.Module subclasses'):
        register_kind('thing', [int])
    assert list(KINDS) == ['block', 'conv']


# ------------------------------------------------------------------------------------------------- gate

def test_the_gate_recipe_routes_each_image_by_its_gate():
    with registrations():
        ns = run_recipe('A gate')
        model = ns['model']
        (_, layer), = moe_layers(model)
        assert type(layer.gate) is GATES['gmp_fc'] and layer.gate_type == 'gmp_fc'
        seen = {}
        layer.register_forward_pre_hook(lambda module, inputs: seen.setdefault('x', inputs[0]))
        with torch.no_grad():
            model.eval()(torch.rand(8, 3, 32, 32))
            expected = layer.gate.fc(seen['x'].amax(dim=(2, 3))).argmax(1)  # the recipe's gate, by hand
        assert torch.equal(layer.last_routing.indices[:, 0], expected)
        spec = ModelSpec.from_name('resnet18_blockmoe_e4_k1', gate='gmp_fc')
        assert 'gmp_fc' in spec.label and spec.kwargs == {'gate': 'gmp_fc'}
        with pytest.raises(ValueError, match="'gmp_fc' is registered already"):
            register_gate('gmp_fc')
    assert 'gmp_fc' not in GATES
    with pytest.raises(ValueError, match="gate='gmp_fc'"):
        MoEConfig(gate='gmp_fc')


def test_a_gate_must_be_a_module_class():
    with pytest.raises(ValueError, match='not an nn.Module class'):
        register_gate('odd')(object)
    with pytest.raises(ValueError, match='gate name'):
        register_gate('not a name')
    assert sorted(GATES) == ['conv_gap', 'gap_fc']


# ----------------------------------------------------------------------------------------------- attack

def test_the_attack_recipe_runs_through_the_factory_and_the_evaluation():
    torch.manual_seed(0)
    model = timm.create_model('resnet18_dense', width=8, num_classes=10).eval()
    x = torch.rand(16, 3, 32, 32)
    with torch.no_grad():
        y = model(x).argmax(1)  # every image correct on clean input: what the attack does shows
    with registrations():
        run_recipe('An attack')
        assert resolve_attacks('fgsm,pgd10') == ['fgsm', 'pgd10'] and is_white_box('fgsm')
        attack = build_attack('fgsm', 8 / 255, seed=3)
        assert type(attack).__name__ == 'FGSM' and (attack.eps, attack.seed) == (8 / 255, 3)
        x_adv = attack(model, x, y)
        assert float((x_adv - x).abs().max()) <= 8 / 255 + 1e-6
        loss = torch.nn.functional.cross_entropy
        with torch.no_grad():
            assert loss(model(x_adv), y) > loss(model(x), y)
            by_hand = 100.0 * float((model(x_adv).argmax(1) == y).float().mean())
        with pytest.raises(UserError, match='L-inf only'):
            build_attack('fgsm', 0.5, norm='L2')
        result = evaluate_model(model, x, y, attacks='fgsm', per_expert=False, batch_size=16, n_check=8)
        assert result.clean_acc == 100.0 and result.robust_acc['fgsm'] == pytest.approx(by_hand)
        assert result.settings['attacks']['fgsm']['attack'] == 'FGSM'
        # the sanity checks count it among the white-box attacks that Square is compared with
        assert 'white-box fgsm' in result.sanity['square_not_stronger']['detail']
        assert result.sanity['eps_zero_is_clean']['passed']
    assert 'fgsm' not in ATTACK_SETTINGS and not is_white_box('fgsm')
    with pytest.raises(UserError, match="unknown attack 'fgsm'"):
        resolve_attacks('fgsm')


def test_white_box_is_the_attack_classes_attribute():
    assert [n for n in ATTACK_SETTINGS if is_white_box(n)] == \
        ['pgd20', 'pgd10', 'apgd-ce', 'apgd-ce20', 'apgd-ce10', 'apgd-dlr', 'apgd-t', 'apgd-t3', 'fab-t']
    assert not is_white_box('autoattack.apgd-ce') and not is_white_box('clean')


def test_an_attack_name_that_is_taken_or_malformed_is_refused():
    from bench.attacks import register_attack
    for bad in ('pgd20', 'quick', 'autoattack.x', 'a,b', ' x', ''):
        with pytest.raises(ValueError, match='attack name'):
            register_attack(bad, 'bench.attacks.pgd:PGD')
    with pytest.raises(ValueError, match='expected a class'):
        register_attack('x', 'PGD')

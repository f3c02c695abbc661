"""Every row of the paper's result table is a model the plugin builds: `timm.create_model(name, **kwargs)` from
each registry entry builds it, and it runs forward and backward (tiny: width 8, 24x24 input, batch 2)."""
import json

import pytest
import timm
import torch

import timm_moe
from bench.results.registry import DEFAULT_REGISTRY, load_entries

PAPER = [e for e in load_entries(DEFAULT_REGISTRY) if e['source'] == 'paper']
# normally and adversarially trained rows share their model: each distinct (name, kwargs) is built once
CONFIGS = sorted({(e['model']['name'], json.dumps(e['model']['kwargs'], sort_keys=True)) for e in PAPER})


def test_the_table_is_all_there():
    moe = [e for e in PAPER if e['model']['experts']]
    assert len(moe) == 215 and len(PAPER) - len(moe) == 4  # 219 MoE rows, 4 of them listed in two tables
    assert {e['model']['name'].split('_e4_')[0] for e in moe} == {
        'resnet18_blockmoe', 'resnet18_convmoe', 'resnet50_blockmoe', 'resnet50_convmoe'}
    placements = {(e['model']['name'].split('_')[1], e['model']['kwargs']['placement']) for e in moe}
    assert placements == {('blockmoe', p) for p in ('last', 'all', 'layer4.0', 'layer3.0', 'layer3.1', 'layer3')} | {
        ('convmoe', p) for p in ('all', 'layer4.0.conv1', 'layer4.0.conv2', 'layer4.1.conv1', 'layer4.1.conv2')}
    assert {e['model']['k'] for e in moe} == {1, 2, 3, 4}


@pytest.mark.parametrize('name,kwargs', CONFIGS, ids=[f'{n}-{i}' for i, (n, _) in enumerate(CONFIGS)])
def test_every_paper_row_builds_and_trains(name, kwargs):
    kwargs = json.loads(kwargs)
    entry = next(e for e in PAPER if e['model']['name'] == name and e['model']['kwargs'] == kwargs)
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs, width=8, num_classes=10).train()
    assert timm_moe.num_experts(model) == entry['model']['experts']
    layers = timm_moe.moe_layers(model)
    assert all(m.k == entry['model']['k'] and m.gate_type == entry['model']['gate'] for _, m in layers)
    out = model(torch.rand(2, 3, 24, 24))
    (out.square().mean() + timm_moe.aux_loss(model)).backward()
    assert all(p.grad is not None for p in model.parameters())

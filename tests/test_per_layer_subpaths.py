"""Per-layer subpaths (`timm-moe eval --per-layer-expert`): expert e forced in one MoE layer, the others routing.

A tiny ConvMoE (width 4, one MoE layer per layer4 convolution) on 8 images: cheap, and every check holds by
construction (a forced layer is its expert module; the other layers route as in the gated model).
"""
from __future__ import annotations

import copy
import json

import pytest
import timm
import torch
from torch import nn

import timm_moe
from bench import cli
from bench.data import dataset_info, eval_tensors
from bench.evaluation.loop import evaluate_model
from bench.models import normalized
from bench.results.entries import measured_entry
from bench.results.registry import validate_entry
from registry_fakes import PROVENANCE
from timm_moe import ModelSpec

DATA = 'fashion-mnist-bundled'
KWARGS = dict(width=4, in_chans=1, num_classes=10)

pytestmark = pytest.mark.usefixtures('one_thread')


def _convmoe() -> nn.Module:
    info = dataset_info(DATA)
    torch.manual_seed(0)
    return normalized(timm.create_model('resnet18_convmoe_e2_k1', **KWARGS), info['mean'], info['std']).eval()


def _with_expert_in_place(model: nn.Module, layer: str, expert: int) -> nn.Module:
    """A copy of `model` whose MoE layer `layer` is replaced by its expert `expert` itself: no gate, no MoE there,
    every other MoE layer untouched (so routing as usual)."""
    out = copy.deepcopy(model)
    parent, _, attr = layer.rpartition('.')
    moe = out.get_submodule(layer)
    setattr(out.get_submodule(parent), attr, moe.experts[expert])
    return out


def test_per_layer_subpaths_force_one_layer_and_the_entry_keeps_l_x_e_rows(capsys):
    model = _convmoe()
    layers = [name for name, _ in timm_moe.moe_layers(model)]
    assert len(layers) > 1  # ConvMoE converts every layer4 conv: several MoE layers
    x, y = eval_tensors(DATA, 8)
    r = evaluate_model(model, x, y, attacks='pgd10', batch_size=8, n_check=4, progress=True, per_layer_expert=True)
    err = capsys.readouterr().err
    n = len(layers) * 2
    assert f'per-layer subpaths: {len(layers)} layers x 2 experts x pgd10: {n}/{n}' in err, err
    rows = r.per_layer_expert
    assert [(row['layer'], row['expert']) for row in rows] == [(name, e) for name in layers for e in range(2)]
    assert r.settings['per_layer_expert'] is True

    for row in (rows[0], rows[-1]):  # expert 0 in the first layer, expert 1 in the last
        replaced = _with_expert_in_place(model, row['layer'], row['expert'])
        assert len(timm_moe.moe_layers(replaced)) == len(layers) - 1
        with torch.no_grad(), timm_moe.force_expert(model, row['expert'], layers=row['layer']):
            assert torch.equal(model(x), replaced(x))
        alone = evaluate_model(replaced, x, y, attacks='pgd10', batch_size=8, n_check=4, per_expert=False)
        assert row['correct'] == {k: alone.correct[k] for k in ('clean', 'pgd10')}
        assert (row['clean_acc'], row['robust_acc']) == (alone.clean_acc, {'pgd10': alone.robust_acc['pgd10']})

    spec, timm_kwargs = ModelSpec.from_timm_kwargs('resnet18_convmoe_e2_k1', KWARGS)
    entry = measured_entry(spec=spec, model_kwargs=KWARGS, dataset=DATA, method='normal', eval_result=r,
                           provenance=PROVENANCE, training_config={'epochs': 0}, epochs=0)
    validate_entry(entry)
    assert [(p['layer'], p['expert']) for p in entry['per_layer_expert']] == [(name, e) for name in layers
                                                                              for e in range(2)]
    assert entry['per_layer_expert'][0]['per_sample']['n'] == 8
    without = evaluate_model(model, x, y, attacks='pgd10', batch_size=8, n_check=4)
    assert without.per_layer_expert is None and without.settings['per_layer_expert'] is False


def test_one_moe_layer_reuses_the_per_expert_rows():
    info = dataset_info(DATA)
    torch.manual_seed(0)
    model = normalized(timm.create_model('resnet18_blockmoe_e2_k1', **KWARGS), info['mean'], info['std']).eval()
    x, y = eval_tensors(DATA, 8)
    r = evaluate_model(model, x, y, attacks='pgd10', batch_size=8, n_check=4, per_layer_expert=True)
    (layer, _), = timm_moe.moe_layers(model)
    assert r.per_layer_expert == [dict(layer=layer, **row) for row in r.per_expert]


def test_eval_cli_prints_and_writes_the_per_layer_subpaths(tmp_path, capsys):
    ckpt, out = tmp_path / 'model.pth', tmp_path / 'eval.json'
    torch.save(_convmoe().model.state_dict(), ckpt)
    argv = ['eval', '--model', 'resnet18_convmoe_e2_k1', '--checkpoint', str(ckpt), '--model-kwargs', 'width=4',
            '--dataset', DATA, '--attacks', 'pgd10', '--n-examples', '8', '--batch-size', '8', '--n-check', '4',
            '--no-progress']
    assert cli.main([*argv, '--per-layer-expert', '--no-per-expert']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and '--per-layer-expert and --no-per-expert contradict' in err[0]
    assert cli.main([*argv, '--per-layer-expert', '--json', str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'Per-layer subpaths' in printed and 'model.layer4.1.conv2' in printed
    rows = json.loads(out.read_text())['per_layer_expert']
    assert len(rows) == 2 * len({row['layer'] for row in rows}) > 2

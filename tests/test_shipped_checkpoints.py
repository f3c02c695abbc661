"""The study's shipped checkpoints: `timm-moe eval --pretrained` on a shipped tag reproduces its registry entry.

The tag loads offline from package data; evaluated on the entry's own points with the entry's PGD-20 settings,
it must get exactly the same points right, clean and under PGD-20 (the bits, not only the accuracies).
"""
import json

import numpy as np
import pytest

from bench.cli import main
from bench.results.registry import DEFAULT_REGISTRY, load_entries
from bench.core.stats import per_sample_vectors
from timm_moe.models.pretrained import package_folder, read_manifest

# a dense and an MoE tag of the study; the MoE one is the name users are shown first
REPRODUCED = ('resnet18_dense.fmnist_pgd', 'resnet18_blockmoe_e4_k2.fmnist_pgd')


def _entry(entry_id: str):
    found = [e for e in load_entries(DEFAULT_REGISTRY) if e['entry_id'] == entry_id]
    assert len(found) == 1, f'the registry holds {len(found)} entries with id {entry_id}'
    return found[0]


@pytest.mark.parametrize('name', REPRODUCED)
def test_eval_of_a_shipped_tag_reproduces_its_entry(name, tmp_path, capsys):
    manifest = read_manifest(package_folder())
    assert name in manifest, f'{name} is not shipped; shipped: {sorted(manifest)}'
    entry = _entry(manifest[name]['entry_id'])
    pgd = entry['eval_settings']['attacks']['pgd20']
    out = tmp_path / 'eval.json'
    assert main(['eval', '--model', name, '--pretrained', '--dataset', entry['dataset'], '--attacks', 'pgd20',
                 '--n-examples', str(entry['n_examples']), '--batch-size', str(entry['eval_settings']['batch_size']),
                 '--eps', str(entry['eps']), '--seed', str(pgd['seed']), '--no-per-expert', '--n-check', '8',
                 '--no-progress', '--json', str(out)]) == 0
    result = json.loads(out.read_text())
    (start, stop), bits = per_sample_vectors(entry)
    assert (start, stop) == (0, result['n_examples'])
    assert result['clean_acc'] == entry['clean_acc'] and result['robust_acc']['pgd20'] == entry['robust_acc']['pgd20']
    for metric in ('clean', 'pgd20'):
        np.testing.assert_array_equal(np.array(result['correct'][metric], dtype=bool), bits[metric], err_msg=metric)


@pytest.mark.parametrize('name', ['resnet18_dense', 'resnet18_dense.no_such_tag'])
def test_pretrained_without_weights_is_one_line(name, capsys):
    assert main(['eval', '--model', name, '--pretrained', '--dataset', 'fashion-mnist-bundled']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{name!r} has no pretrained weights" in err[0], err

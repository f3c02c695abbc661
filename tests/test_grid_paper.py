"""The paper's whole table as one grid: `grid_paper_cifar100` has a cell for every imported paper row, with the
same model and training method, and the grid-spec pieces that express it (`blocks:`, a recipe per training)."""
import dataclasses

import pytest
import yaml

from bench.cli import main
from bench.core.errors import UserError
from bench.pipeline.grid import cell_config, cells, load_spec
from bench.results.registry import DEFAULT_REGISTRY, load_entries
from bench.training.config import load_config
from timm_moe import ModelSpec

PAPER = [e for e in load_entries(DEFAULT_REGISTRY) if e['source'] == 'paper']


def _row_key(entry):
    """(model, training method) of an imported paper row, as the model the paper's code trains."""
    spec, timm_kwargs = ModelSpec.from_timm_kwargs(entry['model']['name'], entry['model']['kwargs'])
    if spec.is_moe and spec.arch == 'resnet50' and entry['training']['method'] == 'normal':
        # the CSV has no aux weight and the import records the model default; the paper's ResNet-50 normal runs
        # set 0.01 (bash/cifar100_resnet50.sh, docs/FIDELITY.md #15), as the recipe cifar100_resnet50_normal does
        assert 'aux_weight' not in entry['model']['kwargs'], 'the import records the aux weight now: drop this'
        spec = dataclasses.replace(spec, aux_weight=load_config('cifar100_resnet50_normal').model_kwargs['aux_weight'])
    return spec.resolved(), tuple(sorted(timm_kwargs.items())), entry['training']['method']


def test_the_paper_grid_joins_the_paper_rows_one_to_one():
    spec = load_spec('grid_paper_cifar100')
    grid = cells(spec)
    by_key = {}
    for c in grid:
        key = (c['spec'].resolved(), tuple(sorted(c['timm_kwargs'].items())), c['training'])
        assert key not in by_key, f'{c["cell"]} trains the same model as {by_key[key]["cell"]}'
        by_key[key] = c
    rows = {_row_key(e): e for e in PAPER}
    assert len(rows) == len(PAPER) == 219
    assert sorted(map(str, by_key)) == sorted(map(str, rows))  # one cell per row, one row per cell
    for key, entry in rows.items():
        c = by_key[key]
        cfg = cell_config(c, spec)
        # the model the cell trains is the row's, trained by the row's method for the row's epochs
        assert ModelSpec.from_timm_kwargs(cfg.model, cfg.model_kwargs)[0].resolved() == key[0]
        assert (cfg.training, cfg.epochs, cfg.dataset) == (entry['training']['method'], entry['training']['epochs'],
                                                           entry['dataset'])
        attack = entry['training']['config']
        if attack:  # the paper's PGD-AT: eps 8/255, step 2/255, 7 steps, random start
            assert (cfg.eps, cfg.attack_step, cfg.attack_steps, cfg.random_start) == pytest.approx(
                (attack['eps'], attack['step_size'], attack['steps'], attack['random_start']))
        # the arch's own schedule: ResNet-50 warms up and anneals by cosine, ResNet-18 by poly
        assert cfg.sched == {'resnet18': 'poly', 'resnet50': 'cosine'}[c['arch']]


def test_the_paper_grid_covers_what_the_old_grid_left_out():
    grid = cells(load_spec('grid_paper_cifar100'))
    assert {c['k'] for c in grid if c['experts']} == {1, 2, 3, 4}
    assert {(c['kind'], c['spec'].placement) for c in grid if c['experts']} >= {
        ('conv', 'all'), ('conv', 'layer4.0.conv1'), ('block', 'layer3'), ('block', 'layer4.0')}
    assert len({c['cell'] for c in grid}) == len(grid) == 219


def test_dry_run_lists_the_cells_and_a_summary_that_fits_a_screen(capsys):
    # the ResNet-18 ConvMoE rows only: the dry run builds every listed model once (on the meta device), and all
    # 219 take a minute of CPU; test_the_paper_grid_joins_the_paper_rows_one_to_one covers the whole list
    assert main(['grid', 'grid_paper_cifar100', '--dry-run', '--only', 'resnet18_convmoe']) == 0
    out = capsys.readouterr().out
    assert 'grid: 66 cells' in out and 'resnet18_convmoe_e4_k1-conv_gap-kl-all-pgd' in out
    summary = out[out.index('66 cells by arch, kind and training'):].splitlines()
    assert len(summary) < 10  # a line per arch x kind x training, after the full list
    rows = [[part.strip() for part in line.split('│')[1:-1]] for line in summary if 'resnet18' in line]
    assert rows == [['resnet18', 'conv', 'normal', 'cifar100_resnet18_normal + train: block', '32', '0'],
                    ['resnet18', 'conv', 'pgd', 'cifar100_resnet18_pgd + train: block', '34', '0']]


# --- blocks: a grid that is a union of products ------------------------------------------------------------

BASE = dict(arch=['resnet18'], experts=[2], gate=['gap_fc'], training=['normal', 'pgd'], dense=True,
            model_kwargs=dict(width=4), out='runs/x')


def _load(tmp_path, **kw):
    path = tmp_path / 'g.yaml'
    path.write_text(yaml.safe_dump(dict(BASE, **kw)))
    return load_spec(path)


def test_blocks_are_the_union_of_their_products(tmp_path):
    spec = _load(tmp_path, blocks=[
        {'kind': 'block', 'k': [1, 2], 'placement': 'last'},
        {'kind': 'conv', 'k': 1, 'placement': 'all', 'training': 'pgd', 'model_kwargs': {'aux_weight': 0.1}}])
    got = [(c['cell'], c['spec'].aux_weight) for c in cells(spec)]
    assert got == [('resnet18_dense-normal', None),
                   ('resnet18_blockmoe_e2_k1-gap_fc-entropy-last-normal', 0.5),
                   ('resnet18_blockmoe_e2_k2-gap_fc-entropy-last-normal', 0.5),
                   ('resnet18_dense-pgd', None),
                   ('resnet18_blockmoe_e2_k1-gap_fc-entropy-last-pgd', 0.5),
                   ('resnet18_blockmoe_e2_k2-gap_fc-entropy-last-pgd', 0.5),
                   ('resnet18_convmoe_e2_k1-gap_fc-entropy-all-pgd', 0.1)]


@pytest.mark.parametrize('blocks, message', [
    ([], 'give a list of mappings'),
    ([{'k': 1, 'bogus': 2}], "block 0 of .* has unknown key 'bogus'"),
    ([{'arch': 'resnet50'}], "block 0 of .*: arch 'resnet50' is not among the spec's arch: resnet18"),
    ([{'training': 'free'}], "training 'free' is not among the spec's training"),
    ([{'kind': 'expert'}], "kind 'expert' is not allowed"),
    ([{'k': 1}, {'k': [1, 2]}], 'is in block 0 and block 1: list it once'),
    ([{'model_kwargs': [1]}], 'model_kwargs is \\[1\\], not a mapping'),
])
def test_a_bad_block_is_refused_at_load(tmp_path, blocks, message):
    with pytest.raises(UserError, match=message):
        _load(tmp_path, blocks=blocks)


def test_a_bad_block_is_one_line_on_the_cli(tmp_path, capsys):
    path = tmp_path / 'g.yaml'
    path.write_text(yaml.safe_dump(dict(BASE, blocks=[{'placement': 'layer9'}])))
    assert main(['grid', str(path), '--dry-run']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'layer9' in err[0], err


# --- a recipe per arch and training -----------------------------------------------------------------------

def test_a_recipe_per_training(tmp_path):
    spec = _load(tmp_path, train_config={'resnet18': {'normal': 'cifar100_resnet18_normal',
                                                      'pgd': 'cifar100_resnet18_pgd'}})
    assert {(c['training'], c['train_config']) for c in cells(spec)} == {
        ('normal', 'cifar100_resnet18_normal'), ('pgd', 'cifar100_resnet18_pgd')}


@pytest.mark.parametrize('train_config, message', [
    ({'resnet18': {'normal': 'cifar100_resnet18_normal'}}, "no resnet18 recipe for training 'pgd'"),
    ({'resnet18': {'normal': 'a', 'pgd': 'b', 'adv': 'c'}}, "resnet18 names training 'adv'"),
    ({'resnet18': {'normal': 'a', 'pgd': 4}}, 'the recipe for resnet18 is 4'),
])
def test_a_bad_recipe_per_training(tmp_path, train_config, message):
    with pytest.raises(UserError, match=message):
        _load(tmp_path, train_config=train_config)


def test_named_configs_get_the_recipe_of_their_training(tmp_path):
    path = tmp_path / 'study.yaml'
    path.write_text(yaml.safe_dump(dict(
        train_config={'resnet18': {'normal': 'cifar100_resnet18_normal'}}, model_kwargs={'width': 4},
        configs={'a': {'model': 'resnet18_dense', 'training': 'normal'}, 'b': {'model': 'resnet18_dense'}})))
    with pytest.raises(UserError, match="no resnet18 recipe for training 'pgd'"):  # b trains with pgd
        load_spec(path)
    path.write_text(yaml.safe_dump(dict(
        train_config={'resnet18': {'normal': 'cifar100_resnet18_normal'}}, model_kwargs={'width': 4},
        configs={'a': {'model': 'resnet18_dense', 'training': 'normal'}})))
    assert [c['train_config'] for c in cells(load_spec(path))] == ['cifar100_resnet18_normal']

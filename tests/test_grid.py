"""The sweep runner: dry run, per-arch recipes, seeds, entries that validate, resume, and a failing cell."""
import json
from pathlib import Path

import pytest
import yaml

from bench.cli import main
from bench.training.config import load_config
from bench.core.errors import UserError
from bench.pipeline.grid import cell_config, cells, load_spec, recipe_label
from bench.results import leaderboard
from bench.results.registry import load_entries

TINY = dict(arch=['resnet18'], experts=[2], k=[1], gate=['gap_fc'], aux_loss=['entropy'], placement=['last'],
            training=['normal'], dense=True, model_kwargs=dict(width=4),
            train=dict(dataset='fashion-mnist-bundled', epochs=1, batch_size=32, train_limit=64, lr=0.05,
                       eval_limit=0, workers=0),
            eval=dict(attacks='quick', n_examples=32, batch_size=32, n_check=16))


def _spec(tmp_path: Path, **kw) -> Path:
    spec = dict(TINY, out=str(tmp_path / 'grid'), **kw)
    path = tmp_path / 'grid.yaml'
    path.write_text(yaml.safe_dump(spec))
    return path


def test_cells_follow_the_axes_and_skip_k_above_e(tmp_path):
    spec = load_spec(_spec(tmp_path, arch=['resnet18', 'resnet50'], experts=[4], k=[1, 2],
                           gate=['gap_fc', 'conv_gap'], aux_loss=['entropy', 'switch', 'kl'],
                           placement=['last', 'all'], training=['normal', 'pgd']))
    grid = cells(spec)
    # 2 arch x 2 training x (1 dense + 1 E x 2 k x 2 gates x 3 losses x 2 placements)
    assert len(grid) == 2 * 2 * (1 + 2 * 2 * 3 * 2)
    assert len({c['cell'] for c in grid}) == len(grid)
    spec.k = [1, 8]
    assert all(c['k'] in (None, 1) for c in cells(spec))


def test_dry_run_lists_and_runs_nothing(tmp_path, capsys):
    assert main(['grid', str(_spec(tmp_path)), '--dry-run']) == 0
    out = capsys.readouterr().out
    assert 'resnet18_dense-normal' in out and 'resnet18_blockmoe_e2_k1-gap_fc-entropy-last-normal' in out
    assert not (tmp_path / 'grid' / 'cells').exists()


def test_the_recipe_column_says_what_each_cell_trains_with(tmp_path):
    # a named-config study trains from its spec's train: block, not from the built-in defaults
    study = load_spec('study_powered_fashion_mnist')
    assert {recipe_label(c, study) for c in cells(study)} == {'train: block'}
    paper = load_spec('grid_paper_cifar100')
    # one recipe per arch and training, with the spec's `data_dir` over it
    assert {recipe_label(c, paper) for c in cells(paper)} == {
        f'cifar100_{arch}_{training} + train: block' for arch in ('resnet18', 'resnet50')
        for training in ('normal', 'pgd')}
    bare = load_spec(_spec(tmp_path))
    bare.train, bare.train_config = {}, None
    assert {recipe_label(c, bare) for c in cells(bare)} == {'built-in defaults'}
    bare.train_config = 'fashion_mnist_quick'
    bare.train = {'epochs': 1}
    assert {recipe_label(c, bare) for c in cells(bare)} == {'fashion_mnist_quick + train: block'}


def test_tiny_sweep_writes_valid_entries_and_resumes(tmp_path, capsys):
    spec = _spec(tmp_path)
    assert main(['grid', str(spec)]) == 0
    registry = tmp_path / 'grid' / 'registry'
    entries = load_entries(registry)  # validates every file
    assert len(entries) == 2 and all(e['source'] == 'measured' for e in entries)
    moe = next(e for e in entries if e['model']['experts'] == 2)
    assert moe['per_expert'] and moe['flops']['ratio'] == pytest.approx(1.0, abs=1e-3)
    assert moe['provenance']['checkpoint_sha256'] and (registry / 'LEADERBOARD.md').exists()
    # exactly what was measured: each attack's settings, the model as built, which points each got right
    pgd = moe['eval_settings']['attacks']['pgd10']
    assert (pgd['attack'], pgd['steps'], pgd['restarts'], pgd['random_start']) == ('PGD', 10, 1, False)
    assert isinstance(moe['model']['noisy_gating'], bool) and moe['model']['effective_kwargs']['width'] == 4
    assert moe['per_sample']['n'] == 32 and set(moe['per_sample']['bits']) == {'clean', 'pgd10', 'apgd-ce10',
                                                                                 'worst_case'}
    heads = [line for line in (registry / 'LEADERBOARD.md').read_text().splitlines() if line.startswith('| # |')]
    assert heads and all('| PGD-10 |' in h and '| APGD-CE-10 |' in h and 'PGD-20' not in h for h in heads)
    stamps = {p: p.stat().st_mtime_ns for p in registry.rglob('*.json')}
    capsys.readouterr()
    assert main(['grid', str(spec)]) == 0
    assert 'grid: 0 done, 2 skipped' in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in registry.rglob('*.json')} == stamps  # nothing rewritten


def test_a_failing_cell_is_reported_and_the_rest_run(tmp_path, capsys):
    # gate 'conv_gap' on a 1x1 feature map cannot run (3x3 conv, no padding): that cell fails, the dense one runs
    spec = _spec(tmp_path, gate=['conv_gap'], model_kwargs=dict(width=4, stem='imagenet'))
    assert main(['grid', str(spec)]) == 1
    out = capsys.readouterr().out
    assert 'failed' in out and 'grid: 1 done' in out
    failed = tmp_path / 'grid' / 'cells' / 'resnet18_blockmoe_e2_k1-conv_gap-entropy-last-normal' / 'failed.txt'
    assert failed.exists() and 'Traceback' in failed.read_text()
    done = json.loads((tmp_path / 'grid' / 'cells' / 'resnet18_dense-normal' / 'done.json').read_text())
    assert Path(done['entry']).exists()


def test_no_progress_hides_the_board(tmp_path, capsys):
    # one cell that fails at its first forward (a 3x3 conv gate on a 1x1 map): the board shows it, cheaply
    spec = _spec(tmp_path, gate=['conv_gap'], dense=False, model_kwargs=dict(width=4, stem='imagenet'))
    assert main(['grid', str(spec)]) == 1
    shown = capsys.readouterr().err
    assert 'grid: 1 runs, 1 at a time' in shown and 'grid: resnet18_blockmoe_e2_k1' in shown, shown
    assert main(['grid', str(spec), '--no-progress']) == 1  # the failed cell runs again
    captured = capsys.readouterr()
    assert 'grid: 0 done' in captured.out and 'failed' in captured.out  # the summary stays on stdout
    assert 'grid:' not in captured.err, captured.err


@pytest.mark.parametrize('content, message', [
    ('arch: [resnet34]\n', "arch 'resnet34' is not allowed"),
    ('experts: [2]\nbogus: 1\n', "unknown grid key 'bogus'"),
])
def test_bad_spec_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / 'bad.yaml'
    path.write_text(content)
    assert main(['grid', str(path), '--dry-run']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


# --- recipes per architecture, seeds, checks before any cell runs --------------------------------------

def _recipe(tmp_path: Path, name: str, lr: float) -> str:
    path = tmp_path / f'{name}.yaml'
    path.write_text(yaml.safe_dump(dict(lr=lr, epochs=3, sched='cosine')))
    return str(path)


def test_each_arch_gets_its_own_recipe(tmp_path):
    spec = load_spec(_spec(tmp_path, arch=['resnet18', 'resnet50'],
                           train_config={'resnet18': _recipe(tmp_path, 'r18', 0.1),
                                         'resnet50': _recipe(tmp_path, 'r50', 0.05)}))
    spec.train = {}
    by_arch = {}
    for c in cells(spec):
        by_arch.setdefault(c['arch'], set()).add(cell_config(c, spec).lr)
    assert by_arch == {'resnet18': {0.1}, 'resnet50': {0.05}}
    assert cell_config(cells(spec)[0], spec).out.endswith(f"cells/{cells(spec)[0]['cell']}/run")
    # one recipe for every arch still works
    spec = load_spec(_spec(tmp_path, arch=['resnet18', 'resnet50'], train_config=_recipe(tmp_path, 'all', 0.2)))
    spec.train = {}
    assert {cell_config(c, spec).lr for c in cells(spec)} == {0.2}


def test_shipped_paper_grid_trains_resnet50_with_the_resnet50_recipe():
    spec = load_spec('grid_paper_cifar100')
    r50 = next(c for c in cells(spec) if c['arch'] == 'resnet50' and c['training'] == 'pgd')
    r18 = next(c for c in cells(spec) if c['arch'] == 'resnet18' and c['training'] == 'pgd')
    assert (r50['train_config'], r18['train_config']) == ('cifar100_resnet50_pgd', 'cifar100_resnet18_pgd')
    want = load_config('cifar100_resnet50_pgd')
    got = cell_config(r50, spec)
    assert (got.sched, got.lr, got.epochs, got.model) == (want.sched, want.lr, want.epochs, r50['model'])


@pytest.mark.parametrize('train_config, message', [
    ({'resnet18': 'cifar100_resnet18_pgd'}, "no recipe for arch 'resnet50'"),
    ({'resnet18': 'a', 'resnet50': 'b', 'resnet34': 'c'}, "names arch 'resnet34'"),
    ({'resnet18': 'a', 'resnet50': 3}, 'the recipe for resnet50 is 3'),
    (['cifar100_resnet18_pgd'], 'give a recipe name or a mapping'),
])
def test_bad_train_config_mapping(tmp_path, train_config, message):
    with pytest.raises(UserError, match=message):
        load_spec(_spec(tmp_path, arch=['resnet18', 'resnet50'], train_config=train_config))


def test_seeds_repeat_every_cell(tmp_path):
    spec = load_spec(_spec(tmp_path, seeds=[0, 7]))
    grid = cells(spec)
    assert [c['cell'] for c in grid] == ['resnet18_dense-normal-seed0', 'resnet18_blockmoe_e2_k1-gap_fc-entropy-last-normal-seed0',
                                         'resnet18_dense-normal-seed7', 'resnet18_blockmoe_e2_k1-gap_fc-entropy-last-normal-seed7']
    assert [cell_config(c, spec).seed for c in grid] == [0, 0, 7, 7]
    assert all('seed' not in c['cell'] for c in cells(load_spec(_spec(tmp_path))))  # no seeds: ids as before
    for bad, message in (([0, 0], 'repeats a seed'), ([-1], 'integers >= 0'), ('3', 'a list of integers')):
        with pytest.raises(UserError, match=message):
            load_spec(_spec(tmp_path, seeds=bad))
    with pytest.raises(UserError, match='both seeds and train.seed'):
        load_spec(_spec(tmp_path, seeds=[1], train=dict(TINY['train'], seed=3)))


@pytest.mark.parametrize('override, message', [
    (dict(gate=['bogus']), "resnet18_blockmoe_e2_k1-bogus-entropy-last-normal: .*gate='bogus'"),
    (dict(model_kwargs=dict(width=0)), 'width=0'),
    (dict(eval=dict(TINY['eval'], attacks='pgd7')), "unknown attack 'pgd7'"),
    # the cell sets these itself: as train values they were given twice (a TypeError traceback)
    (dict(train=dict(TINY['train'], training='pgd')), r'train\.training is not a train value: .*config\'s key'),
    (dict(train=dict(TINY['train'], out='elsewhere')), r"train\.out is not a train value: the spec's out:"),
])
def test_a_bad_cell_is_refused_before_anything_runs(tmp_path, capsys, override, message):
    assert main(['grid', str(_spec(tmp_path, **override))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and __import__('re').search(message, err[0]), err
    assert not (tmp_path / 'grid' / 'cells').exists()


@pytest.mark.slow
def test_seed_runs_become_one_leaderboard_row(tmp_path, capsys):
    spec = _spec(tmp_path, experts=[0], seeds=[0, 1])  # the dense baseline only, trained twice
    assert main(['grid', str(spec)]) == 0
    entries = load_entries(tmp_path / 'grid' / 'registry')
    assert sorted(e['provenance']['seed'] for e in entries) == [0, 1]
    rows = leaderboard.make_rows(entries, leaderboard.columns_of(entries)[1])
    assert len(rows) == 1 and len(rows[0].entries) == 2 and rows[0].cells['clean'].std is not None
    board = (tmp_path / 'grid' / 'registry' / 'LEADERBOARD.md').read_text()
    assert ' ±' in board and '| 2 |' in board


# --- the kind axis: BlockMoE and/or ConvMoE ---------------------------------------------------------------

def test_kind_axis_crosses_blockmoe_and_convmoe_and_dry_run_shows_it(tmp_path, capsys):
    spec = load_spec(_spec(tmp_path, kind=['block', 'conv'], placement=['last', 'all']))
    grid = cells(spec)
    moe = [(c['kind'], c['model'], c['spec'].placement) for c in grid if c['experts']]
    assert moe == [('block', 'resnet18_blockmoe_e2_k1', 'last'), ('block', 'resnet18_blockmoe_e2_k1', 'all'),
                   ('conv', 'resnet18_convmoe_e2_k1', 'last'), ('conv', 'resnet18_convmoe_e2_k1', 'all')]
    # BlockMoE cells keep the ids they had before the axis existed; the default kind is block
    assert 'resnet18_blockmoe_e2_k1-gap_fc-entropy-last-normal' in {c['cell'] for c in grid}
    assert [c['kind'] for c in cells(load_spec(_spec(tmp_path))) if c['experts']] == ['block']
    assert main(['grid', str(_spec(tmp_path, kind='conv')), '--dry-run']) == 0
    out = capsys.readouterr().out
    assert 'resnet18_convmoe_e2_k1-gap_fc-entropy-last-normal' in out and ' conv ' in out
    assert 'blockmoe' not in out and 'dense' in out


@pytest.mark.parametrize('extra, message', [
    (dict(kind=['block', 'expert']), "kind 'expert' is not allowed; choose from block, conv"),
    (dict(kind=['conv'], arch=['wide_resnet50_2']),
     "kind 'conv' is not registered for arch 'wide_resnet50_2'; its kinds: block"),
    (dict(kind=['conv'], model_kwargs=dict(width=4, expert_width='matched')), 'expert_width'),
])
def test_a_bad_kind_is_one_line_at_load(tmp_path, capsys, extra, message):
    assert main(['grid', str(_spec(tmp_path, **extra)), '--dry-run']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_named_configs_and_the_kind_axis_do_not_mix(tmp_path):
    path = tmp_path / 'mixed.yaml'
    path.write_text(yaml.safe_dump(dict(kind=['conv'], configs={'a': {'model': 'resnet18_convmoe_e2_k1'}})))
    with pytest.raises(UserError, match="sets configs and the axis 'kind'"):
        load_spec(path)

"""Named-config grids (a study): cells, seeds, upcycling waves, first-seed extras, AutoAttack follow-ups."""
import json
import statistics
from pathlib import Path

import pytest
import yaml

from bench.cli import main
from bench.core.errors import UserError
from bench.pipeline.followup import best_moe
from bench.pipeline.grid import cell_config, cell_evaluation, cells, load_spec, run_dir
from bench.results.registry import load_entries

FIXTURE = Path(__file__).parent / 'fixtures' / 'study_tiny.yaml'


def _tiny(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load(FIXTURE.read_text())
    data.update(out=str(tmp_path / 'study'), **changes)
    path = tmp_path / 'study_tiny.yaml'
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_named_configs_become_cells_per_seed(tmp_path):
    spec = load_spec(_tiny(tmp_path))
    grid = {c['cell']: c for c in cells(spec)}
    # seed by seed, configs in the spec's order: a study stopped at any point has its arms equally far along
    assert list(grid) == ['dense-seed0', 'e2k1-seed0', 'switch-seed0', 'upcycled-seed0', 'dense_normal-seed0',
                          'dense-seed1', 'e2k1-seed1', 'switch-seed1', 'upcycled-seed1']
    assert spec.name == 'study_tiny' and grid['switch-seed1']['spec'].aux_loss == 'switch'
    assert grid['dense_normal-seed0']['training'] == 'normal' and grid['e2k1-seed0']['tag'] == 'tiny_pgd'
    # the upcycled run of seed s starts from the dense run of seed s
    cfg = cell_config(grid['upcycled-seed1'], spec)
    assert cfg.upcycle_from == str(run_dir(grid['dense-seed1'], spec)) and cfg.seed == 1
    # the first seed adds APGD-T and the per-expert analyses on its first 16 points; the others do not
    first, other = cell_evaluation(grid['e2k1-seed0'], spec), cell_evaluation(grid['e2k1-seed1'], spec)
    assert first.attacks == 'pgd10,apgd-ce10,apgd-t' and first.per_expert and first.per_expert_examples == 16
    assert other.attacks == 'pgd10,apgd-ce10' and not other.per_expert


@pytest.mark.parametrize('changes, message', [
    (dict(experts=[2]), "sets configs and the axis 'experts'"),
    (dict(configs={'a': {'model': 'resnet18_dense', 'bogus': 1}}), "config 'a' in"),
    (dict(configs={'a': {'model': 'resnet18_blockmoe_e2_k1', 'upcycle_from': 'zz'}}), "upcycle_from 'zz' is not a config"),
    (dict(configs={'d': {'model': 'resnet18_dense'}, 'u': {'model': 'resnet18_blockmoe_e2_k1', 'upcycle_from': 'd'},
                   'v': {'model': 'resnet18_blockmoe_e2_k1', 'upcycle_from': 'u'}}), "upcycle_from 'u' is itself upcycled"),
    (dict(configs={'a': {'model': 'resnet18_dense', 'train': {'seed': 3}}}), 'name the seeds with seeds'),
    (dict(autoattack={'configs': ['nope']}), "autoattack.configs in"),
    (dict(autoattack={'configs': ['dense'], 'n_examples': 64}), 'autoattack.n_examples'),
    (dict(configs={'a': {'model': 'resnet18_dense', 'seeds': [0]},
                   'u': {'model': 'resnet18_blockmoe_e2_k1', 'upcycle_from': 'a'}}), 'give both the same seeds'),
    (dict(preregistration={'baseline': 'dense', 'primary': ['nope']}), "preregistration.primary in"),
    (dict(preregistration={'baseline': 'dense', 'primary': ['e2k1'], 'margin': -1}), 'preregistration.margin'),
])
def test_a_bad_study_spec_is_one_line(tmp_path, capsys, changes, message):
    assert main(['grid', str(_tiny(tmp_path, **changes)), '--dry-run']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_preregistered_spec_reaches_the_report_with_its_defaults(tmp_path):
    from bench.cli.report import study_plan

    spec = load_spec(_tiny(tmp_path, preregistration={'baseline': 'dense', 'primary': ['e2k1', 'switch'],
                                                      'metric': 'apgd-ce10', 'seed_sd': 2.3}))
    prereg = study_plan(spec)['preregistration']
    assert prereg['primary'] == {'e2k1': {}, 'switch': {}} and prereg['margin'] == 1.5
    assert (prereg['alpha'], prereg['power'], prereg['analysis']) == (0.05, 0.8, 'welch')


def test_best_moe_is_the_highest_mean_over_seeds(tmp_path):
    spec = load_spec(_tiny(tmp_path))
    grid = cells(spec)
    acc = {'e2k1-seed0': 40.0, 'e2k1-seed1': 20.0, 'switch-seed0': 31.0, 'switch-seed1': 31.0,
           'upcycled-seed0': 10.0, 'upcycled-seed1': 10.0, 'dense-seed0': 99.0, 'dense-seed1': 99.0,
           'dense_normal-seed0': 99.0}
    done = {k: {'robust_acc': {'apgd-ce10': v}} for k, v in acc.items()}
    assert best_moe(grid, done, 'apgd-ce10') == 'switch'  # 31 > 30 (the mean), though e2k1 has the best run
    with pytest.raises(UserError, match="rank_by 'pgd20'"):
        best_moe(grid, done, 'pgd20')


def test_best_moe_breaks_a_float_tie_by_spec_order(tmp_path):
    """The study's real tie: e4k2 and kl both sum to 173.9 APGD-CE points over 3 seeds, but their float means
    differ in the last bit (57.96666666666666 vs ...67); the config listed first in the spec (cells come in
    spec order) wins."""
    spec = load_spec(_tiny(tmp_path))
    grid = [c for c in cells(spec) if c['config'] in ('e2k1', 'switch')]
    acc = {'e2k1': [57.3, 59.3, 57.3], 'switch': [57.4, 58.3, 58.2]}  # e2k1 is listed before switch
    assert statistics.fmean(acc['e2k1']) < statistics.fmean(acc['switch'])  # the float mean would pick switch
    grid = [dict(c, cell=f"{c['config']}-seed{s}") for c in grid if c['seed'] == 0 for s in range(3)]
    done = {f'{c}-seed{s}': {'robust_acc': {'apgd-ce10': v[s]}} for c, v in acc.items() for s in range(3)}
    assert best_moe(grid, done, 'apgd-ce10') == 'e2k1'
    done['switch-seed0']['robust_acc']['apgd-ce10'] = 57.5  # a real difference of 0.1 point still counts
    assert best_moe(grid, done, 'apgd-ce10') == 'switch'


def test_a_cell_committed_in_the_registry_is_done_without_its_folder(tmp_path, capsys):
    """A study that runs in pieces on machines that keep only the registry: a cell whose entry is committed is
    done (skipped, its numbers readable for best_moe), even with no cells/<cell>/ folder; a cell that needs
    its weights (upcycling, AutoAttack follow-up) says that they are gone, in one line."""
    from bench.pipeline.grid import read_done, registered_cells, registry_dir, run_grid, status
    from bench.results.registry import write_entry
    from registry_fakes import make_entry

    spec = load_spec(_tiny(tmp_path))
    grid = {c['cell']: c for c in cells(spec)}
    entry = make_entry('dense-seed0-entry', attacks={'pgd10': 41.0, 'apgd-ce10': 40.0}, experts=0,
                       grid=dict(spec=spec.name, config='dense', seed=0, cell='dense-seed0', stage='main'))
    write_entry(entry, registry_dir(spec))
    write_entry(make_entry('elsewhere', grid=dict(spec='other_study', config='dense', seed=1, cell='dense-seed1',
                                                 stage='main')), registry_dir(spec))
    assert not (tmp_path / 'study' / 'cells').exists()
    assert status(grid['dense-seed0'], spec) == 'done' and status(grid['dense-seed1'], spec) == 'todo'
    assert read_done(grid['dense-seed0'], spec)['robust_acc']['apgd-ce10'] == 40.0
    assert list(registered_cells(spec)) == [('dense-seed0', 'main')]  # another study's entry is not this cell
    out = run_grid(spec, dry_run=True, only='dense-seed')
    assert [c['cell'] for c in out['skipped']] == ['dense-seed0']
    assert [c['cell'] for c in out['pending']] == ['dense-seed1']
    assert main(['grid', str(_tiny(tmp_path)), '--only', 'upcycled-seed0']) == 1
    assert 'needs the trained weights of cell dense-seed0, whose entry is in the registry but whose run folder' \
        in capsys.readouterr().out


def test_an_upcycled_cell_waits_for_its_source(tmp_path, capsys):
    assert main(['grid', str(_tiny(tmp_path)), '--only', 'upcycled-seed0']) == 1
    assert 'upcycles from cell dense-seed0, which is not done' in capsys.readouterr().out


def test_the_tiny_study_runs_every_stage_and_resumes(tmp_path, capsys):
    spec_path = _tiny(tmp_path)
    assert main(['grid', str(spec_path), '--procs', '2']) == 0
    entries = load_entries(tmp_path / 'study' / 'registry')
    main_runs = {e['grid']['cell']: e for e in entries if e['grid']['stage'] == 'main'}
    assert len(main_runs) == 9 and all(e['grid']['spec'] == 'study_tiny' for e in entries)
    first, other = main_runs['e2k1-seed0'], main_runs['e2k1-seed1']
    # every MoE run: load and collapse on all 32 points; the first seed: subpaths with bits, routing, transfer
    assert other['routing']['n_images'] == 32 and 0 <= other['routing']['collapse'] <= 1
    assert other['per_expert'] is None and 'apgd-t' not in other['robust_acc']
    assert 'apgd-t' in first['robust_acc'] and len(first['per_expert']) == 2
    assert first['per_expert'][0]['per_sample']['n'] == 16 and first['transfer']['n_images'] == 16
    assert first['routing_under_attack']['n_images'] == 16 and set(first['timing']) >= {'train', 'evaluate'}
    up = main_runs['upcycled-seed0']['training']['config']
    assert up['upcycle_from'].endswith('dense-seed0/run') and up['upcycle_sha256']
    # AutoAttack follow-ups: the dense config and the best MoE, first seed, on 16 of the 32 points
    follow = sorted((e for e in entries if e['grid']['stage'] == 'autoattack'), key=lambda e: e['grid']['cell'])
    assert [e['grid']['config'] for e in follow][0] == 'dense' and len(follow) == 2
    assert follow[1]['grid']['selected_as'] == 'best_moe' and follow[1]['n_examples'] == 16
    assert all(e['provenance']['checkpoint_sha256'] == main_runs[e['grid']['cell']]['provenance']['checkpoint_sha256']
               for e in follow)  # the follow-up attacks the cell's own trained weights
    capsys.readouterr()
    assert main(['grid', str(spec_path)]) == 0
    assert 'grid: 0 done, 9 skipped' in capsys.readouterr().out

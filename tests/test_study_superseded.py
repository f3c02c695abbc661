"""A study superseded by a later one (`superseded_by` in its spec): its unrun AutoAttack follow-ups are closed,
not run, and its report says so and gives the commands for the later study's first seeds."""
import pytest
import yaml
from rich.console import Console

from bench.cli.report import study_plan
from bench.core.errors import UserError
from bench.pipeline.grid import cells, load_spec, run_followups
from bench.results.study import report_text
from bench.results.study.analysis import collect
from bench.results.study.render import superseded_autoattack
from test_study_report import make_entries, plan

LATER = {'name': 'study_later', 'autoattack_configs': ['dense', 'best_moe', 'switch'], 'n_examples': 100, 'eps': 0.1,
         'preregistered': True, 'seeds_per_arm': 40,
         'first_seeds': [{'config': 'dense', 'model': 'resnet18_dense', 'tag': 'fmnist_x', 'seed': 100},
                         {'config': 'moe', 'model': 'resnet18_convmoe_e4_k1', 'tag': 'fmnist_x', 'seed': 100}]}


@pytest.fixture(scope='module')
def entries():
    return make_entries()  # AutoAttack follow-ups of dense and of e4k1, selected as best_moe


def test_the_report_closes_the_unrun_follow_ups_and_gives_the_commands(entries):
    study = collect(entries, {**plan(), 'superseded_by': LATER})
    lines = superseded_autoattack(study)
    text = '\n'.join(lines)
    assert 'pre-registered study `study_later`' in text and '40 seeds per arm' in text
    assert 'follow-up of switch planned here is closed, not run' in text  # dense and best_moe ran
    assert ('timm-moe eval --model resnet18_convmoe_e4_k1.fmnist_x --pretrained --attacks standard --no-per-expert '
            '--n-examples 100 --eps 0.1 --seed 100 --json runs/study_later/autoattack/moe.json') in lines
    assert text in report_text(study)  # in the AutoAttack section of the report
    # once every planned follow-up ran, nothing is closed, and the commands remain
    done = collect(entries, {**plan(), 'superseded_by': {**LATER, 'autoattack_configs': ['dense', 'best_moe']}})
    assert 'no AutoAttack follow-up is left to run here' in '\n'.join(superseded_autoattack(done))


def test_a_study_that_stands_says_nothing_of_it(entries):
    study = collect(entries, plan())
    assert superseded_autoattack(study) == [] and 'Superseded' not in report_text(study)


def test_the_first_study_is_superseded_by_the_powered_one():
    later = study_plan(load_spec('study_fashion_mnist'))['superseded_by']
    assert (later['name'], later['autoattack_configs'], later['n_examples'], later['eps']) == (
        'study_powered_fashion_mnist', ['dense', 'best_moe'], 500, 0.1)
    assert [(s['config'], s['model'], s['tag'], s['seed']) for s in later['first_seeds']] == [
        ('dense', 'resnet18_dense', 'fmnist_pgd_prereg', 100),
        ('convmoe_all', 'resnet18_convmoe_e4_k1', 'fmnist_pgd_prereg', 100),
        ('blockmoe_last', 'resnet18_blockmoe_e4_k1', 'fmnist_pgd_prereg', 100)]
    assert 'superseded_by' not in study_plan(load_spec('study_powered_fashion_mnist'))


def test_the_grid_runs_no_follow_up_of_a_superseded_study():
    spec = load_spec('study_fashion_mnist')
    console = Console(record=True, width=200)
    assert run_followups(spec, cells(spec), None, 1, console, progress=False) == []
    assert 'closed, study_fashion_mnist is superseded by study_powered_fashion_mnist' in console.export_text()


@pytest.mark.parametrize('value, message', [
    ('study_x', "superseded_by in .* is 'study_x': name another study"),  # its own name
    ('study_fashion_mnist', "names 'study_fashion_mnist', which is not a study that stands"),
    ('grid_tiny', "names 'grid_tiny', which is not a study that stands"),
    (3, 'superseded_by in .* is 3'),
])
def test_a_bad_superseded_by_is_refused(tmp_path, value, message):
    path = tmp_path / 'study_x.yaml'
    path.write_text(yaml.safe_dump({'configs': {'dense': {'model': 'resnet18_dense'}}, 'superseded_by': value}))
    with pytest.raises(UserError, match=message):
        load_spec(path)


def test_only_a_study_is_superseded(tmp_path):
    path = tmp_path / 'g.yaml'
    path.write_text(yaml.safe_dump({'arch': ['resnet18'], 'superseded_by': 'study_powered_fashion_mnist'}))
    with pytest.raises(UserError, match='needs named configs'):
        load_spec(path)


def test_two_studies_that_supersede_each_other_are_refused_not_followed(tmp_path):
    a, b = tmp_path / 'study_a.yaml', tmp_path / 'study_b.yaml'
    for path, other in ((a, b), (b, a)):
        path.write_text(yaml.safe_dump({'configs': {'dense': {'model': 'resnet18_dense'}}, 'superseded_by': str(other)}))
    with pytest.raises(UserError, match='which is not a study that stands'):
        load_spec(a)

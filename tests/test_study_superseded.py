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
from bench.core.stats import per_sample_vectors
from bench.results.study.render import autoattack, superseded_autoattack
from test_study_report import make_entries, make_run, plan


def bits(entry, metric):
    return per_sample_vectors(entry)[1][metric]

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


def test_the_later_studys_follow_ups_that_ran_replace_their_commands(entries):
    """Once the later study's first seeds have their AutoAttack entries (of that seed), the report names them
    instead of giving their commands; a first seed without one keeps its command."""
    later = {**LATER, 'first_seeds': [dict(LATER['first_seeds'][0], seed=0), LATER['first_seeds'][1]]}
    ran = make_run('dense', 0, spec_name='study_later', stage='autoattack')
    other_seed = make_run('e4k1', 1, spec_name='study_later', stage='autoattack')
    other_seed['grid']['config'] = 'moe'  # the later study's moe config, but not its first seed (100)
    text = '\n'.join(superseded_autoattack(collect(entries + [ran, other_seed], {**plan(), 'superseded_by': later})))
    assert 'ships as a pretrained tag; 1 of them has had AutoAttack on the same 100 points, as a follow-up of ' \
        '`study_later`' in text
    assert f"| dense | 0 | {ran['entry_id']} | 100 | {ran['robust_acc']['autoattack']:.1f} |" in text
    assert 'The others, one command each:' in text and '--json runs/study_later/autoattack/moe.json' in text
    assert 'autoattack/dense.json' not in text
    # every first seed ran: no command is left
    text = '\n'.join(superseded_autoattack(collect(entries + [ran], {**plan(), 'superseded_by': {
        **later, 'first_seeds': later['first_seeds'][:1]}})))
    assert 'ships as a pretrained tag and has had AutoAttack on the same 100 points' in text
    assert '```' not in text and 'timm-moe eval' not in text


def test_a_follow_up_on_other_weights_takes_its_gap_on_them():
    """A follow-up that attacked other weights than its run (a shipped float16 tag) and ran the primary attack
    again on them: the gap uses its own bits, and a note says how far its results agree with the run's."""
    base = make_entries(aa=False)
    aa = make_run('dense', 0, stage='autoattack', other_weights=True)
    study = collect(base + [aa], plan())
    text = '\n'.join(autoattack(study))
    own, run = bits(aa, 'apgd-ce'), bits(study.main_entry('dense-seed0'), 'apgd-ce')[:100]
    assert own.sum() == run.sum() - 1  # one point the own attack breaks that the run's did not
    assert f'| dense | autoattack | [0, 100) | {100 * own.mean():.2f} |' in text
    assert ('- dense: AutoAttack attacked other weights than the run of cell dense-seed0 (weights: the pretrained '
            'tag resnet18_dense.fmnist_x (float16)); on points [0, 100) their results agree with the run\'s, point '
            f"by point, clean on 99 of 100 and apgd-ce on 99 of 100; the gap uses the follow-up's own apgd-ce (the "
            f"run's apgd-ce there: {100 * run.mean():.2f}).") in text
    # a follow-up on the run's own weights (the same checkpoint sha256) has no such note
    same = '\n'.join(autoattack(collect(base + [make_run('dense', 0, stage='autoattack')], plan())))
    assert 'other weights' not in same and f'| dense | autoattack | [0, 100) | {100 * run.mean():.2f} |' in same

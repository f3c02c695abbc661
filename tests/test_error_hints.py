"""Error messages point the right way: the closest recipe or spec, the data set the weights were trained on,
the eps first in a comparison, the verb and the closest option for a mistyped flag."""
from __future__ import annotations

import pytest
import yaml

from bench.cli import build_parser, main
from bench.core.errors import UserError
from bench.core.yaml_files import GRID_SPEC, RECIPE, shipped
from bench.checkpoints import default_dataset
from bench.pipeline.grid import load_spec
from bench.results.compare import compare_entries
from bench.training.config import load_config
from registry_fakes import make_entry


def test_shipped_files_are_told_apart_by_kind():
    recipes, specs = shipped(RECIPE), shipped(GRID_SPEC)
    assert 'fashion_mnist_quick' in recipes and 'cifar100_resnet18_pgd' in recipes
    assert {'study_fashion_mnist', 'grid_tiny', 'grid_paper_cifar100'} <= set(specs)
    assert not set(recipes) & set(specs)


def test_a_mistyped_recipe_suggests_the_closest():
    with pytest.raises(UserError) as e:
        load_config('fashion_mnist_qick')
    msg = str(e.value)
    assert 'did you mean fashion_mnist_quick' in msg and 'study_fashion_mnist' not in msg  # recipes only


def test_a_mistyped_grid_spec_suggests_the_closest():
    with pytest.raises(UserError) as e:
        load_spec('study_fashion_mnst')
    msg = str(e.value)
    # the closest first; fashion_mnist_quick is a training recipe, not a grid spec: never offered or listed
    assert 'did you mean study_fashion_mnist' in msg and 'fashion_mnist_quick' not in msg
    with pytest.raises(UserError) as e:
        load_spec('zzzz')
    assert 'did you mean' not in str(e.value) and 'grid_tiny' in str(e.value)


def test_eval_of_a_pretrained_tag_defaults_to_its_data_set(capsys):
    # an unknown compile backend stops right after the defaults are resolved: no model is built, nothing downloaded
    assert main(['eval', '--model', 'resnet18_blockmoe_e4_k2.fmnist_pgd', '--pretrained',
                 '--torchcompile', 'no_such_backend']) == 2
    out = capsys.readouterr().out
    assert '--dataset not given: fashion-mnist-bundled' in out and 'manifest' in out


def test_eval_of_a_checkpoint_defaults_to_its_runs_data_set(tmp_path, capsys):
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'config.yaml').write_text(yaml.safe_dump({'model': 'resnet18_dense', 'dataset': 'fashion-mnist-bundled'}))
    (run / 'model.pth').write_bytes(b'')
    assert default_dataset(run / 'model.pth') == ('fashion-mnist-bundled', f'{run / "config.yaml"} names it')
    assert default_dataset(tmp_path / 'elsewhere.pth')[0] == 'cifar100'
    # the default is read after the cheap checks (it imports torch): a bad --n-examples fails first, without it
    assert main(['eval', '--model', 'resnet18_dense', '--checkpoint', str(run / 'model.pth'), '--n-examples', '0']) == 2
    assert '--dataset not given' not in capsys.readouterr().out
    assert main(['eval', '--model', 'resnet18_dense', '--checkpoint', str(run / 'model.pth'),
                 '--torchcompile', 'no_such_backend']) == 2
    assert '--dataset not given: fashion-mnist-bundled' in capsys.readouterr().out


def test_compare_across_eps_says_so_first_and_briefly():
    a = make_entry('a', attacks={'pgd20': 30.0}, eps=0.1)
    b = make_entry('b', attacks={'pgd20': 31.0}, eps=8 / 255)
    with pytest.raises(UserError) as e:
        compare_entries(a, b, metric='pgd20')
    msg = str(e.value)
    assert "differ between 'a' and 'b': eps: 0.1 vs 8/255;" in msg and len(msg) < 400, msg


def test_compare_of_an_entry_with_itself_is_refused():
    a = make_entry('a')
    with pytest.raises(UserError, match='same entry'):
        compare_entries(a, a)


@pytest.mark.parametrize('argv, needle', [
    (['eval', '--model', 'm', '--chekpoint', 'x'],
     'timm-moe eval: error: unrecognized arguments: --chekpoint x; did you mean --checkpoint?'),
    (['leaderboard', '--wdie'], 'timm-moe leaderboard: error: unrecognized arguments: --wdie; did you mean --wide?'),
    (['eval', '--model', 'm', '--norm', 'Linff'], 'did you mean Linf?'),
    (['trian'], 'did you mean train?'),
    (['leaderboard', '--frobnicate'], 'timm-moe leaderboard: error: unrecognized arguments: --frobnicate\n'),
])
def test_a_mistyped_flag_names_the_verb_and_the_closest_option(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)  # the real entry: it builds the named verb's full parser
    assert e.value.code == 2
    assert needle in capsys.readouterr().err


def test_eval_of_an_unknown_model_says_so_before_announcing_a_default_data_set(capsys):
    assert main(['eval', '--model', 'resnet18_blockmoe_e3_k1']) == 2
    captured = capsys.readouterr()
    assert "unknown model 'resnet18_blockmoe_e3_k1'" in captured.err and '--dataset not given' not in captured.out

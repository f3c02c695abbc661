"""One list of the training-config keys that do not change the trained model (`bench.core.config_keys`): the
config's hash and resume check and the grouping of a configuration's seeds all read it."""
import dataclasses

import pytest

from bench.core.config_keys import NOT_THE_RESULT
from bench.core.errors import UserError
from bench.core.stats import TRAIN_NOISE_KEYS, seed_group_key
from bench.training.config import (_NOT_HASHED, HASHED_THOUGH_NOT_THE_RESULT, RESUME_MAY_CHANGE, TrainConfig,
                                   check_resume_config, load_config)


def test_every_key_of_the_list_is_a_config_field():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert [k for k in NOT_THE_RESULT if k not in fields] == []


def _entry(**config):
    return {'source': 'measured', 'model': {'name': 'resnet18_dense'}, 'dataset': 'cifar10', 'eps': 8 / 255,
            'training': {'method': 'pgd', 'epochs': 1, 'config': load_config(**config).to_dict()}}


@pytest.mark.parametrize('key, value', [('torchcompile', 'inductor'), ('channels_last', True), ('device', 'cpu'),
                                        ('workers', 0), ('seed', 7)])
def test_runs_that_differ_only_where_and_how_they_run_are_one_configuration(key, value):
    # torch.compile was hashed apart from the result by the config but kept configurations apart in the statistics
    assert seed_group_key(_entry(**{key: value})) == seed_group_key(_entry())


def test_a_key_that_changes_the_result_is_another_configuration():
    assert seed_group_key(_entry(lr=0.05)) != seed_group_key(_entry())
    assert seed_group_key(_entry(max_steps=3)) != seed_group_key(_entry())


def test_the_three_uses_read_the_one_list():
    assert TRAIN_NOISE_KEYS == set(NOT_THE_RESULT) | {'seed'}
    # the hash leaves out a part of the list, and covers the rest only to keep the hashes written before
    assert set(_NOT_HASHED) | set(HASHED_THOUGH_NOT_THE_RESULT) == set(NOT_THE_RESULT)
    assert not set(_NOT_HASHED) & set(HASHED_THOUGH_NOT_THE_RESULT)
    assert set(RESUME_MAY_CHANGE) == set(NOT_THE_RESULT) | {'max_steps'}


def test_the_hash_covers_exactly_what_its_docstring_says():
    base = load_config()
    for key in _NOT_HASHED:
        other = {'out': 'elsewhere', 'progress': False, 'log_every': 3, 'workers': 0, 'torchcompile': 'inductor',
                 'torchcompile_mode': 'max-autotune'}[key]
        assert dataclasses.replace(base, **{key: other}).sha256() == base.sha256(), key
    for key, other in dict(device='cpu', deterministic=True, channels_last=True, data_dir='/data', download=True,
                           eval_limit=10, checkpoint_every=5).items():
        assert dataclasses.replace(base, **{key: other}).sha256() != base.sha256(), key  # as the first hashes did


def test_a_resume_may_change_how_the_run_executes_not_what_it_trains(tmp_path):
    saved = load_config().to_dict()
    check_resume_config(load_config(channels_last=True, deterministic=True, device='cpu'), saved, tmp_path)
    with pytest.raises(UserError, match='lr=0.05'):
        check_resume_config(load_config(lr=0.05), saved, tmp_path)

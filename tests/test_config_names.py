"""The training method has one name, `training` (config key, flag, attribute); `method` is refused like any
unknown key. The config hash keeps its fixed text format, so stored hashes still match."""
import pytest

from bench.cli import main
from bench.core.errors import UserError
from bench.training.config import TrainConfig, load_config


def test_method_is_an_unknown_key_everywhere(tmp_path, capsys):
    with pytest.raises(UserError, match="unknown config key 'method'"):
        load_config(None, ['--method', 'pgd'])
    (tmp_path / 'old.yaml').write_text('method: trades\n')
    with pytest.raises(UserError, match="unknown config key 'method'"):
        load_config(tmp_path / 'old.yaml')
    assert not hasattr(TrainConfig(), 'method')
    with pytest.raises(SystemExit) as exit_:
        main(['train', '--method', 'pgd', '--out', str(tmp_path / 'run')])
    assert exit_.value.code == 2 and 'unrecognized arguments: --method' in capsys.readouterr().err


def test_the_config_hash_keeps_its_text_format():
    # computed by the code that first wrote config hashes, from the config training='pgd' (then `method`), whose
    # schedule stepped per update (`sched_step` did not exist yet)
    assert load_config(training='pgd', sched_step='update').sha256() == \
        '56b41f0f0abef5e65f9d1a036c99cf38a2c19523432db459fa71d3d9eda7a5ee'

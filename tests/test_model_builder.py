"""`bench.models`: THE model builder. Bad model kwargs are the user's error (one line, exit 2) on every verb that
builds a model from user-given kwargs, never a traceback."""
import pytest
import torch

import timm_moe
from bench.audit.audit import audit_model
from bench.cli import main
from bench.core.errors import UserError
from bench.models import build_model, create_model, param_counts
from timm_moe import ModelSpec


@pytest.mark.parametrize('kwargs, message', [
    (dict(gate='bogus'), "gate='bogus'"),  # timm_moe's ValueError
    (dict(k=8), "k=8: fixed by the model name 'resnet18_blockmoe_e4_k1'"),  # the name fixes k: also a ValueError
    (dict(no_such_kwarg=1), 'no_such_kwarg'),  # timm's TypeError for an unknown kwarg
])
def test_bad_kwargs_are_a_user_error_naming_the_value(kwargs, message):
    with pytest.raises(UserError, match=message) as info:
        create_model('resnet18_blockmoe_e4_k1', dict(width=4, **kwargs), '--model-kwargs')
    text = str(info.value)
    assert len(text.splitlines()) == 1 and text.startswith('--model-kwargs: resnet18_blockmoe_e4_k1 cannot be built')


def test_unknown_model_name_is_a_user_error():
    with pytest.raises(UserError, match="unknown model 'resnet18_blockmoe_e3_k1'"):
        create_model('resnet18_blockmoe_e3_k1')


def test_a_spec_builds_with_its_own_kwargs_and_the_data_sets():
    spec = ModelSpec.from_name('resnet18_blockmoe_e4_k2', gate='conv_gap', width=4)
    model = build_model(spec, num_classes=10, in_chans=1)
    assert model.moe_config['gate'] == 'conv_gap' and model.num_classes == 10 and model.in_chans == 1
    assert timm_moe.num_experts(model) == 4
    counts = param_counts(model)
    expert = sum(p.numel() for p in timm_moe.moe_layers(model)[0][1].experts[0].parameters())
    assert counts['total'] - counts['active'] == (4 - 2) * expert  # two idle experts per image


def test_build_model_loads_a_checkpoint(tmp_path):
    src = build_model('resnet18_dense', 10, 1, dict(width=4))
    torch.save(src.state_dict(), tmp_path / 'w.pth')
    again = build_model('resnet18_dense', 10, 1, dict(width=4), tmp_path / 'w.pth')
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), again.state_dict().values()))


def _one_line_exit_2(capsys, argv, message):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and message in err, err


def test_models_width_0_is_one_line(capsys):
    _one_line_exit_2(capsys, ['models', '--width', '0', '--filter', '*_e4_k1'], 'width=0: expected an even integer >= 2')


def test_train_bad_model_kwargs_is_one_line_and_makes_no_run(tmp_path, capsys):
    out = tmp_path / 'run'
    _one_line_exit_2(capsys, ['train', '--model', 'resnet18_blockmoe_e4_k1', '--model-kwargs', 'width=4,gate=bogus',
                              '--dataset', 'fashion-mnist-bundled', '--out', str(out), '--progress', 'false'],
                     "gate='bogus'")
    assert not out.exists()


def test_audit_bad_model_kwargs_is_a_user_error():
    with pytest.raises(UserError, match="gate='bogus'"):
        audit_model('resnet18_blockmoe_e4_k1', latency=False, batch=2, width=4, gate='bogus')

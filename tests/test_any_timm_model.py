"""The harness on any timm model, plain or converted to MoE (`--convert`, `timm_moe.create_model`): two families
that are not ResNets, ConvNeXt and EfficientNet, audited at k=1 (the dense FLOPs plus the gates, by fvcore here),
trained adversarially, evaluated and exported through the CLI, and loaded back to identical logits.

Small on purpose: 16 training images, 2 steps of 1-step PGD, 2 evaluated images, one attack.
"""
import json
from pathlib import Path

import pytest
import timm
import torch
from fvcore.nn import FlopCountAnalysis

import timm_moe
from bench.cli import main
from bench.core.errors import UserError
from bench.models import check_input_size, min_side
from bench.models import create_model
from bench.results.export import CONFIG_FILE, load_exported, read_export
from timm_moe import Conversion

# ConvNeXt's blocks hold a layer scale with no reset_parameters: its experts are copies (copy_weights)
CONVERTS = {
    'convnext_atto': dict(targets='stages.3.blocks.*', num_experts=4, k=1, copy_weights=True),
    'efficientnet_b0': dict(targets='blocks.6.*', num_experts=4, k=1),
}
# Fashion-MNIST's 28x28 is too small for ConvNeXt (32x downsampling): it trains on images resized to 32.
# EfficientNet runs at 28x28, but its last stage is 1x1 there, and an expert that receives one image of a batch
# cannot train its batch norm on one value per channel: at 64 the stage is 2x2
IMG_SIZE = {'convnext_atto': 32, 'efficientnet_b0': 64}
CASES = [(name, converted) for name in CONVERTS for converted in (False, True)]
IDS = [f'{name}-{"converted" if converted else "plain"}' for name, converted in CASES]


def _flag(convert: dict) -> str:
    return ','.join(f'{k}={str(v).lower() if isinstance(v, bool) else v}' for k, v in convert.items())


def _fvcore(module: torch.nn.Module, x: torch.Tensor) -> int:
    analysis = FlopCountAnalysis(module, x)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis.total()


# ------------------------------------------------------------------------------------------------ the record

def test_create_model_is_timm_create_model_then_convert():
    torch.manual_seed(0)
    built = timm_moe.create_model('efficientnet_b0', convert=CONVERTS['efficientnet_b0'], num_classes=10)
    torch.manual_seed(0)
    by_hand = timm_moe.convert(timm.create_model('efficientnet_b0', num_classes=10), 'blocks.6.*', 4, 1)
    assert built.moe_conversion == CONVERTS['efficientnet_b0']
    assert built.state_dict().keys() == by_hand.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), by_hand.state_dict().values()))
    assert not hasattr(timm_moe.create_model('efficientnet_b0', num_classes=10), 'moe_conversion')


def test_conversion_record_keeps_only_what_differs_from_the_defaults():
    given = dict(targets=['blocks.5.*', 'blocks.6.*'], num_experts=4, k=2, gate='gap_fc', aux_loss='switch',
                 noisy_gating='auto', aux_weight=1, copy_weights=False)
    record = Conversion.from_dict(given).to_dict()
    # the list joined, defaults (gate, noisy 'auto' for switch, copy_weights) left out, 1 stored as 1.0
    assert record == dict(targets='blocks.5.*+blocks.6.*', num_experts=4, k=2, aux_loss='switch', aux_weight=1.0)
    assert Conversion.from_dict(record) == Conversion.from_dict(given)
    assert Conversion.from_dict(dict(record, noisy_gating=False)).to_dict()['noisy_gating'] is False


@pytest.mark.parametrize('bad, message', [
    (dict(targets='blocks.6.*', k=1), 'has no num_experts'),
    (dict(targets='blocks.6.*', num_experts=2, k=3), 'k=3 > num_experts=2'),
    (dict(targets='blocks.6.*', num_experts=2, k=1, experts=2), 'convert key experts=2: not an argument'),
    (dict(targets='blocks.6.*', num_experts=2, k=1, gate='mlp'), "gate='mlp'"),
    (dict(targets='', num_experts=2, k=1), "targets=''"),
    ('blocks.6.*', 'expected a mapping'),
])
def test_conversion_refuses_bad_records_in_one_line(bad, message):
    with pytest.raises(ValueError, match=message) as e:
        Conversion.from_dict(bad)
    assert '\n' not in str(e.value)


def test_a_target_the_model_lacks_is_a_user_error():
    with pytest.raises(UserError, match="--convert: efficientnet_b0: target 'stages.3.blocks.\\*' selects no"):
        create_model('efficientnet_b0', convert=CONVERTS['convnext_atto'])


# ------------------------------------------------------------------------------------------- too-small input

def test_min_side_finds_what_convnext_needs():
    model = timm.create_model('convnext_atto', in_chans=1, num_classes=10)
    assert min_side(model, 1, 28) == 32
    assert min_side(model, 1, 32) == 32
    assert min_side(timm.create_model('efficientnet_b0', in_chans=1), 1, 28) == 28
    check_input_size(model, 1, 32, 'convnext_atto', '')  # fits: no error
    with pytest.raises(UserError, match=r'^28x28 images are too small for convnext_atto: it needs at least 32x32 '
                                        r'\(--img-size 32 resizes\)$'):
        check_input_size(model, 1, 28, 'convnext_atto', '--img-size {need} resizes')
    assert model.training  # the probe ran in eval mode and left the model's mode alone


@pytest.mark.parametrize('verb', [
    ['eval', '--attacks', 'pgd10', '--n-examples', '2', '--no-checks'],
    ['train', '--epochs', '1', '--max-steps', '1', '--batch-size', '2', '--train-limit', '2', '--workers', '0'],
])
def test_images_too_small_for_the_architecture_are_bad_input(verb, tmp_path, capsys):
    args = [*verb, '--model', 'convnext_atto', '--dataset', 'fashion-mnist-bundled', '--no-progress']
    if verb[0] == 'train':
        args += ['--out', str(tmp_path / 'run')]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f'timm-moe {verb[0]}: error: 28x28 images are too small for convnext_atto: it needs at least 32x32 '
        f'({"--img-size 32" if verb[0] == "eval" else "img_size=32"} resizes {"them" if verb[0] == "eval" else "the images"} '
        'inside the model)']
    assert 'Traceback' not in err
    assert not (tmp_path / 'run').exists()  # refused before the run folder is made


# ---------------------------------------------------------------------------------------------------- audit

@pytest.mark.parametrize('name', list(CONVERTS))
def test_audit_at_k1_costs_the_dense_flops_plus_the_gates(name, tmp_path):
    out = tmp_path / 'audit.json'
    assert main(['audit', '--model', name, '--convert', _flag(CONVERTS[name]), '--no-latency', '--json',
                 str(out)]) == 0
    [converted] = json.loads(out.read_text())
    x = torch.rand(1, 3, 32, 32)
    # the dense FLOPs and each gate's, counted here by fvcore on the plain model and on the gates' own inputs
    dense = _fvcore(timm.create_model(name).eval(), x)
    model = timm_moe.create_model(name, convert=CONVERTS[name]).eval()
    inputs = {}
    hooks = [layer.register_forward_pre_hook(lambda m, a, p=path: inputs.setdefault(p, a[0]))
             for path, layer in timm_moe.moe_layers(model)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    gates = sum(_fvcore(layer.gate, inputs[path]) for path, layer in timm_moe.moe_layers(model))
    assert gates > 0
    assert converted['convert'] == CONVERTS[name] and converted['dense_model'] == name
    assert (converted['flops_dense'], converted['flops_gates']) == (dense, gates)
    assert converted['flops_active'] == dense + gates
    assert converted['flops_ratio_dense_plus_gates'] == 1.0


def test_audit_of_a_plain_timm_model_is_itself(tmp_path):
    out = tmp_path / 'audit.json'
    assert main(['audit', '--model', 'efficientnet_b0', '--no-latency', '--json', str(out)]) == 0
    [plain] = json.loads(out.read_text())
    assert plain['experts'] == 0 and plain['flops_gates'] == 0 and 'convert' not in plain
    assert plain['flops_active'] == plain['flops_dense'] == _fvcore(timm.create_model('efficientnet_b0').eval(),
                                                                     torch.rand(1, 3, 32, 32))


@pytest.mark.parametrize('args, message', [
    (['--model', 'convnext_atto', '--model', 'efficientnet_b0', '--convert', 'targets=x,num_experts=2,k=1'],
     '--convert names module paths of one architecture: give it with one --model'),
    (['--model', 'resnet18_blockmoe_e4_k1', '--convert', 'targets=layer4,num_experts=2,k=1'],
     '--convert with resnet18_blockmoe_e4_k1: it is already a timm-moe model'),
    (['--model', 'convnext_atto', '--convert', 'targets=stages.3.blocks.*,num_experts=2'], 'has no k'),
    (['--model', 'convnext_atto', '--input-size', '3,16,16'],
     '16x16 images are too small for convnext_atto: it needs at least 32x32 (audit --input-size C,32,32)'),
    (['--model', 'convnext_attto'], "unknown model 'convnext_attto': expected a timm model name such as convnext_atto"),
])
def test_audit_refuses_in_one_line(args, message, capsys):
    assert main(['audit', '--no-latency', *args]) == 2
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err


# ------------------------------------------------------------------------- train, eval, export, load back

TRAIN_ARGS = {}  # run folder -> the train command that made it


@pytest.fixture(scope='module', params=CASES, ids=IDS)
def run(request, tmp_path_factory):
    """(model name, its conversion or None, the run folder) of a 2-step PGD training through the CLI."""
    name, converted = request.param
    convert = CONVERTS[name] if converted else None
    out = tmp_path_factory.mktemp('run') / 'run'
    args = ['train', '--model', name, '--dataset', 'fashion-mnist-bundled', '--training', 'pgd',
            '--attack-steps', '1', '--epochs', '1', '--max-steps', '2', '--batch-size', '8', '--train-limit', '16',
            '--eval-limit', '8', '--workers', '0', '--lr', '0.01', '--no-progress', '--out', str(out)]
    if convert:
        args += ['--convert', _flag(convert)]
    if IMG_SIZE[name]:
        args += ['--img-size', str(IMG_SIZE[name])]
    assert main(args) == 0
    TRAIN_ARGS[out] = args
    return name, convert, out


def test_trains_adversarially(run):
    name, convert, out = run
    result = json.loads((out / 'result.json').read_text())
    assert result['steps'] == 2 and result['model'] == name
    import yaml
    config = yaml.safe_load((out / 'config.yaml').read_text())
    assert config['training'] == 'pgd' and config.get('convert') == convert and config['img_size'] == IMG_SIZE[name]
    state = torch.load(out / 'model.pth', map_location='cpu', weights_only=True)
    assert any('.experts.3.' in key for key in state) == bool(convert)


def test_evaluates_from_the_run_config(run, tmp_path, capsys):
    name, convert, out = run
    result = tmp_path / 'eval.json'
    # --convert and --img-size come from the run's config.yaml, as --model-kwargs do
    assert main(['eval', '--model', name, '--checkpoint', str(out / 'model.pth'), '--attacks', 'pgd10',
                 '--n-examples', '2', '--no-checks', '--no-progress', '--json', str(result)]) == 0
    settings = json.loads(result.read_text())['settings']
    assert settings.get('convert') == convert and settings.get('img_size') == IMG_SIZE[name]
    assert settings['model'] == name


def test_resume_refuses_to_drop_the_conversion(run, capsys):
    name, convert, out = run
    if convert is None:
        pytest.skip('a plain run: nothing to drop')
    # the run's config.yaml says convert; resuming it as the plain model would load its weights into another net
    args = TRAIN_ARGS[out]
    plain = args[:args.index('--convert')] + args[args.index('--convert') + 2:]  # the same command, unconverted
    assert main([*plain, '--resume']) == 2
    err = capsys.readouterr().err
    assert f'--resume: {out} trains with convert={convert}'[:60] in err and 'not convert=None' in err


def test_eval_refuses_another_conversion_than_the_run(run, capsys):
    name, convert, out = run
    if convert is None:
        pytest.skip('a plain run: nothing to contradict')
    other = dict(convert, k=2)
    assert main(['eval', '--model', name, '--checkpoint', str(out / 'model.pth'), '--convert', _flag(other),
                 '--attacks', 'pgd10', '--n-examples', '2', '--no-checks']) == 2
    assert 'was trained with convert' in capsys.readouterr().err


def test_exports_and_loads_back_to_the_same_logits(run, tmp_path):
    name, convert, out = run
    hub = tmp_path / 'hub'
    assert main(['export', '--checkpoint', str(out), '--out', str(hub), '--registry', str(tmp_path / 'none')]) == 0
    cfg = json.loads((hub / CONFIG_FILE).read_text())
    assert cfg.get('convert') == convert and read_export(hub)[1].get('convert') == convert
    side = IMG_SIZE[name]
    assert cfg['pretrained_cfg']['input_size'] == [1, side, side]  # timm's transforms resize to what it trained on
    # the documented rebuild: timm_moe.create_model(architecture, convert=..., **model_args), weights loaded
    rebuilt = timm_moe.create_model(cfg['architecture'], convert=cfg.get('convert'), **cfg['model_args'])
    rebuilt.load_state_dict(torch.load(out / 'model.pth', map_location='cpu', weights_only=True))
    loaded = load_exported(hub)
    x = torch.rand(3, 1, side, side)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), rebuilt.eval()(x))
    if convert is not None:  # the same weights under another k would load without a key mismatch: refused
        with pytest.raises(UserError, match='convert .* vs '):
            load_exported(hub, name, num_classes=10, in_chans=1)

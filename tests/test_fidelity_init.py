"""The paper code's initialisation, LR interval and Fast/Free-AT placement (docs/FIDELITY.md rows 12, 13, 24, 27):
experts Kaiming fan_in, the CIFAR stem PyTorch's default, the schedule stepped once per epoch, both layer4 blocks;
and `reinit_` re-initialising every parameter of a copied expert, not only Conv2d and BatchNorm2d."""
import copy
import json
import math
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import timm_moe  # noqa: F401  registers the models
from timm_moe.convert import reinit_
from bench.core.errors import UserError
from bench.training.config import load_config
from bench.training.trainer import run_training

TINY = dict(model='resnet18_blockmoe_e2_k1', model_kwargs=dict(width=4), dataset='fashion-mnist-bundled',
            batch_size=16, train_limit=64, eval_limit=0, workers=0, lr=0.1, progress=False, log_every=1)


def _std(conv: nn.Module) -> float:
    return conv.weight.std().item()


def test_expert_convs_are_kaiming_fan_in_and_dense_convs_keep_timm_fan_out():
    # the reference's _initialize_weights: kaiming_normal_ in its default mode fan_in, gain sqrt(2)
    torch.manual_seed(0)
    model = timm.create_model('resnet18_blockmoe_e2_k1', placement='all')  # both layer4 blocks, width 64
    block = model.layer4[0]
    for expert in block.experts:
        assert _std(expert.conv1) == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.02)  # 0.0295, not fan_out's 0.0208
        assert _std(expert.downsample[0]) == pytest.approx(math.sqrt(2 / 256), rel=0.02)  # 0.088, not 0.0625
        assert _std(expert.conv2) == pytest.approx(math.sqrt(2 / (512 * 9)), rel=0.02)
        assert expert.bn1.weight.eq(1).all() and expert.bn1.bias.eq(0).all()
    # the dense convs keep timm's ResNet init (fan_out), as the reference's keep torchvision's
    assert _std(model.layer3[0].conv1) == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.02)  # 128 -> 256
    assert _std(model.layer3[0].conv1) != pytest.approx(math.sqrt(2 / (128 * 9)), rel=0.1)


@pytest.mark.parametrize('width', [64, 8])
def test_cifar_stem_keeps_pytorch_default_init_in_dense_and_moe(width):
    # PyTorch's Conv2d default: kaiming_uniform_(a=sqrt 5) = U(+-1/sqrt(fan_in)), std 1/sqrt(3 fan_in)
    expected = 1 / math.sqrt(3 * 3 * 9)  # 0.111 for 3 -> C, 3x3
    stems = []
    for name in ('resnet18_dense', 'resnet18_blockmoe_e2_k1'):
        torch.manual_seed(0)
        conv = timm.create_model(name, width=width).conv1
        assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (3, width, (3, 3))
        assert conv.weight.abs().max().item() <= math.sqrt(3) * expected  # uniform, bounded
        # fan_out would be sqrt(2 / (9 C)): 0.059 at C = 64, 0.167 at C = 8
        assert _std(conv) == pytest.approx(expected, rel=0.04 if width == 64 else 0.15)
        stems.append(conv.weight)
    assert torch.equal(*stems)  # the same draw: the MoE and its dense baseline start from one stem


class _Scale(nn.Module):
    """A layer with a parameter of its own and no reset_parameters (as a user's custom layer might be)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma[:, None, None]


def _randomise_(model: nn.Module) -> nn.Module:
    """Stand-in for trained weights: every parameter and BatchNorm statistic a value no init gives."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand_like(p) + 2)
        for name, b in model.named_buffers():
            if b.is_floating_point():
                b.copy_(torch.rand_like(b) + 2)
    return model


@pytest.mark.parametrize('arch', ['seresnet18', 'ecaresnet26t'])
def test_reinit_reinitialises_every_parameter_of_an_se_or_eca_block(arch):
    # SE's 1x1 convs have biases, ECA's conv is a Conv1d: before, both stayed exact copies of the source
    torch.manual_seed(0)
    model = _randomise_(timm.create_model(arch, num_classes=10))
    source = copy.deepcopy(model.layer4[1])
    kinds = {type(m).__name__ for m in source.modules()}
    assert ('SEModule' if arch == 'seresnet18' else 'EcaModule') in kinds
    timm_moe.convert(model, 'layer4.1', num_experts=2)
    src_params, src_buffers = dict(source.named_parameters()), dict(source.named_buffers())
    for expert in model.layer4[1].experts:
        params = dict(expert.named_parameters())
        assert params.keys() == src_params.keys()
        same = [n for n, p in params.items() if torch.equal(p, src_params[n])]
        assert not same, f'{arch}: expert parameters copied, not re-initialised: {same}'
        same = [n for n, b in expert.named_buffers() if b.is_floating_point() and torch.equal(b, src_buffers[n])]
        assert not same, f'{arch}: expert buffers copied: {same}'
    model.eval()(torch.rand(2, 3, 32, 32))


def test_reinit_covers_biases_conv1d_groupnorm_layernorm_and_refuses_what_it_cannot_reset():
    torch.manual_seed(0)
    expert = _randomise_(nn.Sequential(nn.Conv2d(3, 8, 3, bias=True), nn.GroupNorm(2, 8), nn.Conv1d(1, 1, 3),
                                       nn.LayerNorm(8), nn.Linear(8, 8), nn.BatchNorm2d(8)))
    reinit_(expert)
    conv, gn, conv1d, ln, fc, bn = expert
    assert conv.bias.abs().max() <= 1 / math.sqrt(27) and conv1d.weight.abs().max() < 2
    assert gn.weight.eq(1).all() and gn.bias.eq(0).all() and ln.weight.eq(1).all() and ln.bias.eq(0).all()
    assert fc.weight.abs().max() <= 1 / math.sqrt(8) and fc.bias.abs().max() <= 1 / math.sqrt(8)
    assert bn.running_mean.eq(0).all() and bn.running_var.eq(1).all() and bn.weight.eq(1).all()
    with pytest.raises(ValueError, match=r"cannot re-initialise the _Scale \('1'\) of a copied Sequential: it has "
                                         r'parameters and no reset_parameters\(\); pass copy_weights=True'):
        reinit_(nn.Sequential(nn.Conv2d(3, 4, 1), _Scale(4)))


def _step_lrs(run_dir: str) -> dict:
    """{epoch: [the LR of each update]} from metrics.jsonl's step lines."""
    out: dict = {}
    for line in (Path(run_dir) / 'metrics.jsonl').read_text().splitlines():
        rec = json.loads(line)
        if rec['kind'] == 'step':
            out.setdefault(rec['epoch'], []).append(rec['lr'])
    return out


@pytest.mark.parametrize('training', ['normal', 'free'])
def test_poly_lr_is_constant_within_an_epoch_and_poly_across_epochs(tmp_path, training):
    # the reference's Lightning interval 'epoch' (lit_module.py), PolyLR T_max = max_epochs (lr.py); for Free-AT
    # an epoch is a data pass, whatever its replays
    extra = dict(free_replays=2) if training == 'free' else {}
    result = run_training(load_config(None, **TINY, training=training, epochs=3, out=str(tmp_path / 'run'),
                                      **extra))
    lrs = _step_lrs(result.run_dir)
    assert sorted(lrs) == [0, 1, 2] and all(len(v) == 4 for v in lrs.values())  # 4 minibatches per epoch
    for epoch, values in lrs.items():
        assert values == [pytest.approx(0.1 * (1 - epoch / 3) ** 0.9, rel=1e-9)] * 4, epoch


def test_sched_step_update_keeps_the_per_update_schedule_and_a_resume_must_match(tmp_path):
    result = run_training(load_config(None, **TINY, epochs=2, sched_step='update', out=str(tmp_path / 'run')))
    lrs = _step_lrs(result.run_dir)
    assert lrs[0] == [pytest.approx(0.1 * (1 - t / 8) ** 0.9, rel=1e-9) for t in range(1, 5)]
    # the checkpoint's scheduler would step as it was saved, whatever the config says: refused, naming the field
    with pytest.raises(UserError, match=r'sched_step=update, not .*sched_step=epoch'):
        run_training(load_config(None, **TINY, epochs=3, out=str(tmp_path / 'run')), resume=True)


def test_the_config_hash_separates_the_schedule_interval():
    # 'update' (every run before the key existed) hashes as before; the per-epoch default is another run
    assert load_config(sched_step='update').sha256() != load_config().sha256()
    assert load_config(sched_step='epoch').sha256() == load_config().sha256()
    with pytest.raises(UserError, match=r"sched_step='step' is not allowed; choose one of epoch, update"):
        load_config(sched_step='step')


@pytest.mark.parametrize('training', ['fast', 'free'])
def test_fast_and_free_recipes_build_both_layer4_blocks_as_the_cited_reference_config(training):
    # fast_/free_adv_train_resnet_block_moe.yaml build ResNetBlockMoE: its filter takes every BasicBlock under layer4
    cfg = load_config(f'cifar100_resnet18_{training}')
    assert cfg.model_kwargs['placement'] == 'all' and cfg.sched_step == 'epoch'
    model = timm.create_model(cfg.model, **{**cfg.model_kwargs, 'width': 4})
    assert [n for n, m in model.named_modules() if isinstance(m, timm_moe.MoE)] == ['layer4.0', 'layer4.1']

"""Training attacks under --amp: float16 underflow must not zero the input gradient, and the default
attack precision crafts exactly the examples of a float32 run."""
import pytest
import torch
import torch.nn.functional as F

from bench.training.config import load_config
from bench.attacks.pgd import input_grad as _grad
from bench.training.adversarial import InputGradScaler, madry_examples
from bench.training.trainer import Trainer

EPS, STEP = 8 / 255, 2 / 255


def _confident_linear(bias_gap: float = 16.0) -> tuple:
    """A 2-class linear model that is right about every image with p = 1 - 1e-7, as a trained network is
    about most training images late in a run: the mean loss's gradient per logit is ~2e-9, below float16's
    smallest subnormal (6e-8). Each input weight is +-0.05, so no gradient sign hinges on rounding."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(3 * 8 * 8, 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[1] = 0.05 * torch.randn(3 * 8 * 8).sign()
        lin.bias.copy_(torch.tensor([0.0, bias_gap]))
    x = torch.rand(64, 3, 8, 8)
    return torch.nn.Sequential(torch.nn.Flatten(), lin), x, torch.ones(64, dtype=torch.long)


def test_fp16_underflow_stops_the_naive_attack_but_not_the_scaled_one():
    model, x, y = _confident_linear()
    fp32 = madry_examples(model, x, y, EPS, STEP, 5, random_start=False)
    assert (fp32 - x).abs().max() == pytest.approx(EPS, abs=1e-6)  # in float32 the attack goes to the border
    with torch.autocast('cpu', dtype=torch.float16):
        naive = madry_examples(model, x, y, EPS, STEP, 5, random_start=False)
        scaled = madry_examples(model, x, y, EPS, STEP, 5, random_start=False, scaler=InputGradScaler())
    assert torch.equal(naive, x), 'the old code: every gradient underflowed, so no image was attacked'
    assert torch.equal(scaled, fp32)


def test_overflowing_scaled_step_is_redone_in_fp32():
    model, x, y = _confident_linear(bias_gap=0.0)  # unsure: gradient per logit ~0.5/64, times 2^24 overflows
    loss = lambda z: F.cross_entropy(model(z), y)  # noqa: E731
    scaler = InputGradScaler(init_scale=2.0 ** 24)
    with torch.autocast('cpu', dtype=torch.float16):
        assert not torch.isfinite(_grad(lambda z: loss(z) * scaler.scale, x)).all()  # it does overflow
        g = scaler.grad(loss, x)
    assert torch.equal(g, _grad(loss, x))  # the float32 gradient, bit for bit
    assert scaler.scale == 2.0 ** 23


def test_scale_grows_after_clean_steps_and_resumes():
    model, x, y = _confident_linear()
    scaler = InputGradScaler(init_scale=4.0, growth_interval=2)
    with torch.autocast('cpu', dtype=torch.float16):
        for _ in range(3):
            scaler.grad(lambda z: F.cross_entropy(model(z), y), x)
    assert scaler.scale == 8.0
    again = InputGradScaler()
    again.load_state_dict(scaler.state_dict())
    assert again.state_dict() == scaler.state_dict() == dict(scale=8.0, clean_steps=1)


def _first_attack(tmp_path, name: str, **kw) -> torch.Tensor:
    cfg = load_config(None, model='resnet18_blockmoe_e2_k1', model_kwargs=dict(width=4),
                      dataset='fashion-mnist-bundled', batch_size=16, train_limit=64, eval_limit=0, workers=0,
                      progress=False, training='pgd', attack_steps=3, out=str(tmp_path / name), **kw)
    trainer = Trainer(cfg)
    try:
        x = torch.stack([trainer.train_set[i][0] for i in range(16)])
        y = torch.tensor([trainer.train_set[i][1] for i in range(16)])
        return trainer._adversarial(x, y, shard=0)
    finally:
        trainer.close()


def test_amp_training_attack_defaults_to_fp32_examples(tmp_path):
    # on the CPU --amp is bfloat16; crafting under it changes signs of small gradient components
    reference = _first_attack(tmp_path, 'fp32')
    assert torch.equal(_first_attack(tmp_path, 'amp-fp32-attack', amp=True), reference)
    assert not torch.equal(_first_attack(tmp_path, 'amp-amp-attack', amp=True, attack_precision='amp'), reference)


def test_attack_precision_is_checked():
    with pytest.raises(ValueError, match="attack_precision='fp16' is not allowed"):
        load_config(None, attack_precision='fp16')

"""The shipped recipes: the ResNet-50 schedule (5 linear warm-up epochs, then cosine to 5e-5) as the
trainer actually applies it, epoch by epoch (the reference's interval)."""
import math

import pytest

from bench.training.config import load_config
from bench.training.trainer import Trainer

EPOCHS, LR, WARMUP_LR, MIN_LR, WARMUP = 200, 0.1, 1e-3, 5e-5, 5


def _expected_lr(epoch: float) -> float:
    """Linear from warmup_lr towards lr over the warm-up; cosine from lr at epoch 0 to min_lr at the end."""
    if epoch < WARMUP:
        return WARMUP_LR + epoch * (LR - WARMUP_LR) / WARMUP
    return MIN_LR + 0.5 * (LR - MIN_LR) * (1 + math.cos(math.pi * epoch / EPOCHS))


@pytest.mark.parametrize('recipe', ['cifar100_resnet50_pgd', 'cifar100_resnet50_normal'])
def test_resnet50_recipe_lr_schedule(tmp_path, recipe):
    # the recipe's optimisation settings on a tiny model and data set: 64 images / batch 16 = 4 updates per epoch
    cfg = load_config(recipe, model='resnet50_blockmoe_e4_k1', model_kwargs=dict(width=4),
                      dataset='fashion-mnist-bundled', train_limit=64, batch_size=16, eval_limit=0, workers=0,
                      progress=False, out=str(tmp_path / 'run'))
    assert (cfg.epochs, cfg.lr, cfg.sched, cfg.warmup_epochs, cfg.warmup_lr, cfg.min_lr, cfg.amp) == (
        EPOCHS, LR, 'cosine', WARMUP, WARMUP_LR, MIN_LR, True)
    assert (cfg.opt, cfg.momentum, cfg.weight_decay, cfg.batch_size) == ('sgd', 0.9, 5e-4, 16)
    trainer = Trainer(cfg)
    try:
        per_epoch = trainer.steps_per_epoch
        assert per_epoch == 4

        def lr_of_epoch(epoch: int) -> float:  # the LR of every update of that epoch (the reference's interval)
            trainer.scheduler.step(epoch)
            return trainer.optimizer.param_groups[0]['lr']

        assert lr_of_epoch(0) == pytest.approx(WARMUP_LR, rel=1e-9)
        for epoch in (1, 2, 4, 5, 6, 50, 100, 150, 195, 199):
            assert lr_of_epoch(epoch) == pytest.approx(_expected_lr(epoch), rel=1e-9), epoch
        # a staircase, as the reference's ChainedScheduler stepped per epoch: updates do not move it
        trainer.scheduler.step(1)
        for t in range(per_epoch + 1, 2 * per_epoch):
            trainer.scheduler.step_update(t)
            assert trainer.optimizer.param_groups[0]['lr'] == pytest.approx(_expected_lr(1), rel=1e-9)
        peak = WARMUP  # the first cosine epoch: the warm-up climbs towards lr, cosine starts below it
        assert lr_of_epoch(peak - 1) < lr_of_epoch(peak) > lr_of_epoch(peak + 1)
    finally:
        trainer.close()


def test_shipped_recipes_load():
    for name in ('cifar100_resnet18_pgd', 'cifar100_resnet18_normal', 'cifar100_resnet50_pgd',
                 'cifar100_resnet50_normal', 'fashion_mnist_quick', 'cifar100_resnet18_fast', 'cifar100_resnet18_free',
                 'fashion_mnist_fast', 'fashion_mnist_free'):
        cfg = load_config(name)
        assert cfg.model.startswith(name.split('_')[1]) or name.startswith('fashion_mnist')
        assert cfg.training == name.rsplit('_', 1)[1] or name == 'fashion_mnist_quick'

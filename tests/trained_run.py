"""A real two-step training run, as `timm-moe train` writes it: the set-up the export and fault tests share."""
from __future__ import annotations

from pathlib import Path

# the quickstart's MoE, so that its shipped registry entry fits the run
NAME = 'resnet18_blockmoe_e4_k1'


def two_step_run(out: Path) -> Path:
    """Train `NAME` (width 4) for two steps on the bundled Fashion-MNIST into `out`; returns `out`."""
    from bench.training.config import load_config
    from bench.training.trainer import run_training
    cfg = load_config(None, model=NAME, model_kwargs=dict(width=4), dataset='fashion-mnist-bundled', batch_size=16,
                      train_limit=32, eval_limit=0, workers=0, max_steps=2, progress=False, out=str(out))
    run_training(cfg)
    return out

"""The sizes of a quickstart run (`timm-moe quickstart --plan`), apart from the pipeline so that the command's
--help names them without importing torch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Plan:
    width: int = 8  # base channels (the paper's ResNet-18 has 64); same depth and stage layout
    experts: int = 4  # the reference trains 4 experts
    k: int = 1  # k=1 keeps inference FLOPs at the dense model's
    train_limit: int = 10000  # the whole bundled training subset
    normal_epochs: int = 2
    adv_epochs: int = 1  # PGD-7 costs 8 forward/backward passes per image
    batch_size: int = 128
    adv_batch_size: int = 64  # more, smaller steps: one adversarial epoch then learns as much as two at 128
    lr: float = 0.05
    n_eval: int = 300  # first test images attacked
    n_check: int = 100  # images used by the gradient-masking checks
    # images of the per-expert analysis (each expert's subpath attacked, routing under attack, transfer): E times
    # an evaluation, it was the largest part of the MoE runs' time; None: all n_eval
    n_expert: Optional[int] = 100
    eval_batch: int = 250


PLANS = {
    'default': Plan(),
    # a minute-long pass through every stage, for tests and smoke checks; its numbers mean little
    'smoke': Plan(width=4, train_limit=512, normal_epochs=1, adv_epochs=1, batch_size=64, adv_batch_size=64,
                  n_eval=64, n_check=32, eval_batch=64, n_expert=None),
}

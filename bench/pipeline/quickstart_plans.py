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
    # one epoch: two took half of the normal runs' time and made the normal twins no less robust to PGD-20
    normal_epochs: int = 1
    adv_epochs: int = 1  # PGD-k costs k + 1 forward/backward passes per image
    batch_size: int = 128
    adv_batch_size: int = 64  # more, smaller steps: one adversarial epoch then learns as much as two at 128
    # the adversarial runs' attack: PGD-3 with steps of 2.5 eps / 3 (the usual 2.5 eps of travel), on the first
    # adv_train_limit images (None: train_limit). It costs 4 passes per image where PGD-7 cost 8, and PGD-20
    # accuracy came out no lower (docs/PERFORMANCE.md, "The quickstart")
    adv_attack_steps: int = 3
    adv_attack_step: float = 20 / 765
    adv_train_limit: Optional[int] = 7500
    lr: float = 0.05
    n_eval: int = 300  # first test images attacked
    n_check: int = 50  # images used by the gradient-masking checks (their tolerances widen with fewer)
    # images of the per-expert analysis (each expert's subpath attacked, routing under attack, transfer): E times
    # an evaluation, it was the largest part of the MoE runs' time; None: all n_eval
    n_expert: Optional[int] = 50
    eval_batch: int = 250


PLANS = {
    'default': Plan(),
    # a minute-long pass through every stage, for tests and smoke checks; its numbers mean little
    'smoke': Plan(width=4, train_limit=512, normal_epochs=1, adv_epochs=1, batch_size=64, adv_batch_size=64,
                  adv_attack_steps=7, adv_attack_step=2 / 255, adv_train_limit=None,
                  n_eval=64, n_check=32, eval_batch=64, n_expert=None),
}

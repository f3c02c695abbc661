"""What every attack shares: the `Attack` protocol, predictions and accuracy, perturbation norms, settings, and
the ensemble that takes the per-sample worst case over several attacks.

Every attack is a small object with its settings in `__init__` and `__call__(model, x, y) -> x_adv`. The
model takes [0, 1] images (normalisation lives inside it, `bench.models`) and is put in eval mode by the
caller. Each returned x_adv lies in the eps-ball around x and in [0, 1].
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional, Protocol, Sequence, Tuple

import torch
from torch import nn

from bench.core.errors import UserError
from bench.core.values import parse_eps

NORMS = ('Linf', 'L2')


class Attack(Protocol):
    """What the evaluator needs of an attack."""
    eps: float
    norm: str

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...

    def settings(self, n_cls: Optional[int] = None) -> dict: ...


# ---------------------------------------------------------------------------------------------- helpers


def accuracy(correct: torch.Tensor) -> float:
    """Percentage of True in a per-sample correctness vector (exact: a count over n, not a float32 mean)."""
    return 100.0 * int(correct.sum()) / len(correct) if len(correct) else float('nan')


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: Optional[int] = None) -> torch.Tensor:
    """Predicted labels of `x`, batched so that large inputs fit in memory."""
    bs = batch_size or len(x) or 1
    return torch.cat([model(x[i:i + bs]).argmax(1) for i in range(0, len(x), bs)]) if len(x) else \
        torch.zeros(0, dtype=torch.long, device=x.device)


@torch.no_grad()
def num_classes_of(model: nn.Module, x: torch.Tensor) -> int:
    """Number of logits the model outputs (one forward of one image)."""
    return int(model(x[:1]).shape[-1])


def perturbation_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample L-inf or L2 norm of a batch of perturbations."""
    flat = delta.reshape(len(delta), -1)
    return flat.abs().amax(1) if norm == 'Linf' else flat.norm(dim=1)


def _check_common(eps: float, norm: str) -> None:
    if norm not in NORMS:
        raise UserError(f'norm {norm!r} is not supported; choose one of {", ".join(NORMS)}')
    parse_eps(eps, norm)


def _settings(obj: object, implementation: str, **extra: Any) -> dict:
    d = dataclasses.asdict(obj)  # type: ignore[arg-type]
    d.update(attack=type(obj).__name__, implementation=implementation, **extra)
    return d



# ---------------------------------------------------------------------------------------------- ensemble

def robust_under_all(corrects: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-sample worst case of correctness flags: robust only if every attack left the sample correct."""
    return torch.stack(list(corrects)).all(0)


def worst_case(advs: Sequence[torch.Tensor], corrects: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the worst case over attacks: robust only if every attack left it correct.

    Args:
        advs: Each attack's adversarial batch (same shape).
        corrects: Each attack's per-sample correctness (bool) on its batch.

    Returns:
        (x_adv, correct): for each sample the first attack's example that broke it (the first attack's if
        none did), and the AND of the correctness flags.
    """
    if not advs or len(advs) != len(corrects):
        raise ValueError('worst_case needs one correctness vector per adversarial batch, and at least one')
    x_adv, broken = advs[0].clone(), ~corrects[0]
    for adv, ok in zip(advs[1:], corrects[1:]):
        newly = ~broken & ~ok
        x_adv[newly] = adv[newly]
        broken |= newly
    return x_adv, robust_under_all(corrects)


@dataclass
class EnsembleResult:
    x_adv: torch.Tensor
    correct: torch.Tensor
    per_attack: Dict[str, torch.Tensor]


@dataclass
class Ensemble:
    """Several attacks; a sample is robust only if it survives all of them (the per-sample worst case).

    Args:
        members: Name -> attack, run in order.
        all_points: Run every member on every point (per-member accuracies are then meaningful); False runs
            each member only on the points still robust, as AutoAttack does, which is cheaper and gives
            the same ensemble number.
    """
    members: Dict[str, Attack]
    all_points: bool = True

    @property
    def eps(self) -> float:
        return max(a.eps for a in self.members.values())

    @property
    def norm(self) -> str:
        return next(iter(self.members.values())).norm

    def settings(self) -> dict:
        return dict(attack='Ensemble', all_points=self.all_points,
                    members={k: a.settings() for k, a in self.members.items()})

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> EnsembleResult:
        advs, corrects = [], []
        robust = predict(model, x) == y
        for attack in self.members.values():
            adv = x.clone()
            todo = torch.ones_like(robust) if self.all_points else robust
            if todo.any():
                adv[todo] = attack(model, x[todo], y[todo])
            ok = predict(model, adv) == y
            advs.append(adv)
            corrects.append(ok if self.all_points else ok & robust)
            robust &= ok
        x_adv, correct = worst_case(advs, corrects)
        return EnsembleResult(x_adv, correct, dict(zip(self.members, corrects)))

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.run(model, x, y).x_adv

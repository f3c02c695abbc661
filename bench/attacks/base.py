"""What every attack shares: the `Attack` protocol, predictions and accuracy, perturbation norms, settings, and
the per-sample worst case over several attacks' correctness flags (`robust_under_all`).

Every attack is a small object with its settings in `__init__` and `__call__(model, x, y) -> x_adv`. The
model takes [0, 1] images (normalisation lives inside it, `bench.models`) and is put in eval mode by the
caller. Each returned x_adv lies in the eps-ball around x and in [0, 1].
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Protocol, Sequence

import torch
from torch import nn

from bench.attacks.names import NORMS
from bench.core.errors import UserError
from bench.core.values import parse_eps


class Attack(Protocol):
    """What the evaluator needs of an attack. `white_box` is a class attribute: True for an attack that uses the
    model's gradients only (the sanity checks compare the black-box Square with these)."""
    eps: float
    norm: str
    white_box: bool

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


def check_eps_and_norm(eps: float, norm: str) -> None:
    if norm not in NORMS:
        raise UserError(f'norm {norm!r} is not supported; choose one of {", ".join(NORMS)}')
    parse_eps(eps, norm)


def settings_of(obj: object, implementation: str, **extra: Any) -> dict:
    d = dataclasses.asdict(obj)  # type: ignore[arg-type]
    d.update(attack=type(obj).__name__, implementation=implementation, **extra)
    return d



# ---------------------------------------------------------------------------------------------- worst case

def robust_under_all(corrects: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-sample worst case of correctness flags: robust only if every attack left the sample correct."""
    return torch.stack(list(corrects)).all(0)

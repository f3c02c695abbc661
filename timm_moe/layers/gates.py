"""Gates that score each image against the experts of an MoE layer.

A gate maps the expert input (B, C, H, W) to one logit per expert (B, E). Routing is per
image, so both gates pool away the spatial dimensions.

A gate is an `nn.Module` class built as `cls(in_chs, num_experts)`, registered by name with `@register_gate(name)`
(docs/EXTENDING.md): the name is then a valid `gate=` of `MoE`, `timm_moe.convert`, the registered models and
`ModelSpec`. Its optional class attribute `min_input_size` (default 1) is the smallest feature map it accepts.
"""
from __future__ import annotations

from typing import Callable, Dict, Type

import torch
from torch import nn

__all__ = ['GATES', 'ConvGapGate', 'GapFcGate', 'create_gate', 'register_gate']

# name -> gate class, filled by `register_gate`
GATES: Dict[str, Type[nn.Module]] = {}


def register_gate(name: str) -> Callable[[Type[nn.Module]], Type[nn.Module]]:
    """Class decorator: register the gate class under `name` (a registered name is refused)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f'gate name {name!r}: expected an identifier such as "gap_fc"')
    if name in GATES:
        raise ValueError(f'gate {name!r} is registered already (gates: {sorted(GATES)})')

    def register(cls: Type[nn.Module]) -> Type[nn.Module]:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ValueError(f'gate {name!r}: {cls!r} is not an nn.Module class')
        GATES[name] = cls
        return cls
    return register


@register_gate('gap_fc')

class GapFcGate(nn.Module):
    """GAP-FC gate: global average pool, then a linear layer to E logits.

    Args:
        in_chs: Channels of the expert input.
        num_experts: Number of experts E.
    """

    min_input_size = 1

    def __init__(self, in_chs: int, num_experts: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_chs, num_experts)

    def reset_parameters(self) -> None:
        """PyTorch's default Linear init, as the reference's gate (built after the backbone's init)."""
        self.fc.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x).flatten(1))


@register_gate('conv_gap')
class ConvGapGate(nn.Module):
    """Conv-GAP gate: a 3x3 conv to E channels (no padding, no bias), then global average pool.

    Unpadded, the conv needs an input of at least 3x3 (`min_input_size`).

    Args:
        in_chs: Channels of the expert input.
        num_experts: Number of experts E.
    """
    min_input_size = 3

    def __init__(self, in_chs: int, num_experts: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, num_experts, kernel_size=3, padding=0, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def reset_parameters(self) -> None:
        """PyTorch's default Conv2d init, as the reference's gate (built after the backbone's init).

        A backbone init such as timm's Kaiming fan_out gives this conv ~28x that scale at C=512, E=4,
        and the gate then routes one-hot from the first step.
        """
        self.conv.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x)).flatten(1)


def create_gate(name: str, in_chs: int, num_experts: int) -> nn.Module:
    """Build a gate by name.

    Args:
        name: One of `GATES` ('gap_fc', 'conv_gap', or a gate registered with `register_gate`).
        in_chs: Channels of the expert input.
        num_experts: Number of experts E.
    """
    if name not in GATES:
        raise ValueError(f"unknown gate {name!r}: expected one of {sorted(GATES)}")
    return GATES[name](in_chs, num_experts)

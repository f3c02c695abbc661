"""`MoEConfig`: the MoE arguments and their defaults, written once.

`MoE.__init__`, `timm_moe.convert`, the registered models (`MODEL_DEFAULTS`, `KIND_KWARGS`), `ModelSpec` and
`timm_moe.upcycle` all take their MoE arguments, defaults and checks from this record, so that none of them can
drift from the others. `noisy_gating='auto'` is resolved here, once, to the bool the layer uses.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Tuple, Union

from .gates import GATES
from .routing import AUX_LOSSES

__all__ = ['EXPERT_WIDTHS', 'MOE_DEFAULTS', 'MoEConfig', 'NOISY_AUX_LOSSES', 'resolve_noisy_gating']

# the reference's top-k gate adds training noise whenever the balancing loss is not the entropy loss
NOISY_AUX_LOSSES = ('switch', 'kl', 'z_loss')
EXPERT_WIDTHS = ('full', 'matched')

# metadata `kinds`: the expert kinds whose registered models take the field as a model kwarg (in field order:
# KIND_KWARGS), None for every kind (also one registered later); a field with no kinds is an argument of the layer
# and of `convert` only


def _field(default: Any, kinds: Optional[Tuple[str, ...]] = None) -> Any:
    return dataclasses.field(default=default, metadata={'kinds': kinds})


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """The arguments that shape an MoE layer, checked on construction (one-line ValueError naming the value).

    Args:
        gate: Gate type, a name of `GATES`: 'gap_fc', 'conv_gap' or one registered with `register_gate`.
        aux_loss: Auxiliary loss, one of 'entropy', 'switch', 'kl', 'z_loss', 'none'.
        aux_weight: Weight of the auxiliary loss, a finite number >= 0 (stored as float).
        noisy_gating: True, False or 'auto' (the reference's policy: on for 'switch', 'kl', 'z_loss', off for
            'entropy', 'none'); stored resolved, as the bool the layer uses.
        expert_width: 'full' or 'matched' (a narrowed residual block; `timm_moe.convert`).
        noise_std: Standard deviation of the training-only gate noise, a finite number >= 0.
        straight_through: For k=1, forward weight exactly 1 with a straight-through gradient.
    """

    gate: str = _field('gap_fc')
    aux_loss: str = _field('entropy')
    aux_weight: float = _field(0.5)
    noisy_gating: Union[bool, str] = _field('auto')
    expert_width: str = _field('full', kinds=('block',))
    noise_std: float = _field(0.1, kinds=())
    straight_through: bool = _field(True, kinds=())

    def __post_init__(self) -> None:
        _check_choice('gate', self.gate, sorted(GATES))
        _check_choice('aux_loss', self.aux_loss, sorted(AUX_LOSSES))
        object.__setattr__(self, 'noisy_gating', resolve_noisy_gating(self.noisy_gating, self.aux_loss))
        _check_choice('expert_width', self.expert_width, list(EXPERT_WIDTHS))
        for name in ('aux_weight', 'noise_std'):
            value = getattr(self, name)
            # bool is a number to Python, and True as a weight is a mistake; nan would train on nan, inf diverge
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f'{name}={value!r}: expected a finite number >= 0')
            object.__setattr__(self, name, float(value))  # 1 and 1.0 are one config
        if not isinstance(self.straight_through, bool):
            raise ValueError(f'straight_through={self.straight_through!r}: expected True or False')

    @staticmethod
    def model_kwargs(kind: str) -> Tuple[str, ...]:
        """The fields a registered model of `kind` ('block', 'conv', ...) takes as model kwargs, in field order."""
        return tuple(f.name for f in dataclasses.fields(MoEConfig)
                     if f.metadata['kinds'] is None or kind in f.metadata['kinds'])

    def layer_kwargs(self) -> Dict[str, Any]:
        """The fields `MoE.__init__` takes (all but `expert_width`, which shapes the experts `convert` builds)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != 'expert_width'}


# every field's default as given (noisy_gating 'auto', not yet resolved): the defaults of every signature
MOE_DEFAULTS: Dict[str, Any] = {f.name: f.default for f in dataclasses.fields(MoEConfig)}


def _check_choice(name: str, value: Any, allowed: list) -> None:
    # a list or dict (from JSON) is unhashable and no choice: say so in the same line
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f'{name}={value!r}: expected one of {allowed}')


def resolve_noisy_gating(noisy_gating: Union[bool, str], aux_loss: str) -> bool:
    """The effective noisy-gating flag: an explicit bool wins, 'auto' follows the reference's policy."""
    _check_noisy_gating(noisy_gating)
    if noisy_gating == 'auto':
        return aux_loss in NOISY_AUX_LOSSES
    return bool(noisy_gating)


def _check_noisy_gating(noisy_gating: Union[bool, str]) -> None:
    # a bool, or exactly the string 'auto': 0/1 or 'true' are more likely mistakes than intent
    if not (isinstance(noisy_gating, bool) or (isinstance(noisy_gating, str) and noisy_gating == 'auto')):
        raise ValueError(f"noisy_gating={noisy_gating!r}: expected one of 'auto', True, False")

"""Any timm model, optionally converted to MoE: `Conversion` records `timm_moe.convert`'s arguments as JSON, and
`create_model` rebuilds the model from the timm name, its kwargs and that record.

    model = timm_moe.create_model('convnext_atto', convert={'targets': 'stages.3.blocks.*', 'num_experts': 4,
                                                            'k': 1, 'copy_weights': True}, num_classes=10)
    # == timm_moe.convert(timm.create_model('convnext_atto', num_classes=10), 'stages.3.blocks.*', 4, 1,
    #                     copy_weights=True)
    model.moe_conversion    # {'targets': 'stages.3.blocks.*', 'num_experts': 4, 'k': 1, 'copy_weights': True}

The record's keys are `convert`'s own arguments; its MoE arguments and their defaults are `MoEConfig`'s. It is
what the harness writes wherever a model is named (a run's config.yaml, an exported config.json, a registry
entry), so that `create_model(name, convert=record, **model_kwargs)` builds the same network again.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Dict, Mapping, Optional, Union

import timm
from torch import nn

from .convert import convert, split_targets
from .layers.kinds import KINDS
from .layers import MoEConfig, validate_moe_args

__all__ = ['Conversion', 'create_model']

_REQUIRED = ('targets', 'num_experts', 'k')
# convert's own arguments beyond the MoE layer's, with their defaults read from its signature (one home)
_OWN = {name: p.default for name, p in inspect.signature(convert).parameters.items()
        if name in ('kind', 'copy_weights')}
_MOE = tuple(f.name for f in dataclasses.fields(MoEConfig))


@dataclasses.dataclass(frozen=True)
class Conversion:
    """`timm_moe.convert(model, targets, num_experts, k, kind=..., copy_weights=..., **moe)` as a checked record.

    Args:
        targets: Module paths or patterns joined by '+' ('stages.3.blocks.*'; a list is joined).
        num_experts: Experts per MoE layer.
        k: Experts per image, 1 <= k <= num_experts.
        kind: 'block', 'conv' or None (see `convert`).
        copy_weights: Every expert an exact copy of the module (needed where a module has parameters that
            `convert` cannot re-initialise, e.g. ConvNeXt's layer scale).
        moe: The MoE layer's arguments (gate, aux_loss, ...), `MoEConfig`.
    """

    targets: str
    num_experts: int
    k: int
    kind: Optional[str] = _OWN['kind']
    copy_weights: bool = _OWN['copy_weights']
    moe: MoEConfig = dataclasses.field(default_factory=MoEConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, 'targets', '+'.join(split_targets(self.targets)))
        validate_moe_args(self.num_experts, self.k)
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f'kind={self.kind!r}: expected one of {sorted(KINDS)} or none')
        if not isinstance(self.copy_weights, bool):
            raise ValueError(f'copy_weights={self.copy_weights!r}: expected true or false')

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> 'Conversion':
        """A conversion from `convert`'s arguments by name (what `to_dict` writes); one-line ValueError naming
        an unknown, missing or bad value."""
        if isinstance(data, Conversion):
            return data
        if not isinstance(data, Mapping):
            raise ValueError(f'convert={data!r}: expected a mapping of timm_moe.convert arguments, e.g. '
                             'targets=stages.3.blocks.*,num_experts=4,k=1')
        allowed = (*_REQUIRED, *_OWN, *_MOE)
        unknown = [key for key in data if key not in allowed]
        if unknown:
            raise ValueError(f'convert key {unknown[0]}={data[unknown[0]]!r}: not an argument of timm_moe.convert; '
                             f'expected {", ".join(allowed)}')
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise ValueError(f'convert={dict(data)!r} has no {missing[0]}: it needs {", ".join(_REQUIRED)}')
        moe = MoEConfig(**{key: data[key] for key in _MOE if key in data})
        return cls(**{key: data[key] for key in (*_REQUIRED, *_OWN) if key in data}, moe=moe)

    def to_dict(self) -> Dict[str, Any]:
        """The arguments that differ from their defaults, so that one conversion has one record (JSON-able)."""
        out: Dict[str, Any] = {key: getattr(self, key) for key in _REQUIRED}
        out.update({key: getattr(self, key) for key, default in _OWN.items() if getattr(self, key) != default})
        # noisy_gating's default is 'auto' as this aux loss resolves it
        defaults = dataclasses.asdict(MoEConfig())
        defaults['noisy_gating'] = MoEConfig(aux_loss=self.moe.aux_loss).noisy_gating
        out.update({key: getattr(self.moe, key) for key in _MOE if getattr(self.moe, key) != defaults[key]})
        return out

    def apply(self, model: nn.Module) -> nn.Module:
        """`timm_moe.convert` of `model` with these arguments (in place; returns it, recording `to_dict()` as
        `model.moe_conversion`)."""
        convert(model, self.targets, self.num_experts, self.k, kind=self.kind, copy_weights=self.copy_weights,
                **dataclasses.asdict(self.moe))
        model.moe_conversion = self.to_dict()
        return model


def create_model(model_name: str, convert: Optional[Union[Mapping[str, Any], Conversion]] = None,
                 **kwargs: Any) -> nn.Module:
    """`timm.create_model(model_name, **kwargs)`, then converted as `convert` says (None: the plain model).

    The rebuild of any model the harness records: a run's or an export's `model`, `model_kwargs` and `convert`.
    With `features_only=True` the targets are paths in timm's feature wrapper, which for most models differ.
    A converted model's own weights are loaded after it is built (`load_state_dict`): timm's `pretrained=True`
    loads the weights of the unconverted model, which `convert` then copies with `copy_weights=True`.
    """
    conversion = None if convert is None else Conversion.from_dict(convert)  # checked before anything is built
    model = timm.create_model(model_name, **kwargs)
    if conversion is None:
        return model
    try:
        return conversion.apply(model)
    except ValueError as e:
        if not kwargs.get('features_only'):
            raise
        # timm wraps most models for features_only (FeatureListNet, FeatureGetterNet), which moves their modules
        raise ValueError(f'{e} (features_only=True: timm\'s feature wrapper of {model_name} keeps its modules under '
                         'other paths, where the targets must be given)') from None

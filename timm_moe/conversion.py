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
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import timm
from timm.models import is_model_in_modules
from torch import nn

from .convert import convert, split_targets
from .layers.kinds import KINDS
from .layers import MoEConfig, validate_moe_args
from .models.registry import ENTRYPOINTS
from .spec import ModelSpec

__all__ = ['Conversion', 'TimmSpec', 'converted_label', 'create_model', 'model_spec', 'timm_family']

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


@dataclasses.dataclass(frozen=True)
class TimmSpec:
    """Any timm model that is not a timm-moe name, optionally converted to MoE: what `ModelSpec` is to ours, for
    the harness's grid cells and registry entries.

    `create(**timm_kwargs)` is `create_model(model, convert=conversion, **timm_kwargs)`. Its `experts`, `k` and
    `kind` ('converted', or None for the plain model) are the conversion's; `arch` is the timm module that
    defines the model (its family: 'convnext', 'efficientnet'). The spec owns no timm kwarg (`kwargs` is empty):
    every kwarg the user gives is timm's.

    Args:
        model: A timm model name that timm_moe does not register ('convnext_atto', 'efficientnet_b0').
        conversion: `Conversion` (or its record, a mapping of `convert`'s arguments); None: the plain model.
    """

    model: str
    conversion: Optional[Conversion] = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not timm.is_model(self.model):
            raise ValueError(f'{self.model!r}: not a timm model name (timm.list_models() lists them)')
        if self.model in ENTRYPOINTS:
            raise ValueError(f'{self.model!r} is a timm-moe name: describe it with ModelSpec')
        if self.conversion is not None:
            object.__setattr__(self, 'conversion', Conversion.from_dict(self.conversion))

    @property
    def name(self) -> str:
        return self.model

    @property
    def kwargs(self) -> Dict[str, Any]:
        return {}

    @property
    def is_moe(self) -> bool:
        return self.conversion is not None

    @property
    def experts(self) -> int:
        return self.conversion.num_experts if self.conversion is not None else 0

    @property
    def k(self) -> Optional[int]:
        return self.conversion.k if self.conversion is not None else None

    @property
    def kind(self) -> Optional[str]:
        return 'converted' if self.conversion is not None else None

    @property
    def arch(self) -> str:
        return timm_family(self.model)

    @property
    def convert(self) -> Optional[Dict[str, Any]]:
        """The conversion's record (`Conversion.to_dict`), None for the plain model."""
        return None if self.conversion is None else self.conversion.to_dict()

    @property
    def label(self) -> str:
        """'convnext_atto converted E=4 k=1', or the plain model's name."""
        return converted_label(self.model, self.convert)

    def create(self, **timm_kwargs: Any) -> nn.Module:
        return create_model(self.model, convert=self.conversion, **timm_kwargs)

    def dense(self) -> 'TimmSpec':
        """The unconverted model."""
        return TimmSpec(self.model)


def converted_label(name: str, convert: Optional[Mapping[str, Any]]) -> str:
    """How tables name a timm model converted as the record `convert` says: 'convnext_atto converted E=4 k=1'
    (the name alone when `convert` is None)."""
    if convert is None:
        return name
    return f'{name} converted E={convert.get("num_experts")} k={convert.get("k")}'


def timm_family(name: str) -> str:
    """The timm module that defines `name` ('convnext' for 'convnext_atto'): the family a table groups it in."""
    return next((module for module in timm.list_modules() if is_model_in_modules(name, [module])), name)


def model_spec(name: str, kwargs: Mapping[str, Any],
               convert: Optional[Union[Mapping[str, Any], Conversion]] = None) -> Tuple[Any, Dict[str, Any]]:
    """(spec, timm kwargs) of `timm_moe.create_model(name, convert=convert, **kwargs)`: a `ModelSpec` and the
    kwargs it does not own for a timm-moe name, a `TimmSpec` and every kwarg for any other timm model.

    One-line ValueError for a name timm does not know (ModelSpec's wording, which lists ours) and for a
    conversion of a timm-moe name (it is an MoE already).
    """
    if name in ENTRYPOINTS and convert is not None:
        raise ValueError(f'convert with {name}: it is already a timm-moe model; convert a plain timm model '
                         f'(e.g. {ENTRYPOINTS[name].arch})')
    if name in ENTRYPOINTS or not (isinstance(name, str) and timm.is_model(name)):
        return ModelSpec.from_timm_kwargs(name, kwargs)
    return TimmSpec(name, convert), dict(kwargs)

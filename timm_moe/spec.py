"""`ModelSpec`: one typed, validated, JSON-able description of a timm-moe architecture.

A spec is the base timm architecture (`arch`), the kind of MoE (`kind`: 'block', 'conv', or None for dense), E and
k, where the MoE layers go (`placement`) and the MoE kwargs. timm's own kwargs (`num_classes`, `in_chans`,
`drop_rate`, `device`, ...) are not part of it and go to `spec.create(**timm_kwargs)`, so that one spec describes
the same network on any data set.

    spec = ModelSpec.from_name('resnet18_convmoe_e4_k1', placement='layer4.0.conv1')
    spec.name, spec.kwargs          # 'resnet18_convmoe_e4_k1', {'placement': 'layer4.0.conv1'}
    model = spec.create(num_classes=100)   # == timm.create_model(spec.name, **spec.kwargs, num_classes=100)
    spec.dense()                    # ModelSpec(arch='resnet18', experts=0, ...): its dense baseline

A name is looked up in the registered entry points' table (`timm_moe.models.ENTRYPOINTS`), never parsed.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import timm
import torch
from torch import nn

from .layers import MoEConfig
from .models.registry import ARCHS, ENTRYPOINTS, FAMILIES, GRID, Entry
# the registry's live inverse of ENTRYPOINTS: a family registered after this import is named too
from .models.registry import NAMES as _NAMES
from .models.resnet_moe import (KIND_KWARGS, MODEL_DEFAULTS, PLACEMENTS, STEMS, base_model, default_placement,
                                placement_targets)

__all__ = ['MOE_KWARGS', 'ModelSpec']

# fields that only an MoE spec has: a dense spec holds None for each
_MOE_FIELDS = ('k', 'kind', 'gate', 'aux_loss', 'placement', 'expert_width', 'noisy_gating', 'aux_weight')
_STR_FIELDS = ('arch', 'kind', 'gate', 'aux_loss', 'placement', 'expert_width', 'stem')
# kwargs that a registered entrypoint fixes from its name; passing them to create() would contradict the name
_NAME_KWARGS = ('arch', 'kind', 'num_experts', 'k')
# model kwargs that only an MoE model takes (a dense baseline is built with all the others)
MOE_KWARGS = tuple(dict.fromkeys(key for keys in KIND_KWARGS.values() for key in keys)) + ('num_experts', 'k')


def _check_int(name: str, value: Any, minimum: int) -> None:
    # bool is an int subclass, and True as a width or an expert count is a mistake, not intent
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f'{name}={value!r}: expected an integer >= {minimum}')


def _check_choice(name: str, value: Any, allowed: Tuple[Any, ...]) -> None:
    if value not in allowed:
        raise ValueError(f'{name}={value!r}: expected one of {list(allowed)}')


@functools.lru_cache(maxsize=None)
def _meta_base(arch: str) -> nn.Module:
    """The unconverted base model of `arch` on the meta device: where a placement is checked (no memory)."""
    with torch.device('meta'):
        return base_model(arch, 'cifar', 8, 10, 3, False)


def _check_placement(arch: str, kind: str, placement: str) -> None:
    if placement in PLACEMENTS:
        return
    placement_targets(_meta_base(arch), placement, kind)  # raises naming the value and the model's paths


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A timm-moe architecture: the registered model and the kwargs that shape it.

    Fields left at None take `MODEL_DEFAULTS` (and `default_placement(kind)`) for an MoE spec (experts > 0); a
    dense spec (experts == 0) has no MoE fields and refuses any that is set. Every field is checked on
    construction (also by `dataclasses.replace`), with a one-line ValueError naming the value.

    Args:
        arch: The base timm architecture: 'resnet18', 'resnet50' or 'wide_resnet50_2'.
        experts: Experts per MoE layer, one of the registered counts; 0 is the dense baseline.
        k: Experts per image (registered: 1 to 4; k <= experts). Required for an MoE spec.
        kind: 'block' (BlockMoE: residual blocks are experts) or 'conv' (ConvMoE: convolutions are); an MoE
            spec without it is 'block'.
        gate: 'gap_fc' or 'conv_gap'.
        aux_loss: 'entropy', 'switch', 'kl', 'z_loss' or 'none'.
        placement: Where the MoE layers go: 'last' or 'all' (of layer4), or module paths or patterns joined
            by '+' ('layer4.0', 'layer3+layer4', 'layer4.1.conv2'); model kwarg `placement`.
        expert_width: 'full' or 'matched' (BlockMoE only).
        noisy_gating: 'auto', True or False, stored as the bool the model uses ('auto' resolved on construction,
            as the model resolves it, so two specs that build the same model are equal).
        aux_weight: Weight of the aux loss, a finite number >= 0 (stored as float).
        width: Base channels, even (64 is the paper's ResNet).
        stem: 'cifar' or 'imagenet'.
    """

    arch: str
    experts: int = 0
    k: Optional[int] = None
    kind: Optional[str] = None
    gate: Optional[str] = None
    aux_loss: Optional[str] = None
    placement: Optional[str] = None
    expert_width: Optional[str] = None
    noisy_gating: Optional[Union[bool, str]] = None
    aux_weight: Optional[float] = None
    width: Optional[int] = None
    stem: Optional[str] = None

    def __post_init__(self) -> None:
        for field in _STR_FIELDS:
            value = getattr(self, field)
            # a list or dict from JSON would be unhashable in the choice checks: say what is wrong instead
            if value is not None and not isinstance(value, str):
                raise ValueError(f'{field}={value!r}: expected a string')
        _check_choice('arch', self.arch, tuple(ARCHS))
        _check_int('experts', self.experts, 0)
        for field in ('width', 'stem'):
            if getattr(self, field) is None:
                object.__setattr__(self, field, MODEL_DEFAULTS[field])
        _check_int('width', self.width, 2)
        if self.width % 2:
            raise ValueError(f'width={self.width!r}: expected an even integer >= 2')
        _check_choice('stem', self.stem, STEMS)
        if self.experts == 0:
            self._check_dense()
        else:
            self._fill_and_check_moe()

    def _check_dense(self) -> None:
        given = [f for f in _MOE_FIELDS if getattr(self, f) is not None]
        if given:
            raise ValueError(f'a dense spec (experts=0) takes no MoE field, got {given}: '
                             f'set experts to one of {list(GRID["experts"])} for an MoE model')

    def _fill_and_check_moe(self) -> None:
        if self.experts not in GRID['experts']:
            raise ValueError(f'experts={self.experts!r}: expected 0 (dense) or one of {list(GRID["experts"])}')
        allowed_k = [k for k in GRID['k'] if k <= self.experts]
        if self.k is None:
            raise ValueError(f'k=None: an MoE spec (experts={self.experts}) needs k, one of {allowed_k}')
        _check_int('k', self.k, 1)
        if self.k not in allowed_k:
            raise ValueError(f'k={self.k!r} with experts={self.experts}: expected one of {allowed_k}')
        if self.kind is None:
            object.__setattr__(self, 'kind', 'block')
        _check_choice('kind', self.kind, FAMILIES[self.arch])
        own = KIND_KWARGS[self.kind]
        foreign = [f for f in ('expert_width',) if f not in own and getattr(self, f) is not None]
        if foreign:
            raise ValueError(f'{foreign[0]}={getattr(self, foreign[0])!r}: a {self.kind}moe spec takes no '
                             f'{foreign[0]}; it takes {list(own)}')
        for field in own:
            if getattr(self, field) is None:
                default = default_placement(self.kind) if field == 'placement' else MODEL_DEFAULTS[field]
                object.__setattr__(self, field, default)
        # the layer's own record checks the MoE fields, so the spec cannot drift from the model; it resolves
        # noisy_gating 'auto' and stores aux_weight as float (1 and 1.0 are one spec, in JSON too)
        config = MoEConfig(**{field: getattr(self, field) for field in MoEConfig.model_kwargs(self.kind)})
        for field in ('noisy_gating', 'aux_weight'):
            object.__setattr__(self, field, getattr(config, field))
        _check_placement(self.arch, self.kind, self.placement)

    # ----------------------------------------------------------------------------------------- naming

    @classmethod
    def from_name(cls, name: str, **fields: Any) -> 'ModelSpec':
        """The spec of a registered name (`timm_moe.models.ENTRYPOINTS`), with `fields` (spec fields; timm
        kwargs such as `num_classes` are refused here and belong to `create()`)."""
        entry = ENTRYPOINTS.get(name) if isinstance(name, str) else None
        if entry is None:
            raise ValueError(f'{name!r}: expected a timm-moe name such as resnet18_blockmoe_e4_k1, '
                             f'resnet18_convmoe_e4_k1 or resnet18_dense (timm_moe.model_names() lists them all)')
        for key in ('arch', 'experts', 'k', 'kind'):
            if key in fields:
                raise ValueError(f'{key}={fields[key]!r}: already given by the name {name!r}')
        _check_field_names(fields)
        try:
            return cls(arch=entry.arch, experts=entry.experts, k=entry.k, kind=entry.kind, **fields)
        except ValueError as e:  # say which name the bad value came with (one line still)
            raise ValueError(f'{name}: {e}') from None

    @classmethod
    def from_timm_kwargs(cls, name: str, kwargs: Mapping[str, Any]) -> Tuple['ModelSpec', Dict[str, Any]]:
        """Split `timm.create_model(name, **kwargs)`'s kwargs into the spec and the remaining timm kwargs.

        The inverse of `(spec.name, {**spec.kwargs, **timm_kwargs})`: everything that is not a spec field
        (num_classes, in_chans, ...) is returned.
        """
        kwargs = dict(kwargs)
        fixed = [key for key in _NAME_KWARGS if key in kwargs]
        if fixed:
            raise ValueError(f'{fixed}: fixed by the model name {name!r}, not kwargs')
        fields = {key: kwargs.pop(key) for key in list(kwargs) if key in MODEL_DEFAULTS or key == 'placement'}
        return cls.from_name(name, **fields), kwargs

    @classmethod
    def of_model(cls, model: nn.Module) -> Optional['ModelSpec']:
        """The spec of a model built from a registered name (`timm.create_model` or `create`), read from the
        model itself (its `pretrained_cfg` architecture and the settings it was built with): equal to the spec
        it was built from. None for another model."""
        name = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture')
        config = getattr(model, 'moe_config', None)
        if name not in ENTRYPOINTS or not isinstance(config, Mapping):
            return None
        return cls.from_timm_kwargs(name, {k: v for k, v in config.items() if k not in ('num_experts', 'k')})[0]

    @property
    def is_moe(self) -> bool:
        return self.experts > 0

    @property
    def entry(self) -> Entry:
        """What the registered name fixes: (arch, kind, experts, k)."""
        return Entry(self.arch, self.kind, self.experts, self.k)

    @property
    def name(self) -> str:
        """The registered timm name."""
        return _NAMES[self.entry]

    @property
    def kwargs(self) -> Dict[str, Any]:
        """The model kwargs that differ from their defaults: `timm.create_model(spec.name, **spec.kwargs)`."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == 'placement':
                default = default_placement(self.kind) if self.kind else None
            elif field.name == 'noisy_gating':
                # the stored bool is a default when it is what 'auto' gives for this aux loss
                default = MoEConfig(aux_loss=self.aux_loss).noisy_gating if self.is_moe else None
            elif field.name in MODEL_DEFAULTS:
                default = MODEL_DEFAULTS[field.name]
            else:
                continue
            if value is not None and value != default:
                out[field.name] = value
        return out

    def resolved(self) -> 'ModelSpec':
        """This spec: its `noisy_gating` is resolved on construction (kept for callers of the tri-state days)."""
        return self

    @property
    def effective_noisy_gating(self) -> Optional[bool]:
        """Whether training adds noise to the gate scores: the field itself; None if dense."""
        return self.noisy_gating

    @property
    def label(self) -> str:
        """A short, unique label for tables: 'resnet18-e8k2' (BlockMoE), 'resnet18-conv-e4k1' (ConvMoE), plus each
        field that is not the default."""
        if not self.is_moe:
            base = f'{self.arch}-dense'
        else:
            base = f'{self.arch}-{"conv-" if self.kind == "conv" else ""}e{self.experts}k{self.k}'
        parts = [base]
        kw = self.kwargs
        for kwarg in ('gate', 'aux_loss', 'expert_width'):
            if kwarg in kw:
                parts.append(kw[kwarg])
        if 'placement' in kw:
            named = kw['placement'] in PLACEMENTS
            parts.append(f'{kw["placement"]}-{self.kind}s' if named else f'@{kw["placement"]}')
        if 'noisy_gating' in kw:
            parts.append('noisy' if kw['noisy_gating'] else 'no-noise')
        if 'aux_weight' in kw:
            parts.append(f'auxw{kw["aux_weight"]:g}')
        if 'width' in kw:
            parts.append(f'w{kw["width"]}')
        if 'stem' in kw:
            parts.append(f'{kw["stem"]}-stem')
        return ' '.join(parts)

    def targets(self) -> List[str]:
        """The module paths of the MoE layers this spec builds (empty for a dense spec)."""
        if not self.is_moe:
            return []
        return placement_targets(_meta_base(self.arch), self.placement, self.kind)

    # ---------------------------------------------------------------------------------------- building

    def create(self, **timm_kwargs: Any) -> nn.Module:
        """`timm.create_model(self.name, **self.kwargs, **timm_kwargs)`.

        `timm_kwargs` are timm's (num_classes, in_chans, pretrained, device, ...); a kwarg the spec owns
        is refused, since it would build a model that is not this spec.
        """
        owned = sorted(k for k in timm_kwargs if k in MODEL_DEFAULTS or k in _NAME_KWARGS or k == 'placement')
        if owned:
            raise ValueError(f'{owned}: part of the spec, not a timm kwarg; use '
                             f'dataclasses.replace(spec, ...) to change them')
        return timm.create_model(self.name, **self.kwargs, **timm_kwargs)

    def dense(self) -> 'ModelSpec':
        """The dense baseline: same arch, stem and width, no experts."""
        return ModelSpec(arch=self.arch, width=self.width, stem=self.stem)

    # ------------------------------------------------------------------------------------------- JSON

    def to_dict(self) -> Dict[str, Any]:
        """Every field, JSON-able (None for a dense spec's MoE fields); `from_dict` reads it back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> 'ModelSpec':
        """A spec from `to_dict()`'s output (missing fields take their defaults; unknown keys are refused)."""
        if not isinstance(data, Mapping):
            raise ValueError(f'{data!r}: expected a mapping of ModelSpec fields')
        _check_field_names(data)
        if 'arch' not in data:
            raise ValueError(f'{dict(data)!r}: a ModelSpec needs arch, one of {list(ARCHS)}')
        return cls(**data)


def _check_field_names(fields: Mapping[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(ModelSpec)}
    for key in fields:
        if key not in names:
            raise ValueError(f'{key}={fields[key]!r}: not a ModelSpec field; expected one of {sorted(names)} '
                             f'(timm kwargs such as num_classes go to ModelSpec.create())')

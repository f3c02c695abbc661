"""`ModelSpec`: one typed, validated, JSON-able description of a timm-moe architecture.

A spec names the architecture family (arch, experts, k, and how the BlockMoE layers are built); timm's
own kwargs (`num_classes`, `in_chans`, `drop_rate`, `device`, ...) are not part of it and go to
`spec.create(**timm_kwargs)`, so that one spec describes the same network on any data set.

    spec = ModelSpec.from_name('resnet18_blockmoe_e8_k2', gate='conv_gap', placement='all')
    spec.name, spec.kwargs          # 'resnet18_blockmoe_e8_k2', {'gate': 'conv_gap', 'placement': 'all'}
    model = spec.create(num_classes=100)   # == timm.create_model(spec.name, **spec.kwargs, num_classes=100)
    spec.dense()                    # ModelSpec(arch='resnet18', experts=0, ...): its dense baseline

One name per concept: the BlockMoE placement is `placement`, as spec field and as model kwarg; the model's old
kwarg `moe_blocks` is a deprecated alias for one release, which `from_timm_kwargs` still reads (stored entries).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import timm
from torch import nn

from .layers import resolve_noisy_gating, validate_moe_args

__all__ = ['MODEL_DEFAULTS', 'MOE_KWARGS', 'ModelSpec']

# The defaults of the model kwargs that shape a timm-moe architecture, keyed by model kwarg name: the
# paper's best configuration. This is the one place they are written down for the spec; the model
# constructor (timm_moe/models/resnet_blockmoe.py) should read them from here too (a test checks that
# the two agree until it does). It cannot be imported here at module level for that reason.
MODEL_DEFAULTS: Dict[str, Any] = {
    'stem': 'cifar',
    'width': 64,
    'gate': 'gap_fc',
    'placement': 'last',
    'aux_loss': 'entropy',
    'aux_weight': 0.5,
    'noisy_gating': 'auto',
    'expert_width': 'full',
}

# deprecated model kwarg -> its spec field (read by from_timm_kwargs, refused by from_name)
_FIELD_NAMES = {'moe_blocks': 'placement'}
# fields that only a BlockMoE spec has: a dense spec holds None for each
_MOE_FIELDS = ('k', 'gate', 'aux_loss', 'placement', 'expert_width', 'noisy_gating', 'aux_weight')
_STR_FIELDS = ('arch', 'gate', 'aux_loss', 'placement', 'expert_width', 'stem')
# kwargs that a registered entrypoint fixes from its name; passing them to create() would contradict the name
_NAME_KWARGS = ('num_experts', 'k', 'block', 'layers')
# model kwargs that only a BlockMoE model takes (a dense baseline is built with all the others): the model
# kwargs of the MoE fields, and those its name fixes
MOE_KWARGS = tuple(f for f in _MOE_FIELDS if f != 'k') + tuple(_FIELD_NAMES) + ('num_experts', 'k')
_NAME = re.compile(r'^(?P<arch>[a-z0-9]+)_(?:dense|blockmoe_e(?P<experts>\d+)_k(?P<k>\d+))$')


def _default(field: str) -> Any:
    return MODEL_DEFAULTS[field]


def _model_choices() -> Dict[str, Any]:
    # imported here rather than at the top: the model module is to import MODEL_DEFAULTS from this one
    from .models.resnet_blockmoe import _ARCHS, EXPERT_WIDTHS, MODEL_GRID, PLACEMENTS, STEMS
    return dict(arch=tuple(_ARCHS), experts=MODEL_GRID['experts'], k=MODEL_GRID['k'], placement=PLACEMENTS,
                expert_width=EXPERT_WIDTHS, stem=STEMS)


def _check_int(name: str, value: Any, minimum: int) -> None:
    # bool is an int subclass, and True as a width or an expert count is a mistake, not intent
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f'{name}={value!r}: expected an integer >= {minimum}')


def _check_choice(name: str, value: Any, allowed: Tuple[Any, ...]) -> None:
    if value not in allowed:
        raise ValueError(f'{name}={value!r}: expected one of {list(allowed)}')


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A timm-moe architecture: the registered model and the kwargs that shape it.

    Fields left at None take `MODEL_DEFAULTS` for a BlockMoE spec (experts > 0); a dense spec
    (experts == 0) has no MoE fields and refuses any that is set. Every field is checked on
    construction (also by `dataclasses.replace`), with a one-line ValueError naming the value.

    Args:
        arch: 'resnet18' or 'resnet50'.
        experts: Experts per BlockMoE layer, one of the registered counts; 0 is the dense baseline.
        k: Experts per image (registered: 1, 2, 4; k <= experts). Required for a BlockMoE spec.
        gate: 'gap_fc' or 'conv_gap'.
        aux_loss: 'entropy', 'switch', 'kl', 'z_loss' or 'none'.
        placement: 'last' (the last layer4 block) or 'all' (every layer4 block); model kwarg `placement`.
        expert_width: 'full' or 'matched'.
        noisy_gating: 'auto', True or False; `effective_noisy_gating` is what the model will use.
        aux_weight: Weight of the aux loss, a finite number >= 0.
        width: Base channels (64 is the paper's ResNet).
        stem: 'cifar' or 'imagenet'.
    """

    arch: str
    experts: int = 0
    k: Optional[int] = None
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
        choices = _model_choices()
        _check_choice('arch', self.arch, choices['arch'])
        _check_int('experts', self.experts, 0)
        for field in ('width', 'stem'):
            if getattr(self, field) is None:
                object.__setattr__(self, field, _default(field))
        _check_int('width', self.width, 1)
        _check_choice('stem', self.stem, choices['stem'])
        if self.experts == 0:
            self._check_dense()
        else:
            self._fill_and_check_moe(choices)

    def _check_dense(self) -> None:
        given = [f for f in _MOE_FIELDS if getattr(self, f) is not None]
        if given:
            raise ValueError(f'a dense spec (experts=0) takes no MoE field, got {given}: '
                             f'set experts to one of {list(_model_choices()["experts"])} for a BlockMoE model')

    def _fill_and_check_moe(self, choices: Dict[str, Any]) -> None:
        if self.experts not in choices['experts']:
            raise ValueError(f'experts={self.experts!r}: expected 0 (dense) or one of {list(choices["experts"])}')
        if self.k is None:
            raise ValueError(f'k=None: a BlockMoE spec (experts={self.experts}) needs k, '
                             f'one of {[k for k in choices["k"] if k <= self.experts]}')
        _check_int('k', self.k, 1)
        if self.k not in choices['k'] or self.k > self.experts:
            raise ValueError(f'k={self.k!r} with experts={self.experts}: expected one of '
                             f'{[k for k in choices["k"] if k <= self.experts]}')
        for field in _MOE_FIELDS[1:]:
            if getattr(self, field) is None:
                object.__setattr__(self, field, _default(field))
        # gate, aux_loss and noisy_gating: the layer's own check, so the spec cannot drift from it
        validate_moe_args(self.experts, self.k, gate=self.gate, aux_loss=self.aux_loss,
                          noisy_gating=self.noisy_gating)
        _check_choice('placement', self.placement, choices['placement'])
        _check_choice('expert_width', self.expert_width, choices['expert_width'])
        w = self.aux_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f'aux_weight={w!r}: expected a finite number >= 0')
        object.__setattr__(self, 'aux_weight', float(w))  # 1 and 1.0 are one spec, in JSON too

    # ----------------------------------------------------------------------------------------- naming

    @classmethod
    def from_name(cls, name: str, **fields: Any) -> 'ModelSpec':
        """The spec of a registered name (`resnet{18,50}_blockmoe_e{E}_k{K}`, `resnet{18,50}_dense`).

        `fields` are spec fields (`placement`, not `moe_blocks`); timm kwargs such as `num_classes` are
        refused here and belong to `create()`.
        """
        m = _NAME.match(name) if isinstance(name, str) else None
        if m is None:
            raise ValueError(f'{name!r}: expected a timm-moe name, <arch>_dense or <arch>_blockmoe_e<E>_k<K> '
                             f'with arch in {list(_model_choices()["arch"])}')
        for key in ('arch', 'experts', 'k'):
            if key in fields:
                raise ValueError(f'{key}={fields[key]!r}: already given by the name {name!r}')
        _check_field_names(fields)
        experts = int(m['experts']) if m['experts'] else 0
        k = int(m['k']) if m['k'] else None
        try:
            return cls(arch=m['arch'], experts=experts, k=k, **fields)
        except ValueError as e:  # say which name the bad value came with (one line still)
            raise ValueError(f'{name}: {e}') from None

    @classmethod
    def from_timm_kwargs(cls, name: str, kwargs: Mapping[str, Any]) -> Tuple['ModelSpec', Dict[str, Any]]:
        """Split `timm.create_model(name, **kwargs)`'s kwargs into the spec and the remaining timm kwargs.

        The inverse of `(spec.name, {**spec.kwargs, **timm_kwargs})`: model kwargs take their spec
        names (the deprecated `moe_blocks` -> `placement`); everything else (num_classes, in_chans, ...) is returned.
        """
        kwargs = dict(kwargs)
        fixed = [key for key in _NAME_KWARGS if key in kwargs]
        if fixed:
            raise ValueError(f'{fixed}: fixed by the model name {name!r}, not kwargs')
        for old, new in _FIELD_NAMES.items():
            if old in kwargs and new in kwargs and kwargs[old] != kwargs[new]:
                raise ValueError(f'{new}={kwargs[new]!r} and {old}={kwargs[old]!r}: one setting under two names')
        fields = {_FIELD_NAMES.get(key, key): kwargs.pop(key) for key in list(kwargs)
                  if key in MODEL_DEFAULTS or key in _FIELD_NAMES}
        return cls.from_name(name, **fields), kwargs

    @property
    def is_moe(self) -> bool:
        return self.experts > 0

    @property
    def name(self) -> str:
        """The registered timm name."""
        if not self.is_moe:
            return f'{self.arch}_dense'
        return f'{self.arch}_blockmoe_e{self.experts}_k{self.k}'

    @property
    def kwargs(self) -> Dict[str, Any]:
        """The model kwargs that differ from `MODEL_DEFAULTS`: `timm.create_model(spec.name, **spec.kwargs)`."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in MODEL_DEFAULTS and value is not None and value != MODEL_DEFAULTS[field.name]:
                out[field.name] = value
        return out

    @property
    def effective_noisy_gating(self) -> Optional[bool]:
        """Whether training adds noise to the gate scores ('auto' resolved as the model does); None if dense."""
        if not self.is_moe:
            return None
        return resolve_noisy_gating(self.noisy_gating, self.aux_loss)

    @property
    def label(self) -> str:
        """A short, unique label for tables: 'resnet18-e8k2', plus each field that is not the default."""
        if not self.is_moe:
            base = f'{self.arch}-dense'
        else:
            base = f'{self.arch}-e{self.experts}k{self.k}'
        parts = [base]
        kw = self.kwargs
        for kwarg in ('gate', 'aux_loss', 'expert_width'):
            if kwarg in kw:
                parts.append(kw[kwarg])
        if 'placement' in kw:
            parts.append(f'{kw["placement"]}-blocks')
        if 'noisy_gating' in kw:
            parts.append('noisy' if kw['noisy_gating'] else 'no-noise')
        if 'aux_weight' in kw:
            parts.append(f'auxw{kw["aux_weight"]:g}')
        if 'width' in kw:
            parts.append(f'w{kw["width"]}')
        if 'stem' in kw:
            parts.append(f'{kw["stem"]}-stem')
        return ' '.join(parts)

    # ---------------------------------------------------------------------------------------- building

    def create(self, **timm_kwargs: Any) -> nn.Module:
        """`timm.create_model(self.name, **self.kwargs, **timm_kwargs)`.

        `timm_kwargs` are timm's (num_classes, in_chans, pretrained, device, ...); a kwarg the spec owns
        is refused, since it would build a model that is not this spec.
        """
        owned = sorted(k for k in timm_kwargs if k in MODEL_DEFAULTS or k in _NAME_KWARGS or k in _FIELD_NAMES)
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
            raise ValueError(f'{dict(data)!r}: a ModelSpec needs arch, one of {list(_model_choices()["arch"])}')
        return cls(**data)


def _check_field_names(fields: Mapping[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(ModelSpec)}
    for key in fields:
        if key in names:
            continue
        if key in _FIELD_NAMES:
            raise ValueError(f'{key}={fields[key]!r}: the spec calls it {_FIELD_NAMES[key]!r} '
                             f'(the model kwarg {key!r})')
        raise ValueError(f'{key}={fields[key]!r}: not a ModelSpec field; expected one of {sorted(names)} '
                         f'(timm kwargs such as num_classes go to ModelSpec.create())')

"""The table of timm-moe model names: what each registered name fixes, for every architecture family.

A family is one base architecture (`arch`) and the MoE kinds it takes. `register_family` names its dense baseline
`{arch}_dense` and its MoE models `{arch}_{kind}moe_e{E}_k{K}` for E, K of `GRID` (K <= E), records each in
`ENTRYPOINTS` and registers it with timm; its `create(name, pretrained, **kwargs)` builds them. Nothing here knows
an architecture: the ResNet families register themselves from `resnet_moe.py`, another family the same way
(docs/EXTENDING.md). A name is looked up in `ENTRYPOINTS`, never parsed.
"""
from __future__ import annotations

import sys
import warnings
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence

from torch import nn

from timm.models import generate_default_cfgs, is_model, register_model
# timm has no public way to take a name back; `unregister_family` empties its tables of the name instead
from timm.models import _registry as timm_registry

from ..layers import KINDS

__all__ = ['ARCHS', 'ENTRYPOINTS', 'Entry', 'FAMILIES', 'GRID', 'NAMES', 'family_entries', 'model_names',
           'register_family', 'reregister', 'unregister_family']

GRID = {'experts': (2, 4, 8, 16, 32), 'k': (1, 2, 3, 4)}


class Entry(NamedTuple):
    """What a registered name fixes: the base architecture, the expert kind (None: dense), E and k."""
    arch: str
    kind: Optional[str]
    experts: int
    k: Optional[int]


# arch -> its MoE kinds, in registration order
FAMILIES: Dict[str, tuple] = {}
# the registered architectures: a live view of FAMILIES' keys (`arch in ARCHS`, `list(ARCHS)`)
ARCHS = FAMILIES.keys()
# every registered name -> what it fixes, and back
ENTRYPOINTS: Dict[str, Entry] = {}
NAMES: Dict[Entry, str] = {}
# timm's `register_model` reads a name's pretrained cfgs from its entry point's module: the entry points below
# are this module's, so their cfgs live here (`resnet_moe.register_tags` adds the pretrained tags)
default_cfgs: Dict[str, Any] = {}

# (name, pretrained, **kwargs) -> the model
Create = Callable[..., nn.Module]


def family_entries(arch: str, kinds: Sequence[str]) -> Dict[str, Entry]:
    """The names of `arch`'s family (its dense baseline first, then each kind's grid) and what each fixes."""
    out = {f'{arch}_dense': Entry(arch, None, 0, None)}
    for kind in kinds:
        for e in GRID['experts']:
            for k in GRID['k']:
                if k <= e:
                    out[f'{arch}_{kind}moe_e{e}_k{k}'] = Entry(arch, kind, e, k)
    return out


def register_family(arch: str, kinds: Sequence[str], create: Create,
                    cfg: Optional[Mapping[str, Any]] = None) -> List[str]:
    """Register `arch`'s family with timm: `{arch}_dense` and `{arch}_{kind}moe_e{E}_k{K}` for each kind.

    Args:
        arch: The base architecture's name, e.g. 'resnet18'.
        kinds: Its MoE kinds, each one of `timm_moe.layers.KINDS` (empty: the dense baseline only).
        create: `create(name, pretrained=False, **kwargs)` builds the model of a registered name
            (`ENTRYPOINTS[name]` says what the name fixes); every name's timm entry point calls it.
        cfg: The pretrained cfg of every name (timm's keys: input_size, mean, std, num_classes, ...).

    Returns:
        The registered names, in order.
    """
    if not isinstance(arch, str) or not arch.isidentifier():
        raise ValueError(f'arch={arch!r}: expected a name such as "resnet18" (letters, digits, underscores)')
    if arch in FAMILIES:
        raise ValueError(f'arch {arch!r} is registered already (archs: {list(ARCHS)})')
    kinds = tuple(kinds)
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        raise ValueError(f'kind {unknown[0]!r} of {arch!r}: expected kinds of {list(KINDS)} '
                         '(timm_moe.layers.register_kind adds one)')
    entries = family_entries(arch, kinds)
    taken = [name for name in entries if is_model(name)]
    if taken:
        raise ValueError(f'arch {arch!r}: timm has a model called {taken[0]!r} already; pick another arch name')
    default_cfgs.update(generate_default_cfgs({name: dict(cfg or {}) for name in entries}))
    FAMILIES[arch] = kinds
    exported = list(__all__)
    for name, entry in entries.items():
        ENTRYPOINTS[name] = entry
        NAMES[entry] = name
        fn = _entrypoint(name, entry, create)
        setattr(sys.modules[__name__], name, fn)  # where timm (and pickle) look an entry point up
        register_model(fn)
    __all__[:] = exported  # timm's register_model appends each name to the module's __all__: not ours to export
    return list(entries)


def reregister(names: Sequence[str]) -> None:
    """Register `names` with timm again, after their `default_cfgs` changed (new pretrained tags)."""
    exported = list(__all__)
    with warnings.catch_warnings():  # re-registering is the point here; timm warns about any overwrite
        warnings.simplefilter('ignore')
        for name in names:
            register_model(getattr(sys.modules[__name__], name))
    # timm's register_model appends the name to the module's __all__, and older timm versions do so even when it
    # is there already: every call grew it by the re-registered names
    __all__[:] = exported


def unregister_family(arch: str) -> List[str]:
    """Take `arch`'s family back, from this table and from timm; returns the names it removed."""
    if arch not in FAMILIES:
        raise ValueError(f'arch {arch!r} is not registered (archs: {list(ARCHS)})')
    names = [name for name, entry in ENTRYPOINTS.items() if entry.arch == arch]
    for name in names:
        NAMES.pop(ENTRYPOINTS.pop(name), None)
        default_cfgs.pop(name, None)
        delattr(sys.modules[__name__], name)
        _forget_in_timm(name)
    del FAMILIES[arch]
    return names


def _forget_in_timm(name: str) -> None:
    # the tables timm's register_model fills (timm 1.0.9 to 1.0.31 name them alike); any it lacks it never filled
    module = getattr(timm_registry, '_model_to_module', {}).pop(name, None)
    models = getattr(timm_registry, '_module_to_models', {}).get(module)
    if models is not None:
        models.discard(name)
        if not models:
            del timm_registry._module_to_models[module]
    getattr(timm_registry, '_model_entrypoints', {}).pop(name, None)
    getattr(timm_registry, '_model_default_cfgs', {}).pop(name, None)
    for tagged in getattr(timm_registry, '_model_with_tags', {}).pop(name, []) + [name]:
        getattr(timm_registry, '_model_pretrained_cfgs', {}).pop(tagged, None)
        getattr(timm_registry, '_model_has_pretrained', set()).discard(tagged)


def _entrypoint(name: str, entry: Entry, create: Create) -> Callable[..., nn.Module]:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return create(name, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    if entry.kind is None:
        entrypoint.__doc__ = f'Dense {entry.arch}: the baseline of its MoE variants, built the same way.'
    else:
        entrypoint.__doc__ = (f'{entry.arch} with MoE layers of kind {entry.kind!r}: {entry.experts} experts, '
                              f'top-{entry.k} routing.')
    return entrypoint


def model_names(arch: Optional[str] = None, kind: Optional[str] = 'any') -> List[str]:
    """Registered names of one family: `arch` (None: every arch) and `kind` ('block', 'conv', None for the
    dense baselines, 'any' for all)."""
    return [name for name, e in ENTRYPOINTS.items()
            if (arch is None or e.arch == arch) and (kind == 'any' or e.kind == kind)]

"""Attacks from their names: `attack_class`, `build_attack` and `is_white_box`. The names, settings and presets
are plain data in `names.py`, which a parser reads without torch; each name's class is imported here, on first
use."""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Type

from bench.attacks.base import Attack
from bench.attacks.names import ATTACK_SETTINGS, CUSTOM_PREFIX, attack_choices
from bench.attacks.reference import AutoAttack
from bench.core.errors import UserError

Builder = Callable[[float, str, int], Attack]


def attack_class(name: str) -> Type[Any]:
    """The class of the attack called `name` (of `ATTACK_SETTINGS`, or AutoAttack for 'autoattack.PART+PART')."""
    if name.startswith(CUSTOM_PREFIX):
        return AutoAttack
    if name not in ATTACK_SETTINGS:
        raise UserError(f'unknown attack {name!r}; choose from {attack_choices()}')
    implementation = ATTACK_SETTINGS[name][0]
    if isinstance(implementation, str):
        module, _, cls = implementation.partition(':')
        return getattr(importlib.import_module(module), cls)
    return implementation


def _builder(name: str) -> Builder:
    kwargs = ATTACK_SETTINGS[name][1]
    return lambda eps, norm, seed: attack_class(name)(eps, norm, seed=seed, **kwargs)


class _Builders(dict):
    """name -> builder, for every name of `ATTACK_SETTINGS` (also one registered later), made on first lookup.
    A builder set here (a test's stand-in) wins."""

    def __missing__(self, name: str) -> Builder:
        if name not in ATTACK_SETTINGS:
            raise KeyError(name)
        return _builder(name)

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, name) or name in ATTACK_SETTINGS


ATTACKS: Dict[str, Builder] = _Builders()


def build_attack(name: str, eps: float, norm: str = 'Linf', seed: int = 0) -> Attack:
    """The attack called `name` (see `ATTACK_SETTINGS`, or 'autoattack.PART+PART') at radius eps.

    Args:
        name: Attack name.
        eps: Radius, [0, 1] pixel units.
        norm: 'Linf' or 'L2'.
        seed: Seed of its randomness.
    """
    if name.startswith(CUSTOM_PREFIX):
        return AutoAttack(eps, norm, version='custom', parts=tuple(name[len(CUSTOM_PREFIX):].split('+')), seed=seed)
    if name not in ATTACKS:
        raise UserError(f'unknown attack {name!r}; choose from {attack_choices()}')
    return ATTACKS[name](eps, norm, seed)


def is_white_box(name: str) -> bool:
    """Whether the attack called `name` is purely gradient-based: its class's `white_box` (AutoAttack is not one:
    its last part is the black-box Square). False for a name that is no attack (a result key such as 'clean')."""
    return name in ATTACK_SETTINGS and attack_class(name).white_box

"""Attacks in [0, 1] pixel space: one PGD core (pgd.py) that evaluation and training both run, the reference
AutoAttack family through `pyautoattack` (reference.py), the shared protocol and helpers (base.py), the names,
settings and presets as plain data (names.py) and the attacks built from them (factory.py).

The package re-exports the public names so callers write `bench.attacks.PGD`. Only `names.py` is imported
with the package: the others import torch and pyautoattack, and load when one of their names is first used,
so that a parser that lists the attack names starts without them.
"""
import importlib
from typing import Any

from bench.attacks.names import (ATTACK_NAMES, ATTACK_SETTINGS, AUTOATTACK_PARTS, CUSTOM_PREFIX, NORMS, PRESETS,
                                 attack_choices, register_attack, resolve_attacks)
from bench.core.values import parse_eps

# public name -> the module that defines it, imported on first use (PEP 562)
_LAZY = {
    **dict.fromkeys(('Attack', 'accuracy', 'num_classes_of', 'perturbation_norm', 'predict', 'robust_under_all'),
                    'bench.attacks.base'),
    **dict.fromkeys(('ATTACKS', 'attack_class', 'build_attack', 'is_white_box'), 'bench.attacks.factory'),
    **dict.fromkeys(('PGD', 'ascend', 'ascent_step', 'input_grad', 'project'), 'bench.attacks.pgd'),
    **dict.fromkeys(('APGD', 'APGD_SCHEDULE', 'REFERENCE_LOGGER', 'REFERENCE_WARNINGS', 'APGDTargeted', 'AutoAttack',
                     'FABTargeted', 'Square', 'reference_warning_flag', 'reference_warnings'),
                    'bench.attacks.reference'),
}

__all__ = ['ATTACK_NAMES', 'ATTACK_SETTINGS', 'AUTOATTACK_PARTS', 'CUSTOM_PREFIX', 'NORMS', 'PRESETS',
           'attack_choices', 'register_attack', 'resolve_attacks', 'parse_eps', *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))

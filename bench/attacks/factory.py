"""Attacks from their names: `ATTACKS` (name -> builder) and `build_attack`. The names, settings and presets are
plain data in `names.py`, which a parser reads without torch."""
from __future__ import annotations

from typing import Any, Callable, Dict

from bench.attacks.base import Attack
from bench.attacks.names import (ATTACK_SETTINGS, CUSTOM_PREFIX, PRESETS, WHITE_BOX, attack_choices,  # noqa: F401
                                 is_white_box, resolve_attacks)
from bench.attacks.pgd import PGD
from bench.attacks.reference import APGD, APGDTargeted, AutoAttack, FABTargeted, Square
from bench.core.errors import UserError

Builder = Callable[[float, str, int], Attack]

# the implementation each name of `ATTACK_SETTINGS` runs
IMPLEMENTATIONS: Dict[str, Callable[..., Attack]] = {
    'pgd': PGD, 'apgd': APGD, 'apgd-t': APGDTargeted, 'fab-t': FABTargeted, 'square': Square, 'autoattack': AutoAttack,
}


def _builder(implementation: str, kwargs: Dict[str, Any]) -> Builder:
    cls = IMPLEMENTATIONS[implementation]
    return lambda eps, norm, seed: cls(eps, norm, seed=seed, **kwargs)


ATTACKS: Dict[str, Builder] = {name: _builder(impl, kw) for name, (impl, kw) in ATTACK_SETTINGS.items()}


def build_attack(name: str, eps: float, norm: str = 'Linf', seed: int = 0) -> Attack:
    """The attack called `name` (see `ATTACKS`, or 'autoattack.PART+PART') at radius eps.

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

"""Attack names and presets: `ATTACKS`, `PRESETS`, `resolve_attacks`, `build_attack`."""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple, Union

from bench.attacks.base import Attack
from bench.attacks.pgd import PGD
from bench.attacks.reference import (AUTOATTACK_PARTS, APGD, CUSTOM_PREFIX, APGDTargeted, AutoAttack, FABTargeted,
                                     Square)
from bench.core.errors import UserError



Builder = Callable[[float, str, int], Attack]

ATTACKS: Dict[str, Builder] = {
    # the paper's PGD-20: step 2/255 at 8/255 (eps / 4), no random start, one restart
    'pgd20': lambda eps, norm, seed: PGD(eps, norm, steps=20, seed=seed),
    'pgd10': lambda eps, norm, seed: PGD(eps, norm, steps=10, seed=seed),
    'apgd-ce': lambda eps, norm, seed: APGD(eps, norm, steps=100, seed=seed),
    'apgd-ce20': lambda eps, norm, seed: APGD(eps, norm, steps=20, seed=seed),
    'apgd-ce10': lambda eps, norm, seed: APGD(eps, norm, steps=10, seed=seed),
    'apgd-dlr': lambda eps, norm, seed: APGD(eps, norm, steps=100, loss='dlr', seed=seed),
    'apgd-t': lambda eps, norm, seed: APGDTargeted(eps, norm, seed=seed),
    # APGD-T against the 3 most likely other classes only: a third of the cost, for studies that run it on
    # every configuration (AutoAttack's own APGD-T tries 9)
    'apgd-t3': lambda eps, norm, seed: APGDTargeted(eps, norm, n_target_classes=3, seed=seed),
    'fab-t': lambda eps, norm, seed: FABTargeted(eps, norm, seed=seed),
    'square': lambda eps, norm, seed: Square(eps, norm, seed=seed),
    'autoattack': lambda eps, norm, seed: AutoAttack(eps, norm, seed=seed),
}
PRESETS: Dict[str, Tuple[str, ...]] = {
    'paper': ('pgd20', 'apgd-ce20'),  # the reference's evaluation: PGD-20 and a 20-step APGD
    'standard': ('autoattack',),  # the headline number, comparable with RobustBench
    'quick': ('pgd10', 'apgd-ce10'),  # a CPU smoke test
}
# purely gradient-based attacks (AutoAttack is not one: it ends with Square)
WHITE_BOX = ('pgd20', 'pgd10', 'apgd-ce', 'apgd-ce20', 'apgd-ce10', 'apgd-dlr', 'apgd-t', 'apgd-t3', 'fab-t')


def attack_choices() -> str:
    return (f'{", ".join(ATTACKS)}, {CUSTOM_PREFIX}PART+PART (PART in {", ".join(AUTOATTACK_PARTS)}) '
            f'or a preset ({", ".join(PRESETS)})')


def resolve_attacks(spec: Union[str, Sequence[str]]) -> List[str]:
    """Expand a comma list of attack names and presets into attack names, in order, without repeats.

    Args:
        spec: 'pgd20,apgd-ce', 'quick', ['paper', 'square'], ...
    """
    items = [s.strip() for s in (spec.split(',') if isinstance(spec, str) else spec)]
    if not any(items):
        raise UserError(f'--attacks {spec!r} is empty; choose from {attack_choices()}')
    names: List[str] = []
    for item in items:
        if not item:
            continue
        expanded = PRESETS.get(item, (item,))
        for name in expanded:
            if name not in ATTACKS and not name.startswith(CUSTOM_PREFIX):
                raise UserError(f'unknown attack {name!r}; choose from {attack_choices()}')
            if name.startswith(CUSTOM_PREFIX):
                AutoAttack(version='custom', parts=tuple(name[len(CUSTOM_PREFIX):].split('+')))  # validates
            if name not in names:
                names.append(name)
    return names


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


def is_white_box(name: str) -> bool:
    """Whether the attack is purely gradient-based (AutoAttack is not: its last part is the black-box Square)."""
    return name in WHITE_BOX

"""Attack names, settings and presets as plain data, without torch: what `--attacks`, `--norm` and the grid's
and eval's checks need, so that a parser and a mistyped name answer before torch is imported.

`factory.py` turns these names into attack objects; this module is the one place the names are defined.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple, Union

from bench.core.errors import UserError

NORMS = ('Linf', 'L2')
# AutoAttack's own sub-attack names, as `version='custom'` takes them
AUTOATTACK_PARTS = ('apgd-ce', 'apgd-dlr', 'apgd-t', 'fab', 'fab-t', 'square')
# 'autoattack.apgd-ce+square' = AutoAttack version='custom'; a '.' keeps the name a valid registry key
CUSTOM_PREFIX = 'autoattack.'

# name -> (implementation, its keyword arguments besides eps, norm and seed); factory.py maps the implementation
# to its class
ATTACK_SETTINGS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    # the paper's PGD-20: step 2/255 at 8/255 (eps / 4), no random start, one restart
    'pgd20': ('pgd', dict(steps=20)),
    'pgd10': ('pgd', dict(steps=10)),
    'apgd-ce': ('apgd', dict(steps=100)),
    'apgd-ce20': ('apgd', dict(steps=20)),
    'apgd-ce10': ('apgd', dict(steps=10)),
    'apgd-dlr': ('apgd', dict(steps=100, loss='dlr')),
    'apgd-t': ('apgd-t', {}),
    # APGD-T against the 3 most likely other classes only: a third of the cost, for studies that run it on
    # every configuration (AutoAttack's own APGD-T tries 9)
    'apgd-t3': ('apgd-t', dict(n_target_classes=3)),
    'fab-t': ('fab-t', {}),
    'square': ('square', {}),
    'autoattack': ('autoattack', {}),
}
ATTACK_NAMES = tuple(ATTACK_SETTINGS)
PRESETS: Dict[str, Tuple[str, ...]] = {
    'paper': ('pgd20', 'apgd-ce20'),  # the reference's evaluation: PGD-20 and a 20-step APGD
    'standard': ('autoattack',),  # the headline number, comparable with RobustBench
    'quick': ('pgd10', 'apgd-ce10'),  # a CPU smoke test
}
# purely gradient-based attacks (AutoAttack is not one: it ends with Square)
WHITE_BOX = ('pgd20', 'pgd10', 'apgd-ce', 'apgd-ce20', 'apgd-ce10', 'apgd-dlr', 'apgd-t', 'apgd-t3', 'fab-t')


def attack_choices() -> str:
    return (f'{", ".join(ATTACK_NAMES)}, {CUSTOM_PREFIX}PART+PART (PART in {", ".join(AUTOATTACK_PARTS)}) '
            f'or a preset ({", ".join(PRESETS)})')


def check_custom_parts(parts: Sequence[str], version: str = 'custom') -> Tuple[str, ...]:
    """AutoAttack's parts, checked: `version` 'standard' or 'custom', and for 'custom' one or more known parts."""
    if version not in ('standard', 'custom'):
        raise UserError(f'AutoAttack version {version!r}: choose standard or custom')
    parts = tuple(parts)
    bad = [p for p in parts if p not in AUTOATTACK_PARTS]
    if bad or (version == 'custom' and not parts):
        raise UserError(f'AutoAttack custom parts {"+".join(parts) or "(none)"!r}: choose one or more of '
                        f'{", ".join(AUTOATTACK_PARTS)} joined by +')
    return parts


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
        for name in PRESETS.get(item, (item,)):
            if name.startswith(CUSTOM_PREFIX):
                check_custom_parts(name[len(CUSTOM_PREFIX):].split('+'))
            elif name not in ATTACK_SETTINGS:
                raise UserError(f'unknown attack {name!r}; choose from {attack_choices()}')
            if name not in names:
                names.append(name)
    return names


def is_white_box(name: str) -> bool:
    """Whether the attack is purely gradient-based (AutoAttack is not: its last part is the black-box Square)."""
    return name in WHITE_BOX

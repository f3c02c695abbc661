"""Attack names, settings and presets as plain data, without torch: what `--attacks`, `--norm` and the grid's
and eval's checks need, so that a parser and a mistyped name answer before torch is imported.

`factory.py` turns these names into attack objects; this module is the one place the names are defined. An attack
is a class (its settings in `__init__`, `__call__(model, x, y) -> x_adv`, a `white_box` class attribute:
`bench.attacks.base.Attack`) and one line of `ATTACK_SETTINGS`, or one `register_attack` call
(docs/EXTENDING.md).
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple, Union

from bench.core.errors import UserError

NORMS = ('Linf', 'L2')
# AutoAttack's own sub-attack names, as `version='custom'` takes them
AUTOATTACK_PARTS = ('apgd-ce', 'apgd-dlr', 'apgd-t', 'fab', 'fab-t', 'square')
# 'autoattack.apgd-ce+square' = AutoAttack version='custom'; a '.' keeps the name a valid registry key
CUSTOM_PREFIX = 'autoattack.'

_PGD = 'bench.attacks.pgd:PGD'
_REFERENCE = 'bench.attacks.reference:'

# name -> (its class, as 'module:Class' so that this module imports no torch, or the class itself; the class's
# keyword arguments besides eps, norm and seed). `factory.attack_class` imports the class on first use.
ATTACK_SETTINGS: Dict[str, Tuple[Any, Dict[str, Any]]] = {
    # the paper's PGD-20: step 2/255 at 8/255 (eps / 4), no random start, one restart
    'pgd20': (_PGD, dict(steps=20)),
    'pgd10': (_PGD, dict(steps=10)),
    'apgd-ce': (_REFERENCE + 'APGD', dict(steps=100)),
    'apgd-ce20': (_REFERENCE + 'APGD', dict(steps=20)),
    'apgd-ce10': (_REFERENCE + 'APGD', dict(steps=10)),
    'apgd-dlr': (_REFERENCE + 'APGD', dict(steps=100, loss='dlr')),
    'apgd-t': (_REFERENCE + 'APGDTargeted', {}),
    # APGD-T against the 3 most likely other classes only: a third of the cost, for studies that run it on
    # every configuration (AutoAttack's own APGD-T tries 9)
    'apgd-t3': (_REFERENCE + 'APGDTargeted', dict(n_target_classes=3)),
    'fab-t': (_REFERENCE + 'FABTargeted', {}),
    'square': (_REFERENCE + 'Square', {}),
    'autoattack': (_REFERENCE + 'AutoAttack', {}),
}
# the names at import; `ATTACK_SETTINGS` also holds those registered later
ATTACK_NAMES = tuple(ATTACK_SETTINGS)
PRESETS: Dict[str, Tuple[str, ...]] = {
    'paper': ('pgd20', 'apgd-ce20'),  # the reference's evaluation: PGD-20 and a 20-step APGD
    'standard': ('autoattack',),  # the headline number, comparable with RobustBench
    'quick': ('pgd10', 'apgd-ce10'),  # a CPU smoke test
}


def register_attack(name: str, implementation: Any, **kwargs: Any) -> None:
    """Add the attack `name`: `implementation` (an attack class, or 'module:Class') built with `kwargs` besides
    eps, norm and seed. A registered name, a preset's and AutoAttack's custom prefix are refused."""
    if not isinstance(name, str) or not name or name != name.strip() or ',' in name or name.startswith(CUSTOM_PREFIX):
        raise ValueError(f'attack name {name!r}: expected a name without commas or spaces around it, not '
                         f'starting with {CUSTOM_PREFIX!r}')
    if name in ATTACK_SETTINGS or name in PRESETS:
        raise ValueError(f'attack name {name!r} is taken (attacks: {", ".join(ATTACK_SETTINGS)}; presets: '
                         f'{", ".join(PRESETS)})')
    if not isinstance(implementation, type) and not (isinstance(implementation, str) and ':' in implementation):
        raise ValueError(f'attack {name!r}: implementation={implementation!r}: expected a class or "module:Class"')
    ATTACK_SETTINGS[name] = (implementation, dict(kwargs))


def attack_choices() -> str:
    return (f'{", ".join(ATTACK_SETTINGS)}, {CUSTOM_PREFIX}PART+PART (PART in {", ".join(AUTOATTACK_PARTS)}) '
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

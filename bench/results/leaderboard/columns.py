"""Attack configurations and the leaderboard's columns: one column per configuration, never per key.

An entry's accuracy keys are mapped to configurations from the settings it stores (`eval_settings`) or, for
schema-1 entries, from what the key meant (`KEY_SETTINGS`); `columns_of` gives the columns of a set of entries.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

from bench.results.import_paper import REPORTED_ATTACKS

DASH = '—'  # a value that was not measured or not reported
DAGGER = '†'  # a number reported elsewhere (paper, RobustBench), not measured by this harness
FILENAME = 'LEADERBOARD.md'
AUTO = 'auto'
CLEAN = 'clean'
DEFAULT_SORT = AUTO
EXACT_N = 10000  # accuracies from fewer test points than this carry their 95% interval
WORST_CASE = 'worst_case'  # the robust_acc key of the per-sample worst case over an entry's attacks

# ------------------------------------------------------------------------------------ attack configurations

# What each accuracy key meant for entries that do not store their attack settings (schema 1): the
# definitions of bench.attacks when those entries were written. Reported numbers (paper, RobustBench) store
# theirs since schema 2; for older copies of them, bench.results.import_paper's tables apply (see `legacy_settings`).
KEY_SETTINGS: Dict[str, Dict[str, Any]] = {
    'pgd20': dict(attack='PGD', steps=20, restarts=1, random_start=False, loss='ce', step_size=None),
    'pgd10': dict(attack='PGD', steps=10, restarts=1, random_start=False, loss='ce', step_size=None),
    'apgd-ce': dict(attack='APGD', steps=100, restarts=1, loss='ce'),
    'apgd-ce20': dict(attack='APGD', steps=20, restarts=1, loss='ce'),
    'apgd-ce10': dict(attack='APGD', steps=10, restarts=1, loss='ce'),
    'apgd-dlr': dict(attack='APGD', steps=100, restarts=1, loss='dlr'),
    'apgd-t': dict(attack='APGDTargeted', steps=100, restarts=1, n_target_classes=9),
    'fab-t': dict(attack='FABTargeted', steps=100, restarts=1, n_target_classes=9),
    'square': dict(attack='Square', n_queries=5000, restarts=1),
    'autoattack': dict(attack='AutoAttack', version='standard'),
}
AUTOATTACK_STANDARD = ('apgd-ce', 'apgd-t', 'fab-t', 'square')
CUSTOM_AUTOATTACK = 'autoattack.'  # 'autoattack.apgd-ce+square': AutoAttack's custom version with those parts

# The settings that make two runs of one attack the same configuration, with the value a setting has when an
# entry does not name it. Everything else an entry stores (seed, batch size, descriptive text) is kept in the
# entry but does not split a column: a different seed is another draw of the same configuration.
FAMILY_SETTINGS: Dict[str, Dict[str, Any]] = {
    'PGD': dict(steps=None, restarts=1, random_start=False, loss='ce', step_size=None, final_iterate=False),
    'APGD': dict(steps=100, restarts=1, loss='ce', rho=0.75),
    'APGDTargeted': dict(steps=100, restarts=1, n_target_classes=9),
    'FABTargeted': dict(steps=100, restarts=1, n_target_classes=9),
    'Square': dict(n_queries=5000, restarts=1, p_init=0.8),
    'AutoAttack': dict(version='standard'),
}
DEFAULT_IMPLEMENTATION = {'PGD': 'timm-moe'}  # every other attack runs from pyautoattack
# the same code under two names: pyautoattack is fra31/auto-attack ('autoattack') packaged for PyPI
IMPLEMENTATION_ALIASES = {'autoattack': 'pyautoattack'}
IMPLEMENTATION_LABELS = {'robust-sparse-moes': 'paper code'}
# settings of attacks this module does not know that are randomness or bookkeeping, not configuration
NOISE = frozenset({'seed', 'eps', 'norm', 'batch_size', 'implementation'})
# column order within a table, strongest families first
FAMILY_ORDER = ('AutoAttack', 'APGDTargeted', 'FABTargeted', 'Square', 'APGD', 'PGD')


def _library(implementation: Any, family: str) -> str:
    """'pyautoattack 0.2.0' -> 'pyautoattack': the code that ran, without its version."""
    if not implementation:
        return DEFAULT_IMPLEMENTATION.get(family, 'pyautoattack')
    name = re.sub(r'\s+v?\d[\w.+-]*$', '', str(implementation).strip())
    return IMPLEMENTATION_ALIASES.get(name, name)


def _relative_step(step: Any, eps: float, ours: bool) -> Any:
    """PGD's step size as a multiple of eps (None: our default eps/4), so 2/255 at 8/255 equals 'eps/4'."""
    if step is None:
        return 0.25 if ours else None
    if isinstance(step, (int, float)) and not isinstance(step, bool) and eps > 0:
        return round(step / eps, 4)
    return step


def _autoattack_parts(settings: Mapping[str, Any]) -> Tuple[str, ...]:
    """The AutoAttack parts that ran: recorded after the run, else requested, else the standard four."""
    for key in ('parts_run', 'ran'):
        if isinstance(settings.get(key), (list, tuple)) and settings[key]:
            return tuple(settings[key])
    parts = settings.get('parts')
    if settings.get('version') == 'custom' and isinstance(parts, (list, tuple)) and parts:
        return tuple(parts)
    if isinstance(settings.get('parts_requested'), (list, tuple)) and settings['parts_requested']:
        return tuple(settings['parts_requested'])
    return AUTOATTACK_STANDARD


def attack_config(settings: Mapping[str, Any], eps: float) -> Dict[str, Any]:
    """The configuration that identifies a column, from an attack's stored settings.

    Args:
        settings: the attack's settings (an entry's `eval_settings['attacks'][key]`, or `KEY_SETTINGS`).
        eps: the entry's radius (step sizes are compared relative to it).
    """
    family = str(settings.get('attack') or '?')
    library = _library(settings.get('implementation'), family)
    config: Dict[str, Any] = {'attack': family, 'implementation': library}
    if family in FAMILY_SETTINGS:
        # a setting an entry leaves out has our code's default when our code ran it; for other code
        # (the paper's, torchattacks) it is unknown, never assumed to be ours
        ours = library == _library(None, family)
        for name, default in FAMILY_SETTINGS[family].items():
            config[name] = settings.get(name, default if ours else None)
        if family == 'PGD':
            config['step_size'] = _relative_step(config['step_size'], eps, ours)
        if family == 'AutoAttack':
            config['parts'] = list(_autoattack_parts(settings))
    else:  # an attack this module does not know: every setting counts, except randomness and the radius
        config.update({k: v for k, v in settings.items() if k not in NOISE and k != 'attack'})
    return json.loads(json.dumps(config, default=str))


def legacy_settings(key: str, source: str) -> Dict[str, Any]:
    """Settings of an accuracy key for an entry that stores none (see `KEY_SETTINGS`)."""
    if source != 'measured':
        if key in REPORTED_ATTACKS.get(source, {}):
            return dict(REPORTED_ATTACKS[source][key])
    if key in KEY_SETTINGS:
        return dict(KEY_SETTINGS[key])
    if key.startswith(CUSTOM_AUTOATTACK):
        return dict(attack='AutoAttack', version='custom', parts=key[len(CUSTOM_AUTOATTACK):].split('+'))
    return dict(attack=key)  # unknown: a column of its own, named by the key


def entry_attack_settings(entry: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """{robust_acc key: settings} of an entry, stored or (schema 1) read from the key; the worst case excluded."""
    stored = (entry.get('eval_settings') or {}).get('attacks') or {}
    return {k: dict(stored[k]) if k in stored else legacy_settings(k, entry['source'])
            for k in (entry.get('robust_acc') or {}) if k != WORST_CASE}


def _canon(config: Mapping[str, Any]) -> str:
    return json.dumps(config, sort_keys=True)


def config_label(config: Mapping[str, Any], member_labels: Sequence[str] = ()) -> str:
    """A short name of a configuration: 'PGD-20', 'APGD-CE-20', 'AutoAttack', 'APGD-20 [torchattacks]'."""
    family = config['attack']
    if family == 'WorstCase':
        return 'worst of ' + ' + '.join(member_labels)
    steps = config.get('steps')
    if family == 'PGD':
        label = f'PGD-{steps}'
        if config.get('random_start'):
            label += '-RS'
        if config.get('loss') not in ('ce', None):
            label += f"-{str(config['loss']).upper()}"
        if config.get('step_size') not in (0.25, None):
            label += f" step {config['step_size']}·eps"
        if config.get('final_iterate'):
            label += ' final-iterate'
    elif family == 'APGD':
        loss = config.get('loss')
        label = f'APGD-{str(loss).upper()}-{steps}' if loss else f'APGD-{steps}'
    elif family in ('APGDTargeted', 'FABTargeted'):
        label = f"{'APGD' if family == 'APGDTargeted' else 'FAB'}-T-{steps}"
        targets = config.get('n_target_classes')
        if targets not in (9, None):  # AutoAttack's 9 need no mention; fewer make a weaker attack
            label += f' ({targets} targets)'
    elif family == 'Square':
        label = f"Square-{config.get('n_queries')}"
    elif family == 'AutoAttack':
        parts = tuple(config.get('parts') or ())
        label = 'AutoAttack' if parts == AUTOATTACK_STANDARD else f"AutoAttack({'+'.join(parts)})"
    else:
        label = family + (f'-{steps}' if steps else '')
    if (config.get('restarts') or 1) > 1:
        label += f"×{config['restarts']}"
    impl = config.get('implementation')
    if impl and impl != _library(None, family):
        label += f' [{IMPLEMENTATION_LABELS.get(impl, impl)}]'
    return label


def describe(config: Mapping[str, Any]) -> str:
    """Every setting of a configuration, for the legend under a table ('not stated': the source does not say)."""
    if config['attack'] == 'WorstCase':
        return 'per test point, robust only if it survived every attack of the entry'

    def text(k: str, v: Any) -> str:
        if v is None:
            return 'not stated'
        if isinstance(v, bool):
            return 'yes' if v else 'no'
        if isinstance(v, list):
            return '+'.join(map(str, v))
        if k == 'step_size' and isinstance(v, (int, float)):
            return f'{v:g}·eps'
        return str(v)
    return f"{config['attack']}: " + ', '.join(f'{k.replace("_", " ")} {text(k, v)}'
                                               for k, v in config.items() if k != 'attack')


@dataclass(frozen=True)
class Column:
    ident: str  # canonical JSON of the configuration
    label: str
    config: Dict[str, Any] = field(compare=False, hash=False)
    inferred: Tuple[str, ...] = ()  # accuracy keys whose settings were read from the key (schema 1), not stored

    @property
    def order(self) -> tuple:
        family = self.config['attack']
        rank = FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER) + (family == 'WorstCase')
        return (rank, -(self.config.get('steps') or 0), self.label, self.ident)


def entry_columns(entry: Mapping[str, Any]) -> Dict[str, Tuple[str, Dict[str, Any], str]]:
    """{robust_acc key: (column ident, configuration, label)} of one entry (before label clashes are resolved)."""
    out: Dict[str, Tuple[str, Dict[str, Any], str]] = {}
    for key, settings in entry_attack_settings(entry).items():
        config = attack_config(settings, entry['eps'])
        out[key] = (_canon(config), config, config_label(config))
    if WORST_CASE in (entry.get('robust_acc') or {}):
        members = sorted(out.values(), key=lambda m: Column(m[0], m[2], m[1]).order)
        config = {'attack': 'WorstCase', 'members': [m[0] for m in members]}
        out[WORST_CASE] = (_canon(config), config, config_label(config, [m[2] for m in members]))
    return out


def columns_of(entries: Iterable[Mapping[str, Any]]) -> Tuple[List[Column], Dict[str, Dict[str, str]]]:
    """The attack columns of a set of entries, in display order, and per entry id {key: column ident}.

    Two different configurations never share a label: a clash gets a short hash of the configuration.
    """
    configs: Dict[str, Tuple[Dict[str, Any], str]] = {}
    inferred: Dict[str, set] = {}
    keymap: Dict[str, Dict[str, str]] = {}
    for e in entries:
        cols = entry_columns(e)
        stored = (e.get('eval_settings') or {}).get('attacks') or {}
        keymap[e['entry_id']] = {k: ident for k, (ident, _, _) in cols.items()}
        for key, (ident, config, label) in cols.items():
            configs.setdefault(ident, (config, label))
            if key != WORST_CASE and key not in stored:
                inferred.setdefault(ident, set()).add(key)
    by_label: Dict[str, List[str]] = {}
    for ident, (_, label) in configs.items():
        by_label.setdefault(label, []).append(ident)
    columns = []
    for ident, (config, label) in configs.items():
        if len(by_label[label]) > 1:
            label = f'{label} #{hashlib.sha256(ident.encode()).hexdigest()[:4]}'
        columns.append(Column(ident, label, config, tuple(sorted(inferred.get(ident, ())))))
    return sorted(columns, key=lambda c: c.order), keymap


def short_labels(columns: Sequence[Column]) -> Dict[str, str]:
    """{column ident: header} for a narrow table: a worst case over several attacks is 'worst of 4', with a
    letter where two of a table's worst cases would read alike ('worst of 3 a', 'worst of 3 b'); the other
    labels are short already. The full label goes where there is room (a tooltip, the settings list)."""
    short = {c.ident: (f"worst of {len(c.config['members'])}" if c.config['attack'] == 'WorstCase' else c.label)
             for c in columns}
    seen: Dict[str, List[str]] = {}
    for c in columns:
        if c.config['attack'] == 'WorstCase':
            seen.setdefault(short[c.ident], []).append(c.ident)
    for text, idents in seen.items():
        if len(idents) > 1:
            for letter, ident in zip('abcdefghijklmnopqrstuvwxyz', idents):
                short[ident] = f'{text} {letter}'
    return short

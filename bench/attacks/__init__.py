"""Attacks in [0, 1] pixel space: one PGD core (pgd.py) that evaluation and training both run, the reference
AutoAttack family through `pyautoattack` (reference.py), the shared protocol and helpers (base.py), and
names and presets (factory.py). The package re-exports the public names so callers write `bench.attacks.PGD`."""
from bench.attacks.base import NORMS, Attack, accuracy, num_classes_of, perturbation_norm, predict, robust_under_all
from bench.attacks.factory import (ATTACKS, CUSTOM_PREFIX, PRESETS, WHITE_BOX, attack_choices, build_attack,
                                   is_white_box, resolve_attacks)
from bench.attacks.pgd import PGD, ascend, ascent_step, input_grad, project
from bench.attacks.reference import (APGD, APGD_SCHEDULE, AUTOATTACK_PARTS, REFERENCE_LOGGER, REFERENCE_WARNINGS,
                                     APGDTargeted, AutoAttack, FABTargeted, Square, reference_warning_flag,
                                     reference_warnings)
from bench.core.values import parse_eps

__all__ = ['NORMS', 'Attack', 'accuracy', 'num_classes_of', 'perturbation_norm',
           'predict', 'robust_under_all', 'ATTACKS', 'CUSTOM_PREFIX', 'PRESETS', 'WHITE_BOX',
           'attack_choices', 'build_attack', 'is_white_box', 'resolve_attacks', 'PGD', 'ascend', 'ascent_step',
           'input_grad', 'project', 'APGD', 'APGD_SCHEDULE', 'AUTOATTACK_PARTS', 'REFERENCE_LOGGER',
           'REFERENCE_WARNINGS', 'APGDTargeted', 'AutoAttack', 'FABTargeted', 'Square', 'reference_warning_flag',
           'reference_warnings', 'parse_eps']

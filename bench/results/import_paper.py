"""Import reported numbers into the registry: the paper code's CIFAR-100 table and RobustBench points.

    timm-moe import-paper [--csv PATH] [--registry DIR] [--overwrite]

The CSV (`registry/sources/robust_experts_official_results.csv`) is the result table of the
paper's public code (KASTEL-MobilityLab/robust-sparse-moes @ ed22e81). Its numbers are the paper code's
PGD-20 and torchattacks APGD-20, not AutoAttack, so they become `source: paper` entries with robust_acc keys
`pgd20` and `apgd20`, those attacks' settings (`eval_settings`, as far as the source states them) and an
`attack_note` that says so. The facts used here are listed, with their sources, in docs/REGISTRY.md.

Decisions, each written into the entries' `notes`:
- Every row of the four tables (resnet18, resnet50 and the two ResNet-18 placement tables) is
  imported. An experiment listed in two tables with the same numbers (the baselines; the main
  table's k=1 rows, which are the conv5_x table's '2 BlockMoEs' / 'all 4 conv layers' rows)
  becomes one entry.
- The CSV does not give the number of experts. The paper code does: every CIFAR-100 experiment
  config sets `num_experts: 4`, every CIFAR-100 sweep script passes `num_experts=4`, and the
  evaluation notebook's runs are named `block-moe4-*` / `conv-moe4-*`. So experts = 4, sourced
  in `notes`. Every row gets the timm name and kwargs that build its model:
  `resnet{18,50}_{block,conv}moe_e4_k{k}` (or `resnet{18,50}_dense`) with `placement` naming where the
  MoE layers go ('last' = layer4.1, 'all' = every block, or every conv, of layer4; 'layer4.0', 'layer3.0',
  'layer3.1', 'layer3' for both blocks of conv4_x; 'layer4.0.conv1' ... 'layer4.1.conv2' for the 1st to 4th
  conv of conv5_x). A ConvMoE over "all" convs includes layer4.0's 1x1 shortcut conv, as the paper code's
  filter does (docs/FIDELITY.md says why).
- Anomalies of the source are flagged, not corrected: APGD above PGD-20 (a weak-evaluation
  sign), the two attacks disagreeing by more than 5 points, and rows whose three numbers equal
  another configuration's (a likely copy error in the table).
- Noisy gating: the paper code adds training-only noise to the gate scores with the switch and KL
  (column-entropy) losses, not with the entropy loss; `model.noisy_gating` records that.

The import is reproducible: the same CSV gives byte-identical files (no dates, no commit), and
re-running without --overwrite leaves identical files alone and refuses to change others.
"""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from bench.core.errors import UserError
from bench.core.provenance import sha256_file
from bench.results.registry import (DEFAULT_REGISTRY, SCHEMA_VERSION, SHIPPED_REGISTRY, check_writable, dumps_entry,
                                    entry_path, validate_entry, write_entry)

DEFAULT_CSV = SHIPPED_REGISTRY / 'sources' / 'robust_experts_official_results.csv'
COLUMNS = ('table', 'moe', 'loss', 'gate', 'k', 'training', 'clean', 'pgd20', 'apgd20')
EPS = 8 / 255
PAPER_REPO = 'KASTEL-MobilityLab/robust-sparse-moes'
PAPER_COMMIT = 'ed22e81'
# not in the CSV; from the paper code (see the module docstring)
PAPER_NUM_EXPERTS = 4

PAPER_CITATION = (
    'Pavlitska, Fan, Ditschuneit, Zöllner. Robust Experts: the Effect of Adversarial Training on CNNs with '
    'Sparse Mixture-of-Experts Layers. arXiv:2509.05086, 2025. Numbers from the result table of the public code '
    f'{PAPER_REPO} @ {PAPER_COMMIT} (notebooks/robustness_accuracy_tradeoff_script.py, '
    'notebooks/robustness-accuracy_trade-off.ipynb).')
# the attacks behind the reported numbers, with the settings the sources state (None: not stated); the
# leaderboard also reads older copies of these entries, which do not store them, through this table
PAPER_ATTACKS = {
    'pgd20': dict(attack='PGD', implementation='robust-sparse-moes', steps=20, step_size=2 / 255,
                  random_start=False, restarts=1, loss=None),
    'apgd20': dict(attack='APGD', implementation='torchattacks', steps=20, restarts=None, loss=None),
}
ROBUSTBENCH_ATTACKS = {'autoattack': dict(attack='AutoAttack', version='standard', implementation='autoattack')}
REPORTED_ATTACKS = {'paper': PAPER_ATTACKS, 'robustbench': ROBUSTBENCH_ATTACKS}
NOISY_LOSSES = ('switch', 'kl')  # the paper code adds gate noise in training with these losses only
PAPER_ATTACK_NOTE = ('PGD-20 (eps 8/255, step 2/255, no random start, 1 restart) and torchattacks APGD (20 steps), '
                     "as run by the paper's code; not AutoAttack")
EXPERTS_NOTE = (f'experts = {PAPER_NUM_EXPERTS} is not in the CSV: it is num_experts in every CIFAR-100 experiment '
                f'config and sweep script of {PAPER_REPO} @ {PAPER_COMMIT} (configs/experiment/cifar100-*/'
                'resnet_*_moe.yaml, bash/cifar100_resnet{18,50}.sh) and the run names block-moe4-*/conv-moe4-*')
LOSSES = {'L_ent': 'entropy', 'L_switch': 'switch', 'L_column_entropy': 'kl', '': None}
LOSS_NOTES = {'kl': "L_column_entropy is -H(mean p), which equals KL(mean p || uniform) - log E: our 'kl' loss "
                    'up to a constant (same gradients)'}
GATES = {'GAP-FC': 'gap_fc', 'Conv-GAP': 'conv_gap', 'Baseline': None}

# RobustBench CIFAR-100 Linf 8/255 AutoAttack points, ResNet-18 class, no extra data (docs/REGISTRY.md)
ROBUSTBENCH_SOURCE = 'RobustBench CIFAR-100 Linf leaderboard (robustbench.github.io)'
ROBUSTBENCH = [
    dict(name='Addepalli2022Efficient_RN18', arch='resnet18', clean=65.45, autoattack=27.67, method='other',
         citation='Addepalli, Jain, Radhakrishnan. Efficient and Effective Augmentation Strategy for Adversarial '
                  'Training. NeurIPS 2022. RobustBench CIFAR-100 Linf leaderboard entry Addepalli2022Efficient_RN18.',
         note='training: the augmentation-based adversarial training of the citation (not plain PGD-AT)'),
    dict(name='Rice2020Overfitting', arch='preactresnet18', clean=53.83, autoattack=18.95, method='pgd',
         citation='Rice, Wong, Kolter. Overfitting in adversarially robust deep learning. ICML 2020. '
                  'RobustBench CIFAR-100 Linf leaderboard entry Rice2020Overfitting (PreAct ResNet-18).',
         note='training: PGD adversarial training with early stopping'),
]
ROBUSTBENCH_NOTE = ('AutoAttack (standard) on the full CIFAR-100 test set, as listed on the RobustBench leaderboard; '
                    'not measured by this harness')


def read_csv(path: Path) -> List[Dict[str, str]]:
    """The CSV rows as dicts, checking that the expected columns are there."""
    if not path.is_file():
        raise UserError(f'paper CSV {path} does not exist: pass --csv PATH to robust_experts_official_results.csv')
    with open(path, newline='', encoding='utf-8') as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f'paper CSV {path} lacks columns {missing}: expected {list(COLUMNS)}')
        return list(reader)


# conv5_x's convolutions in the order the placement table counts them ("1st conv layer" ... "4th conv layer")
CONV5_CONVS = ('layer4.0.conv1', 'layer4.0.conv2', 'layer4.1.conv1', 'layer4.1.conv2')


def _placement(table: str, moe: str) -> Tuple[str, Optional[str], Optional[str]]:
    """(kind, placement, config-file stem) of a row: kind is 'dense' | 'block' | 'conv'.

    placement is the model kwarg: 'last' (layer4.1), 'all' (every block, or every conv, of layer4) or
    module paths. The paper code's ResNetBlockMoE replaces every block of layer4 ('all');
    ResNetResidualBlockMoE replaces layer4.1 ('last'); ResNetConvMoE every nn.Conv2d whose path contains its
    prefix, 'layer4' in its configs ('all', the 1x1 shortcut conv included).
    """
    if moe == 'Baseline':
        return 'dense', None, 'default'
    if moe == 'BlockMoE' or (moe == '2 BlockMoEs' and table.endswith('conv5_x')):
        return 'block', 'all', 'resnet_block_moe'
    if moe == 'ConvMoE' or (moe.startswith('ConvMoEs replacing all') and table.endswith('conv5_x')):
        return 'conv', 'all', 'resnet_conv_moe'
    layer = 'layer4' if table.endswith('conv5_x') else 'layer3' if table.endswith('conv4_x') else None
    if layer is None:
        raise UserError(f'paper CSV: unknown MoE placement {moe!r} in table {table!r}')
    ordinal = {'1st': 0, '2nd': 1, '3rd': 2, '4th': 3}
    words = moe.split()
    if moe.startswith('BlockMoE replacing') and words[2] in ('1st', '2nd'):
        idx = ordinal[words[2]]
        if layer == 'layer4' and idx == 1:
            return 'block', 'last', 'resnet_residual_block_moe'
        return 'block', f'{layer}.{idx}', None
    if moe == '2 BlockMoEs':
        return 'block', layer, None  # both blocks of conv4_x
    if moe.startswith('ConvMoE replacing') and words[2] in ordinal and layer == 'layer4':
        return 'conv', CONV5_CONVS[ordinal[words[2]]], None
    raise UserError(f'paper CSV: unknown MoE placement {moe!r} in table {table!r}')


def _number(row: Dict[str, str], col: str) -> float:
    try:
        return float(row[col])
    except ValueError:
        raise UserError(f"paper CSV: column {col!r} holds {row[col]!r}, not a number (row {row})") from None


def row_to_entry(row: Dict[str, str], source_sha256: str) -> Tuple[tuple, Dict[str, Any]]:
    """(experiment key, registry entry) of one CSV row; the key identifies the configuration."""
    table, moe, training = row['table'].strip(), row['moe'].strip(), row['training'].strip()
    arch = table.split('-')[0]
    if arch not in ('resnet18', 'resnet50'):
        raise UserError(f'paper CSV: table {table!r} is neither resnet18* nor resnet50*')
    if training not in ('normal', 'adversarial'):
        raise UserError(f"paper CSV: training {training!r} is not 'normal' or 'adversarial'")
    kind, placement, cfg_stem = _placement(table, moe)
    method = 'pgd' if training == 'adversarial' else 'normal'
    loss = LOSSES.get(row['loss'].strip(), row['loss'].strip().lower() or None)
    gate = GATES.get(row['gate'].strip(), row['gate'].strip().lower())
    notes: List[str] = [f'CSV table {table!r}, moe {moe!r}']
    noisy: Optional[bool] = None
    if kind == 'dense':
        k = experts = None
        name, kwargs, experts = f'{arch}_dense', {'stem': 'cifar'}, 0
        loss = gate = None
    else:
        k, experts = int(row['k']), PAPER_NUM_EXPERTS
        notes.append(EXPERTS_NOTE)
        noisy = loss in NOISY_LOSSES
        if loss in LOSS_NOTES:
            notes.append(LOSS_NOTES[loss])
        from timm_moe import ModelSpec  # torch and timm: imported on import, not by `leaderboard`'s start-up
        spec = ModelSpec(arch=arch, experts=experts, k=k, kind=kind)  # the registered name of (arch, kind, E, k)
        name = spec.name
        kwargs = {'stem': 'cifar', 'gate': gate, 'placement': placement, 'aux_loss': loss, 'noisy_gating': noisy}
        if arch == 'resnet18':  # the paper code's ResNet-18 configs all weigh the balancing loss 0.5
            kwargs['aux_weight'] = 0.5
        if kind == 'conv' and placement == 'all':
            notes.append('ConvMoE at every conv of layer4, the 1x1 shortcut conv included: the paper code\'s '
                         "filter with its configs' prefix 'layer4' (docs/FIDELITY.md)")
    key = (arch, kind, placement, loss, gate, k, method)
    slug = '-'.join(str(p) for p in (arch, 'dense' if kind == 'dense' else f'{kind}moe', placement, loss, gate,
                                         None if k is None else f'k{k}', method) if p is not None)
    config: Optional[Dict[str, Any]] = None
    if method == 'pgd':  # read from the paper code's pgd_adv_train_*.yaml
        config = {'attack': 'pgd', 'norm': 'Linf', 'eps': EPS, 'step_size': 2 / 255, 'steps': 7, 'random_start': True,
                  'adversarial_examples_only': True}
    cfg_path = None
    if cfg_stem is not None:
        stem = ('pgd_adv_train' if cfg_stem == 'default' else f'pgd_adv_train_{cfg_stem}') if method == 'pgd' else cfg_stem
        cfg_path = f'{PAPER_REPO}@{PAPER_COMMIT}:configs/experiment/cifar100-{arch}/{stem}.yaml'
    clean, pgd20, apgd20 = _number(row, 'clean'), _number(row, 'pgd20'), _number(row, 'apgd20')
    flags = []
    if apgd20 > pgd20:
        flags.append('apgd_above_pgd20')
    if abs(apgd20 - pgd20) > 5:
        flags.append('pgd20_apgd20_disagree_by_over_5_points')
    entry = {
        'schema_version': SCHEMA_VERSION,
        'entry_id': f'paper-{slug}'.lower().replace('_', '-').replace('.', '-'),
        'source': 'paper',
        'citation': PAPER_CITATION,
        'model': {'name': name, 'kwargs': kwargs, 'arch': arch, 'experts': experts, 'k': k,
                  'gate': gate, 'aux_loss': loss, 'placement': placement, 'noisy_gating': noisy},
        'training': {'method': method, 'config': config, 'config_sha256': None, 'config_path': cfg_path,
                     'epochs': 200},
        'dataset': 'cifar100', 'threat_model': 'Linf', 'eps': EPS,
        'n_examples': None,
        'clean_acc': clean,
        'robust_acc': {'pgd20': pgd20, 'apgd20': apgd20},
        'attack_note': PAPER_ATTACK_NOTE,
        'eval_settings': _reported_settings(PAPER_ATTACKS, None),
        'flops': None, 'params': None, 'per_expert': None, 'routing': None,
        'sanity_flags': flags,
        'notes': notes,
        'provenance': {'command': 'timm-moe import-paper', 'source_file': 'robust_experts_official_results.csv',
                       'source_sha256': source_sha256},
    }
    return key, entry


def _reported_settings(attacks: Dict[str, Dict[str, Any]], n_examples: Optional[int]) -> Dict[str, Any]:
    """`eval_settings` of reported numbers: the attacks as the source states them, at eps 8/255 Linf."""
    return {'attacks': {k: dict(v) for k, v in attacks.items()}, 'eps': EPS, 'norm': 'Linf',
            'n_examples': n_examples, 'seed': None}


def paper_entries(csv_path: Path) -> List[Dict[str, Any]]:
    """All paper entries of the CSV, one per distinct experiment, in CSV order."""
    rows = read_csv(csv_path)
    digest = sha256_file(csv_path)
    by_key: Dict[tuple, Dict[str, Any]] = {}
    for row in rows:
        key, entry = row_to_entry(row, digest)
        old = by_key.get(key)
        if old is None:
            by_key[key] = entry
            continue
        same = (old['clean_acc'], old['robust_acc']) == (entry['clean_acc'], entry['robust_acc'])
        if not same:
            raise UserError(f"paper CSV: experiment {entry['entry_id']} appears twice with different numbers "
                            f"({old['notes'][0]} vs {entry['notes'][0]})")
        also = f"also listed as {entry['notes'][0]}"
        if also not in old['notes'] and entry['notes'][0] != old['notes'][0]:
            old['notes'].append(also)
    entries = list(by_key.values())
    # identical numbers under different configurations: flag both sides, do not guess which is right
    by_numbers: Dict[tuple, List[Dict[str, Any]]] = defaultdict(list)
    for e in entries:
        by_numbers[(e['clean_acc'], e['robust_acc']['pgd20'], e['robust_acc']['apgd20'])].append(e)
    for group in by_numbers.values():
        if len(group) > 1:
            for e in group:
                others = ', '.join(o['entry_id'] for o in group if o is not e)
                e['sanity_flags'].append('source_duplicate_numbers')
                e['notes'].append(f'clean/PGD-20/APGD-20 identical to {others} (a different configuration): '
                                  'possibly a copy error in the source table')
    return entries


def robustbench_entries() -> List[Dict[str, Any]]:
    """The RobustBench reference points (docs/REGISTRY.md) as `source: robustbench` entries."""
    out = []
    for rb in ROBUSTBENCH:
        out.append({
            'schema_version': SCHEMA_VERSION,
            'entry_id': f"robustbench-{rb['name'].lower().replace('_', '-')}",
            'source': 'robustbench',
            'citation': rb['citation'],
            'model': {'name': rb['name'], 'kwargs': {}, 'arch': rb['arch'], 'experts': 0, 'k': None,
                      'gate': None, 'aux_loss': None, 'placement': None, 'noisy_gating': None},
            'training': {'method': rb['method'], 'config': None, 'config_sha256': None, 'config_path': None,
                         'epochs': None},
            'dataset': 'cifar100', 'threat_model': 'Linf', 'eps': EPS,
            'n_examples': 10000,
            'clean_acc': rb['clean'],
            'robust_acc': {'autoattack': rb['autoattack']},
            'attack_note': ROBUSTBENCH_NOTE,
            'eval_settings': _reported_settings(ROBUSTBENCH_ATTACKS, 10000),
            'flops': None, 'params': None, 'per_expert': None, 'routing': None,
            'sanity_flags': [],
            'notes': [rb['note'], 'no extra training data'],
            'provenance': {'command': 'timm-moe import-paper', 'source_file': ROBUSTBENCH_SOURCE,
                           'source_sha256': None},
        })
    return out


def import_all(csv_path: Path = DEFAULT_CSV, registry_dir: Path = DEFAULT_REGISTRY,
               overwrite: bool = False) -> Dict[str, List[Path]]:
    """Write every paper and RobustBench entry; returns {'written': [...], 'unchanged': [...]}.

    Args:
        csv_path: the paper code's result table.
        registry_dir: the registry root.
        overwrite: replace entries whose content changed (without it, a changed entry is an error).
    """
    check_writable(registry_dir)  # also when every entry is unchanged: the answer must not depend on that
    entries = paper_entries(Path(csv_path)) + robustbench_entries()
    ids = [e['entry_id'] for e in entries]
    if len(set(ids)) != len(ids):
        raise UserError(f'import_paper: duplicate entry ids {sorted({i for i in ids if ids.count(i) > 1})}')
    for e in entries:  # all or nothing: refuse before writing the first file
        validate_entry(e)
    out: Dict[str, List[Path]] = {'written': [], 'unchanged': []}
    for e in entries:
        path = entry_path(e, registry_dir)
        if path.is_file() and path.read_text(encoding='utf-8') == dumps_entry(e):
            out['unchanged'].append(path)
            continue
        out['written'].append(write_entry(e, registry_dir, overwrite=overwrite))
    return out

"""Follow-up evaluations of a finished grid: full AutoAttack on chosen configurations (`autoattack:` in a spec).

AutoAttack costs tens of times an APGD-CE run, so a study runs it on a few models only, on a subset of the
points every run was attacked on, once every cell is done:

    autoattack: {n_examples: 500, configs: [dense, best_moe], rank_by: apgd-ce}

`best_moe` is the adversarially trained MoE config with the highest mean `rank_by` accuracy over its seeds,
chosen from the finished cells when the follow-ups run (the choice is stored in the entry's `grid` field);
equal means (exactly, not to the last float bit) go to the config listed first. A pre-registered study names
its MoE instead (`configs: [dense, e4k1]`), so that the choice cannot depend on the results.
Each follow-up re-attacks the first seed of its config from the cell's finished training run and registers
an entry of its own (`grid.stage: autoattack`); a finished one leaves `cells/autoattack-<cell>/done.json`.
"""
from __future__ import annotations

import statistics
from typing import Any, Dict, List, Mapping, Optional, Tuple

from bench.core.errors import UserError

KEYS = ('n_examples', 'configs', 'rank_by', 'attacks')
BEST_MOE = 'best_moe'


def check_followup(spec: Any, path: Any) -> None:
    """Refuse an `autoattack:` block no study could run (UserError naming the key)."""
    block = spec.autoattack
    if block is None:
        return
    if not spec.configs:
        raise UserError(f'autoattack in {path} needs named configs (configs: ...) to pick its models from')
    if not isinstance(block, Mapping):
        raise UserError(f'autoattack in {path} is {block!r}: give {{n_examples: 500, configs: [dense, best_moe]}}')
    unknown = sorted(set(block) - set(KEYS))
    if unknown:
        raise UserError(f'unknown autoattack key {unknown[0]!r} in {path}; allowed: {", ".join(KEYS)}')
    names = block.get('configs')
    if not isinstance(names, list) or not names:
        raise UserError(f'autoattack.configs in {path} must list config names (or {BEST_MOE})')
    for name in names:
        if name != BEST_MOE and name not in spec.configs:
            raise UserError(f'autoattack.configs in {path} names {name!r}; configs: {", ".join(spec.configs)}, '
                            f'or {BEST_MOE}')
    n = block.get('n_examples', spec.eval.get('n_examples', 1000))
    if not isinstance(n, int) or not 1 <= n <= spec.eval.get('n_examples', 1000):
        raise UserError(f'autoattack.n_examples in {path} is {n!r}: give 1 .. the {spec.eval.get("n_examples", 1000)}'
                        ' points every run is attacked on, so that the AutoAttack points are among them')


def best_moe(cells: List[Dict[str, Any]], done: Mapping[str, Mapping[str, Any]], metric: str) -> str:
    """The adversarially trained MoE config with the highest mean `metric` over its finished seeds.

    Args:
        cells: The grid's cells (named configs).
        done: Each finished cell's done record (`robust_acc` per attack), by cell id.
        metric: The robust accuracy to rank by (an attack label, e.g. 'apgd-ce').
    """
    scores: Dict[str, List[float]] = {}
    order = {c['config']: i for i, c in reversed(list(enumerate(cells)))}  # spec order: cells come in it
    for c in cells:
        if c['experts'] and c['training'] != 'normal' and c['cell'] in done:
            value = done[c['cell']]['robust_acc'].get(metric)
            if value is None:
                raise UserError(f'autoattack.rank_by {metric!r}: cell {c["cell"]} has no such robust accuracy; '
                                f'it has {", ".join(done[c["cell"]]["robust_acc"])}')
            scores.setdefault(c['config'], []).append(value)
    if not scores:
        raise UserError(f'autoattack names {BEST_MOE}, but the grid has no adversarially trained MoE config')
    # the mean over seeds, exactly: accuracies are count / n * 100, so means that are equal in exact arithmetic
    # can differ in the last float bit (57.97 + 58.43 + ... summed in another order); rounding to 1e-9 of a
    # point is far below the smallest real step (100 / n / seeds) and makes such ties exact. A tie goes to
    # the config listed first in the spec.
    return min(scores, key=lambda name: (-round(statistics.fmean(scores[name]), 9), order[name]))


def followup_cells(spec: Any, cells: List[Dict[str, Any]],
                   done: Mapping[str, Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """The follow-up cells of the `autoattack` block: each named config's first-seed cell, re-evaluated.

    Args:
        spec: The grid spec.
        cells: The grid's cells.
        done: Every cell's done record, by cell id (`best_moe` ranks by them).

    Returns:
        Cells `autoattack-<cell>` that reuse their source cell's training run (`source_cell`) and carry the
        AutoAttack evaluation, the stage and how the config was chosen (`selected_as`).
    """
    block = spec.autoattack
    chosen: List[Tuple[str, Optional[str]]] = []
    for name in block['configs']:
        pick = (best_moe(cells, done, block.get('rank_by', 'apgd-ce')), BEST_MOE) if name == BEST_MOE else (name, None)
        if pick[0] not in [c for c, _ in chosen]:
            chosen.append(pick)
    first = {c['config']: c for c in cells if c.get('first_seed')}
    evaluation = {**spec.eval, 'attacks': block.get('attacks', 'autoattack'), 'per_expert': False,
                  'n_examples': block.get('n_examples', spec.eval.get('n_examples', 1000))}
    return [dict(first[name], cell=f'autoattack-{first[name]["cell"]}', source_cell=first[name]['cell'],
                 selected_as=how, stage='autoattack', eval=evaluation) for name, how in chosen]

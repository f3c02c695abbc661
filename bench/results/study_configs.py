"""A study's runs by configuration and seed, what each configuration is, and which pairs a claim compares.

The CLI reads the grid spec and passes its plain `plan` here (this layer does not import the pipeline):

    {'name': 'study_fashion_mnist', 'seeds': [0, 1, 2],
     'configs': {'dense': {'model': 'resnet18_dense', 'training': 'pgd', 'seeds': [0, 1, 2], 'upcycle_from': None},
                 ...}}

What a configuration *is* (experts, k, gate, aux loss, expert width, training method, upcycled or not) is read
from its entries' `model` block, the effective values the runs had, so that the claims' pairs ("differ only
in aux_loss") follow what was trained, not how the spec spelled it. No config name or attack label is built
into the computation: the claims find their pairs by these traits and their metrics among the entries'.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from bench.core.errors import UserError
from bench.results.compare import strongest_shared

FLOPS_TOL = 0.02  # |ratio - 1| within this is 'equal FLOPs': a gate adds well under 1% to a ResNet block
STAGE_MAIN, STAGE_AA = 'main', 'autoattack'
# an aux loss brings its own default weight, and noisy_gating 'auto' resolves by the loss: they follow from it
AUX_KEYS = ('aux_loss', 'aux_weight', 'noisy_gating')


def by_strength(metrics: Sequence[str]) -> List[str]:
    """Metrics strongest first, in `compare.METRIC_STRENGTH` order."""
    rest, out = set(metrics), []
    while rest:
        best = strongest_shared(sorted(rest), sorted(rest))
        out.append(best)
        rest.discard(best)
    return out


@dataclass
class Study:
    name: str
    plan: Mapping[str, Any]
    runs: Dict[str, Dict[int, Dict[str, Any]]]  # config -> seed -> main-stage entry
    autoattack: List[Dict[str, Any]]  # stage 'autoattack' entries, by cell
    notes: List[str] = field(default_factory=list)  # what the data lack (missing cells, unknown configs)

    @property
    def configs(self) -> List[str]:
        """Configs of the spec that have at least one run, in the spec's order."""
        return [c for c in self.plan['configs'] if self.runs.get(c)]

    def first(self, config: str) -> Optional[Dict[str, Any]]:
        """The run of the config's first seed (the one with the first-seed analyses), if it is there."""
        seeds = self.plan['configs'][config].get('seeds') or [min(self.runs[config])]
        return self.runs.get(config, {}).get(seeds[0])

    def main_entry(self, cell: str) -> Optional[Dict[str, Any]]:
        return next((e for runs in self.runs.values() for e in runs.values() if e['grid']['cell'] == cell), None)

    def entries(self) -> List[Dict[str, Any]]:
        return [self.runs[c][s] for c in self.configs for s in sorted(self.runs[c])]

    def metrics(self) -> List[str]:
        """Robust metrics every main run measured, strongest first (the first-seed extras are not among them)."""
        sets = [set(e.get('robust_acc') or {}) for e in self.entries()]
        return by_strength(set.intersection(*sets)) if sets else []

    def first_seed_metrics(self) -> List[str]:
        """Robust metrics only some runs (the first seeds) measured, strongest first."""
        every = set(self.metrics())
        return by_strength({m for e in self.entries() for m in (e.get('robust_acc') or {})} - every)

    def primary(self) -> Optional[str]:
        """The claims' primary metric: the strongest single attack every run measured (the worst case over
        attacks is a different statistic and is shown beside it)."""
        single = [m for m in self.metrics() if m != 'ensemble']
        return single[0] if single else None

    def pgd(self) -> Optional[str]:
        """The strongest PGD attack every run measured (the paper's headline attack), if any."""
        return next((m for m in self.metrics() if m.startswith('pgd')), None)


def collect(entries: Sequence[Mapping[str, Any]], plan: Mapping[str, Any]) -> Study:
    """The study's entries (`grid.spec == plan['name']`) by config and seed, and what is missing.

    Raises:
        UserError: no entry of the study, or two entries of one cell and stage (which one counts is not
            the report's to guess: remove the stale one).
    """
    name = plan['name']
    mine = [e for e in entries if (e.get('grid') or {}).get('spec') == name]
    if not mine:
        raise UserError(f'no registry entry belongs to study {name!r} (grid.spec); run `timm-moe grid {name}` '
                        'first, or pass the --registry it wrote to')
    runs: Dict[str, Dict[int, Dict[str, Any]]] = {}
    autoattack, seen, notes = [], {}, []
    for e in sorted(mine, key=lambda e: e['entry_id']):
        g = e['grid']
        key = (g.get('cell'), g.get('stage', STAGE_MAIN))
        if key in seen:
            raise UserError(f'study {name!r}: cell {key[0]} ({key[1]}) has two entries, {seen[key]!r} and '
                            f'{e["entry_id"]!r}: remove the stale one from the registry')
        seen[key] = e['entry_id']
        if g.get('config') not in plan['configs']:
            notes.append(f'entry {e["entry_id"]} is of config {g.get("config")!r}, which the spec does not list: '
                         'left out')
        elif key[1] == STAGE_AA:
            autoattack.append(e)
        else:
            runs.setdefault(g['config'], {})[int(g.get('seed') or 0)] = e
    for config, values in plan['configs'].items():
        missing = [s for s in values.get('seeds') or [] if s not in runs.get(config, {})]
        if missing:
            notes.append(f'config {config}: no run for seed{"s" if len(missing) > 1 else ""} '
                         f'{", ".join(map(str, missing))} (not finished, or failed)')
    return Study(name=name, plan=plan, runs=runs, autoattack=autoattack, notes=notes)


# ------------------------------------------------------------------------------------------ traits

def traits(study: Study, config: str) -> Dict[str, Any]:
    """What the config trains: the model's effective settings, the training method, whether it is upcycled
    and its epochs (from its first run; the runs of a config differ only in their seed)."""
    e = next(iter(study.runs[config].values()))
    model = e['model']
    out = {'arch': model.get('arch'), 'experts': model.get('experts') or 0, 'k': model.get('k')}
    if out['experts']:  # a dense model's effective kwargs carry MoE defaults that mean nothing for it
        out.update({k: v for k, v in (model.get('effective_kwargs') or {}).items()
                    if k not in ('num_classes', 'in_chans')})
    else:
        out['width'] = (model.get('effective_kwargs') or {}).get('width')
    out['training'] = (e.get('training') or {}).get('method')
    out['upcycled'] = bool(study.plan['configs'][config].get('upcycle_from'))
    out['epochs'] = (e.get('training') or {}).get('epochs')
    return out


def differing(study: Study, a: str, b: str) -> List[str]:
    ta, tb = traits(study, a), traits(study, b)
    return sorted(k for k in set(ta) | set(tb) if ta.get(k) != tb.get(k))


def is_moe(study: Study, config: str) -> bool:
    return bool(traits(study, config)['experts'])


def flops_ratio(study: Study, config: str) -> Optional[float]:
    ratios = [(e.get('flops') or {}).get('ratio') for e in study.runs[config].values()]
    ratios = [r for r in ratios if r is not None]
    return sum(ratios) / len(ratios) if ratios else None


def adversarial(study: Study, config: str) -> bool:
    return traits(study, config)['training'] not in (None, 'normal')


def scratch(study: Study, config: str) -> bool:
    """Trained from random initialisation with the spec's own recipe (not upcycled)."""
    return not traits(study, config)['upcycled']


def dense_reference(study: Study, config: str) -> Optional[str]:
    """The dense config trained like `config`: the same training method, epochs and width, from scratch."""
    keys = ('arch', 'width', 'training', 'epochs')
    t = traits(study, config)
    return next((c for c in study.configs if not is_moe(study, c) and scratch(study, c)
                 and all(traits(study, c).get(k) == t.get(k) for k in keys)), None)


def pairs_differing_in(study: Study, allowed: Tuple[str, ...], required: str) -> List[Tuple[str, str]]:
    """(a, b) of adversarially trained MoE configs from scratch that differ in `required` and otherwise only
    in `allowed` keys; each unordered pair once, in spec order."""
    moe = [c for c in study.configs if is_moe(study, c) and adversarial(study, c) and scratch(study, c)]
    out = []
    for i, a in enumerate(moe):
        for b in moe[i + 1:]:
            diff = differing(study, a, b)
            if required in diff and set(diff) <= set(allowed):
                out.append((a, b))
    return out

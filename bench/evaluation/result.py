"""`EvalResult`: what `bench.evaluation.loop.evaluate_model` returns, field by field (docs/CONTRACTS.md).

A typed record between the layers: the pipeline, the CLI and the registry's entry builder read its attributes;
`to_json()` is the one place it becomes a dict, for `timm-moe eval --json` and the registry entry.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass(kw_only=True)
class EvalResult:
    """Clean and robust accuracy of one evaluation, accuracies in percent.

    Results are keyed by attack label (`evaluate_model`); 'worst_case' is the per-sample worst case over the
    attacks that ran (a point counts as robust only if every attack failed on it).

    Args:
        n_examples: Points evaluated.
        eps: The radius.
        threat_model: 'Linf' or 'L2'.
        clean_acc: Clean accuracy.
        robust_acc: Attack label (and 'worst_case') -> robust accuracy.
        counts: 'clean', each attack label and 'worst_case' -> correct points.
        correct: The same keys -> per-sample 0/1 list, aligned with the evaluated images.
        settings: The exact settings of the evaluation and of each attack (`settings['attacks']`).
        per_expert: One row per expert subpath (expert, clean_acc, robust_acc, n_examples, correct), for a MoE
            model evaluated with the per-expert analyses; else None.
        per_layer_expert: One row per (MoE layer, expert): expert e forced in that layer only, the other layers
            routing (layer, expert, clean_acc, robust_acc, n_examples, correct); None unless asked for.
        routing_under_attack: How the crafting attack moves the routing (`bench.evaluation.moe`); or None.
        transfer: [i][j] = accuracy of subpath j on the examples crafted against subpath i; or None.
        transfer_info: The crafting attack and its attacked points, for `transfer`; or None.
        routing: The clean routing statistics of a MoE model (load, importance, collapse); None when dense.
        autoattack_attacks_run: AutoAttack label -> the parts that ran.
        attack_warnings: Attack label -> the distinct warnings pyautoattack gave.
        sanity: Check name -> {'passed': True | False | None, 'detail': str} (`bench.evaluation.checks`).
        flags: Names of the failed checks and of the warnings that question a result.
        timing: Seconds per attack label and per stage ('sanity', 'moe_analysis').
    """
    n_examples: int
    eps: float
    threat_model: str
    clean_acc: float
    robust_acc: Dict[str, float]
    counts: Dict[str, int]
    correct: Dict[str, List[int]]
    per_expert: Optional[List[Dict[str, Any]]] = None
    per_layer_expert: Optional[List[Dict[str, Any]]] = None
    routing_under_attack: Optional[Dict[str, Any]] = None
    transfer: Optional[List[List[float]]] = None
    transfer_info: Optional[Dict[str, Any]] = None
    routing: Optional[Dict[str, Any]] = None
    autoattack_attacks_run: Dict[str, List[str]] = field(default_factory=dict)
    attack_warnings: Dict[str, List[str]] = field(default_factory=dict)
    sanity: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    flags: List[str] = field(default_factory=list)
    settings: Dict[str, Any] = field(default_factory=dict)
    timing: Dict[str, float] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        """The result as the JSON object `timm-moe eval --json` writes (fields in declaration order)."""
        return dataclasses.asdict(self)

"""Building a `source: measured` registry entry from a model spec and what the pipeline measured.

The one place that turns (spec, training config, evaluation result, audit, provenance) into an entry; the
registry (`bench.results.registry`) validates and stores it. Field meanings: docs/REGISTRY.md.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, List, Mapping, Optional, Protocol

import timm
import torch

from timm_moe import ModelSpec  # importing timm_moe registers the models

from bench.results.registry import SCHEMA_VERSION, make_entry_id
from bench.core.stats import per_sample_block

__all__ = ['measured_entry', 'audit_fields', 'effective_model_kwargs', 'eval_settings_of']



class Evaluated(Protocol):
    """What an entry reads of an evaluation: `bench.evaluation.result.EvalResult` (which this layer may not
    import), by attribute."""
    n_examples: int
    eps: float
    threat_model: str
    clean_acc: float
    robust_acc: Dict[str, float]
    correct: Dict[str, List[int]]
    settings: Dict[str, Any]
    per_expert: Optional[List[Dict[str, Any]]]
    per_layer_expert: Optional[List[Dict[str, Any]]]
    routing_under_attack: Optional[Dict[str, Any]]
    transfer: Optional[List[List[float]]]
    transfer_info: Optional[Dict[str, Any]]
    routing: Optional[Dict[str, Any]]
    flags: List[str]


class Audited(Protocol):
    """What an entry reads of an audit: `bench.audit.audit.AuditResult`, by attribute."""
    flops_active: float
    flops_total: float
    flops_dense: float
    flops_ratio: float
    params_total: int
    params_active: int


# the data-set part of generated entry ids (kept short: ids are file names)
_SHORT_DATASET = {'fashion-mnist-bundled': 'fmnist-bundled', 'fashion-mnist': 'fmnist'}


def effective_model_kwargs(model_name: str, model_kwargs: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The settings the plugin builds `model_name` with from `model_kwargs`: defaults and 'auto' resolved.

    Reads `moe_config` of the model built on the meta device (no memory, no weights): the same code as the
    real model, so the entry records what was built rather than what was typed. `num_experts` and `k` are
    left out (the model name fixes them; they are `model.experts` and `model.k`), so the result can be
    passed back to timm.create_model. None for a model that is not ours (no `moe_config`).
    """
    if not timm.is_model(model_name):
        return None
    try:
        with torch.device('meta'):
            built = timm.create_model(model_name, **model_kwargs)
    except (TypeError, ValueError) as e:
        # the caller measured this very model a moment ago: failing to rebuild it is a bug, not bad input
        raise RuntimeError(f'cannot rebuild {model_name} with {dict(model_kwargs)} to read its settings: {e}') from e
    config = getattr(built, 'moe_config', None)
    if config is None:
        return None
    out = dict(model_kwargs)
    out.update({k: v for k, v in config.items() if k not in ('num_experts', 'k')})
    for attr in ('num_classes', 'in_chans'):
        if hasattr(built, attr):
            out[attr] = getattr(built, attr)
    return json.loads(json.dumps(out, default=str))  # JSON values only (a layer class becomes its name)


def eval_settings_of(eval_result: Evaluated) -> Optional[Dict[str, Any]]:
    """The registry's `eval_settings` from an evaluation result: its settings, with the per-attack settings
    under `attacks`, keyed by accuracy key (as `evaluate_model` reports them)."""
    settings = eval_result.settings
    if not settings:
        return None
    out = json.loads(json.dumps(dict(settings), default=str))  # tuples become lists, as in the file
    if not isinstance(out.get('attacks'), dict):
        raise ValueError(f'evaluation settings hold no per-attack settings (keys: {sorted(settings)})')
    return out


def audit_fields(audit: Audited) -> Dict[str, Dict[str, Any]]:
    """The entry's `flops` and `params` from an audit (`bench.audit.audit_model`)."""
    return dict(flops=dict(active=audit.flops_active, total=audit.flops_total, dense=audit.flops_dense,
                           ratio=audit.flops_ratio),
                params=dict(total=audit.params_total, active=audit.params_active))


def _check_spec(spec: ModelSpec, model_kwargs: Mapping[str, Any]) -> None:
    """The kwargs the model was built with must be the spec's: a caller passing another model's is a bug."""
    got, _ = ModelSpec.from_timm_kwargs(spec.name, model_kwargs)
    if got != spec:
        raise ValueError(f'model_kwargs {dict(model_kwargs)} build {got}, not the spec {spec}')


def measured_entry(*, spec: ModelSpec, model_kwargs: Mapping[str, Any], dataset: str, method: str,
                   eval_result: Evaluated, provenance: Mapping[str, Any],
                   training_config: Optional[Mapping] = None, config_path: Optional[str] = None,
                   epochs: Optional[float] = None, flops: Optional[Mapping[str, Any]] = None,
                   params: Optional[Mapping[str, Any]] = None, routing: Optional[Mapping[str, Any]] = None,
                   entry_id: Optional[str] = None, attack_note: Optional[str] = None,
                   notes: Optional[List[str]] = None, index_start: int = 0,
                   grid: Optional[Mapping[str, Any]] = None,
                   timing: Optional[Mapping[str, float]] = None) -> Dict[str, Any]:
    """Assemble a `source: measured` entry from an evaluation result (`evaluate_model`).

    The entry keeps the evaluation's exact settings (`eval_settings`), its per-sample results as bits
    (`per_sample`, from `eval_result.correct`) and the model's effective kwargs.

    The entry id defaults to `<model>-<method>-<dataset>-<hash>`, the hash over everything that
    defines the run (model, kwargs, training config, eval settings, seed, checkpoint), so that
    re-running the same job gives the same id and `write_entry` refuses to count it twice.

    Args:
        spec: the architecture (`timm_moe.ModelSpec`): the entry's model name, arch, experts and k.
        model_kwargs: every kwarg timm.create_model got (the spec's, plus timm's such as num_classes);
            they must build `spec` (ValueError otherwise: a caller bug, not bad input).
        dataset: one of the registry's data sets.
        method: 'normal' | 'pgd' | 'trades' | 'fast' | 'free' | 'other'.
        eval_result: the evaluation (`bench.evaluation.result.EvalResult`: `Evaluated` names what is read).
        provenance: `bench.core.provenance.provenance(...)`.
        training_config: the training config (stored, and hashed into config_sha256).
        config_path: where that config lives, if in a file.
        epochs: epochs trained.
        flops: {'active', 'total', 'dense', 'ratio'} in MACs per image (see `audit_fields`).
        params: {'total', 'active'}.
        routing: {'load': [...], 'collapse': float}; default: the clean load of routing_under_attack.
        entry_id: override the generated id.
        attack_note: free text about the attacks (e.g. 'quick suite, not AutoAttack').
        notes: free-text remarks.
        index_start: test-set index of the first evaluated point (`bench.data.eval_tensors` takes the
            first n, so 0).
        grid: which sweep cell produced the entry (`bench.pipeline.grid`): spec, config, seed, cell, stage.
        timing: wall seconds per pipeline stage (train, evaluate, audit), for sizing studies.
    """
    _check_spec(spec, model_kwargs)
    if not eval_result.correct:
        raise ValueError('measured_entry needs eval_result.correct (the per-sample results); '
                         'keep it until the entry is made')
    per_sample = per_sample_block(eval_result.correct, index_start)
    settings = eval_settings_of(eval_result)
    if settings is None:
        raise ValueError("measured_entry needs eval_result.settings (the attacks' exact settings)")
    cfg = dict(training_config) if training_config is not None else None
    cfg_sha = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest() if cfg else None
    if routing is None and eval_result.routing:
        routing = eval_result.routing
    if routing is None and eval_result.routing_under_attack:
        rua = eval_result.routing_under_attack
        routing = {'load': list(rua['load_clean']), 'collapse': None} if rua.get('load_clean') else None
    effective = effective_model_kwargs(spec.name, model_kwargs)
    moe = dict(effective or model_kwargs) if spec.is_moe else {}
    noisy = moe.get('noisy_gating')
    if entry_id is None:
        payload = dict(kwargs=dict(model_kwargs), config=cfg, settings=eval_result.settings,
                       n=eval_result.n_examples, eps=eval_result.eps, seed=provenance.get('seed'),
                       ckpt=provenance.get('checkpoint_sha256'))
        entry_id = make_entry_id(spec.name, method, _SHORT_DATASET.get(dataset, dataset), payload=payload)
    return {
        'schema_version': SCHEMA_VERSION,
        'entry_id': entry_id,
        'source': 'measured',
        'model': {'name': spec.name, 'kwargs': dict(model_kwargs), 'arch': spec.arch, 'experts': spec.experts,
                  'k': spec.k, 'gate': moe.get('gate'), 'aux_loss': moe.get('aux_loss'),
                  'placement': moe.get('placement'),
                  # a bool once resolved; None for a dense model, or a model whose setting is not known
                  'noisy_gating': noisy if isinstance(noisy, bool) else None,
                  'effective_kwargs': effective if effective is not None else dict(model_kwargs)},
        'training': {'method': method, 'config': cfg, 'config_sha256': cfg_sha, 'config_path': config_path,
                     'epochs': epochs},
        'dataset': dataset,
        'threat_model': eval_result.threat_model,
        'eps': eval_result.eps,
        'n_examples': eval_result.n_examples,
        'clean_acc': eval_result.clean_acc,
        'robust_acc': dict(eval_result.robust_acc),
        'attack_note': attack_note,
        'eval_settings': settings,
        'per_sample': per_sample,
        'flops': dict(flops) if flops else None,
        'params': dict(params) if params else None,
        'per_expert': [_per_expert_row(p, index_start) for p in eval_result.per_expert]
        if eval_result.per_expert else None,
        'per_layer_expert': [dict(layer=p['layer'], **_per_expert_row(p, index_start))
                             for p in eval_result.per_layer_expert] if eval_result.per_layer_expert else None,
        'routing': dict(routing) if routing else None,
        'routing_under_attack': _plain(eval_result.routing_under_attack),
        'transfer': dict(matrix=eval_result.transfer, **_plain(eval_result.transfer_info or {}))
        if eval_result.transfer else None,
        'grid': dict(grid) if grid else None,
        'timing': {k: round(float(v), 3) for k, v in timing.items()} if timing else None,
        'sanity_flags': list(eval_result.flags),
        'notes': list(notes) if notes else None,
        'provenance': dict(provenance),
    }


def _per_expert_row(row: Mapping[str, Any], index_start: int) -> Dict[str, Any]:
    """One subpath's accuracies, and its per-sample bits when the evaluation kept them (first n points)."""
    out = dict(expert=row['expert'], clean_acc=row['clean_acc'], robust_acc=dict(row['robust_acc']))
    if row.get('correct'):
        out.update(n_examples=row.get('n_examples'), per_sample=per_sample_block(row['correct'], index_start))
    return out


def _plain(obj: Any) -> Any:
    """JSON-plain copy (tuples become lists), as the entry file will hold it."""
    return json.loads(json.dumps(obj, default=str)) if obj is not None else None

"""Evaluation results for registry tests: what `bench.evaluation.loop.evaluate_model` returns, without running attacks.

The per-sample vectors agree with the accuracies (the registry checks that), and each attack's settings are
the real ones of `bench.attacks` for its name, so entries built from these look exactly like measured ones.
"""
from __future__ import annotations

import random
from typing import Any, Dict, Mapping, Optional

from bench.attacks import build_attack
from bench.evaluation.result import EvalResult


def _vector(acc: float, n: int, rng: random.Random) -> list:
    k = round(acc * n / 100)
    if not 0 <= k <= n:
        raise ValueError(f'accuracy {acc} is not a count of {n} points')
    bits = [1] * k + [0] * (n - k)
    rng.shuffle(bits)
    return bits


def fake_eval_result(clean: float, robust: Mapping[str, float], n: int = 200, eps: float = 8 / 255,
                     seed: int = 0, settings: Optional[Dict[str, Dict[str, Any]]] = None,
                     **extra: Any) -> EvalResult:
    """An evaluation result with clean and robust accuracies rounded to counts of n points.

    Args:
        clean: clean accuracy in percent.
        robust: {attack name: accuracy}; 'worst_case' is allowed and needs no settings.
        n: test points.
        eps: the radius the attacks ran at.
        seed: draws which points are correct, and seeds the attacks.
        settings: per-attack settings instead of `bench.attacks`' (for names it does not know).
        extra: more result fields (per_expert, flags, ...).
    """
    rng = random.Random(seed)
    correct = {'clean': _vector(clean, n, rng), **{k: _vector(v, n, rng) for k, v in robust.items()}}
    attacks = dict(settings or {})
    for name in robust:
        if name != 'worst_case' and name not in attacks:
            attacks[name] = build_attack(name, eps, 'Linf', seed).settings()
    return EvalResult(
        n_examples=n, eps=eps, threat_model='Linf',
        clean_acc=100.0 * sum(correct['clean']) / n,
        robust_acc={k: 100.0 * sum(v) / n for k, v in correct.items() if k != 'clean'},
        counts={k: sum(v) for k, v in correct.items()}, correct=correct,
        settings=dict(attacks=attacks, eps=eps, norm='Linf', seed=seed, batch_size=n, n_examples=n),
        **extra)


PROVENANCE = {'package_version': '0.1.0', 'git_commit': 'a' * 40, 'torch': '2.14.1', 'timm': '1.0.9',
              'device': 'cpu test', 'command': 'timm-moe grid', 'seed': 0, 'date': '2026-01-01T00:00:00Z',
              'checkpoint_sha256': None}


def make_entry(entry_id: str = 'resnet18_blockmoe_e4_k1-pgd-fmnist-abc123', clean: float = 60.0,
               robust: float = 20.0, experts: int = 4, attacks: Optional[Mapping[str, float]] = None,
               seed: int = 0, n: int = 200, eps: float = 0.1, model_kwargs: Optional[Dict[str, Any]] = None,
               lr: float = 0.1, **over: Any) -> Dict[str, Any]:
    """A small valid measured entry; keyword overrides replace top-level fields.

    Args:
        attacks: {attack name: accuracy}; default PGD-20, APGD-CE (100 steps) and their worst case.
        seed: the training and attack seed (entries that differ only in it form a seed group).
        n: test points.
        lr: the training config's learning rate: entries that must not form a seed group differ in it.
    """
    from bench.results.entries import measured_entry
    from timm_moe import ModelSpec

    name = 'resnet18_dense' if experts == 0 else f'resnet18_blockmoe_e{experts}_k1'
    kwargs = model_kwargs if model_kwargs is not None else (
        {'width': 16} if experts == 0 else {'width': 16, 'gate': 'gap_fc', 'aux_loss': 'entropy', 'placement': 'last'})
    if attacks is None:
        attacks = {'pgd20': robust + 1, 'apgd-ce': robust + 0.5, 'worst_case': robust}
    e = measured_entry(
        spec=ModelSpec.from_timm_kwargs(name, kwargs)[0], model_kwargs=kwargs, dataset='fashion-mnist-bundled',
        method='pgd', training_config={'epochs': 1, 'lr': lr, 'seed': seed, 'out': f'runs/s{seed}'},
        epochs=1, eval_result=fake_eval_result(clean, attacks, n=n, eps=eps, seed=seed),
        provenance=dict(PROVENANCE, seed=seed),
        flops={'active': 5.6e8, 'total': 6.3e8, 'dense': 5.57e8, 'ratio': 1.005} if experts else None,
        routing={'load': [0.25] * experts, 'collapse': 0.0} if experts else None,
        entry_id=entry_id,
    )
    e.update(over)
    return e

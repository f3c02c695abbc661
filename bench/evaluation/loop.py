"""The evaluation loop: clean and robust accuracy per attack and for the per-sample worst case, MoE analyses
(`bench.evaluation.moe`) and sanity checks (`bench.evaluation.checks`), resumable per (attack, batch) through
`bench.evaluation.resume.BatchLog`. docs/EVALUATION.md describes the result, the checks and the flags; the
command is `bench.cli.eval`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

import timm_moe
from bench.attacks import (NORMS, AutoAttack, accuracy, build_attack, perturbation_norm, predict,
                           reference_warning_flag, reference_warnings, resolve_attacks, robust_under_all)
from bench.core.errors import UserError
from bench.core.progress import progress_bar, stage
from bench.core.values import parse_eps
from bench.evaluation import checks as sanity, moe as moe_analysis
from bench.evaluation.resume import ROUTING_KEY, BatchLog, tensor_digest
from bench.evaluation.result import EvalResult
from bench.models import Normalized, normalized, unwrap


def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Union[str, Sequence[str]] = 'quick',
                   eps: float = 8 / 255, norm: str = 'Linf', batch_size: int = 128, per_expert: bool = True,
                   seed: int = 0, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                   sidecar: Optional[Path] = None, resume: bool = False, progress: bool = False,
                   n_check: int = 100, per_expert_examples: Optional[int] = None,
                   per_layer_expert: bool = False, sanity_checks: bool = True) -> EvalResult:
    """Clean accuracy, robust accuracy per attack and for the per-sample worst case, MoE analyses and checks.

    Args:
        model: A classifier taking [0, 1] images (e.g. `bench.models.normalized(model)`); or a timm model
            expecting normalised input, if `mean` and `std` are given, which wraps it here.
        x: Images in [0, 1], (N, C, H, W), on the CPU (batches move to the model's device).
        y: Labels (N,).
        attacks: Comma list or sequence of attack names and presets (see `bench.attacks.resolve_attacks`).
        eps: Radius in [0, 1] pixel units (L-inf) or L2 units.
        norm: 'Linf' or 'L2'.
        batch_size: Images per attack batch.
        per_expert: For a model with BlockMoE layers, also attack each expert's subpath, measure routing
            under attack and the transfer matrix.
        seed: Seed of every attack's randomness.
        mean: Normalisation mean, to wrap a raw model.
        std: Normalisation std, to wrap a raw model.
        sidecar: JSON-lines file to record each finished (attack, batch) in.
        resume: Skip the batches already recorded in `sidecar`.
        progress: Show each stage's progress on stderr (attacks, sanity checks, per-expert subpaths, routing,
            transfer; `bench.core.progress.progress_bar`).
        n_check: Examples used by the sanity checks that run extra attacks.
        sanity_checks: Run the sanity checks (False: each is recorded as not run, `--no-checks`).
        per_expert_examples: Run the per-expert analysis on only the first N images (None: all). Per-expert
            attacks cost E times an evaluation, so a study may size them apart from the main attacks.
        per_layer_expert: With `per_expert`, also force each expert in each MoE layer alone, the other layers
            routing (L x E subpaths, `bench.evaluation.moe.per_layer_expert`), on the same images.

    Returns:
        The `EvalResult`, accuracies in percent; results are keyed by attack label
        (the attack's name, except an AutoAttack that dropped a part: see `bench.attacks.AutoAttack.label`).
    """
    if norm not in NORMS:
        raise UserError(f'norm {norm!r} is not supported; choose one of {", ".join(NORMS)}')
    parse_eps(eps, norm)
    if batch_size < 1:
        raise UserError(f'--batch-size {batch_size} must be at least 1')
    if len(x) != len(y) or len(x) == 0:
        raise UserError(f'need as many labels as images, and at least one: got {len(x)} images, {len(y)} labels')
    if n_check < 1:  # x[:0] would crash the checks, x[:-1] would quietly drop a point
        raise UserError(f'n_check={n_check} must be at least 1 (the sanity checks attack that many examples)')
    if per_expert_examples is not None and not 1 <= per_expert_examples <= len(x):
        raise UserError(f'per_expert_examples={per_expert_examples} must be between 1 and the {len(x)} images '
                        'evaluated')
    if per_layer_expert and not per_expert:
        raise UserError('per_layer_expert=True needs per_expert=True: the per-layer subpaths are part of the '
                        'per-expert analysis')
    if mean is not None or std is not None:
        model = normalized(model, mean, std)
    names = resolve_attacks(attacks)
    model.eval()
    device = next(model.parameters()).device
    x, y = x.detach().cpu(), y.detach().cpu().long()
    n, n_batches = len(x), (len(x) + batch_size - 1) // batch_size
    with torch.no_grad():
        n_cls = int(model(x[:1].to(device)).shape[-1])
    if int(y.max()) >= n_cls or int(y.min()) < 0:
        raise UserError(f'labels go up to {int(y.max())} but the model outputs {n_cls} classes; '
                        f'set --num-classes to match the data set')
    objs = {_label(name, attack, n_cls): (name, attack)
            for name, attack in ((name, build_attack(name, eps, norm, seed)) for name in names)}
    attack_settings = {label: dict(attack.settings(n_cls), name=name, label=label)
                       for label, (name, attack) in objs.items()}
    moe = per_expert and timm_moe.num_experts(model) > 0
    crafting = moe_analysis.crafting_attack(names, eps, norm, seed) if moe else None
    settings = dict(attacks=attack_settings, requested_attacks=names,
                    attack_labels=list(objs), eps=eps, norm=norm, seed=seed, batch_size=batch_size, n_examples=n,
                    num_classes=n_cls, n_check=n_check, model_config=model_config(model),
                    per_expert_examples=per_expert_examples if moe else None,
                    routing_crafted_with=crafting[1].settings() if crafting else None)
    fingerprint = dict(settings, data=tensor_digest(x, y),
                       weights=tensor_digest(*unwrap(model).state_dict().values()) if sidecar else None)
    log = BatchLog(sidecar, json.loads(json.dumps(fingerprint, default=str)), resume)

    clean = predict(model, x.to(device), batch_size).cpu() == y
    runs: Dict[str, sanity.AttackRecord] = {}
    timing: Dict[str, float] = {}
    warned: Dict[str, List[str]] = {}
    with progress_bar(progress) as bar:  # every stage below reports here: which, how far, ETA
        for label, (name, attack) in objs.items():
            step = stage(bar, f'attack {label}', n_batches)
            ok = torch.zeros(n, dtype=torch.bool)
            examples = torch.empty_like(x)
            seconds, messages = 0.0, []
            for b in range(n_batches):
                sl = slice(b * batch_size, min(n, (b + 1) * batch_size))
                rec, kept = log.get(label, b), log.get_tensors(label, b, sl.stop - sl.start)
                if rec is None or kept is None:  # a record without its examples is not trusted: run it again
                    rec, kept = _attack_batch(model, attack, label, x[sl], y[sl], eps, norm, device, log, b)
                # a point broken on clean input stays broken: attacks may return it unchanged
                ok[sl] = torch.tensor(rec['correct'], dtype=torch.bool) & clean[sl]
                examples[sl] = kept['examples']
                seconds += rec['seconds']
                messages += rec.get('warnings', [])
                step(ips=f'{accuracy(ok[:sl.stop]):.1f}%')
            runs[label] = sanity.AttackRecord(name, attack_settings[label], ok, examples)
            timing[label] = seconds
            if messages:
                warned[label] = list(dict.fromkeys(messages))  # each distinct warning once, in order
        correct = {k: r.correct for k, r in runs.items()}
        worst = robust_under_all(correct.values())  # per sample: robust only if every attack failed

        t0 = time.perf_counter()
        checks = sanity.not_run('--no-checks') if not sanity_checks else sanity.run_checks(model, x.to(device), y.to(device), eps=eps, norm=norm, num_classes=n_cls,
                                   runs=runs, worst_case_correct=worst, seed=seed, batch_size=batch_size,
                                   n_check=n_check, step=stage(bar, 'sanity checks', sum(sanity.check_units(
                                       n, eps, batch_size, n_check, runs).values())))
        timing['sanity'] = time.perf_counter() - t0
        dropped = {k: s['parts_dropped'] for k, s in attack_settings.items() if s.get('parts_dropped')}
        flags = sanity.failed(checks) + sorted({reference_warning_flag(m) for ms in warned.values() for m in ms}) + \
            sorted({f'autoattack_dropped_{part}' for parts in dropped.values() for part in parts})
        result = EvalResult(
            n_examples=n, eps=eps, threat_model=norm, clean_acc=accuracy(clean),
            robust_acc={**{k: accuracy(v) for k, v in correct.items()}, 'worst_case': accuracy(worst)},
            counts={'clean': int(clean.sum()), **{k: int(v.sum()) for k, v in correct.items()},
                    'worst_case': int(worst.sum())},
            correct={'clean': clean.int().tolist(), **{k: v.int().tolist() for k, v in correct.items()},
                     'worst_case': worst.int().tolist()},
            routing=moe_analysis.clean_routing(model, x, batch_size) if timm_moe.num_experts(model) else None,
            autoattack_attacks_run={k: s['parts_run'] for k, s in attack_settings.items() if 'parts_run' in s},
            attack_warnings=warned, sanity=checks, flags=flags, settings=settings, timing=timing)
        if moe:
            t0 = time.perf_counter()
            m = len(x) if per_expert_examples is None else per_expert_examples
            gated = _routing_examples(model, crafting[1], x[:m], y[:m], batch_size, device, log,
                                      stage(bar, f'routing: {crafting[0]} on the gated model', -(-m // batch_size)))
            analysis = moe_analysis.analyse(model, x[:m], y[:m], attacks=names, eps=eps, norm=norm, seed=seed,
                                            batch_size=batch_size, x_adv_gated=gated, bar=bar,
                                            per_layer=per_layer_expert)
            timing['moe_analysis'] = time.perf_counter() - t0
            # per-sample results as 0/1 lists, like the gated model's
            for row in analysis['per_expert'] + (analysis['per_layer_expert'] or []):
                row['correct'] = {k: v.int().tolist() if torch.is_tensor(v) else v for k, v in row['correct'].items()}
            result.per_expert, result.per_layer_expert = analysis['per_expert'], analysis['per_layer_expert']
            result.routing_under_attack = analysis['routing_under_attack']
            result.transfer, result.transfer_info = analysis['transfer'], analysis['transfer_info']
            settings['per_expert_attacks'] = analysis['per_expert_attacks']
            settings['per_layer_expert'] = per_layer_expert
        elif per_expert:
            settings['per_expert_attacks'] = None  # dense model: nothing to force
    return result


def _label(name: str, attack: Any, n_cls: int) -> str:
    """The key an attack's results are stored under: its name, unless it will not run as that name promises."""
    return attack.label(name, n_cls) if isinstance(attack, AutoAttack) else name


def model_config(model: nn.Module) -> Dict[str, Any]:
    """What defines the evaluated network, as far as it tells: class, timm architecture, classes, MoE config."""
    inner = unwrap(model)
    cfg = getattr(inner, 'pretrained_cfg', None) or {}
    moe = getattr(inner, 'moe_config', None)
    return dict(model_class=type(inner).__name__, architecture=cfg.get('architecture'),
                num_classes=getattr(inner, 'num_classes', None), in_chans=getattr(inner, 'in_chans', None),
                moe_config=dict(moe) if isinstance(moe, dict) else None,
                normalization=dict(mean=model.mean.flatten().tolist(), std=model.std.flatten().tolist())
                if isinstance(model, Normalized) else None)


def _attack_batch(model: nn.Module, attack: Any, label: str, xb: torch.Tensor, yb: torch.Tensor, eps: float,
                  norm: str, device: torch.device, log: BatchLog, b: int) -> Tuple[dict, Dict[str, torch.Tensor]]:
    """Run one attack on one batch; record its correctness, warnings and examples. Returns (record, tensors)."""
    xb, yb = xb.to(device), yb.to(device)
    t0 = time.perf_counter()
    with reference_warnings() as caught:
        x_adv = attack(model, xb, yb)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t0
    _check_ball(x_adv, xb, eps, norm, label)
    batch_ok = predict(model, x_adv) == yb
    # the example that broke each point: x_adv where it did, x where it did not (x breaks a point that starts
    # misclassified); the sanity checks re-verify these, so they are stored before the record
    kept = {'examples': torch.where(batch_ok.view(-1, *[1] * (xb.dim() - 1)), xb, x_adv).cpu()}
    log.put_tensors(label, b, kept)
    log.put(label, b, batch_ok.cpu().tolist(), dt, caught)
    return log.get(label, b), kept


def _routing_examples(model: nn.Module, crafter: Any, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                      device: torch.device, log: BatchLog,
                      step: Callable[[], None] = lambda: None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x_adv, attacked) of the crafting attack against the gated model, per batch, kept for --resume."""
    advs, attacked = [], []
    for b, i in enumerate(range(0, len(x), batch_size)):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        kept = log.get_tensors(ROUTING_KEY, b, len(xb))
        if kept is None or set(kept) != {'x_adv', 'attacked'}:
            adv, hit = crafter.run(model, xb.to(device), yb.to(device))
            kept = {'x_adv': adv.cpu(), 'attacked': hit.cpu()}
            log.put_tensors(ROUTING_KEY, b, kept)
        advs.append(kept['x_adv'])
        attacked.append(kept['attacked'].bool())
        step()
    return torch.cat(advs), torch.cat(attacked)


def _check_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str, name: str) -> None:
    """An attack that leaves the threat model would inflate its success: refuse its result outright."""
    if not bool(sanity.in_ball(x_adv, x, eps, norm).all()):
        over = (perturbation_norm(x_adv - x, norm) - eps).max().item()
        raise RuntimeError(f'{name} returned examples outside the {norm} ball of radius {eps} or outside [0, 1] '
                           f'(excess {over:.3g}); this is a bug in the attack')

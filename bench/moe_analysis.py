"""MoE-specific robustness results: per-expert subpaths, routing under attack, and transfer between experts.

- Per-expert subpaths (the paper's "robust subpaths"): with `timm_moe.force_expert(model, i)` every MoE layer
  sends every image through expert i; each subpath is attacked on its own.
- Routing under attack: the fraction of images whose selected expert set changes (in any MoE layer) between
  the clean and the adversarial input, and the expert load on clean vs adversarial data.
- Transfer: entry [i][j] is the accuracy of subpath j on the adversarial examples crafted against subpath i
  (the diagonal is each subpath's own robust accuracy under that attack).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

import timm_moe
from bench.attacks import Attack, accuracy, build_attack, predict


def per_expert_attack_names(attacks: Sequence[str]) -> List[str]:
    """The attacks to run on each subpath: the evaluation's PGD/APGD-CE attacks, or APGD-CE if it ran none.

    Running AutoAttack, FAB or Square once per expert would multiply the cost of the evaluation by E; the
    gradient attacks already in the list show the subpaths' robustness at a known cost.
    """
    names = [a for a in attacks if a.startswith('pgd') or a.startswith('apgd-ce')]
    return names or ['apgd-ce']


def _attack_batched(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    batch_size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.cat([attack(model, x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)).cpu()
                      for i in range(0, len(x), batch_size)])


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    return predict(model, x.to(device), batch_size).cpu() == y.cpu()


def per_expert(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[str], eps: float,
               norm: str = 'Linf', seed: int = 0, batch_size: int = 128,
               ) -> Tuple[List[dict], List[torch.Tensor]]:
    """Clean and robust accuracy of each expert's subpath.

    Args:
        model: A model with BlockMoE layers, in eval mode, taking [0, 1] images.
        x: Images (CPU).
        y: Labels.
        attacks: Attack names to run on each subpath.
        eps: Radius.
        norm: 'Linf' or 'L2'.
        seed: Attack seed.
        batch_size: Attack batch size.

    Returns:
        The per-expert rows, and for each expert the adversarial examples of the first attack (for transfer).
    """
    rows, advs = [], []
    for i in range(timm_moe.num_experts(model)):
        with timm_moe.force_expert(model, i):
            row = dict(expert=i, clean_acc=accuracy(_correct(model, x, y, batch_size)), robust_acc={})
            for k, name in enumerate(attacks):
                x_adv = _attack_batched(build_attack(name, eps, norm, seed), model, x, y, batch_size)
                row['robust_acc'][name] = accuracy(_correct(model, x_adv, y, batch_size))
                if k == 0:
                    advs.append(x_adv)
        rows.append(row)
    return rows, advs


def transfer_matrix(model: nn.Module, advs: Sequence[torch.Tensor], y: torch.Tensor,
                    batch_size: int = 128) -> List[List[float]]:
    """[i][j] = accuracy (%) of expert j's subpath on the examples crafted against expert i."""
    matrix = []
    for adv in advs:
        row = []
        for j in range(len(advs)):
            with timm_moe.force_expert(model, j):
                row.append(accuracy(_correct(model, adv, y, batch_size)))
        matrix.append(row)
    return matrix


def _expert_sets(model: nn.Module, x: torch.Tensor, batch_size: int) -> Dict[str, torch.Tensor]:
    """Per MoE layer, each image's sorted selected-expert indices (B, k), from the gated forward."""
    device = next(model.parameters()).device
    sets: Dict[str, List[torch.Tensor]] = {}
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size].to(device))
            for name, r in timm_moe.routing(model).items():
                sets.setdefault(name, []).append(r['indices'].sort(dim=1).values.cpu())
    return {k: torch.cat(v) for k, v in sets.items()}


def _load(model: nn.Module, x: torch.Tensor, batch_size: int) -> Dict[str, List[float]]:
    timm_moe.reset_routing_stats(model)
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size].to(device))
    loads = {k: v['load'] for k, v in timm_moe.routing_stats(model).items()}
    timm_moe.reset_routing_stats(model)
    return loads


def routing_under_attack(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                         batch_size: int = 128) -> dict:
    """How routing moves under attack.

    Args:
        model: The gated model.
        x: Clean images.
        x_adv: Adversarial images crafted against the gated model, aligned with x.
        batch_size: Forward batch size.

    Returns:
        dict(changed_fraction, load_clean, load_adv, per_layer): fractions in [0, 1]; the top-level loads are
        averaged over MoE layers, `per_layer` has each layer's own numbers.
    """
    clean_sets, adv_sets = _expert_sets(model, x, batch_size), _expert_sets(model, x_adv, batch_size)
    load_clean, load_adv = _load(model, x, batch_size), _load(model, x_adv, batch_size)
    changed_any = torch.zeros(len(x), dtype=torch.bool)
    per_layer = {}
    for name in clean_sets:
        changed = (clean_sets[name] != adv_sets[name]).any(1)
        changed_any |= changed
        per_layer[name] = dict(changed_fraction=changed.float().mean().item(), load_clean=load_clean[name],
                               load_adv=load_adv[name])
    mean = lambda loads: torch.tensor(list(loads.values())).mean(0).tolist()  # noqa: E731
    return dict(changed_fraction=changed_any.float().mean().item(), load_clean=mean(load_clean),
                load_adv=mean(load_adv), per_layer=per_layer, n_images=len(x))


def analyse(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attacks: Sequence[str], eps: float,
            norm: str = 'Linf', seed: int = 0, batch_size: int = 128,
            x_adv_gated: Optional[torch.Tensor] = None) -> dict:
    """Per-expert subpaths, routing under attack and the transfer matrix, for a model with BlockMoE layers.

    Args:
        model: The gated model in eval mode, taking [0, 1] images.
        x: Images (CPU).
        y: Labels.
        attacks: The evaluation's attack names (the subpaths get `per_expert_attack_names(attacks)`).
        eps: Radius.
        norm: 'Linf' or 'L2'.
        seed: Attack seed.
        batch_size: Batch size.
        x_adv_gated: Adversarial examples of the gated model from the first subpath attack, if the evaluation
            already has them; crafted here otherwise.

    Returns:
        dict(per_expert, routing_under_attack, transfer, per_expert_attacks).
    """
    names = per_expert_attack_names(attacks)
    rows, advs = per_expert(model, x, y, names, eps, norm, seed, batch_size)
    if x_adv_gated is None:
        x_adv_gated = _attack_batched(build_attack(names[0], eps, norm, seed), model, x, y, batch_size)
    routing = routing_under_attack(model, x, x_adv_gated, batch_size)
    routing['attack'] = names[0]
    return dict(per_expert=rows, routing_under_attack=routing, transfer=transfer_matrix(model, advs, y, batch_size),
                per_expert_attacks=names)

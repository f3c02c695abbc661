"""MoE-specific robustness results: per-expert subpaths, routing under attack, and transfer between experts.

- Per-expert subpaths (the paper's "robust subpaths"): with `timm_moe.force_expert(model, i)` every MoE layer
  sends every image through expert i; each subpath is attacked on its own.
- Per-layer subpaths (optional, `per_layer_expert`): for a model with several MoE layers, expert e is forced in one
  layer only while the other layers route as usual: L x E subpaths, each attacked on its own. They tell which
  layer's experts differ in robustness, which "expert e in every layer" mixes up.
- Routing under attack: the fraction of the attacked images whose selected expert set changes (in any MoE
  layer) between the clean and the adversarial input, and the expert load on clean vs adversarial data.
- Transfer: entry [i][j] is the accuracy of subpath j on the adversarial examples crafted against subpath i.

Routing and transfer compare x_adv with x, so their examples come from ONE crafting attack that makes a real
attempt on every point: `crafting_attack()`, our PGD with `final_iterate=True` (every point attacked, also those
misclassified from the start; the last iterate kept for every point). The evaluation's own attacks would not
do: they return x for points misclassified at the start and stop improving a point once it is broken, so
"routing changed" would be measured on a mix of clean images, early iterates and last iterates.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

import timm_moe
from bench.attacks import PGD, Attack, accuracy, build_attack, predict
from bench.core.progress import stage

Step = Callable[..., None]  # called once per batch done (`bench.core.progress.stage`)


def _no_step(n: float = 1, **fields: Any) -> None:
    pass

# steps of the crafting PGD when the evaluation ran no PGD of its own (the paper's PGD-20)
CRAFTING_STEPS = 20


def per_expert_attack_names(attacks: Sequence[str]) -> List[str]:
    """The attacks to run on each subpath: the evaluation's PGD/APGD-CE attacks, or APGD-CE if it ran none.

    Running AutoAttack, FAB or Square once per expert would multiply the cost of the evaluation by E; the
    gradient attacks already in the list show the subpaths' robustness at a known cost.
    """
    names = [a for a in attacks if a.startswith('pgd') or a.startswith('apgd-ce')]
    return names or ['apgd-ce']


def crafting_attack(attacks: Sequence[str], eps: float, norm: str = 'Linf', seed: int = 0) -> Tuple[str, PGD]:
    """(label, attack) that crafts the examples of routing under attack and of the transfer matrix.

    Our PGD with `final_iterate=True`, with the steps of the evaluation's first PGD (else `CRAFTING_STEPS`) and
    otherwise the paper's PGD settings (step eps / 4, no random start).
    """
    steps = next((build_attack(a, eps, norm, seed).steps for a in attacks if a.startswith('pgd')), CRAFTING_STEPS)
    return f'pgd{steps}-last', PGD(eps, norm, steps=steps, seed=seed, final_iterate=True)


def craft(attack: PGD, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
          batch_size: int, step: Step = _no_step) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x_adv, attacked) over batches, on the CPU: the examples and which points the attack ran on."""
    device = next(model.parameters()).device
    advs, attacked = [], []
    for i in range(0, len(x), batch_size):
        adv, hit = attack.run(model, x[i:i + batch_size].to(device), y[i:i + batch_size].to(device))
        advs.append(adv.cpu())
        attacked.append(hit.cpu())
        step()
    return torch.cat(advs), torch.cat(attacked)


def _attack_batched(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    batch_size: int, step: Step = _no_step) -> torch.Tensor:
    device = next(model.parameters()).device
    advs = []
    for i in range(0, len(x), batch_size):
        advs.append(attack(model, x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)).cpu())
        step()
    return torch.cat(advs)


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    return predict(model, x.to(device), batch_size).cpu() == y.cpu()


def per_expert(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[str], eps: float,
               norm: str = 'Linf', seed: int = 0, batch_size: int = 128, crafter: Optional[PGD] = None,
               step: Step = _no_step) -> Tuple[List[dict], List[torch.Tensor], List[int]]:
    """Clean and robust accuracy of each expert's subpath, and each subpath's crafted examples for transfer.

    Args:
        model: A model with BlockMoE layers, in eval mode, taking [0, 1] images.
        x: Images (CPU).
        y: Labels.
        attacks: Attack names to run on each subpath.
        eps: Radius.
        norm: 'Linf' or 'L2'.
        seed: Attack seed.
        batch_size: Attack batch size.
        crafter: The crafting attack of the transfer matrix (default: `crafting_attack(attacks, ...)`).
        step: Called after each attacked batch: E x (attacks + 1) x batches calls in all.

    Returns:
        The per-expert rows; for each expert the crafter's examples against its subpath; and for each expert
        how many points the crafter attacked.
    """
    crafter = crafter or crafting_attack(attacks, eps, norm, seed)[1]
    rows, advs, attacked = [], [], []
    for i in range(timm_moe.num_experts(model)):
        with timm_moe.force_expert(model, i):
            row = dict(expert=i, **_subpath(model, x, y, attacks, eps, norm, seed, batch_size, step, f'expert {i}'))
            x_adv, hit = craft(crafter, model, x, y, batch_size, lambda: step(ips=f'expert {i} crafting'))
            advs.append(x_adv)
            attacked.append(int(hit.sum()))
        rows.append(row)
    return rows, advs, attacked


def _subpath(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[str], eps: float, norm: str,
             seed: int, batch_size: int, step: Step, what: str) -> dict:
    """Clean and robust accuracy of the model as it is forced now (one subpath); `step` after each batch."""
    clean = _correct(model, x, y, batch_size)
    row = dict(clean_acc=accuracy(clean), robust_acc={}, n_examples=len(x), correct={'clean': clean})
    for name in attacks:
        x_adv = _attack_batched(build_attack(name, eps, norm, seed), model, x, y, batch_size,
                                lambda: step(ips=f'{what} {name}'))
        # a point the subpath misclassifies clean stays broken, as for the gated model
        ok = _correct(model, x_adv, y, batch_size) & clean
        row['robust_acc'][name] = accuracy(ok)
        row['correct'][name] = ok
    return row


def per_layer_expert(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[str], eps: float,
                     norm: str = 'Linf', seed: int = 0, batch_size: int = 128, step: Step = _no_step) -> List[dict]:
    """Clean and robust accuracy of each (MoE layer, expert) subpath: expert e forced in that layer only, every
    other MoE layer routing as usual (`timm_moe.force_expert(model, e, layers=layer)`).

    Args:
        model: A model with MoE layers, in eval mode, taking [0, 1] images.
        x: Images (CPU).
        y: Labels.
        attacks: Attack names to run on each subpath.
        eps: Radius.
        norm: 'Linf' or 'L2'.
        seed: Attack seed.
        batch_size: Attack batch size.
        step: Called after each attacked batch: L x E x attacks x batches calls in all.

    Returns:
        L x E rows, layer by layer in the model's order: dict(layer, expert, clean_acc, robust_acc, n_examples,
        correct), `layer` named as in the routing statistics.
    """
    rows = []
    for layer, moe in timm_moe.moe_layers(model):
        for e in range(moe.num_experts):
            with timm_moe.force_expert(model, e, layers=layer):
                rows.append(dict(layer=layer, expert=e, **_subpath(model, x, y, attacks, eps, norm, seed, batch_size,
                                                                   step, f'{layer} expert {e}')))
    return rows


def transfer_matrix(model: nn.Module, advs: Sequence[torch.Tensor], y: torch.Tensor,
                    batch_size: int = 128, step: Step = _no_step) -> List[List[float]]:
    """[i][j] = accuracy (%) of expert j's subpath on the examples crafted against expert i; `step` after each."""
    matrix = []
    for adv in advs:
        row = []
        for j in range(len(advs)):
            with timm_moe.force_expert(model, j):
                row.append(accuracy(_correct(model, adv, y, batch_size)))
            step()
        matrix.append(row)
    return matrix


def _expert_sets(model: nn.Module, x: torch.Tensor, batch_size: int) -> Dict[str, torch.Tensor]:
    """Per MoE layer, each image's sorted selected-expert indices (B, k), from the gated forward."""
    device = next(model.parameters()).device
    sets: Dict[str, List[torch.Tensor]] = {}
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size].to(device))
            for name, r in timm_moe.last_routing(model).items():
                sets.setdefault(name, []).append(r['indices'].sort(dim=1).values.cpu())
    return {k: torch.cat(v) for k, v in sets.items()}


def _routing_pass(model: nn.Module, x: torch.Tensor, batch_size: int) -> Dict[str, Dict[str, Any]]:
    """`timm_moe.routing_stats` over a forward pass of exactly these images (counts start and end at zero)."""
    timm_moe.reset_routing_stats(model)
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size].to(device))
    stats = timm_moe.routing_stats(model)
    timm_moe.reset_routing_stats(model)
    return stats


def _load(model: nn.Module, x: torch.Tensor, batch_size: int) -> Dict[str, List[float]]:
    return {k: v['load'] for k, v in _routing_pass(model, x, batch_size).items()}


def clean_routing(model: nn.Module, x: torch.Tensor, batch_size: int = 128) -> Dict[str, Any]:
    """Expert load, importance and collapse on clean images: the routing statistics a registry entry keeps.

    Every MoE run gets these (a forward pass per image, so affordable on every point), unlike the per-expert
    attacks; the top-level numbers average the MoE layers, `layers` has each layer's load.

    Returns:
        dict(load, importance, collapse, n_images, layers): `collapse` is 1 - H(load) / log E (0: uniform load,
        1: every image to one expert), as `timm_moe.routing_stats` computes it.
    """
    stats = _routing_pass(model, x, batch_size)
    mean = lambda key: torch.tensor([s[key] for s in stats.values()], dtype=torch.float64).mean(0).tolist()  # noqa: E731
    return dict(load=mean('load'), importance=mean('importance'), collapse=mean('collapse'), n_images=len(x),
                layers={name: list(s['load']) for name, s in stats.items()})


def _fraction(flags: torch.Tensor, over: torch.Tensor) -> Optional[float]:
    n = int(over.sum())
    return int((flags & over).sum()) / n if n else None


def routing_under_attack(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, batch_size: int = 128,
                         attacked: Optional[torch.Tensor] = None) -> dict:
    """How routing moves under attack.

    Args:
        model: The gated model.
        x: Clean images.
        x_adv: Adversarial images crafted against the gated model, aligned with x.
        batch_size: Forward batch size.
        attacked: Which points the attack ran on (None: all). The others are x itself, and would dilute the
            changed fraction with images that never moved.

    Returns:
        dict(changed_fraction, attacked_points, load_clean, load_adv, per_layer, n_images): changed_fraction is
        over the attacked points only (None if none was attacked); the loads are over all images, the
        top-level ones averaged over MoE layers, `per_layer` has each layer's own numbers.
    """
    attacked = torch.ones(len(x), dtype=torch.bool) if attacked is None else attacked.cpu().bool()
    clean_sets, adv_sets = _expert_sets(model, x, batch_size), _expert_sets(model, x_adv, batch_size)
    load_clean, load_adv = _load(model, x, batch_size), _load(model, x_adv, batch_size)
    changed_any = torch.zeros(len(x), dtype=torch.bool)
    per_layer = {}
    for name in clean_sets:
        changed = (clean_sets[name] != adv_sets[name]).any(1)
        changed_any |= changed
        per_layer[name] = dict(changed_fraction=_fraction(changed, attacked), load_clean=load_clean[name],
                               load_adv=load_adv[name])
    mean = lambda loads: torch.tensor(list(loads.values())).mean(0).tolist()  # noqa: E731
    return dict(changed_fraction=_fraction(changed_any, attacked), attacked_points=int(attacked.sum()),
                load_clean=mean(load_clean), load_adv=mean(load_adv), per_layer=per_layer, n_images=len(x))


def analyse(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attacks: Sequence[str], eps: float,
            norm: str = 'Linf', seed: int = 0, batch_size: int = 128,
            x_adv_gated: Optional[Tuple[torch.Tensor, torch.Tensor]] = None, bar: Any = None,
            per_layer: bool = False) -> dict:
    """Per-expert subpaths, routing under attack and the transfer matrix, for a model with MoE layers.

    Args:
        model: The gated model in eval mode, taking [0, 1] images.
        x: Images (CPU).
        y: Labels.
        attacks: The evaluation's attack names (the subpaths get `per_expert_attack_names(attacks)`).
        eps: Radius.
        norm: 'Linf' or 'L2'.
        seed: Attack seed.
        batch_size: Batch size.
        x_adv_gated: (examples, attacked) of `crafting_attack(attacks, ...)` against the gated model, if the
            evaluation already has them (it keeps them for --resume); crafted here otherwise.
        bar: Where each stage reports its progress (`bench.core.progress.progress_bar`); None: nowhere.
        per_layer: Also the per-layer subpaths (`per_layer_expert`). With one MoE layer they are the per-expert
            subpaths, whose rows are reused (labelled with the layer) instead of attacked again.

    Returns:
        dict(per_expert, per_layer_expert, routing_under_attack, transfer, transfer_info, per_expert_attacks);
        per_layer_expert is None unless asked for; routing_under_attack and transfer_info name the crafting
        attack (`crafted_with`, its settings; `attack`, its label) and the attacked points.
    """
    names = per_expert_attack_names(attacks)
    label, crafter = crafting_attack(attacks, eps, norm, seed)
    n_experts, n_batches = timm_moe.num_experts(model), -(-len(x) // batch_size)
    rows, advs, attacked = per_expert(
        model, x, y, names, eps, norm, seed, batch_size, crafter,
        stage(bar, f'per-expert subpaths: {n_experts} experts x {"+".join(names)}+{label}',
              n_experts * (len(names) + 1) * n_batches))
    if x_adv_gated is None:
        x_adv_gated = craft(crafter, model, x, y, batch_size, stage(bar, f'routing: {label} on the gated model',
                                                                    n_batches))
    step = stage(bar, 'routing under attack', 1)
    routing = routing_under_attack(model, x, x_adv_gated[0], batch_size, attacked=x_adv_gated[1])
    step()
    routing.update(attack=label, crafted_with=crafter.settings())
    transfer_info = dict(attack=label, crafted_with=crafter.settings(), attacked_points=attacked,
                         n_images=len(x))
    transfer = transfer_matrix(model, advs, y, batch_size, stage(bar, 'transfer matrix', n_experts ** 2))
    layer_rows = None
    if per_layer:
        layers = timm_moe.moe_layers(model)
        if len(layers) == 1:
            layer_rows = [dict(layer=layers[0][0], **row) for row in rows]
        else:
            layer_rows = per_layer_expert(
                model, x, y, names, eps, norm, seed, batch_size,
                stage(bar, f'per-layer subpaths: {len(layers)} layers x {n_experts} experts x {"+".join(names)}',
                      len(layers) * n_experts * len(names) * n_batches))
    return dict(per_expert=rows, per_layer_expert=layer_rows, routing_under_attack=routing, transfer=transfer,
                transfer_info=transfer_info, per_expert_attacks=names)

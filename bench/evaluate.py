"""`timm-moe eval`: clean and robust accuracy per attack and for the per-sample worst case, with sanity checks.

    timm-moe eval --model resnet18_blockmoe_e8_k1 --checkpoint runs/train/model.pth \\
        --dataset cifar100 --attacks standard --n-examples 1000 --json results/aa.json --resume

The model is wrapped with `bench.models.normalized` (the data set's mean/std), so attacks work in [0, 1].
With --json, every finished (attack, batch) is appended to a sidecar `OUT.partial.jsonl` next to it (and its
adversarial examples, which the sanity checks re-verify, and the routing analysis' examples are kept in
`OUT.partial.jsonl.adv/`); --resume skips the batches recorded there, and the final JSON is written atomically
only when everything is done. docs/EVALUATION.md describes the result, the checks and the flags.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

import timm
import timm_moe
from bench.evaluation import checks as sanity, moe as moe_analysis
from bench.attacks import (NORMS, PRESETS, AutoAttack, accuracy, attack_choices, build_attack, parse_eps,
                           perturbation_norm, predict, reference_warning_flag, reference_warnings, resolve_attacks,
                           robust_under_all)
from bench.config import TORCHCOMPILE_DEFAULT, check_torchcompile, torchcompile_settings
from bench.core.atomic import atomic_open
from bench.models import atomic_save, read_torch_file
from bench.core.errors import UserError
from bench.models import Normalized, normalized, unwrap
from bench.core.progress import progress_bar

SIDECAR_SUFFIX = '.partial.jsonl'
# key of the routing analysis' crafted examples in the sidecar's example store (no attack has this name)
ROUTING_KEY = 'routing'


# ---------------------------------------------------------------------------------------------- resume sidecar

def tensor_digest(*tensors: torch.Tensor) -> str:
    """sha256 of the tensors' bytes: ties a sidecar to its exact data and weights."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class BatchLog:
    """Per-(attack, batch) results appended to a JSON-lines sidecar, so that a killed run can resume.

    The first line is a fingerprint of everything that determines the results (attack settings, eps, data,
    weights); resuming against a different fingerprint is refused rather than mixing two evaluations.
    Each batch's adversarial examples (which the sanity checks re-verify, and which routing under attack
    reuses) go to `<path>.adv/`, one file per (attack, batch), written before the batch's record; a record
    whose examples are missing or unreadable is run again rather than trusted.

    Args:
        path: The sidecar file, or None to keep nothing.
        fingerprint: JSON-able description of the evaluation.
        resume: Reuse the batches recorded in `path` (a missing file simply starts afresh).
    """

    def __init__(self, path: Optional[Path], fingerprint: dict, resume: bool) -> None:
        self.path = Path(path) if path is not None else None
        self.adv_dir = self.adv_dir_of(self.path) if self.path is not None else None
        self.records: Dict[Tuple[str, int], dict] = {}
        if self.path is None:
            return
        if resume and self.path.exists():
            lines = self.path.read_text().splitlines()
            header = json.loads(lines[0]) if lines else {}
            if header.get('fingerprint') != fingerprint:
                raise UserError(f'--resume: {self.path} was written by a different evaluation (model, data or '
                                f'settings differ); delete it or run without --resume')
            for line in lines[1:]:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line torn by a kill: that batch simply runs again
                    continue
                self.records[(rec['attack'], rec['batch'])] = rec
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(self.adv_dir, ignore_errors=True)  # examples of an older evaluation
            self.path.write_text(json.dumps({'fingerprint': fingerprint}) + '\n')

    def get(self, attack: str, batch: int) -> Optional[dict]:
        return self.records.get((attack, batch))

    def put(self, attack: str, batch: int, correct: List[bool], seconds: float,
            warnings: Sequence[str] = ()) -> None:
        rec = dict(attack=attack, batch=batch, correct=[int(c) for c in correct], seconds=seconds,
                   warnings=list(warnings))
        self.records[(attack, batch)] = rec
        if self.path is not None:
            with self.path.open('a') as f:
                f.write(json.dumps(rec) + '\n')
                f.flush()
                os.fsync(f.fileno())

    def put_tensors(self, key: str, batch: int, tensors: Dict[str, torch.Tensor]) -> None:
        if self.adv_dir is not None:
            self.adv_dir.mkdir(exist_ok=True)
            atomic_save({k: v.detach().cpu() for k, v in tensors.items()}, self.adv_dir / f'{key}-{batch}.pt')

    def get_tensors(self, key: str, batch: int, n: int) -> Optional[Dict[str, torch.Tensor]]:
        """The stored tensors of (key, batch), or None when missing, unreadable or not `n` rows each (the caller
        computes them again)."""
        f = self.adv_dir / f'{key}-{batch}.pt' if self.adv_dir is not None else None
        if f is None or not f.is_file():
            return None
        try:
            obj = read_torch_file(f, 'stored adversarial examples')
        except UserError:
            return None
        ok = isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) and len(v) == n for v in obj.values())
        return obj if ok else None

    @staticmethod
    def adv_dir_of(path: Path) -> Path:
        return Path(str(path) + '.adv')

    @staticmethod
    def discard(path: Optional[Path]) -> None:
        """Delete a sidecar and its stored examples: the evaluation is complete."""
        if path is not None:
            Path(path).unlink(missing_ok=True)
            shutil.rmtree(BatchLog.adv_dir_of(path), ignore_errors=True)


# ---------------------------------------------------------------------------------------------- evaluation

def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Union[str, Sequence[str]] = 'quick',
                   eps: float = 8 / 255, norm: str = 'Linf', batch_size: int = 128, per_expert: bool = True,
                   seed: int = 0, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                   sidecar: Optional[Path] = None, resume: bool = False, progress: bool = False,
                   n_check: int = 100) -> Dict[str, Any]:
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
        progress: Show a rich progress bar per attack.
        n_check: Examples used by the sanity checks that run extra attacks.

    Returns:
        The evaluation result of docs/CONTRACTS.md, accuracies in percent; results are keyed by attack label
        (the attack's name, except an AutoAttack that dropped a part: see `bench.attacks.AutoAttack.label`).
    """
    if norm not in NORMS:
        raise UserError(f'norm {norm!r} is not supported; choose one of {", ".join(NORMS)}')
    parse_eps(eps, norm)
    if batch_size < 1:
        raise UserError(f'--batch-size {batch_size} must be at least 1')
    if len(x) != len(y) or len(x) == 0:
        raise UserError(f'need as many labels as images, and at least one: got {len(x)} images, {len(y)} labels')
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
    settings = dict(attacks=attack_settings, attack_settings=attack_settings, requested_attacks=names,
                    attack_labels=list(objs), eps=eps, norm=norm, seed=seed, batch_size=batch_size, n_examples=n,
                    num_classes=n_cls, n_check=n_check, model_config=model_config(model),
                    routing_crafted_with=crafting[1].settings() if crafting else None)
    fingerprint = dict(settings, data=tensor_digest(x, y),
                       weights=tensor_digest(*unwrap(model).state_dict().values()) if sidecar else None)
    log = BatchLog(sidecar, json.loads(json.dumps(fingerprint, default=str)), resume)

    clean = predict(model, x.to(device), batch_size).cpu() == y
    runs: Dict[str, sanity.AttackRecord] = {}
    timing: Dict[str, float] = {}
    warned: Dict[str, List[str]] = {}
    with progress_bar(progress) as bar:
        for label, (name, attack) in objs.items():
            task = bar.add_task(label, total=n_batches, ips='')
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
                bar.update(task, advance=1, ips=f'{accuracy(ok[:sl.stop]):.1f}%')
            runs[label] = sanity.AttackRecord(name, attack_settings[label], ok, examples)
            timing[label] = seconds
            if messages:
                warned[label] = list(dict.fromkeys(messages))  # each distinct warning once, in order
    correct = {k: r.correct for k, r in runs.items()}
    ensemble = robust_under_all(correct.values())

    t0 = time.perf_counter()
    checks = sanity.run_checks(model, x.to(device), y.to(device), eps=eps, norm=norm, num_classes=n_cls,
                               runs=runs, ensemble_correct=ensemble, seed=seed, batch_size=batch_size,
                               n_check=n_check)
    timing['sanity'] = time.perf_counter() - t0
    dropped = {k: s['parts_dropped'] for k, s in attack_settings.items() if s.get('parts_dropped')}
    flags = sanity.failed(checks) + sorted({reference_warning_flag(m) for ms in warned.values() for m in ms}) + \
        sorted({f'autoattack_dropped_{part}' for parts in dropped.values() for part in parts})
    result: Dict[str, Any] = dict(
        n_examples=n, eps=eps, threat_model=norm, clean_acc=accuracy(clean),
        robust_acc={**{k: accuracy(v) for k, v in correct.items()}, 'ensemble': accuracy(ensemble)},
        counts={'clean': int(clean.sum()), **{k: int(v.sum()) for k, v in correct.items()},
                'ensemble': int(ensemble.sum())},
        correct={'clean': clean.int().tolist(), **{k: v.int().tolist() for k, v in correct.items()},
                 'ensemble': ensemble.int().tolist()},
        per_expert=None, routing_under_attack=None, transfer=None, transfer_info=None,
        autoattack_attacks_run={k: s['parts_run'] for k, s in attack_settings.items() if 'parts_run' in s},
        attack_warnings=warned, sanity=checks, flags=flags, settings=settings, timing=timing)
    if moe:
        t0 = time.perf_counter()
        gated = _routing_examples(model, crafting[1], x, y, batch_size, device, log)
        analysis = moe_analysis.analyse(model, x, y, attacks=names, eps=eps, norm=norm, seed=seed,
                                        batch_size=batch_size, x_adv_gated=gated)
        timing['moe_analysis'] = time.perf_counter() - t0
        result.update(per_expert=analysis['per_expert'], routing_under_attack=analysis['routing_under_attack'],
                      transfer=analysis['transfer'], transfer_info=analysis['transfer_info'])
        settings['per_expert_attacks'] = analysis['per_expert_attacks']
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
                      device: torch.device, log: BatchLog) -> Tuple[torch.Tensor, torch.Tensor]:
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
    return torch.cat(advs), torch.cat(attacked)


def _check_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str, name: str) -> None:
    """An attack that leaves the threat model would inflate its success: refuse its result outright."""
    if not bool(sanity.in_ball(x_adv, x, eps, norm).all()):
        over = (perturbation_norm(x_adv - x, norm) - eps).max().item()
        raise RuntimeError(f'{name} returned examples outside the {norm} ball of radius {eps} or outside [0, 1] '
                           f'(excess {over:.3g}); this is a bug in the attack')


# ---------------------------------------------------------------------------------------------- model loading

def _parse_kwargs(text: Optional[str]) -> Dict[str, Any]:
    if not text:
        return {}
    from bench.config import _parse_mapping  # the same k=v,k=v syntax as `timm-moe train --model-kwargs`
    return _parse_mapping('--model-kwargs', text)


def run_config_kwargs(checkpoint: Optional[Path]) -> Dict[str, Any]:
    """`model_kwargs` from the run config (config.yaml, as `timm-moe train` writes) next to a checkpoint."""
    if checkpoint is None:
        return {}
    cfg = Path(checkpoint).parent / 'config.yaml'
    if not cfg.exists():
        return {}
    import yaml
    try:
        data = yaml.safe_load(cfg.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f'{cfg} is not valid YAML: {str(e).splitlines()[0]}') from None
    kw = data.get('model_kwargs') if isinstance(data, dict) else None
    return dict(kw) if isinstance(kw, dict) else {}


def _state_dict_of(obj: Any, path: Path) -> Dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ('state_dict', 'model', 'state_dict_ema'):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f'--checkpoint {path} holds no state_dict (a dict of tensors, or one under '
                        f"'state_dict' or 'model')")
    for prefix in ('module.', 'model.'):  # DDP and the Normalized wrapper
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def load_checkpoint(model: nn.Module, path: Union[str, Path], label: str = 'the model') -> None:
    """Load a checkpoint into `model`, refusing any mismatch with the missing/unexpected keys named.

    Accepts a plain state_dict (timm's format), or a dict with it under 'state_dict' or 'model' (our trainer's
    resume state).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f'--checkpoint {path} does not exist')
    obj = read_torch_file(path, '--checkpoint')
    sd = _state_dict_of(obj, path)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f'{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}' for k, v in own.items()
              if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        def few(keys: List[str]) -> str:
            return ', '.join(keys[:3]) + (', ...' if len(keys) > 3 else '')
        parts = [f'{len(missing)} missing keys ({few(missing)})' if missing else '',
                 f'{len(unexpected)} unexpected keys ({few(unexpected)})' if unexpected else '',
                 f'{len(shapes)} shape mismatches ({few(shapes)})' if shapes else '']
        raise UserError(f'--checkpoint {path} does not match {label}: ' + '; '.join(p for p in parts if p) +
                        '; check --model, --model-kwargs and --num-classes')
    model.load_state_dict(sd)


def build_model(name: str, num_classes: int, in_chans: int, model_kwargs: Optional[Dict[str, Any]] = None,
                checkpoint: Optional[Union[str, Path]] = None) -> nn.Module:
    """A timm model (ours registered by `import timm_moe`), with weights from `checkpoint` if given."""
    kwargs = dict(model_kwargs or {})
    kwargs.setdefault('num_classes', num_classes)
    kwargs.setdefault('in_chans', in_chans)
    if not timm.is_model(name):
        raise UserError(f'unknown model {name!r}; list ours with `timm-moe models`')
    try:
        model = timm.create_model(name, **kwargs)
    except TypeError as e:
        raise UserError(f'--model-kwargs {kwargs} do not fit {name}: {e}') from None
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, f'{name}({", ".join(f"{k}={v}" for k, v in kwargs.items())})')
    return model


# ---------------------------------------------------------------------------------------------- output

def write_json_atomic(obj: Any, path: Path) -> None:
    """Write JSON atomically: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        json.dump(obj, f, indent=1)


def print_result(result: Dict[str, Any]) -> None:
    """Accuracy table, MoE tables and the sanity-check table, with rich."""
    from rich.console import Console
    from rich.table import Table
    console = Console()
    n = result['n_examples']
    table = Table(title=f'{result["threat_model"]} eps={result["eps"]:.5g} on {n} examples')
    for col in ('attack', 'accuracy %', 'correct', 'seconds'):
        table.add_column(col, justify='left' if col == 'attack' else 'right')
    table.add_row('clean', f'{result["clean_acc"]:.2f}', f'{result["counts"]["clean"]}/{n}', '')
    for k, v in result['robust_acc'].items():
        secs = result['timing'].get(k)
        table.add_row(f'[bold]{k}' if k == 'ensemble' else k, f'{v:.2f}', f'{result["counts"][k]}/{n}',
                      f'{secs:.1f}' if secs is not None else '')
    console.print(table)
    if result['per_expert']:
        t = Table(title='Per-expert subpaths (accuracy %)')
        names = list(result['per_expert'][0]['robust_acc'])
        for col in ['expert', 'clean', *names]:
            t.add_column(col, justify='right')
        for row in result['per_expert']:
            t.add_row(str(row['expert']), f'{row["clean_acc"]:.2f}', *(f'{row["robust_acc"][k]:.2f}' for k in names))
        console.print(t)
        r = result['routing_under_attack']
        changed = 'n/a' if r['changed_fraction'] is None else f'{100 * r["changed_fraction"]:.1f}%'
        console.print(f'routing under {r["attack"]}: {changed} of the {r["attacked_points"]} attacked images change '
                      f'experts; load clean {[round(v, 3) for v in r["load_clean"]]} -> adversarial '
                      f'{[round(v, 3) for v in r["load_adv"]]}')
    sanity.print_checks(result['sanity'], console)
    for label, parts in result.get('autoattack_attacks_run', {}).items():
        console.print(f'{label} ran {"+".join(parts)}')
    for label, messages in result.get('attack_warnings', {}).items():
        for m in messages:
            console.print(f'[yellow]{label}: pyautoattack warned: {m}')
    if result['flags']:
        console.print(f'[bold red]flags: {", ".join(result["flags"])}')


# ---------------------------------------------------------------------------------------------- CLI

def add_cli(subparsers: argparse._SubParsersAction) -> None:
    from bench.data import DATASETS
    p = subparsers.add_parser('eval', help='clean and robust accuracy (PGD, APGD, AutoAttack) with sanity checks',
                              description=__doc__.split('\n\n')[0])
    p.add_argument('--model', required=True, help='timm model name, e.g. resnet18_blockmoe_e8_k1')
    p.add_argument('--checkpoint', type=Path, help="state_dict file (timm's, or a dict with 'state_dict'/'model')")
    p.add_argument('--model-kwargs', default=None, help='k=v,k=v passed to timm.create_model (e.g. width=16); '
                   "defaults from the checkpoint's run config.yaml")
    p.add_argument('--num-classes', type=int, default=None, help='default: the data set\'s')
    p.add_argument('--in-chans', type=int, default=None, help='default: the data set\'s')
    p.add_argument('--dataset', default='cifar100', help=f'one of {", ".join(DATASETS)}')
    p.add_argument('--data-dir', default=None)
    p.add_argument('--download', action='store_true', help='let torchvision download the data set')
    presets = '; '.join(f'{k} = {"+".join(v)}' for k, v in PRESETS.items())
    p.add_argument('--attacks', default='standard',
                   help=f'comma list of {attack_choices()}; presets: {presets}. On a CPU use quick')
    p.add_argument('--n-examples', type=int, default=1000, help='first N test images')
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--eps', default='8/255', help='radius: 8/255 or a float in [0, 1]')
    p.add_argument('--norm', default='Linf', choices=NORMS)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--json', type=Path, default=None, help='write the result here (atomically, when complete)')
    p.add_argument('--resume', action='store_true', help='skip the batches recorded in the --json sidecar')
    p.add_argument('--overwrite', action='store_true',
                   help='replace an existing --json result, or discard a partial one instead of resuming it')
    p.add_argument('--no-per-expert', action='store_true', help='skip per-expert subpaths, routing and transfer')
    p.add_argument('--n-check', type=int, default=100, help='examples for the sanity checks\' extra attacks')
    p.add_argument('--device', default='auto', help='auto | cpu | cuda | cuda:N')
    p.add_argument('--torchcompile', nargs='?', const=TORCHCOMPILE_DEFAULT, default=None, metavar='BACKEND',
                   help=f'run attacks and checks through torch.compile (bare: {TORCHCOMPILE_DEFAULT}), as timm\'s flag')
    p.add_argument('--torchcompile-mode', default=None, help='inductor mode: default, reduce-overhead, max-autotune, ...')
    p.add_argument('--no-progress', action='store_true')
    p.set_defaults(func=run)


def _device(text: str) -> torch.device:
    if text == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise UserError(f'--device {text!r} is not a device; use auto, cpu, cuda or cuda:N') from None
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise UserError(f'--device {text}: CUDA is not available here; use --device cpu')
    return dev


@contextlib.contextmanager
def _compiled(model: nn.Module, backend: Optional[str], mode: Optional[str]) -> Iterator[nn.Module]:
    """`model` compiled in place, under the settings a compiled BlockMoE needs (no-op without a backend).

    In place (`nn.Module.compile`), not `torch.compile`'s wrapper: the module tree stays the eager one, so
    routing keys ('model.layer4.1'), `unwrap` and weight digests are those of an eager evaluation.
    """
    if backend is None:
        yield model
        return
    torch._dynamo.reset()  # as timm's validate.py: nothing compiled earlier in this process counts
    model.compile(backend=backend, mode=mode)
    # retain_graph: the gradient-masking checks backward twice through one forward
    with torchcompile_settings(timm_moe.num_experts(model), retain_graph=True):
        yield model


def _check_json_target(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to replace a finished result, or to throw away a killed run's batches, unless told to."""
    sidecar = Path(str(out) + SIDECAR_SUFFIX)
    if resume and overwrite:
        raise UserError('--resume and --overwrite contradict each other; pick one')
    if out.is_dir():
        raise UserError(f'--json {out} is a directory; give a file name such as {out / "eval.json"}')
    if out.exists() and not overwrite:
        raise UserError(f'--json {out} already holds a result; pass --overwrite to replace it, or choose another file')
    if sidecar.exists() and not (resume or overwrite):
        raise UserError(f'{sidecar} holds a partial evaluation; pass --resume to continue it, or --overwrite to '
                        'start afresh')


def run(args: argparse.Namespace) -> int:
    from bench.data import dataset_info, eval_tensors
    # validate every cheap input before any expensive work
    eps = parse_eps(args.eps, args.norm)
    names = resolve_attacks(args.attacks)
    info = dataset_info(args.dataset)
    if args.batch_size < 1:
        raise UserError(f'--batch-size {args.batch_size} must be at least 1')
    if args.n_examples < 1:
        raise UserError(f'--n-examples {args.n_examples} must be at least 1')
    if args.resume and args.json is None:
        raise UserError('--resume needs --json: partial results live next to the JSON output')
    if args.json is not None:
        _check_json_target(args.json, args.resume, args.overwrite)
    check_torchcompile(args.torchcompile, args.torchcompile_mode)
    device = _device(args.device)
    kwargs = {**run_config_kwargs(args.checkpoint), **_parse_kwargs(args.model_kwargs)}
    num_classes = args.num_classes or kwargs.pop('num_classes', None) or info['num_classes']
    in_chans = args.in_chans or kwargs.pop('in_chans', None) or info['in_chans']
    if in_chans != info['in_chans']:
        raise UserError(f'--in-chans {in_chans} does not fit {args.dataset}, whose images have {info["in_chans"]}')
    model = build_model(args.model, num_classes, in_chans, kwargs, args.checkpoint)
    x, y = eval_tensors(args.dataset, args.n_examples, args.data_dir, args.download)
    wrapped = normalized(model, info['mean'], info['std']).to(device)
    sidecar = Path(str(args.json) + SIDECAR_SUFFIX) if args.json else None
    with _compiled(wrapped, args.torchcompile, args.torchcompile_mode):
        result = evaluate_model(wrapped, x, y, attacks=names, eps=eps, norm=args.norm, batch_size=args.batch_size,
                                per_expert=not args.no_per_expert, seed=args.seed, sidecar=sidecar,
                                resume=args.resume, progress=not args.no_progress, n_check=args.n_check)
    result['settings'].update(model=args.model, model_kwargs=dict(kwargs, num_classes=num_classes, in_chans=in_chans),
                              checkpoint=str(args.checkpoint) if args.checkpoint else None, dataset=args.dataset,
                              device=str(device), torch=torch.__version__, timm=timm.__version__,
                              torchcompile=args.torchcompile, torchcompile_mode=args.torchcompile_mode)
    print_result(result)
    if args.json:
        write_json_atomic(result, args.json)
        BatchLog.discard(sidecar)  # complete: nothing left to resume
        print(f'wrote {args.json}')
    return 0

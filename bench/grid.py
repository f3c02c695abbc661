"""`timm-moe grid`: the paper's sweep (experts x k x gate x aux loss x placement x arch x training) from YAML.

Each cell trains (`bench.train`), attacks (`bench.evaluate`), audits (`bench.audit`) and writes one registry
entry. A finished cell leaves `cells/<cell>/done.json`, so a rerun skips it; a failing cell is written to
`cells/<cell>/failed.txt`, reported, and the sweep goes on with the next one.

`train_config` names the training recipe: one YAML for every cell, or one per architecture
(`{resnet18: cifar100_resnet18_pgd, resnet50: cifar100_resnet50_pgd}`), because the paper trains ResNet-50
with its own recipe. `seeds: [0, 1, 2]` repeats every cell per training seed; the leaderboard then shows
each configuration's runs as one row (mean, spread and interval over the seeds).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from rich.console import Console
from rich.table import Table

from bench.config import read_yaml_mapping
from bench.errors import UserError
from bench.parallel import process_pool

AXES = ('arch', 'experts', 'k', 'gate', 'aux_loss', 'placement', 'training')
ARCHS = ('resnet18', 'resnet50')
TRAININGS = ('normal', 'pgd', 'trades')


@dataclass
class GridSpec:
    arch: List[str] = field(default_factory=lambda: ['resnet18'])
    experts: List[int] = field(default_factory=lambda: [4])  # 0 = the dense baseline
    k: List[int] = field(default_factory=lambda: [1])
    gate: List[str] = field(default_factory=lambda: ['gap_fc'])
    aux_loss: List[str] = field(default_factory=lambda: ['entropy'])
    placement: List[str] = field(default_factory=lambda: ['last'])
    training: List[str] = field(default_factory=lambda: ['normal', 'pgd'])
    dense: bool = True  # add the dense baseline of each arch x training
    model_kwargs: Dict[str, Any] = field(default_factory=dict)  # shared by every cell (width, stem, ...)
    train: Dict[str, Any] = field(default_factory=dict)  # TrainConfig values shared by every cell
    # the YAML recipe the `train` values override: one for all cells, or {arch: recipe}
    train_config: Union[None, str, Dict[str, str]] = None
    seeds: Optional[List[int]] = None  # training seeds, one cell each; None: the recipe's seed, one cell
    eval: Dict[str, Any] = field(default_factory=lambda: dict(attacks='paper', n_examples=1000, batch_size=250))
    out: str = 'runs/grid'
    registry: Optional[str] = None  # default: <out>/registry


def load_spec(path: str | Path) -> GridSpec:
    """Read and check a grid YAML (a path or the name of a shipped `bench/configs/grid_*.yaml`)."""
    data = read_yaml_mapping(path, 'grid spec', 'grid_*.yaml')
    allowed = GridSpec.__dataclass_fields__
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise UserError(f'unknown grid key {unknown[0]!r} in {path}; allowed: {", ".join(allowed)}')
    for axis in AXES:
        if axis in data and not isinstance(data[axis], list):
            data[axis] = [data[axis]]
    spec = GridSpec(**data)
    for value in spec.arch:
        if value not in ARCHS:
            raise UserError(f'arch {value!r} is not allowed; choose from {", ".join(ARCHS)}')
    for value in spec.training:
        if value not in TRAININGS:
            raise UserError(f'training {value!r} is not allowed; choose from {", ".join(TRAININGS)}')
    _check_train_config(spec.train_config, spec.arch, path)
    _check_seeds(spec.seeds, path)
    if 'attacks' in spec.eval:  # an unknown attack would otherwise fail every cell after its training
        from bench.attacks import resolve_attacks
        resolve_attacks(spec.eval['attacks'])
    if spec.seeds and 'seed' in spec.train:
        raise UserError(f'{path} sets both seeds and train.seed: keep one (seeds runs a cell per seed)')
    return spec


def _check_train_config(value: Any, archs: List[str], path: str | Path) -> None:
    """A recipe name, or a mapping that names one recipe for every arch of the grid (and no other arch)."""
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, Mapping):
        raise UserError(f'train_config in {path} is {value!r}: give a recipe name or a mapping {{arch: recipe}}')
    unknown = sorted(set(value) - set(ARCHS))
    if unknown:
        raise UserError(f'train_config in {path} names arch {unknown[0]!r}; archs are {", ".join(ARCHS)}')
    missing = [a for a in archs if a not in value]
    if missing:
        raise UserError(f'train_config in {path} has no recipe for arch {missing[0]!r}: add {missing[0]}: <recipe>')
    bad = {a: r for a, r in value.items() if not isinstance(r, str) or not r}
    if bad:
        arch, recipe = next(iter(bad.items()))
        raise UserError(f'train_config in {path}: the recipe for {arch} is {recipe!r}, not a recipe name')


def _check_seeds(seeds: Any, path: str | Path) -> None:
    if seeds is None:
        return
    if (not isinstance(seeds, list) or not seeds
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)):
        raise UserError(f'seeds in {path} is {seeds!r}: give a list of integers >= 0, e.g. [0, 1, 2]')
    if len(set(seeds)) != len(seeds):
        raise UserError(f'seeds in {path} repeats a seed: {seeds!r}')


def recipe_for(spec: GridSpec, arch: str) -> Optional[str]:
    """The training recipe of the cells of `arch` (None: the TrainConfig defaults)."""
    if isinstance(spec.train_config, Mapping):
        return spec.train_config[arch]
    return spec.train_config


def cells(spec: GridSpec) -> List[Dict[str, Any]]:
    """Every (model, kwargs, training, seed) the spec names, in a stable order, each with a unique `cell` id.

    Without `seeds` a cell's seed is None (the recipe's) and its id has no seed part, so the ids of
    sweeps that never named seeds stay what they were (and their finished cells are still found).
    """
    out, seen = [], set()
    seeds: List[Optional[int]] = list(spec.seeds) if spec.seeds else [None]
    for arch, training, seed in itertools.product(spec.arch, spec.training, seeds):
        tail = f'-{training}' if seed is None else f'-{training}-seed{seed}'
        common = dict(training=training, arch=arch, seed=seed, train_config=recipe_for(spec, arch))
        if spec.dense:
            out.append(dict(cell=f'{arch}_dense{tail}', model=f'{arch}_dense', model_kwargs=dict(spec.model_kwargs),
                            experts=0, k=None, **common))
        for e, k, gate, loss, place in itertools.product(spec.experts, spec.k, spec.gate, spec.aux_loss,
                                                         spec.placement):
            if k > e or e == 0:
                continue  # k <= E, and dense baselines come from `dense`
            model = f'{arch}_blockmoe_e{e}_k{k}'
            kwargs = dict(spec.model_kwargs, gate=gate, aux_loss=loss, moe_blocks=place)
            cell = f'{model}-{gate}-{loss}-{place}{tail}'
            if cell not in seen:
                seen.add(cell)
                out.append(dict(cell=cell, model=model, model_kwargs=kwargs, experts=e, k=k, **common))
    return out


def check_models(grid: List[Dict[str, Any]]) -> None:
    """Build each distinct model of the grid once, without memory (meta device), so that a bad kwarg in the
    spec (an unknown gate, a placement, a width) is refused before any cell trains, naming the cell.

    The plugin reports bad kwargs as ValueError/TypeError; here they come from the spec, so they are the
    user's to fix and become a UserError.
    """
    import timm
    import torch

    import timm_moe  # noqa: F401  registers the models

    seen = set()
    for c in grid:
        key = (c['model'], json.dumps(c['model_kwargs'], sort_keys=True, default=str))
        if key in seen:
            continue
        seen.add(key)
        try:
            with torch.device('meta'):
                timm.create_model(c['model'], **c['model_kwargs'])
        except (ValueError, TypeError) as e:
            raise UserError(f'grid cell {c["cell"]}: {c["model"]} cannot be built with model_kwargs '
                            f'{c["model_kwargs"]}: {e}') from None


def _registry_dir(spec: GridSpec) -> Path:
    return Path(spec.registry) if spec.registry else Path(spec.out) / 'registry'


def cell_config(cell: Dict[str, Any], spec: GridSpec):
    """The TrainConfig of a cell: its arch's recipe, then the spec's `train` values, then the cell's own."""
    from bench.config import load_config

    seed = {} if cell.get('seed') is None else {'seed': cell['seed']}
    return load_config(cell['train_config'], model=cell['model'], model_kwargs=cell['model_kwargs'],
                       method=cell['training'], out=str(Path(spec.out) / 'cells' / cell['cell'] / 'run'),
                       **{'progress': False, **spec.train, **seed})


def run_cell(cell: Dict[str, Any], spec: GridSpec) -> Dict[str, Any]:
    """Train, evaluate, audit and register one cell; returns its done record."""
    import timm_moe  # noqa: F401  registers the models in a fresh worker
    from bench.audit import audit_model
    from bench.data import dataset_info, eval_tensors
    from bench.evaluate import build_model, evaluate_model
    from bench.provenance import provenance
    from bench.results.registry import entry_path, measured_entry, write_entry
    from bench.train import run_training

    cell_dir = Path(spec.out) / 'cells' / cell['cell']
    cell_dir.mkdir(parents=True, exist_ok=True)
    cfg = cell_config(cell, spec)
    result_file = cell_dir / 'run' / 'result.json'
    train = (json.loads(result_file.read_text()) if result_file.exists()
             else run_training(cfg, overwrite=True))  # a half-finished training restarts cleanly
    info = dataset_info(cfg.dataset)
    kwargs = {k: v for k, v in train['model_kwargs'].items() if k not in ('num_classes', 'in_chans')}
    model = build_model(cfg.model, info['num_classes'], info['in_chans'], kwargs, train['checkpoint'])
    ev = {'attacks': 'paper', 'n_examples': 1000, 'batch_size': 250, **spec.eval}
    x, y = eval_tensors(cfg.dataset, int(ev.pop('n_examples')), cfg.data_dir, cfg.download)
    result = evaluate_model(model, x, y, mean=info['mean'], std=info['std'], seed=cfg.seed, **ev)
    audit = audit_model(cfg.model, input_size=tuple(x.shape[1:]), latency=False, images=x[:64],
                        in_chans=info['in_chans'], num_classes=info['num_classes'], **kwargs)
    entry = measured_entry(
        model_name=cfg.model, model_kwargs=train['model_kwargs'], dataset=cfg.dataset, method=cfg.method,
        eval_result=result, provenance=provenance(seed=cfg.seed, checkpoint=train['checkpoint']),
        arch=cell['arch'], experts=cell['experts'], k=cell['k'], training_config=cfg.to_dict(),
        config_path=str(cell_dir / 'run' / 'config.yaml'), epochs=cfg.epochs,
        flops=dict(active=audit['flops_active'], total=audit['flops_total'], dense=audit['flops_dense'],
                   ratio=audit['flops_ratio']),
        params=dict(total=audit['params_total'], active=audit['params_active']))
    registry = _registry_dir(spec)
    path = entry_path(entry, registry)
    if not path.exists():  # the same run (same id) written by an earlier, interrupted sweep counts as done
        path = write_entry(entry, registry)
    done = dict(cell=cell['cell'], entry=str(path), clean_acc=result['clean_acc'], robust_acc=result['robust_acc'],
                flags=result['flags'], flops_ratio=audit['flops_ratio'])
    (cell_dir / 'done.json').write_text(json.dumps(done, indent=2) + '\n')
    (cell_dir / 'failed.txt').unlink(missing_ok=True)
    return done


def _guarded(cell: Dict[str, Any], spec: GridSpec) -> Dict[str, Any]:
    try:
        return run_cell(cell, spec)
    except Exception as e:  # noqa: BLE001 - one failed cell must not stop the sweep; its reason is kept
        cell_dir = Path(spec.out) / 'cells' / cell['cell']
        cell_dir.mkdir(parents=True, exist_ok=True)
        (cell_dir / 'failed.txt').write_text(traceback.format_exc())
        return dict(cell=cell['cell'], error=f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}')


def status(cell: Dict[str, Any], spec: GridSpec) -> str:
    cell_dir = Path(spec.out) / 'cells' / cell['cell']
    if (cell_dir / 'done.json').exists():
        return 'done'
    return 'failed' if (cell_dir / 'failed.txt').exists() else 'todo'


def run_grid(spec: GridSpec, procs: int = 1, dry_run: bool = False, console: Optional[Console] = None,
             only: Optional[str] = None) -> Dict[str, List[Dict[str, Any]]]:
    """Run every cell not yet done; returns {'done': [...], 'failed': [...], 'skipped': [...]}.

    Args:
        spec: The grid.
        procs: Cells run in parallel (each entry is written atomically, so they cannot collide).
        dry_run: Only list the cells and their status.
        console: Where to print.
        only: Run only the cells whose id contains this text.
    """
    console = console or Console()
    todo_cells = [c for c in cells(spec) if only is None or only in c['cell']]
    check_models(todo_cells)
    table = Table(title=f'grid: {len(todo_cells)} cells -> {_registry_dir(spec)}')
    for col in ('cell', 'model', 'training', 'recipe', 'status'):
        table.add_column(col)
    states = {c['cell']: status(c, spec) for c in todo_cells}
    for c in todo_cells:
        table.add_row(c['cell'], c['model'], c['training'], c['train_config'] or '(defaults)', states[c['cell']])
    console.print(table)
    skipped = [c for c in todo_cells if states[c['cell']] == 'done']
    pending = [c for c in todo_cells if states[c['cell']] != 'done']
    if dry_run:
        return dict(done=[], failed=[], skipped=skipped, pending=pending)
    if procs > 1:
        pool, _ = process_pool(procs)
        with pool:
            outcomes = list(pool.map(_guarded, pending, [spec] * len(pending)))
    else:
        outcomes = []
        for c in pending:
            console.print(f'cell {c["cell"]} ...')
            outcomes.append(_guarded(c, spec))
    done = [o for o in outcomes if 'error' not in o]
    failed = [o for o in outcomes if 'error' in o]
    for o in failed:
        console.print(f'[red]failed[/] {o["cell"]}: {o["error"]} (traceback in cells/{o["cell"]}/failed.txt)')
    if done or skipped:
        from bench.results.leaderboard import write_leaderboard
        write_leaderboard(_registry_dir(spec))
    console.print(f'grid: {len(done)} done, {len(skipped)} skipped (already done), {len(failed)} failed')
    return dict(done=done, failed=failed, skipped=skipped, pending=[])


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser('grid', help='run a sweep from a YAML spec: train, attack, audit, register each cell')
    p.add_argument('spec', help='grid YAML, or a shipped one: grid_tiny, grid_paper_cifar100')
    p.add_argument('--dry-run', action='store_true', help='list the cells and their status, run nothing')
    p.add_argument('--procs', type=int, default=1, help='cells run in parallel')
    p.add_argument('--out', help='override the spec\'s output directory')
    p.add_argument('--registry', help='override where entries are written')
    p.add_argument('--only', help='run only the cells whose id contains this text')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    if args.out:
        spec.out = args.out
    if args.registry:
        spec.registry = args.registry
    if args.procs < 1:
        raise UserError(f'--procs {args.procs} must be at least 1')
    console = Console(width=200) if not sys.stdout.isatty() else Console()
    outcome = run_grid(spec, args.procs, args.dry_run, console, args.only)
    return 1 if outcome['failed'] else 0

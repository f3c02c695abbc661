"""The paper's sweep (kind x experts x k x gate x aux loss x placement x arch x training) from YAML (`timm-moe grid`).

`kind` chooses the MoE family of every MoE cell: 'block' (BlockMoE, residual blocks are experts; the default)
and/or 'conv' (ConvMoE, convolutions are experts), each where its arch registers it (`timm_moe.models.FAMILIES`).

Each cell runs the one pipeline, `bench.pipeline.cell.run_cell` (train, attack, audit, register one entry).
A finished cell leaves `cells/<cell>/done.json`, so a rerun skips it; so does a cell whose entry is already
in the registry (`registered_cells`), even when its folder is gone: a study can run in pieces on machines that
keep only the registry from one piece to the next. A failing cell is written to `cells/<cell>/failed.txt`,
reported, and the sweep goes on with the next one.

`shard=(i, n)` runs only the i-th of n slices of the cell list (`cells[i::n]`, i from 0), so that n processes,
on n machines (a Slurm array job, say), fill one registry: every cell belongs to exactly one slice, and
registry writes are atomic and never overwrite, so no entry is lost or clobbered.

`train_config` names the training recipe: one YAML for every cell, or one per architecture
(`{resnet18: cifar100_resnet18_pgd, resnet50: cifar100_resnet50_pgd}`), because the paper trains ResNet-50
with its own recipe, or one per architecture and training (`{resnet50: {normal: cifar100_resnet50_normal,
pgd: cifar100_resnet50_pgd}}`), because its ResNet-50 normal runs weigh the aux loss unlike its PGD runs.

`blocks:` lists sub-grids when the cells are not one product (the paper's table: k 3 and 4 for some
placements only, the KL loss for some rows only): each block crosses its own axis values (the spec's where it
names none) and lays its `model_kwargs` over the spec's; the cells are the union, the dense baselines once per
arch x training. `seeds: [0, 1, 2]` repeats every cell per training seed; the leaderboard then shows
each configuration's runs as one row (mean, spread and interval over the seeds).
"""
from __future__ import annotations

import itertools
import json
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from rich.console import Console
from rich.table import Table

from timm_moe import ModelSpec
from timm_moe.conversion import TimmSpec, model_spec
from timm_moe.models import ARCHS as MODEL_ARCHS, FAMILIES

from bench.attacks import resolve_attacks
from bench.core import locks
from bench.core.atomic import write_json_atomic
from bench.core.errors import UserError, is_user_os_error
from bench.core.parallel import run_parallel
from bench.core.progress import report_outcome
from bench.pipeline.cell import Evaluation, Output, run_cell, training_config
from bench.pipeline.followup import check_followup, followup_cells
from bench.pipeline.named_cells import check_configs, check_seeds, check_upcycling, named_cells
from bench.pipeline.shipped_weights import shipped_run
from bench.results.leaderboard import write_leaderboard
from bench.results.registry import entry_path, load_entries, load_entry
from bench.results.study.analysis import check_preregistration
from bench.results.study.claims import load_claims
from bench.core.yaml_files import GRID_SPEC, read_yaml_mapping
from bench.training.config import METHODS, TrainConfig

LOCK = 'running.lock'  # in a cell's folder while a process runs the cell (`bench.core.locks`)
AXES = ('arch', 'kind', 'experts', 'k', 'gate', 'aux_loss', 'placement', 'training')
ARCHS = tuple(MODEL_ARCHS)  # the plugin's base architectures: one list
KINDS = tuple(dict.fromkeys(kind for kinds in FAMILIES.values() for kind in kinds))  # ('block', 'conv')
TRAININGS = METHODS  # every `--training` of the trainer


@dataclass
class GridSpec:
    arch: List[str] = field(default_factory=lambda: ['resnet18'])
    kind: List[str] = field(default_factory=lambda: ['block'])  # MoE family: 'block' (BlockMoE), 'conv' (ConvMoE)
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
    # named configurations instead of axes (`bench.pipeline.named_cells`): {name: {model, model_kwargs, ...}}
    configs: Optional[Dict[str, Dict[str, Any]]] = None
    first_seed_eval: Dict[str, Any] = field(default_factory=dict)  # extra evaluation of each config's first seed
    # AutoAttack on chosen configs' first seeds once every cell is done (`bench.pipeline.followup`)
    autoattack: Optional[Dict[str, Any]] = None
    # the study's primary contrasts, metric, margin and analysis, named before it runs
    # (`bench.results.study.analysis.check_preregistration`)
    preregistration: Optional[Dict[str, Any]] = None
    # the paper's claims the study's report tests: a claims file (a path, or a shipped one's name); None: the
    # shipped paper's (`bench.results.study.claims`)
    claims: Optional[str] = None
    # a later study (a shipped spec's name) that answers this one's questions: the follow-ups not run yet are
    # closed, not run, and the report says so and how the later study's first seeds get them
    superseded_by: Optional[str] = None
    # sub-grids whose union is the grid, each {axis: values, model_kwargs: {...}} (see the module docstring)
    blocks: Optional[List[Dict[str, Any]]] = None
    name: str = 'grid'  # the spec file's stem, stored in each entry's `grid` field (set by load_spec)


def load_spec(path: str | Path) -> GridSpec:
    """Read and check a grid YAML (a path or the name of a shipped `bench/configs/grid_*.yaml`)."""
    data = read_yaml_mapping(path, 'grid spec', GRID_SPEC)
    allowed = GridSpec.__dataclass_fields__
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise UserError(f'unknown grid key {unknown[0]!r} in {path}; allowed: {", ".join(allowed)}')
    if 'name' in data:
        raise UserError(f"unknown grid key 'name' in {path}: a spec is named after its file")
    if data.get('configs') is not None:
        check_configs(data['configs'], data, path)
    for axis in AXES:
        if axis in data and not isinstance(data[axis], list):
            data[axis] = [data[axis]]
    if data.get('blocks') is not None:
        data['blocks'] = _check_blocks(data['blocks'], data, path)
    spec = GridSpec(**data, name=Path(str(path)).stem)
    for value in spec.arch:
        if value not in ARCHS:
            raise UserError(f'arch {value!r} is not allowed; choose from {", ".join(ARCHS)}')
    for value in spec.kind:
        if value not in KINDS:
            raise UserError(f'kind {value!r} is not allowed; choose from {", ".join(KINDS)}')
    for arch, kind in itertools.product(spec.arch, spec.kind):
        if kind not in FAMILIES[arch]:
            raise UserError(f'kind {kind!r} is not registered for arch {arch!r}; its kinds: '
                            f'{", ".join(FAMILIES[arch])} (drop {arch} or {kind} from the grid)')
    for value in spec.training:
        if value not in TRAININGS:
            raise UserError(f'training {value!r} is not allowed; choose from {", ".join(TRAININGS)}')
    _check_train_config(spec.train_config, spec.arch, path, None if spec.configs else spec.training)
    check_seeds(spec.seeds, f'seeds in {path}')
    grid = cells(spec)
    # an unknown attack or eval key would otherwise fail every cell after its training
    for values in {json.dumps(c.get('eval', spec.eval), sort_keys=True) for c in grid}:
        resolve_attacks(evaluation_of(json.loads(values)).attacks)
    _check_cells(spec, grid, path)
    check_followup(spec, path)
    claims = load_claims(spec.claims) if spec.claims is not None or spec.preregistration is not None else None
    if spec.preregistration is not None:
        if not spec.configs:
            raise UserError(f'preregistration in {path} needs named configs (configs: ...) to contrast')
        spec.preregistration = check_preregistration(spec.preregistration, spec.configs, str(path), claims.keys)
    _check_superseded_by(spec, path)
    if spec.seeds and 'seed' in spec.train:
        raise UserError(f'{path} sets both seeds and train.seed: keep one (seeds runs a cell per seed)')
    return spec


def _check_superseded_by(spec: GridSpec, path: str | Path) -> None:
    """`superseded_by` names another study (named configs), which itself is not superseded: a study that a
    superseded one points to must be the one that answers it."""
    later = spec.superseded_by
    if later is None:
        return
    if not spec.configs:
        raise UserError(f'superseded_by in {path} needs named configs (configs: ...): only a study is superseded')
    if not isinstance(later, str) or not later or later == spec.name:
        raise UserError(f'superseded_by in {path} is {later!r}: name another study spec, e.g. '
                        'study_powered_fashion_mnist')
    # read before it loads: a later study that is itself superseded (a cycle, say) is refused, not followed
    data = read_yaml_mapping(later, 'grid spec', GRID_SPEC)
    if not data.get('configs') or data.get('superseded_by') is not None:
        raise UserError(f'superseded_by in {path} names {later!r}, which is not a study that stands (named configs, '
                        'not superseded itself)')
    load_spec(later)  # a later study that does not load is the user's to fix now, not when the report runs


def _check_cells(spec: GridSpec, grid: List[Dict[str, Any]], path: str | Path) -> None:
    """Every cell's full training config (recipe, `train` values, training) and every upcycling pair, checked when
    the spec loads: a bad value must not wait for the cells before it to train, then fail as a cell."""
    by_id = {c['cell']: c for c in grid}
    for c in grid:
        try:
            cell_config(c, spec)
        except UserError as e:
            where = f'config {c["config"]!r}' if c.get('config') else f'grid cell {c["cell"]}'
            raise UserError(f'{where} in {path}: {e}') from None
        if c.get('upcycle_from'):
            check_upcycling(c, by_id[c['upcycle_from']], path)


BLOCK_KEYS = AXES + ('model_kwargs',)


def _check_blocks(blocks: Any, data: Mapping[str, Any], path: str | Path) -> List[Dict[str, Any]]:
    """The `blocks:` of a spec, each axis value a list; refuses what no grid could cross (UserError, one line).

    A block's `arch` and `training` must be among the spec's, so that the spec's recipes (`train_config`) and
    dense baselines cover every cell; other values are checked as the cells are built (`ModelSpec`)."""
    if data.get('configs') is not None:
        raise UserError(f'{path} sets configs and blocks: a spec either lists named configs or crosses axes')
    if not isinstance(blocks, list) or not blocks:
        raise UserError(f'blocks in {path} is {blocks!r}: give a list of mappings {{axis: [values], ...}}')
    out = []
    for i, block in enumerate(blocks):
        where = f'block {i} of {path}'
        if not isinstance(block, Mapping) or not block:
            raise UserError(f'{where} is {block!r}: give a mapping {{axis: [values], model_kwargs: {{...}}}}')
        unknown = sorted(set(block) - set(BLOCK_KEYS))
        if unknown:
            raise UserError(f'{where} has unknown key {unknown[0]!r}; allowed: {", ".join(BLOCK_KEYS)}')
        block = {k: v if k == 'model_kwargs' or isinstance(v, list) else [v] for k, v in block.items()}
        if not isinstance(block.get('model_kwargs', {}), Mapping):
            raise UserError(f'{where}: model_kwargs is {block["model_kwargs"]!r}, not a mapping')
        for axis in ('arch', 'training'):
            allowed = data.get(axis, GridSpec.__dataclass_fields__[axis].default_factory())
            bad = [v for v in block.get(axis, []) if v not in allowed]
            if bad:
                raise UserError(f'{where}: {axis} {bad[0]!r} is not among the spec\'s {axis}: '
                                f'{", ".join(map(str, allowed))}')
        for arch, kind in itertools.product(block.get('arch', data.get('arch', ['resnet18'])),
                                            block.get('kind', data.get('kind', ['block']))):
            if kind not in KINDS:
                raise UserError(f'{where}: kind {kind!r} is not allowed; choose from {", ".join(KINDS)}')
            if arch in FAMILIES and kind not in FAMILIES[arch]:
                raise UserError(f'{where}: kind {kind!r} is not registered for arch {arch!r}; its kinds: '
                                f'{", ".join(FAMILIES[arch])}')
        out.append(block)
    return out


def _check_train_config(value: Any, archs: List[str], path: str | Path,
                        trainings: Optional[List[str]] = None) -> None:
    """A recipe name, or a mapping that names one recipe for every arch of the grid (and no other arch): a name,
    or {training: name} for every training of the grid (`trainings`; None: checked as the cells are built)."""
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
    for arch, recipe in value.items():
        per_training = recipe if isinstance(recipe, Mapping) else None
        if per_training is not None:
            bad_key = sorted(set(per_training) - set(TRAININGS))
            if bad_key:
                raise UserError(f'train_config in {path}: {arch} names training {bad_key[0]!r}; trainings are '
                                f'{", ".join(TRAININGS)}')
            lacking = [t for t in trainings or [] if t not in per_training]
            if lacking:
                raise UserError(f'train_config in {path} has no {arch} recipe for training {lacking[0]!r}: add '
                                f'{lacking[0]}: <recipe> under {arch}')
        for name in (per_training or {arch: recipe}).values():
            if not isinstance(name, str) or not name:
                raise UserError(f'train_config in {path}: the recipe for {arch} is {name!r}, not a recipe name')


def recipe_for(spec: GridSpec, arch: str, training: Optional[str] = None) -> Optional[str]:
    """The training recipe of the cells of `arch` trained with `training` (None: the TrainConfig defaults)."""
    if not isinstance(spec.train_config, Mapping):
        return spec.train_config
    if arch not in spec.train_config:  # a named config's model of another family than the mapping's
        raise UserError(f'train_config of grid {spec.name!r} has no recipe for arch {arch!r} (its archs: '
                        f'{", ".join(spec.train_config)}): give one recipe name for every config')
    recipe = spec.train_config[arch]
    if not isinstance(recipe, Mapping):
        return recipe
    if training not in recipe:
        raise UserError(f'train_config of grid {spec.name!r} has no {arch} recipe for training {training!r}: add '
                        f'{training}: <recipe> under {arch}')
    return recipe[training]


def cells(spec: GridSpec) -> List[Dict[str, Any]]:
    """Every (model spec, training, seed) the grid names, in a stable order, each with a unique `cell` id.

    A cell holds its `spec` (`timm_moe.ModelSpec`), the timm kwargs the spec does not own (`timm_kwargs`),
    and for display and filtering its `model` name, `experts`, `k`, `arch`, `training`, `seed` and recipe.
    Without `seeds` a cell's seed is None (the recipe's) and its id has no seed part, so the ids of
    sweeps that never named seeds stay what they were (and their finished cells are still found).

    Raises:
        UserError: a cell's model kwargs do not make a valid spec (the message names the cell).
    """
    if spec.configs:
        return named_cells(spec, _cell, recipe_for)
    out, seen = [], {}
    seeds: List[Optional[int]] = list(spec.seeds) if spec.seeds else [None]
    blocks = spec.blocks if spec.blocks is not None else [{}]
    for arch, training, seed in itertools.product(spec.arch, spec.training, seeds):
        tail = f'-{training}' if seed is None else f'-{training}-seed{seed}'
        common = dict(training=training, arch=arch, seed=seed, train_config=recipe_for(spec, arch, training))
        if spec.dense:
            out.append(_cell(f'{arch}_dense{tail}', f'{arch}_dense', dict(spec.model_kwargs), common))
        for i, block in enumerate(blocks):
            if arch not in block.get('arch', [arch]) or training not in block.get('training', [training]):
                continue
            axes = [block.get(axis, getattr(spec, axis)) for axis in ('kind', 'experts', 'k', 'gate', 'aux_loss',
                                                                      'placement')]
            model_kwargs = {**spec.model_kwargs, **block.get('model_kwargs', {})}
            for kind, e, k, gate, loss, place in itertools.product(*axes):
                if k > e or e == 0:
                    continue  # k <= E, and dense baselines come from `dense`
                model = _moe_name(arch, e, k, kind)  # the name tells the kind: BlockMoE cell ids stay what they were
                cell = f'{model}-{gate}-{loss}-{place}{tail}'
                if cell in seen:
                    if seen[cell] != i:  # two blocks that list one cell: the union would hide which kwargs win
                        raise UserError(f'grid cell {cell} is in block {seen[cell]} and block {i}: list it once')
                    continue
                seen[cell] = i
                kwargs = dict(model_kwargs, gate=gate, aux_loss=loss, placement=place)
                out.append(_cell(cell, model, kwargs, common))
    return out


def _moe_name(arch: str, experts: int, k: int, kind: str = 'block') -> str:
    """The registered MoE name of (arch, E, k, kind), from the plugin's table of names (a bad value is the user's)."""
    try:
        return ModelSpec(arch=arch, experts=experts, k=k, kind=kind).name
    except ValueError as e:
        raise UserError(f'grid: {e}') from None


def _cell(cell: str, model: str, model_kwargs: Mapping[str, Any], common: Mapping[str, Any],
          convert: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """One cell: the grid's (name, kwargs, conversion) becomes a spec here, once; a bad value is the user's.

    A timm-moe name becomes a `ModelSpec`; any other timm model a `TimmSpec`, its kind 'converted' (None: dense)
    and its arch its timm family ('convnext')."""
    try:
        spec, timm_kwargs = model_spec(model, model_kwargs, convert)
    except ValueError as e:
        raise UserError(f'grid cell {cell}: {e}') from None
    own = dict(arch=spec.arch) if isinstance(spec, TimmSpec) else {}
    return dict(cell=cell, spec=spec, timm_kwargs=timm_kwargs, model=spec.name,
                kind=spec.kind, experts=spec.experts, k=spec.k, **{**common, **own})


def check_models(grid: List[Dict[str, Any]]) -> None:
    """Build each distinct model of the grid once, without memory (meta device), so that a kwarg the spec
    cannot judge alone (a timm kwarg, an expert width that fits no inner width) is refused before any cell
    trains, naming the cell.

    The plugin reports bad kwargs as ValueError/TypeError; here they come from the grid YAML, so they are
    the user's to fix and become a UserError.
    """
    seen = set()
    for c in grid:
        key = (c['spec'], json.dumps(c['timm_kwargs'], sort_keys=True, default=str))
        if key in seen:
            continue
        seen.add(key)
        try:
            with torch.device('meta'):
                c['spec'].create(**c['timm_kwargs'])
        except (ValueError, TypeError) as e:
            raise UserError(f'grid cell {c["cell"]}: {c["model"]} cannot be built with model_kwargs '
                            f'{c["timm_kwargs"]}: {e}') from None


def shard_cells(grid: List[Dict[str, Any]], shard: Optional[Tuple[int, int]]) -> List[Dict[str, Any]]:
    """The `index`-th of `count` slices of the cell list, `grid[index::count]` (all cells for None).

    Every cell is in exactly one slice, whatever the cells' state, so N processes that each run one slice
    run every cell once. The cell list is deterministic (`cells`), so every process slices the same list.
    """
    if shard is None:
        return list(grid)
    index, count = shard
    if not (isinstance(count, int) and isinstance(index, int) and count >= 1 and 0 <= index < count):
        raise ValueError(f'shard {shard!r}: expected (index, count) with 0 <= index < count')
    return list(grid[index::count])


def registry_dir(spec: GridSpec) -> Path:
    return Path(spec.registry) if spec.registry else Path(spec.out) / 'registry'


def _cell_dir(cell: Mapping[str, Any], spec: GridSpec) -> Path:
    return Path(spec.out) / 'cells' / cell['cell']


def run_dir(cell: Mapping[str, Any], spec: GridSpec) -> Path:
    """The training run directory of a cell (config.yaml, weights, result.json); a follow-up evaluation
    (`bench.pipeline.followup`) has its source cell's."""
    return Path(spec.out) / 'cells' / cell.get('source_cell', cell['cell']) / 'run'


# the training values a cell sets itself, and where the spec says them instead
CELL_OWNED = {
    'training': "give it as a config's key (training: normal) or an axis, beside train:",
    'out': "the spec's out: says where the runs go",
    'model': "give it as a config's key (model: NAME), beside train:",
    'model_kwargs': "give it as the spec's or a config's model_kwargs:, beside train:",
    'convert': "give it as a config's key (convert: {...}), beside train:",
}


def cell_config(cell: Dict[str, Any], spec: GridSpec) -> TrainConfig:
    """The TrainConfig of a cell: its arch's recipe, then the spec's `train` values (or the config's, laid over
    them), then the cell's own seed and upcycling source."""
    own: Dict[str, Any] = {} if cell.get('seed') is None else {'seed': cell['seed']}
    values = cell.get('train', spec.train)
    # what the cell itself sets: a `train:` value for one of these would be given twice (a TypeError, not a line)
    twice = sorted(set(values) & set(CELL_OWNED))
    if twice:
        raise UserError(f'train.{twice[0]} is not a train value: {CELL_OWNED[twice[0]]}')
    if cell.get('upcycle_from'):
        own['upcycle_from'] = str(run_dir(dict(cell=cell['upcycle_from']), spec))
    return training_config(cell['spec'], cell['train_config'], cell['timm_kwargs'], training=cell['training'],
                           out=str(run_dir(cell, spec)), **{'progress': False, **values, **own})


def cell_evaluation(cell: Mapping[str, Any], spec: GridSpec) -> Evaluation:
    """A cell's Evaluation: its own (named configs, first seeds) or the grid's."""
    return evaluation_of(cell.get('eval', spec.eval))


def evaluation_of(eval_values: Mapping[str, Any]) -> Evaluation:
    """An `eval` mapping as the pipeline's Evaluation (an unknown key is the user's to fix)."""
    values = {'attacks': 'paper', 'n_examples': 1000, 'batch_size': 250, **eval_values}
    allowed = [f for f in Evaluation.__dataclass_fields__ if f != 'attack_note']
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise UserError(f'unknown eval key {unknown[0]!r} in the grid spec; allowed: {", ".join(allowed)}')
    return Evaluation(**values)


def run_grid_cell(cell: Dict[str, Any], spec: GridSpec) -> Dict[str, Any]:
    """Run one cell through the pipeline; returns its done record (also written to `cells/<cell>/done.json`), or
    {'cell', 'busy'} when another live process holds the cell's lock (two grids on one spec, say)."""
    cell_dir = _cell_dir(cell, spec)
    cell_dir.mkdir(parents=True, exist_ok=True)
    with locks.held(cell_dir / LOCK) as busy:
        if busy is not None:
            report_outcome(f'skipped, running in another process ({busy})')
            return dict(cell=cell['cell'], busy=busy)
        # done.json: finished by another process since this one listed the cells
        return read_done(cell, spec) if (cell_dir / 'done.json').exists() else _run_locked(cell, spec, cell_dir)


def _run_locked(cell: Dict[str, Any], spec: GridSpec, cell_dir: Path) -> Dict[str, Any]:
    if cell.get('upcycle_from') and status(dict(cell=cell['upcycle_from']), spec) != 'done':
        raise UserError(f'cell {cell["cell"]} upcycles from cell {cell["upcycle_from"]}, which is not done: '
                        'run the grid again once it is')
    # weights another cell trained: its entry may be in the registry while its folder is gone; a follow-up then
    # evaluates the pretrained tag shipped from that run, if there is one
    trained, notes = None, None
    for needed in (cell.get('upcycle_from'), cell.get('source_cell')):
        if not needed or (run_dir(dict(cell=needed), spec) / 'result.json').is_file():
            continue
        if needed == cell.get('source_cell'):
            entry = load_entry(read_done(dict(cell=needed), spec)['entry'], registry_dir(spec))
            trained, note = shipped_run(cell, needed, run_dir(dict(cell=needed), spec), entry)
            notes = [note]
            continue
        raise UserError(f'cell {cell["cell"]} needs the trained weights of cell {needed}, whose entry is in the '
                        f'registry but whose run folder {run_dir(dict(cell=needed), spec)} is gone: remove that '
                        'entry from the registry to retrain it, or restore the folder')
    grid = dict(spec=spec.name, config=cell.get('config'), seed=cell.get('seed'),
                cell=cell.get('source_cell', cell['cell']), stage=cell.get('stage', 'main'))
    if cell.get('selected_as'):
        grid['selected_as'] = cell['selected_as']
    result = run_cell(cell['spec'], cell_config(cell, spec), cell_evaluation(cell, spec),
                      Output(registry=registry_dir(spec)), grid=grid, trained=trained, notes=notes)
    ev = result.evaluation
    done = dict(cell=cell['cell'], entry=str(result.entry_path), clean_acc=ev.clean_acc,
                robust_acc=ev.robust_acc, flags=ev.flags, flops_ratio=result.audit.flops_ratio)
    write_json_atomic(done, cell_dir / 'done.json', indent=2)  # a resumed sweep never reads half of one
    (cell_dir / 'failed.txt').unlink(missing_ok=True)
    return done


def _guarded(cell: Dict[str, Any], spec: GridSpec) -> Dict[str, Any]:
    try:
        return run_grid_cell(cell, spec)
    except Exception as e:  # noqa: BLE001 - one failed cell must not stop the sweep; its reason is kept
        if is_user_os_error(e):  # a read-only or full file system fails every cell alike: stop, in one line
            raise
        cell_dir = _cell_dir(cell, spec)
        cell_dir.mkdir(parents=True, exist_ok=True)
        (cell_dir / 'failed.txt').write_text(traceback.format_exc())
        report_outcome(f'failed (cells/{cell["cell"]}/failed.txt)')
        return dict(cell=cell['cell'], error=f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}')


Registered = Dict[Tuple[Any, str], Dict[str, Any]]  # (grid.cell, grid.stage) -> that cell's done record


def _key(cell: Mapping[str, Any]) -> Tuple[Any, str]:
    """How a cell's entry names it: a follow-up is stored under its source cell, with its own stage."""
    return cell.get('source_cell', cell['cell']), cell.get('stage', 'main')


def registered_cells(spec: GridSpec) -> Registered:
    """The cells of this spec whose entry is committed in its registry, as done records (what `run_grid_cell`
    writes to done.json), so that a cell counts as done even when its folder is gone."""
    root = registry_dir(spec)
    out: Registered = {}
    if not root.is_dir():
        return out
    for e in load_entries(root):
        g = e.get('grid') or {}
        if g.get('spec') == spec.name and g.get('cell') is not None:
            out[(g['cell'], g.get('stage', 'main'))] = dict(
                cell=g['cell'] if g.get('stage', 'main') == 'main' else f"{g.get('stage')}-{g['cell']}",
                entry=str(entry_path(e, root)), clean_acc=e['clean_acc'], robust_acc=e.get('robust_acc') or {},
                flags=e.get('sanity_flags') or [], flops_ratio=(e.get('flops') or {}).get('ratio'), registered=True)
    return out


def read_done(cell: Mapping[str, Any], spec: GridSpec, registered: Optional[Registered] = None) -> Dict[str, Any]:
    """A finished cell's done record (`run_grid_cell`), from its folder or else from its registry entry."""
    path = _cell_dir(cell, spec) / 'done.json'
    if path.exists():
        return json.loads(path.read_text())
    return (registered_cells(spec) if registered is None else registered)[_key(cell)]


def status(cell: Mapping[str, Any], spec: GridSpec, registered: Optional[Registered] = None) -> str:
    """'done' (done.json, or an entry in the registry), 'failed' or 'todo'.

    Args:
        registered: `registered_cells(spec)`, when the caller has read the registry already.
    """
    cell_dir = _cell_dir(cell, spec)
    if (cell_dir / 'done.json').exists():
        return 'done'
    if _key(cell) in (registered_cells(spec) if registered is None else registered):
        return 'done'
    if locks.holder(cell_dir / LOCK):
        return 'running'
    return 'failed' if (cell_dir / 'failed.txt').exists() else 'todo'


def recipe_label(cell: Mapping[str, Any], spec: GridSpec) -> str:
    """What a cell trains with, as `cell_config` lays it out: the recipe, then the spec's (or its config's)
    `train:` block over it; 'built-in defaults' only when there is neither."""
    parts = [cell['train_config']] if cell['train_config'] else []
    if cell.get('train', spec.train):
        parts.append('train: block')
    return ' + '.join(parts) or 'built-in defaults'


SUMMARY_ABOVE = 30  # cells: a longer list scrolls off the screen, so a table per arch x kind x training follows it


def _summary(grid: List[Dict[str, Any]], states: Mapping[str, str], spec: GridSpec) -> Table:
    """The cells counted per (arch, kind, training), with their recipe and how many are done: what a screen
    shows of a grid too long to read cell by cell (the paper's table has 219)."""
    groups: Dict[Tuple[str, str, str], List[Dict[str, Any]]] = {}
    for c in grid:
        groups.setdefault((c['arch'], c.get('kind') or 'dense', c['training']), []).append(c)
    table = Table(title=f'{len(grid)} cells by arch, kind and training')
    for col in ('arch', 'kind', 'training', 'recipe', 'cells', 'done'):
        table.add_column(col, justify='right' if col in ('cells', 'done') else 'left')
    for (arch, kind, training), members in groups.items():
        recipes = ', '.join(dict.fromkeys(recipe_label(c, spec) for c in members))
        done = sum(states[c['cell']] == 'done' for c in members)
        table.add_row(arch, kind, training, recipes, str(len(members)), str(done))
    return table


def run_grid(spec: GridSpec, procs: int = 1, dry_run: bool = False, console: Optional[Console] = None,
             only: Optional[str] = None, shard: Optional[Tuple[int, int]] = None,
             progress: bool = True) -> Dict[str, List[Dict[str, Any]]]:
    """Run every cell not yet done; returns {'done': [...], 'failed': [...], 'skipped': [...], 'pending': [...]}.

    Args:
        spec: The grid.
        procs: Cells run in parallel (each entry is written atomically, so they cannot collide).
        dry_run: Only list the cells and their status.
        console: Where to print.
        only: Run only the cells (and AutoAttack follow-ups) whose id contains this text.
        shard: (index, count): run only the index-th of count slices of the cells (see `shard_cells`).
        progress: Show the board of running cells, their stages and ETA (on stderr).
    """
    console = console or Console()
    todo_cells = [c for c in shard_cells(cells(spec), shard) if only is None or only in c['cell']]
    check_models(todo_cells)
    part = '' if shard is None else f' (shard {shard[0]}/{shard[1]})'
    table = Table(title=f'grid{part}: {len(todo_cells)} cells -> {registry_dir(spec)}')
    for col in ('cell', 'model', 'kind', 'training', 'recipe', 'status'):
        table.add_column(col)
    registered = registered_cells(spec)
    states = {c['cell']: status(c, spec, registered) for c in todo_cells}
    for c in todo_cells:
        table.add_row(c['cell'], c['model'], c.get('kind') or 'dense', c['training'], recipe_label(c, spec),
                      states[c['cell']])
    console.print(table)
    if len(todo_cells) > SUMMARY_ABOVE:
        console.print(_summary(todo_cells, states, spec))
    skipped = [c for c in todo_cells if states[c['cell']] == 'done']
    pending = [c for c in todo_cells if states[c['cell']] != 'done']
    if dry_run:
        if spec.autoattack:
            _print_followups([(c, state) for c, state in _followups(spec, cells(spec), console)
                              if only is None or only in c['cell']], console)
        return dict(done=[], failed=[], skipped=skipped, pending=pending)
    # an upcycled cell needs its source's finished run: sources train in the first wave
    outcomes = []
    for wave in ([c for c in pending if not c.get('upcycle_from')], [c for c in pending if c.get('upcycle_from')]):
        outcomes += run_wave(wave, spec, procs, console, progress)
    if spec.autoattack:
        outcomes += run_followups(spec, cells(spec), shard, procs, console, progress, only)
    busy = [o for o in outcomes if 'busy' in o]
    done = [o for o in outcomes if 'error' not in o and 'busy' not in o]
    failed = [o for o in outcomes if 'error' in o]
    for o in busy:
        console.print(f'[yellow]skipped[/] {o["cell"]}: running in another process ({o["busy"]}); run the grid '
                      'again once it is done')
    for o in failed:
        console.print(f'[red]failed[/] {o["cell"]}: {o["error"]} (traceback in cells/{o["cell"]}/failed.txt)')
    if done or skipped:
        # from every entry in the registry, including other shards' (the last shard to finish sees them all)
        write_leaderboard(registry_dir(spec))
    console.print(f'grid: {len(done)} done, {len(skipped)} skipped (already done), {len(busy)} running elsewhere, '
                  f'{len(failed)} failed')
    return dict(done=done, failed=failed, skipped=skipped, pending=[], busy=busy)


def run_wave(wave: List[Dict[str, Any]], spec: GridSpec, procs: int, console: Console,
             progress: bool = True) -> List[Dict[str, Any]]:
    """Run the cells of `wave`, `procs` at a time, with a progress board on stderr; their outcomes in order."""
    if not wave:
        return []
    return run_parallel(_guarded, [(c['cell'], (c, spec)) for c in wave], procs, 'grid', progress=progress)


def run_followups(spec: GridSpec, grid: List[Dict[str, Any]], shard: Optional[Tuple[int, int]], procs: int,
                  console: Console, progress: bool = True, only: Optional[str] = None) -> List[Dict[str, Any]]:
    """Run the AutoAttack follow-ups (`bench.pipeline.followup`) not yet done, once every cell of the whole grid
    (every shard's) is done; returns their outcomes. `only` selects follow-ups by id as it selects cells."""
    todo = [c for c, state in _followups(spec, grid, console)
            if state != 'done' and (only is None or only in c['cell'])]
    return run_wave(shard_cells(todo, shard), spec, procs, console, progress)


def _followups(spec: GridSpec, grid: List[Dict[str, Any]], console: Console) -> List[Tuple[Dict[str, Any], str]]:
    """The AutoAttack follow-up cells with their status; none (and the console says why) while the study is
    superseded or any cell of the whole grid (every shard's) is unfinished."""
    if spec.superseded_by:
        console.print(f'autoattack follow-ups: closed, {spec.name} is superseded by {spec.superseded_by} (its report '
                      'says how that study\'s first seeds get them)')
        return []
    registered = registered_cells(spec)
    waiting = [c['cell'] for c in grid if status(c, spec, registered) != 'done']
    if waiting:
        console.print(f'autoattack follow-ups wait for {len(waiting)} unfinished cells (first: {waiting[0]})')
        return []
    return [(c, status(c, spec, registered))
            for c in followup_cells(spec, grid, {c['cell']: read_done(c, spec, registered) for c in grid})]


def _print_followups(followups: List[Tuple[Dict[str, Any], str]], console: Console) -> None:
    if not followups:
        return
    table = Table(title=f'{len(followups)} autoattack follow-up{"s" if len(followups) > 1 else ""}')
    for col in ('cell', 'model', 'attacks', 'points', 'status'):
        table.add_column(col)
    for c, state in followups:
        table.add_row(c['cell'], c['model'], c['eval']['attacks'], str(c['eval']['n_examples']), state)
    console.print(table)

"""Export a training run as a hub-style folder that timm loads: `timm-moe export --checkpoint RUN --out DIR`.

This side reads the run (its config.yaml, data set and weights) and checks the weights fit the model; the
folder's format (config.json, model.safetensors with its metadata, the model card) and loading it back are
`bench.results.export`; docs/ECOSYSTEM.md has the formats.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import timm

from bench.core.atomic import recover_dir
from bench.core.errors import UserError
from bench.core.provenance import sha256_file
from bench.core.values import check_out_apart
from bench.core.yaml_files import read_yaml_mapping
from bench.data import DATASETS, dataset_info, model_kwargs_for
from bench.checkpoints import EMA_WEIGHTS, WEIGHTS, read_torch_file, run_config_kwargs, state_dict_of
from bench.models import build_model
from bench.results.export import check_compatible, find_entry, write_hub_folder
from bench.results.registry import default_registry

PathLike = Union[str, Path]


def resolve_run(path: PathLike, ema: bool = False) -> Tuple[Path, Path]:
    """(run directory, weights file) of `--checkpoint`: a run directory, or a weights file inside one."""
    path = Path(path)
    if path.is_dir():
        weights = path / (EMA_WEIGHTS if ema else WEIGHTS)
        run_dir = path
    elif path.is_file():
        if ema:
            raise UserError(f'--ema picks model_ema.pth inside a run directory; --checkpoint {path} is a file')
        weights, run_dir = path, path.parent
    else:
        raise UserError(f'--checkpoint {path} does not exist; give a run directory of `timm-moe train`')
    if not weights.is_file():
        raise UserError(f'--checkpoint {run_dir} holds no {weights.name}; is it a finished `timm-moe train` run'
                        f'{" trained with --ema" if ema else ""}?')
    if not (run_dir / 'config.yaml').is_file():
        raise UserError(f'--checkpoint {run_dir} has no config.yaml; export needs the run directory that '
                        '`timm-moe train` wrote (config.yaml beside model.pth)')
    return run_dir, weights


def run_model_spec(run_dir: Path, weights: Path) -> Tuple[str, str, Dict[str, Any]]:
    """(model name, data set, full model kwargs) of a run, as `timm-moe train` built its model."""
    cfg = read_yaml_mapping(run_dir / 'config.yaml', 'run config')
    name, dataset = cfg.get('model'), cfg.get('dataset')
    if not isinstance(name, str) or not timm.is_model(name):
        raise UserError(f'{run_dir / "config.yaml"}: model {name!r} is not a registered timm model')
    if dataset not in DATASETS:
        raise UserError(f'{run_dir / "config.yaml"}: dataset {dataset!r} is not one of {", ".join(DATASETS)}')
    # the trainer's rule: the data set fixes classes and channels unless model_kwargs say otherwise
    kwargs = model_kwargs_for(dataset, run_config_kwargs(weights), f'{run_dir / "config.yaml"}: model_kwargs')
    for key, value in kwargs.items():
        try:
            json.dumps(value)
        except TypeError:
            raise UserError(f'{run_dir / "config.yaml"}: model_kwargs {key}={value!r} cannot be written to '
                            'config.json; only JSON values can be exported') from None
    return name, dataset, kwargs


def registries_for(run_dir: Path, registry_dir: Optional[PathLike]) -> List[Path]:
    """Where to look for the run's entry: `registry_dir` if given; else the registry that quickstart and grid
    write beside their runs (OUT/registry for the run OUT/runs/RUN), nearest first, then the default one."""
    if registry_dir is not None:
        return [Path(registry_dir)]
    beside = [up / 'registry' for up in (run_dir.parent, run_dir.parent.parent) if (up / 'registry').is_dir()]
    found: List[Path] = []
    for registry in (*beside, default_registry()):
        if registry.resolve() not in [r.resolve() for r in found]:
            found.append(registry)
    return found


def _find_entry(entry: Optional[str], sha256: str, registries: List[Path]) -> Tuple[Optional[Dict[str, Any]], str]:
    """`find_entry` in each registry in turn: the first that has the entry wins; else what each said."""
    notes = []
    for i, registry in enumerate(registries):
        try:
            chosen, note = find_entry(entry, sha256, registry)
        except UserError:
            if entry is None or i == len(registries) - 1:  # an id found nowhere: the last registry says so
                raise
            continue
        if chosen is not None:
            return chosen, note
        notes.append(note)
    return None, '; '.join(notes)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.is_symlink():  # replacing it would put a folder where the link was and leave what it points to
        raise UserError(f'--out {out} is a symbolic link; give the folder it points to ({out.resolve()}) or '
                        'another folder')
    # an export killed mid-swap left no folder, its old one aside: put it back, and remove dead writers' temporaries
    recover_dir(out)
    if out.exists() and not out.is_dir():
        raise UserError(f'--out {out} is a file, not a directory')
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f'--out {out} is not empty; pass --overwrite to replace it')


def export_run(checkpoint: PathLike, out: PathLike, entry: Optional[str] = None,
               registry_dir: Optional[PathLike] = None, ema: bool = False, overwrite: bool = False) -> Path:
    """Write the hub folder for a training run; returns `out`.

    Args:
        checkpoint: The run directory (config.yaml + model.pth), or a weights file inside it.
        out: The folder to write; must be empty or missing unless `overwrite`.
        entry: Registry entry id or JSON path for the model card (default: found by checkpoint sha256).
        registry_dir: Where to look for entries (default: the registry beside the run, as quickstart and grid
            write it, then the repository's registry/: `registries_for`).
        ema: Export the run's EMA weights (model_ema.pth).
        overwrite: Replace a non-empty `out`.
    """
    out = Path(out)
    run_dir, weights = resolve_run(checkpoint, ema)
    # before any work, and before touching anything: --overwrite must never delete the run or the registry
    registries = registries_for(run_dir, registry_dir)
    *beside, last = registries
    check_out_apart(out, {'the run': run_dir, 'the registry': last,
                          **{'the registry beside the run' + (f' ({i + 1})' if i else ''): r for i, r in enumerate(beside)}})
    _check_out(out, overwrite)
    name, dataset, kwargs = run_model_spec(run_dir, weights)
    chosen, entry_note = _find_entry(entry, sha256_file(weights), registries)
    if chosen is not None and chosen.get('model', {}).get('name') not in (None, name):
        raise UserError(f'--entry {chosen.get("entry_id")} is for {chosen["model"]["name"]}, but the run trained {name}')

    run_cfg = read_yaml_mapping(run_dir / 'config.yaml', 'run config')
    model = build_model(name, kwargs['num_classes'], kwargs['in_chans'], kwargs, convert=run_cfg.get('convert'))
    state_dict = state_dict_of(read_torch_file(weights, '--checkpoint'), weights)
    check_compatible(state_dict, model, f'{name} (from {run_dir / "config.yaml"})', what=f'--checkpoint {weights}')
    model.load_state_dict(state_dict)
    info = dataset_info(dataset)
    if run_cfg.get('img_size'):  # the run resized its images inside the model: the weights expect that size
        info = dict(info, input_size=(info['input_size'][0], run_cfg['img_size'], run_cfg['img_size']))
    result_file = run_dir / 'result.json'  # what the run did (steps, epochs), beside what it was configured to do
    result = json.loads(result_file.read_text()) if result_file.is_file() else None
    return write_hub_folder(out, model, name, kwargs, dataset, info, run_cfg, chosen, entry_note, result)

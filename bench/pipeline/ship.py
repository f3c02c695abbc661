"""Ship a finished study's tagged configs as timm pretrained tags: `timm-moe ship SPEC`.

Every config of the study spec that carries a `tag` ships its first seed's run (or `--seed N`'s: a study
outlives its machines, the first seed's weights may be gone with the machine that trained them, and a cell
trained again need not give the same weights): the run's weights become
`<model>.<tag>.safetensors` and its record in `manifest.json` holds the architecture kwargs the weights need,
the data set's input size, mean and std, the run's main registry entry and a training summary. The folder
format is `timm_moe.models.pretrained`'s (docs/ECOSYSTEM.md, "Pretrained tags"); the weights file is written
by the hub export's `write_weights`, so it carries the same metadata as an export.

The whole folder is written beside `--out` and swapped in only when complete (`bench.core.atomic.replace_dir`): a
refused ship leaves the previous folder as it was, and the next ship finishes or rolls back the swap of a killed one
before it reads the folder. It replaces the tags this spec shipped before and keeps those of other specs
(each record names its `spec`), so one package ships the tags of several studies.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from timm_moe.models.pretrained import DTYPES, MANIFEST, package_folder, read_manifest

from bench.core.atomic import recover_dir, replace_dir, temp_dir_beside
from bench.core.errors import UserError
from bench.core.provenance import sha256_file
from bench.core.values import check_out_apart
from bench.core.yaml_files import read_yaml_mapping
from bench.data import dataset_info
from bench.checkpoints import WEIGHTS, read_torch_file, state_dict_of
from bench.models import build_model
from bench.pipeline import grid
from bench.pipeline.export import run_model_spec
from bench.results.export import check_compatible, write_weights
from bench.results.registry import load_entries

PathLike = Union[str, Path]

MB = 1_000_000
AUTO_FLOAT32_LIMIT = 18 * MB  # `--dtype auto` keeps float32 while every weights file together stays below this
PACKAGE_LIMIT = 20 * MB  # all shipped files together: the wheel carries them
DTYPE_CHOICES = (*DTYPES, 'auto')
# run config keys that the manifest's training summary keeps
_SUMMARY_KEYS = ('training', 'epochs', 'batch_size', 'lr', 'eps', 'attack_steps', 'seed')


def tagged_cells(all_cells: List[Dict[str, Any]], seed: Optional[int] = None) -> List[Dict[str, Any]]:
    """The cells to ship: of each config that carries a tag, the cell of `seed`, or by default its first cell in
    the spec's order (its first seed)."""
    chosen: Dict[Any, Dict[str, Any]] = {}
    seeds: Dict[Any, List[int]] = {}
    for cell in all_cells:
        if cell.get('tag') and cell.get('stage', 'main') == 'main':  # a follow-up evaluation trains nothing
            seeds.setdefault(cell['config'], []).append(cell['seed'])
            if seed is None or cell['seed'] == seed:
                chosen.setdefault(cell['config'], cell)
    for config, have in seeds.items():
        if config not in chosen:
            raise UserError(f'--seed {seed}: tagged config {config} has no such seed; its seeds: '
                            f'{", ".join(map(str, have))}')
    return list(chosen.values())


def _main_entry(cell: Mapping[str, Any], entries: List[Dict[str, Any]], where: Path) -> Dict[str, Any]:
    matches = [e for e in entries if (e.get('grid') or {}).get('cell') == cell['cell']
               and e['grid'].get('stage') == 'main']
    if not matches:
        raise UserError(f'tagged config {cell["config"]} (tag {cell["tag"]}): no main registry entry of its seed '
                        f'{cell["seed"]}\'s cell {cell["cell"]} under {where}; finish the study before shipping it')
    if len(matches) > 1:
        raise UserError(f'tagged config {cell["config"]}: {len(matches)} main registry entries of cell '
                        f'{cell["cell"]} ({", ".join(e["entry_id"] for e in matches)}); keep one')
    return matches[0]


def _check_measured_weights(run: Path, entry: Mapping[str, Any], cell: Mapping[str, Any]) -> None:
    """A tag carries its entry's numbers, so it must carry the weights they were measured on. The entry's
    provenance holds the sha256 of the run's model.pth; a study outlives its machines, and a cell trained again
    elsewhere need not give the same weights. Entries made before provenance held a hash cannot be checked."""
    want = (entry.get('provenance') or {}).get('checkpoint_sha256')
    if want is None:
        return
    got = sha256_file(run / WEIGHTS) if (run / WEIGHTS).is_file() else None
    if got != want:
        found = f'sha256 {got[:12]}' if got else f'no {WEIGHTS}'
        raise UserError(f'tagged config {cell["config"]} (tag {cell["tag"]}): its seed {cell["seed"]}\'s run {run} has '
                        f'{found}, but entry {entry["entry_id"]} was measured on sha256 {want[:12]}; ship the run '
                        'the entry measured, or evaluate this one into a new entry')


def _source(cell: Mapping[str, Any], spec: Any, entries: List[Dict[str, Any]], where: Path) -> Dict[str, Any]:
    """What one tag ships: the model with the run's weights loaded, and its manifest record (no file yet)."""
    run = Path(grid.run_dir(cell, spec))
    # model.pth: the file whose sha256 the entry records. The tag is made from it, not from the run's
    # model.safetensors, which nothing checks: a tag carries the entry's numbers, so it carries the weights measured
    weights = run / WEIGHTS
    entry = _main_entry(cell, entries, where)
    _check_measured_weights(run, entry, cell)
    missing = [p.name for p in (weights, run / 'config.yaml') if not p.is_file()]
    if missing:
        raise UserError(f'tagged config {cell["config"]} (tag {cell["tag"]}): its seed {cell["seed"]}\'s run {run} has no '
                        f'{missing[0]}; finish the study before shipping it')
    name, dataset, kwargs = run_model_spec(run, weights)
    if name != cell['spec'].name:
        raise UserError(f'tagged config {cell["config"]}: its run {run} trained {name}, not {cell["spec"].name}')
    model = build_model(name, kwargs['num_classes'], kwargs['in_chans'], kwargs)
    state_dict = state_dict_of(read_torch_file(weights, f'tagged config {cell["config"]}: its weights'), weights)
    check_compatible(state_dict, model, f'{name} (from {run / "config.yaml"})', what=f'the weights {weights}')
    model.load_state_dict(state_dict)
    run_cfg = json.loads(json.dumps(read_yaml_mapping(run / 'config.yaml', 'run config'), default=str))
    info = dataset_info(dataset)
    record = dict(
        model_kwargs=kwargs, input_size=list(info['input_size']), mean=list(info['mean']), std=list(info['std']),
        dataset=dataset, entry_id=entry['entry_id'], spec=spec.name,
        source_run=os.path.relpath(run, Path(spec.out).parent),  # informational; never an absolute path
        training=dict({k: run_cfg[k] for k in _SUMMARY_KEYS if k in run_cfg}, config=cell['config'],
                      clean_acc=entry.get('clean_acc'), robust_acc=entry.get('robust_acc'),
                      threat_model=entry.get('threat_model'), attack_eps=entry.get('eps'),
                      n_examples=entry.get('n_examples')))
    return dict(key=f'{name}.{cell["tag"]}', name=name, model=model, record=record)


def _write_weights(folder: Path, sources: List[Dict[str, Any]], dtype: str) -> Dict[str, Dict[str, Any]]:
    manifest = {}
    for src in sources:
        file = f'{src["key"]}.safetensors'
        model: nn.Module = copy.deepcopy(src['model']).to(getattr(torch, dtype))  # floats only; counters stay int
        write_weights(model, folder / file, src['name'], src['record']['model_kwargs'])
        manifest[src['key']] = dict(file=file, sha256=sha256_file(folder / file), dtype=dtype, **src['record'])
    return manifest


def _files_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def _check_out(out: Path) -> None:
    # the folder is replaced whole: refuse one that holds anything a ship did not write (e.g. --out .)
    if out.exists() and not out.is_dir():
        raise UserError(f'--out {out} is a file, not a pretrained-tags folder')
    foreign = sorted(p.name for p in out.iterdir() if p.name != MANIFEST and p.suffix != '.safetensors') \
        if out.is_dir() else []
    if foreign:
        raise UserError(f'--out {out} holds {foreign[0]!r}, which `timm-moe ship` did not write; give the '
                        'pretrained-tags folder (manifest.json and *.safetensors only)')


def _kept_tags(out: Path, spec_name: str) -> Dict[str, Dict[str, Any]]:
    """The tags in `out` that other specs shipped, which this ship keeps (records as in manifest.json)."""
    if not (out / MANIFEST).is_file():
        return {}
    try:
        records = {k: {f: v for f, v in r.items() if f != 'path'} for k, r in read_manifest(out).items()}
    except (ValueError, json.JSONDecodeError) as err:
        raise UserError(f'--out {out}: its {MANIFEST} is not a pretrained-tags manifest ({err}); give another '
                        'folder, or move this one aside') from None
    nameless = sorted(k for k, r in records.items() if not r.get('spec'))
    if nameless:
        raise UserError(f'--out {out}: tag {nameless[0]} names no spec, so ship cannot tell whether to replace or '
                        f'keep it; add its study\'s "spec" to its record in {MANIFEST}')
    kept = {k: r for k, r in records.items() if r['spec'] != spec_name}
    missing = sorted(k for k, r in kept.items() if not (out / r['file']).is_file())
    if missing:
        raise UserError(f'--out {out}: tag {missing[0]} of spec {kept[missing[0]]["spec"]} has no file '
                        f'{kept[missing[0]]["file"]}; restore it, or remove its record from {MANIFEST}')
    return kept


def ship(spec_path: PathLike, out: Optional[PathLike] = None, dtype: str = 'auto', seed: Optional[int] = None,
         registry: Optional[PathLike] = None) -> Tuple[Path, Dict[str, Dict[str, Any]]]:
    """Ship a finished study's tags into the pretrained-tags folder; returns (the folder, this spec's records).

    Args:
        spec_path: The study's grid spec (a path or a shipped `grid_*.yaml` name).
        out: The folder (default: the package's `timm_moe/pretrained/`).
        dtype: 'float32', 'float16', or 'auto' (float32 unless that makes the folder's weights 18 MB or more;
            the tags other specs shipped keep their dtype).
        seed: The seed whose runs ship (default: each tagged config's first).
        registry: Where the study's entries are (default: the spec's registry), as `timm-moe grid --registry`.
    """
    if dtype not in DTYPE_CHOICES:
        raise UserError(f'--dtype {dtype!r}: expected one of {", ".join(DTYPE_CHOICES)}')
    out = Path(out) if out is not None else package_folder()
    if out.is_symlink():  # replacing it would put a folder where the link was, and leave what it points to
        raise UserError(f'--out {out} is a symbolic link; give the folder it points to ({out.resolve()})')
    # a ship killed mid-swap left no folder, its old one aside: put it back before anything reads `out`
    recover_dir(out)
    _check_out(out)
    spec = grid.load_spec(spec_path)
    if registry is not None:
        spec.registry = str(registry)
    # the folder is replaced whole: it must not be, hold or sit in the study's runs or registry
    check_out_apart(out, {"the study's runs": spec.out, "the study's registry": grid.registry_dir(spec)})
    tagged = tagged_cells(grid.cells(spec), seed)
    if not tagged:
        raise UserError(f'{spec_path}: no config carries a tag; tag the configs to ship in the spec')
    where = grid.registry_dir(spec)
    entries = load_entries(where) if where.is_dir() else []
    sources = [_source(cell, spec, entries, where) for cell in tagged]  # every check before any write
    keys = [s['key'] for s in sources]
    if len(set(keys)) != len(keys):
        raise UserError(f'{spec_path}: two tagged configs ship as {next(k for k in keys if keys.count(k) > 1)}; '
                        'give each config of one model its own tag')
    kept = _kept_tags(out, spec.name)
    taken = sorted(set(keys) & set(kept))
    if taken:
        raise UserError(f'{spec_path}: tag {taken[0]} is already shipped by spec {kept[taken[0]]["spec"]} in {out}; '
                        'give the config another tag')
    tmp = temp_dir_beside(out)
    try:
        for record in kept.values():
            shutil.copy2(out / record['file'], tmp / record['file'])
        manifest = _write_weights(tmp, sources, 'float32' if dtype == 'auto' else dtype)
        if dtype == 'auto' and _files_size(tmp) >= AUTO_FLOAT32_LIMIT:
            manifest = _write_weights(tmp, sources, 'float16')  # same names: each file is overwritten
        (tmp / MANIFEST).write_text(json.dumps({**kept, **manifest}, indent=1, sort_keys=True) + '\n')
        total = _files_size(tmp)
        if total >= PACKAGE_LIMIT:
            raise UserError(f'the {len(kept) + len(manifest)} tags take {total / MB:.1f} MB with --dtype {dtype}, '
                            f'over the {PACKAGE_LIMIT // MB} MB the package may ship; tag fewer configs or use '
                            'float16')
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out, manifest

"""Named configurations of a grid (`configs:`): the cells of a study that is not a cartesian product.

A study compares hand-picked configurations (the dense baseline, E=4 k=2 at matched width, an upcycled MoE,
...), each repeated over seeds, so its spec lists them by name instead of crossing axes:

    seeds: [0, 1, 2]
    configs:
      dense: {model: resnet18_dense}
      e4k2_matched: {model: resnet18_blockmoe_e4_k2, model_kwargs: {expert_width: matched}, tag: fmnist_pgd_matched}
      dense_half: {model: resnet18_dense, train: {epochs: 1}}
      upcycled: {model: resnet18_blockmoe_e4_k1, upcycle_from: dense_half, train: {epochs: 1}}
      dense_normal: {model: resnet18_dense, training: normal, seeds: [0]}
      convnext_moe: {model: convnext_atto, convert: {targets: 'stages.3.blocks.*', num_experts: 4, k: 1,
                                                     copy_weights: true}, train: {img_size: 32}}

Each config's `model_kwargs` and `train` are laid over the spec's; `upcycle_from` names the config whose run
of the same seed is the dense source (`timm-moe train --upcycle-from`); `tag` is the timm pretrained tag its
first seed ships as (`timm-moe ship`). `model` may be any timm model, and `convert` (`timm_moe.convert`'s
arguments, `timm_moe.Conversion`) makes a plain one an MoE; `train: {img_size: N}` resizes the images inside the
model for an architecture that needs larger ones. The spec's `first_seed_eval` adds attacks for, and overrides other
evaluation values of, the first seed of every config (the costly analyses that one run per config answers).
A cell's id is `<config>-seed<seed>`.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Mapping, Optional

from bench.core.errors import UserError
from bench.core.values import check_name

# timm's tags ('in1k', 'fb_in22k_ft_in1k'): no dot (it splits model.tag there), no path separator (the tag names
# the shipped file), no space, not only digits
TAG_PATTERN = re.compile(r'[a-z][a-z0-9_]*')
CONFIG_KEYS = ('model', 'convert', 'model_kwargs', 'training', 'seeds', 'train', 'upcycle_from', 'tag', 'eval')
AXIS_KEYS = ('arch', 'kind', 'experts', 'k', 'gate', 'aux_loss', 'placement', 'training', 'dense')


def check_configs(configs: Any, data: Mapping[str, Any], path: Any) -> None:
    """Refuse a `configs:` block no study could run, naming the config and the key (UserError)."""
    if not isinstance(configs, Mapping) or not configs:
        raise UserError(f'configs in {path} must be a mapping {{name: {{model: ...}}}} with at least one config')
    mixed = [k for k in AXIS_KEYS if k in data]
    if mixed:
        raise UserError(f'{path} sets configs and the axis {mixed[0]!r}: a spec either lists named configs or '
                        f'crosses axes ({", ".join(AXIS_KEYS)}), not both')
    for name, config in configs.items():
        # a config names its cells' folders (`<out>/cells/<config>-seed<seed>`), which a restart may clear
        check_name(name, f'config name in {path}:')
        where = f'config {name!r} in {path}'
        if not isinstance(config, Mapping):
            raise UserError(f'{where} is {config!r}: give a mapping with at least model: <timm model name>')
        unknown = sorted(set(config) - set(CONFIG_KEYS))
        if unknown:
            raise UserError(f'{where} has unknown key {unknown[0]!r}; allowed: {", ".join(CONFIG_KEYS)}')
        if not isinstance(config.get('model'), str):
            raise UserError(f'{where} needs model: <timm model name>, e.g. resnet18_blockmoe_e4_k1')
        for key in ('model_kwargs', 'train', 'eval', 'convert'):
            if not isinstance(config.get(key, {}), Mapping):
                raise UserError(f'{where}: {key} is {config[key]!r}, not a mapping')
        tag = config.get('tag')
        if tag is not None:
            check_name(tag, f'{where}: tag')
        if tag is not None and not TAG_PATTERN.fullmatch(tag):
            raise UserError(f'{where}: tag {tag!r} cannot name a timm pretrained tag (model.tag); write lower-case '
                            'letters, digits and _, starting with a letter, as timm\'s tags (e.g. fmnist_pgd)')
        if 'seeds' in config:
            check_seeds(config['seeds'], f'{where}: seeds')
        if 'seed' in config.get('train', {}):
            raise UserError(f'{where} sets train.seed: name the seeds with seeds: [...]')
        source = config.get('upcycle_from')
        if source is not None:
            if source not in configs:
                raise UserError(f'{where}: upcycle_from {source!r} is not a config; configs: {", ".join(configs)}')
            if configs[source].get('upcycle_from') is not None:
                raise UserError(f'{where}: upcycle_from {source!r} is itself upcycled; upcycle from a trained '
                                'dense config')


def check_seeds(seeds: Any, what: str) -> None:
    """Refuse seeds that are not a list of distinct integers >= 0 (`what` names them: 'seeds in grid.yaml')."""
    if seeds is None:
        return
    if (not isinstance(seeds, list) or not seeds
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)):
        raise UserError(f'{what} is {seeds!r}: give a list of integers >= 0, e.g. [0, 1, 2]')
    if len(set(seeds)) != len(seeds):
        raise UserError(f'{what} repeats a seed: {seeds!r}')


def check_upcycling(cell: Mapping[str, Any], source: Mapping[str, Any], path: Any) -> None:
    """Refuse, when the spec loads, an upcycled config whose source no run could upcycle from: the source must
    be the dense model of the MoE's own architecture (arch, width, stem), as `timm-moe train --upcycle-from`
    requires once the source has trained."""
    moe, dense = cell['spec'], source['spec']
    where = f'config {cell["config"]!r} in {path}'
    if not moe.is_moe:
        raise UserError(f'{where} is {moe.name}, a dense model: only a BlockMoE config can be upcycled')
    if dense.is_moe:
        raise UserError(f'{where}: upcycle_from {source["config"]!r} is a MoE config ({dense.name}); upcycle from a '
                        f'dense config of {moe.dense().name}')
    if dense != moe.dense():
        raise UserError(f'{where}: {moe.name} ({moe.label}) upcycles from {moe.dense().name} ({moe.dense().label}), '
                        f'but upcycle_from {source["config"]!r} is {dense.name} ({dense.label})')


def config_seeds(config: Mapping[str, Any], spec_seeds: Optional[List[int]]) -> List[Optional[int]]:
    seeds = config.get('seeds', spec_seeds)
    return list(seeds) if seeds else [None]


def named_cells(spec: Any, make_cell: Callable[..., Dict[str, Any]],
                recipe_for: Callable[[Any, str, str], Optional[str]]) -> List[Dict[str, Any]]:
    """The cells of a spec with `configs`, seed by seed: every config's first seed (configs in the spec's order),
    then every config's second seed, ...

    So a study stopped at any point (a session's end, a lost machine) has its arms equally far along, and
    `--shard` slices get every config. (Upcycled cells still run after their sources: the grid runs them in a
    second wave.)

    Args:
        spec: The grid spec (`bench.pipeline.grid.GridSpec`).
        make_cell: `(cell id, model name, model kwargs, common fields, convert) -> cell`, the grid's own cell
            builder (`convert`: the config's MoE conversion of a plain timm model, or None).
        recipe_for: `(spec, arch, training) -> recipe`, the grid's choice of training recipe per architecture
            (and training).
    """
    per_config = []
    for name, config in spec.configs.items():
        out = []
        per_config.append(out)
        seeds = config_seeds(config, spec.seeds)
        source = config.get('upcycle_from')
        for seed in seeds:
            if source is not None and seed not in config_seeds(spec.configs[source], spec.seeds):
                raise UserError(f'config {name!r} upcycles from {source!r} with seed {seed}, which {source!r} '
                                'does not train: give both the same seeds')
            cell_id = name if seed is None else f'{name}-seed{seed}'
            arch = config['model'].split('_')[0]
            common = dict(training=config.get('training', 'pgd'), arch=arch, seed=seed, config=name,
                          first_seed=seed == seeds[0], tag=config.get('tag'),
                          train={**spec.train, **config.get('train', {})},
                          upcycle_from=None if source is None else (source if seed is None else f'{source}-seed{seed}'),
                          eval=cell_eval(spec, config, seed == seeds[0]))
            common['train_config'] = recipe_for(spec, arch, common['training'])
            out.append(make_cell(cell_id, config['model'], {**spec.model_kwargs, **config.get('model_kwargs', {})},
                                 common, config.get('convert')))
    rounds = max(map(len, per_config), default=0)
    return [cells[i] for i in range(rounds) for cells in per_config if i < len(cells)]


def cell_eval(spec: Any, config: Mapping[str, Any], first_seed: bool) -> Dict[str, Any]:
    """The evaluation of one cell: the spec's, the config's overrides, then (first seed) `first_seed_eval`,
    whose attacks are added to the others rather than replacing them."""
    values = {**spec.eval, **config.get('eval', {})}
    if first_seed and spec.first_seed_eval:
        extra = dict(spec.first_seed_eval)
        if 'attacks' in extra:
            extra['attacks'] = f'{values.get("attacks", "paper")},{extra["attacks"]}'
        values.update(extra)
    return values

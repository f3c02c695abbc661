"""The hub-style folder that timm loads, written by `timm-moe export` (`bench.pipeline.export` reads the run).

The folder holds what `timm.create_model('local-dir:DIR')` (newer timm; not 1.0.9) reads, in the layout of
timm's own `save_for_hf`, plus a model card:

- `config.json`: `architecture`, `num_classes`, `num_features`, `global_pool`, `model_args` (the run's
  model kwargs, `num_classes` and `in_chans` included) and `pretrained_cfg` (input size, mean and std of
  the data set the run trained on: the preprocessing that the weights expect);
- `model.safetensors`: the plain timm state_dict, with the architecture, E, k and model_args in its
  metadata, so that a loader can refuse weights of another E or k (their keys can be identical);
- a plain timm model converted to MoE also records `convert` (`timm_moe.Conversion`) in both: the model is
  `timm_moe.create_model(architecture, convert=convert, **model_args)` with these weights loaded;
- `README.md`: a model card filled from the run's registry entry (accuracies, attacks, FLOPs,
  provenance); without an entry it says so and shows no number.

`check_compatible` and `load_exported` are the loading side; docs/ECOSYSTEM.md has the formats.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

import timm_moe
from timm_moe import ModelSpec

from bench.core.atomic import atomic_save_safetensors, replace_dir, temp_dir_beside
from bench.core.errors import UserError
from bench.core.provenance import sha256_file
from bench.results.registry import entry_path, load_entries, load_entry

WEIGHTS_FILE = 'model.safetensors'
CONFIG_FILE = 'config.json'
CARD_FILE = 'README.md'
METADATA_KEY = 'timm_moe'  # safetensors metadata: JSON of the architecture and model_args
# pretrained_cfg keys that locate a source (timm adds its own on load) or mean nothing for an export
_CFG_DROP = ('url', 'hf_hub_id', 'hf_hub_filename', 'file', 'source', 'state_dict', 'tag', 'custom_load')

PathLike = Union[str, Path]


# ---------------------------------------------------------------------------------------------- compatibility

def _recorded_spec(source: Optional[Mapping[str, Any]]) -> Tuple[Optional[ModelSpec], Dict[str, Any]]:
    """(the spec, the timm kwargs) that `source` records for the weights' own model; (None, {}) if not ours."""
    name = (source or {}).get('architecture')
    try:
        return ModelSpec.from_timm_kwargs(name, dict((source or {}).get('model_args') or {}))
    except ValueError:
        return None, {}


def _model_arg(model: nn.Module, key: str) -> Any:
    """`model.num_classes` / `model.in_chans`; timm before 1.0.10 keeps no `in_chans` on a ResNet, so then the
    input channels of its first convolution (timm's `pretrained_cfg['first_conv']`) stand for it."""
    value = getattr(model, key, None)
    if value is None and key == 'in_chans':
        first = getattr(model, 'pretrained_cfg', {}).get('first_conv')
        conv = model.get_submodule(first) if first else None
        value = getattr(conv, 'in_channels', None)
    return value


def compatibility_problems(state_dict: Mapping[str, torch.Tensor], model: nn.Module,
                           source: Optional[Mapping[str, Any]] = None) -> List[str]:
    """Every way the weights differ from `model`, as 'what: weights vs model' phrases (empty: they fit).

    Args:
        state_dict: The weights.
        model: The model they are meant for.
        source: What is recorded about the weights' own model, e.g. `{'architecture': name,
            'model_args': {...}}` from config.json or the safetensors metadata. For two timm-moe models the
            specs are compared field by field (routing k, for one, changes no weight); otherwise, and when
            the specs agree, the keys and shapes.
    """
    problems: List[str] = []
    if source is not None and source.get('convert') != getattr(model, 'moe_conversion', None):
        # routing k changes no weight: only the record tells a converted model's E4 k=1 from its k=2
        problems.append(f'convert {source.get("convert")} vs {getattr(model, "moe_conversion", None)}')
    theirs, their_args = _recorded_spec(source)
    ours = ModelSpec.of_model(model)
    if theirs is not None and ours is not None:
        a, b = theirs.resolved().to_dict(), ours.to_dict()
        problems += [f'{key} {a[key]} vs {b[key]}' for key in a if a[key] != b[key]]
        for key in ('num_classes', 'in_chans'):
            if key in their_args and their_args[key] != _model_arg(model, key):
                problems.append(f'{key} {their_args[key]} vs {_model_arg(model, key)}')
    if not problems:  # same model as recorded, yet the keys or shapes may still differ (e.g. another family)
        own = model.state_dict()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        shapes = [f'{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}' for k, v in own.items()
                  if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
        for what, keys in (('keys missing from the weights', missing), ('unexpected keys', unexpected),
                           ('shapes', shapes)):
            if keys:
                problems.append(f'{len(keys)} {what} ({", ".join(keys[:2])}{", ..." if len(keys) > 2 else ""})')
    return problems


def check_compatible(state_dict: Mapping[str, torch.Tensor], model: nn.Module, label: str = 'the model',
                     source: Optional[Mapping[str, Any]] = None, what: str = 'the weights') -> None:
    """Raise UserError, in one line naming what differs (weights vs model), unless the weights fit `model`.

    With a `source` that records the weights' model (config.json / safetensors metadata of an export), the two
    timm-moe specs are compared (architecture, kind, E, k, placement, gate, widths, ...); the keys and shapes
    of the weights are always checked.
    """
    problems = compatibility_problems(state_dict, model, source)
    if problems:
        raise UserError(f'{what} do not fit {label}: ' + '; '.join(problems) + ' (weights vs model)')


# ---------------------------------------------------------------------------------------------- writing

def hub_config(model: nn.Module, name: str, model_args: Mapping[str, Any], dataset: str,
               info: Mapping[str, Any]) -> Dict[str, Any]:
    """config.json in timm's hub layout; `pretrained_cfg` describes the data the weights expect (`info`:
    `bench.data.dataset_info(dataset)`, its input size the run's `img_size` where it resized), and `convert` the
    conversion of a converted plain timm model."""
    conversion = getattr(model, 'moe_conversion', None)
    cfg = {k: v for k, v in dict(model.pretrained_cfg).items() if k not in _CFG_DROP and v is not None}
    cfg.update(architecture=name, num_classes=model.num_classes, input_size=tuple(info['input_size']),
               mean=tuple(info['mean']), std=tuple(info['std']))
    if tuple(info['input_size'][1:]) != tuple(model.pretrained_cfg['input_size'][1:]):
        # the features' spatial size follows the input; timm drops what it cannot vouch for
        cfg.pop('pool_size', None)
    out = {
        'architecture': name,
        'num_classes': model.num_classes,
        'num_features': model.num_features,
        'global_pool': _global_pool(model),
        'model_args': dict(model_args),
        'pretrained_cfg': cfg,
        'timm_moe': {'version': timm_moe.__version__, 'dataset': dataset,
                     'note': 'import timm_moe before timm.create_model: it registers the architecture'},
    }
    if conversion is not None:
        out['convert'] = dict(conversion)
        out['timm_moe']['note'] = ('timm_moe.create_model(architecture, convert=convert, **model_args) builds the '
                                   'model; load model.safetensors into it')
    return out


def _global_pool(model: nn.Module) -> str:
    """The pooling type, where the model keeps it: a ResNet's `global_pool` module, a ConvNeXt's head's, or a
    string (timm's `save_for_hf` reads it the same way)."""
    pool = getattr(model, 'global_pool', None) or getattr(getattr(model, 'head', None), 'global_pool', None)
    return pool if isinstance(pool, str) else getattr(pool, 'pool_type', 'avg') or ''


def write_weights(model: nn.Module, path: Path, name: str, model_args: Mapping[str, Any]) -> None:
    # safetensors refuses views and shared storage: one contiguous copy per tensor
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    # one metadata key: safetensors writes several in hash order, and the file would differ run to run
    record = {'architecture': name, 'model_args': dict(model_args)}
    if getattr(model, 'moe_conversion', None) is not None:
        record['convert'] = dict(model.moe_conversion)
    atomic_save_safetensors(tensors, path, metadata={METADATA_KEY: json.dumps(record, sort_keys=True)})


def _fmt(value: Any, digits: int = 2) -> str:
    return f'{value:.{digits}f}' if isinstance(value, (int, float)) and not isinstance(value, bool) else '-'


def training_of(run_cfg: Mapping[str, Any]) -> str:
    """The run's training (normal, pgd, trades); configs written before the rename call it `method`."""
    return str(run_cfg.get('training') or run_cfg.get('method') or '?')


def what_ran(run_cfg: Mapping[str, Any], result: Optional[Mapping[str, Any]]) -> str:
    """How long the run really trained, from its result.json (the configured `epochs` is only the plan: a
    `--max-steps 20` run of a 2-epoch config trains a fraction of one)."""
    if not result or not isinstance(result.get('steps'), int):
        return 'unknown (the run has no result.json: unfinished, or written by an older version)'
    steps, history = result['steps'], [h for h in result.get('history') or [] if h.get('kind', 'epoch') == 'epoch']
    complete = sum(1 for h in history if h.get('complete'))
    text = f'{steps} optimizer steps: {complete} complete epoch{"s" * (complete != 1)} of {run_cfg.get("epochs", "?")}'
    if history and not history[-1].get('complete'):
        text += f' and part of epoch {complete + 1}'
    max_steps = run_cfg.get('max_steps')
    if isinstance(max_steps, int) and steps >= max_steps:
        text += f' (stopped by max_steps={max_steps})'
    return text


def model_card(name: str, model_args: Mapping[str, Any], dataset: str, run_cfg: Mapping[str, Any],
               entry: Optional[Mapping[str, Any]], weights_sha256: str, entry_note: str,
               result: Optional[Mapping[str, Any]] = None) -> str:
    """README.md: front matter, how to load, training (`result`: the run's result.json, for what ran), and the
    registry entry's numbers (or none)."""
    args = ', '.join(f'{k}={v!r}' for k, v in model_args.items())
    convert = run_cfg.get('convert')
    if convert is None:
        what = 'MoE ResNet'
        load = ['import json, timm, timm_moe   # timm_moe registers the architecture', '',
                "model = timm.create_model('local-dir:FOLDER', pretrained=True)   # newer timm (not 1.0.9)", '',
                '# any timm >= 1.0.9: the exported pretrained_cfg carries the classes, channels, mean and std',
                "cfg = json.load(open('FOLDER/config.json'))",
                "model = timm.create_model(cfg['architecture'], pretrained=True, **cfg['model_args'],",
                "                          pretrained_cfg_overlay=dict(cfg['pretrained_cfg'], "
                "file='FOLDER/model.safetensors'))"]
    else:  # timm builds the plain model only: timm_moe converts it as config.json's `convert` says
        what = f'{name} converted to MoE (`convert`: `{convert}`)'
        load = ['import json, timm_moe', 'from safetensors.torch import load_file', '',
                "cfg = json.load(open('FOLDER/config.json'))",
                "model = timm_moe.create_model(cfg['architecture'], convert=cfg['convert'], **cfg['model_args'])",
                "model.load_state_dict(load_file('FOLDER/model.safetensors'))"]
    lines = [
        '---', 'library_name: timm', 'license: apache-2.0', 'tags:', '- image-classification', '- timm',
        '- timm-moe', '- mixture-of-experts', '- adversarial-robustness', '---', '',
        f'# {name} ({dataset}, {training_of(run_cfg)} training)', '',
        f'A [timm-moe](https://arxiv.org/abs/2509.05086) {what} exported by `timm-moe export`. '
        f'Model kwargs: `{args}`.', '',
        '## Load', '', '```python', *load,
        '```', '',
        f'Inputs: images in [0, 1] normalised with the mean and std in `config.json` ({dataset}); '
        'timm.data.resolve_data_config(model=model) picks them up.', '',
        '## Training', '',
        '| setting | value |', '|---|---|', f'| training | {training_of(run_cfg)} |',
        f'| trained for | {what_ran(run_cfg, result)} |',
    ]
    for key in ('batch_size', 'lr', 'eps', 'attack_steps', 'attack_step', 'seed'):
        if key in run_cfg:
            value = run_cfg[key]
            lines.append(f'| {key} | {_fmt(value, 5) if isinstance(value, float) else value} |')
    lines += ['', '## Results', '']
    if entry is None:
        lines += [f'No registry entry was given or found for these weights ({entry_note}), so this card reports '
                  'no accuracy. Measure one with `timm-moe eval --model ... --checkpoint ...`.', '']
    else:
        lines += _entry_section(entry)
    lines += ['## Files', '', f'- `model.safetensors`: sha256 `{weights_sha256}`',
              '- `config.json`: timm hub config (architecture, model_args, pretrained_cfg)', '']
    return '\n'.join(lines)


def _entry_section(entry: Mapping[str, Any]) -> List[str]:
    """The registry entry's numbers, as stored (percent), with the attack settings and provenance."""
    robust = entry.get('robust_acc') or {}
    lines = [f'From registry entry `{entry.get("entry_id")}` ({entry.get("source")}): '
             f'{entry.get("threat_model")} eps={_fmt(entry.get("eps"), 5)} on {entry.get("n_examples")} '
             f'test images of {entry.get("dataset")}.', '',
             '| metric | accuracy % |', '|---|---|', f'| clean | {_fmt(entry.get("clean_acc"))} |']
    lines += [f'| {attack} | {_fmt(value)} |' for attack, value in robust.items()]
    lines.append('')
    if entry.get('attack_note'):
        lines += [f'Attacks: {entry["attack_note"]}.', '']
    flops = entry.get('flops')
    if flops:
        lines += [f'FLOPs per image: {_fmt(flops.get("active"), 0)} active, {_fmt(flops.get("total"), 0)} with all '
                  f'experts, dense baseline {_fmt(flops.get("dense"), 0)}: ratio {_fmt(flops.get("ratio"), 4)}.', '']
    params = entry.get('params')
    if params:
        lines += [f'Parameters: {params.get("total")} total, {params.get("active")} active per image.', '']
    flags = entry.get('sanity_flags')
    if flags:
        lines += [f'**Sanity flags**: {", ".join(flags)}.', '']
    prov = entry.get('provenance') or {}
    if prov:
        lines += ['Provenance:', '']
        lines += [f'- {key}: `{prov[key]}`' for key in ('git_commit', 'package_version', 'torch', 'timm', 'device',
                                                         'command', 'seed', 'date', 'checkpoint_sha256')
                  if prov.get(key) is not None]
        lines.append('')
    return lines


# ---------------------------------------------------------------------------------------------- registry entry

def find_entry(spec: Optional[str], weights_sha256: str, registry_dir: PathLike) -> Tuple[Optional[Dict], str]:
    """(entry, how it was chosen): `spec` is an entry id or JSON path; without it, the registry entry
    whose provenance.checkpoint_sha256 is these weights' (None when none is)."""
    if spec:
        entry = _given_entry(spec, registry_dir)
        # the card puts the entry's numbers beside these weights: they must be the weights it measured
        want = (entry.get('provenance') or {}).get('checkpoint_sha256')
        if want is not None and want != weights_sha256:
            raise UserError(f'--entry {spec}: entry {entry.get("entry_id")} was measured on weights with sha256 '
                            f'{str(want)[:12]}..., not these (sha256 {weights_sha256[:12]}...); give the entry of '
                            'this run, or leave --entry out')
        return entry, f'--entry {spec}'
    if not Path(registry_dir).is_dir():
        return None, f'no registry at {registry_dir}'
    matches = [e for e in load_entries(registry_dir)
               if (e.get('provenance') or {}).get('checkpoint_sha256') == weights_sha256]
    if len(matches) > 1:
        ids = ', '.join(e['entry_id'] for e in matches)
        raise UserError(f'{len(matches)} registry entries record these weights ({ids}); pick one with --entry')
    if matches:
        return matches[0], f'found by checkpoint sha256 in {registry_dir}'
    return None, f'none under {registry_dir} records checkpoint sha256 {weights_sha256[:12]}...'


def _given_entry(spec: str, registry_dir: PathLike) -> Dict[str, Any]:
    """The entry `--entry` names: a JSON file, or an id found in exactly one place of the registry."""
    if Path(spec).suffix == '.json' or Path(spec).is_file():
        if not Path(spec).is_file():
            raise UserError(f'--entry {spec} does not exist')
        return load_entry(spec)
    matches = [e for e in load_entries(registry_dir) if e.get('entry_id') == spec]
    if not matches:
        raise UserError(f'--entry {spec!r}: no entry with that id under {registry_dir}; give an entry id '
                        'from `timm-moe leaderboard` or a JSON file')
    if len(matches) > 1:  # as `compare` does: an id in two data sets names no one entry
        places = ', '.join(str(entry_path(e, registry_dir)) for e in matches)
        raise UserError(f'--entry {spec!r} is in {len(matches)} places under {registry_dir} ({places}): '
                        'pass the path of the one you mean')
    return matches[0]


def write_hub_folder(out: Path, model: nn.Module, name: str, model_args: Mapping[str, Any], dataset: str,
                     info: Mapping[str, Any], run_cfg: Mapping[str, Any], entry: Optional[Mapping[str, Any]],
                     entry_note: str, result: Optional[Mapping[str, Any]] = None) -> Path:
    """Write the folder (weights, config.json, model card) beside `out`, then move it into place: a killed
    export leaves no half folder behind, and the next one finishes or rolls back its swap (`recover_dir`).
    Replaces `out` if it exists (the caller decides whether it may)."""
    tmp = temp_dir_beside(out)
    try:
        write_weights(model, tmp / WEIGHTS_FILE, name, model_args)
        (tmp / CONFIG_FILE).write_text(json.dumps(hub_config(model, name, model_args, dataset, info), indent=2) + '\n')
        card = model_card(name, model_args, dataset, run_cfg, entry, sha256_file(tmp / WEIGHTS_FILE), entry_note,
                          result)
        (tmp / CARD_FILE).write_text(card)
        replace_dir(tmp, out)  # the old folder aside, the new one in, the old one removed: never neither
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---------------------------------------------------------------------------------------------- loading

def read_export(path: PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """(state_dict, source) of an exported folder or its model.safetensors; `source` holds the
    recorded architecture and model_args (from the safetensors metadata)."""
    from safetensors import safe_open
    path = Path(path)
    file = path / WEIGHTS_FILE if path.is_dir() else path
    if not file.is_file():
        raise UserError(f'{path} holds no {WEIGHTS_FILE}; give a folder written by `timm-moe export`')
    try:
        with safe_open(str(file), framework='pt') as f:
            meta = f.metadata() or {}
            state_dict = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - SafetensorError (truncated, a header too large), or an OS error
        first = str(e).strip().splitlines()[0] if str(e).strip() else ''
        raise UserError(f'{file} is not a readable safetensors file ({type(e).__name__}: {first[:120]}); it may be '
                        'truncated or corrupt') from None
    try:
        source = json.loads(meta.get(METADATA_KEY) or '{}')
    except json.JSONDecodeError:
        raise UserError(f'{file}: its {METADATA_KEY!r} metadata is not JSON; was it written by `timm-moe export`?') from None
    return state_dict, source


def load_exported(path: PathLike, model_name: Optional[str] = None, **kwargs: Any) -> nn.Module:
    """Build a model and load an export into it, refusing (one line) weights of another architecture, E or k.

    Args:
        path: The exported folder (or its model.safetensors).
        model_name: Target model (default: the recorded architecture, converted as the recorded `convert` says).
        **kwargs: Target model kwargs (default: the recorded model_args).
    """
    state_dict, source = read_export(path)
    name = model_name or source.get('architecture')
    if not name:
        raise UserError(f'{path}: no architecture recorded; pass model_name')
    args = dict(source.get('model_args') or {}) if model_name is None else {}
    args.update(kwargs)
    model = timm_moe.create_model(name, convert=source.get('convert') if model_name is None else None, **args)
    check_compatible(state_dict, model, name, source=source, what=f'the weights in {path}')
    model.load_state_dict(state_dict)
    return model

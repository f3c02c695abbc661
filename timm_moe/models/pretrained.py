"""Pretrained tags: trained checkpoints shipped as package data, which timm loads offline by name.

    import timm, timm_moe
    model = timm.create_model('resnet18_blockmoe_e4_k2.fmnist_pgd', pretrained=True)

`timm_moe/pretrained/` holds `manifest.json` and one `<model>.<tag>.safetensors` per tag (`timm-moe ship`
fills it from a finished study; docs/ECOSYSTEM.md, "Pretrained tags"). Each manifest record becomes a timm
pretrained cfg of its model: `file` is the package file, and num_classes, input_size, mean and std are those of
the data set the weights were trained on. Its `model_kwargs` (the architecture the weights need) become the
defaults of the model's kwargs whenever the tag is named, with or without `pretrained=True`; the user's kwargs win.

timm's PretrainedCfg is a dataclass that refuses unknown keys, so the rest of a record (model_kwargs, dtype,
sha256, dataset, registry entry, source run, training summary) stays here: `tag_record('model.tag')`.

Another folder: set TIMM_MOE_PRETRAINED_DIR before importing timm_moe, or call
`timm_moe.models.register_tags(folder)`, which
replaces the tags registered before (tests do). On timm 1.0.9, whose register_model does not clear a model's
old entries, tags of the replaced folder stay listed; timm 1.0.31 clears them.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import json
import os
from collections import deque
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from timm.models import DefaultCfg, PretrainedCfg, split_model_name_tag

__all__ = ['ENV_DIR', 'MANIFEST', 'DTYPES', 'package_folder', 'default_folder', 'read_manifest', 'registered_tags',
           'tag_record', 'tag_model_kwargs', 'check_weights_file', 'CorruptWeightsError', 'ManifestError']

ENV_DIR = 'TIMM_MOE_PRETRAINED_DIR'
MANIFEST = 'manifest.json'
DTYPES = ('float32', 'float16')
REQUIRED = ('file', 'sha256', 'dtype', 'model_kwargs', 'input_size', 'mean', 'std')

PathLike = Union[str, Path]
# (input_size, model kwargs) -> the final feature map size, or None when the model cannot say
PoolSize = Callable[[Sequence[int], Mapping[str, Any]], Optional[Tuple[int, int]]]

_TAGS: Dict[str, Dict[str, Any]] = {}  # 'model.tag' -> its manifest record (`path`: the absolute weights file)


def package_folder() -> Path:
    """The package's own `timm_moe/pretrained/`."""
    # pip installs packages as directories, so the package data is a real file that timm can open
    return Path(str(importlib.resources.files('timm_moe') / 'pretrained'))


def default_folder() -> Path:
    """$TIMM_MOE_PRETRAINED_DIR if set, else `package_folder()`."""
    env = os.environ.get(ENV_DIR)
    return Path(env) if env else package_folder()


class ManifestError(ValueError):
    """A pretrained-tags manifest that cannot be used: not JSON (or not UTF-8), not an object, or a malformed record.
    A file of the user or of the installation, not a bug: the message is one line naming the manifest, and
    `timm-moe` prints it as such (`bench.cli`)."""


def read_manifest(folder: Optional[PathLike] = None) -> Dict[str, Dict[str, Any]]:
    """The records of `folder`/manifest.json (default: `default_folder()`), each with `path`, its absolute file.

    A package without the folder has no tags; a folder given explicitly (argument or $TIMM_MOE_PRETRAINED_DIR)
    must hold a manifest. A manifest that is not a JSON object, or a malformed record, raises `ManifestError`
    naming the manifest (and the tag).
    """
    explicit = folder is not None or bool(os.environ.get(ENV_DIR))
    folder = Path(folder) if folder is not None else default_folder()
    manifest = folder / MANIFEST
    if not manifest.is_file():
        if explicit:
            raise FileNotFoundError(f'{manifest} does not exist: a pretrained-tags folder holds a {MANIFEST} '
                                    '(`timm-moe ship` writes one)')
        return {}
    try:
        data = json.loads(manifest.read_text(encoding='utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:  # the first line only: one line, not the file
        raise ManifestError(f'{manifest} is not JSON ({str(e).splitlines()[0][:120]}); restore it, or ship the '
                            'tags again') from None
    if not isinstance(data, dict):
        raise ManifestError(f'{manifest}: expected a JSON object {{"model.tag": record}}, got {type(data).__name__}')
    return {key: _checked(manifest, key, record) for key, record in data.items()}


def _checked(manifest: Path, key: str, record: Any) -> Dict[str, Any]:
    def bad(what: str) -> ManifestError:
        return ManifestError(f'{manifest}: {key}: {what}')

    name, tag = split_model_name_tag(key)
    if not name or not tag:
        raise bad('expected a key "model.tag" with a non-empty tag')
    if not isinstance(record, dict):
        raise bad(f'expected a record (JSON object), got {type(record).__name__}')
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise bad(f'the record lacks {missing}; a record holds {list(REQUIRED)} and more')
    for field in ('file', 'sha256'):
        if not isinstance(record[field], str) or not record[field]:
            raise bad(f'{field}={str(record[field])[:40]!r}: expected a non-empty string')
    for field in ('mean', 'std'):
        if not (isinstance(record[field], list) and record[field]
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in record[field])):
            raise bad(f'{field}={str(record[field])[:40]!r}: expected a list of numbers')
    if record['dtype'] not in DTYPES:
        raise bad(f'dtype={record["dtype"]!r}: expected one of {list(DTYPES)}')
    kwargs = record['model_kwargs']
    if not isinstance(kwargs, dict) or not isinstance(kwargs.get('num_classes'), int):
        raise bad('model_kwargs must be an object with an integer num_classes')
    if not (isinstance(record['input_size'], list) and len(record['input_size']) == 3):
        raise bad(f'input_size={record["input_size"]!r}: expected [channels, height, width]')
    return dict(record, path=str((manifest.parent / record['file']).resolve()))


def tag_cfg(record: Mapping[str, Any], base: PretrainedCfg, pool_size: PoolSize) -> PretrainedCfg:
    """The timm pretrained cfg of a manifest record: the model's untagged cfg with the weights and their data."""
    input_size = tuple(record['input_size'])
    cfg = dict(file=record['path'], num_classes=record['model_kwargs']['num_classes'], input_size=input_size,
               mean=tuple(record['mean']), std=tuple(record['std']),
               pool_size=pool_size(input_size, record['model_kwargs']),
               description=f'timm-moe pretrained tag, trained on {record.get("dataset", "?")}')
    # a state_dict/url/hub source in the base would win over `file` in timm's loader
    return dataclasses.replace(base, url='', hf_hub_id=None, state_dict=None, **cfg)


def with_tags(default_cfgs: Mapping[str, DefaultCfg], records: Mapping[str, Mapping[str, Any]],
              pool_size: PoolSize) -> Dict[str, DefaultCfg]:
    """`default_cfgs` (model -> DefaultCfg) with the tags registered before replaced by `records`' tags, as new
    DefaultCfg objects (the given ones, which timm's registry may hold, are left as they are).

    The untagged cfg stays each model's first (default) tag. Hence DefaultCfg's constructor and not timm's
    `generate_default_cfgs`: that one makes the first tag with weights the default whenever the untagged cfg has
    none, even when a '*' marks the untagged one, and `create_model(name)` would quietly get the tag's classes,
    channels and mean.
    """
    unknown = sorted(k for k in records if split_model_name_tag(k)[0] not in default_cfgs)
    if unknown:
        raise ManifestError(f'pretrained tag {unknown[0]!r} names no timm-moe model; models are e.g. '
                         f'{sorted(default_cfgs)[0]!r}')
    before = {split_model_name_tag(key) for key in _TAGS}
    added: Dict[str, Dict[str, PretrainedCfg]] = {}
    for key, record in records.items():
        name, tag = split_model_name_tag(key)
        added.setdefault(name, {})[tag] = tag_cfg(record, default_cfgs[name].cfgs[''], pool_size)
    out = {}
    for name, default in default_cfgs.items():
        cfgs = {tag: default.cfgs[tag] for tag in default.tags if (name, tag) not in before}
        cfgs.update(added.get(name, {}))
        out[name] = DefaultCfg(tags=deque(cfgs), cfgs=cfgs, is_pretrained=any(c.has_weights for c in cfgs.values()))
    _TAGS.clear()
    _TAGS.update((key, dict(record)) for key, record in records.items())
    return out


def registered_tags() -> List[str]:
    """The 'model.tag' names registered now (the model module's `register_tags` replaces them)."""
    return sorted(_TAGS)


def tag_record(name: str) -> Optional[Dict[str, Any]]:
    """The manifest record of a registered 'model.tag' (None for another name)."""
    record = _TAGS.get(name)
    return copy.deepcopy(record) if record is not None else None


def tag_model_kwargs(variant: str, tag: Optional[str]) -> Dict[str, Any]:
    """The architecture kwargs that the weights of `variant`.`tag` need ({} for no tag or a tag without a record)."""
    record = _TAGS.get(f'{variant}.{tag}') if tag else None
    return dict(record['model_kwargs']) if record else {}


def check_has_weights(variant: str, cfg: PretrainedCfg, overlay: Mapping[str, Any], tags: Sequence[str]) -> None:
    """Refuse pretrained=True on a name without weights in one line that names the tags that have them.

    timm's own message ('No pretrained weights exist for ...') gives no hint that `.fmnist_*` tags exist.

    Args:
        variant: The registered name.
        cfg: Its resolved pretrained cfg (the tag's, or the default).
        overlay: The user's `pretrained_cfg_overlay` (a `file` there is weights).
        tags: 'name.tag' names with weights of the same architecture, nearest first.
    """
    if cfg.has_weights or any(overlay.get(key) for key in ('url', 'file', 'hf_hub_id', 'state_dict')):
        return
    given = f'{variant}.{cfg.tag}' if cfg.tag else variant
    hint = (f'the tags with weights of this architecture: {", ".join(tags[:8])}' + (', ...' if len(tags) > 8 else '')
            if tags else 'no tag of this architecture has weights')
    raise ValueError(f'{given} has no pretrained weights; {hint}; or give your own with '
                     "pretrained_cfg_overlay=dict(file='model.safetensors')")


def check_weights_fit(variant: str, state_dict: Mapping[str, Any], model: Any) -> None:
    """Refuse, in one line, pretrained weights of another architecture, E or k before timm loads them.

    torch's own refusal lists every missing and unexpected key over many lines. The classifier and the first conv
    are left to timm, which adapts them to num_classes and in_chans (or drops them) after this check.
    """
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    adapted = {f'{cfg.get("classifier", "fc")}.weight', f'{cfg.get("classifier", "fc")}.bias',
               f'{cfg.get("first_conv", "conv1")}.weight'}
    own = {k: v for k, v in model.state_dict().items() if k not in adapted}
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own and k not in adapted]  # num_classes=0 drops the classifier
    shapes = [k for k in own if k in state_dict and tuple(getattr(state_dict[k], 'shape', ())) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        return
    parts = [f'{len(keys)} {what} (e.g. {keys[0]})' for what, keys in (
        ('keys missing from the weights', missing), ('unexpected keys', unexpected),
        ('of another shape', shapes)) if keys]
    source = cfg.get('file') or cfg.get('hf_hub_id') or cfg.get('url')
    raise ValueError(f'the weights in {source} do not fit {variant}: ' + ', '.join(parts) + '; they are of another '
                     'architecture, E or k: create the model they were saved from (config.json\'s architecture '
                     'and model_args)')


class CorruptWeightsError(ValueError):
    """A tag's weights file is not the one its manifest lists (its sha256 differs): truncated or altered."""


_VERIFIED: Dict[Tuple[str, int, int], str] = {}  # (file, size, mtime_ns) -> sha256: each file is hashed once


def _sha256(file: Path) -> str:
    import hashlib
    st = file.stat()
    key = (str(file), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        digest = hashlib.sha256()
        with open(file, 'rb') as f:
            for block in iter(lambda: f.read(1 << 20), b''):
                digest.update(block)
        _VERIFIED[key] = digest.hexdigest()
    return _VERIFIED[key]


def check_weights_file(variant: str, cfg: PretrainedCfg, overlay: Mapping[str, Any]) -> None:
    """Refuse, naming the tag and the file, a tag whose weights file is missing (timm's own error has no message)
    or is not the file its manifest lists (its sha256: a truncated file fails in safetensors, an altered one would
    load other weights without a word)."""
    record = _TAGS.get(f'{variant}.{cfg.tag}') if cfg.tag else None
    file = overlay.get('file', cfg.file)
    if record is None or file != record['path']:
        return
    if not Path(file).is_file():
        raise FileNotFoundError(f'{variant}.{cfg.tag}: its weights file {file} is missing (its manifest lists it); '
                                'reinstall timm-moe or ship the tags again')
    digest = _sha256(Path(file))
    if digest != record['sha256']:
        raise CorruptWeightsError(f'{variant}.{cfg.tag}: its weights file {file} is corrupt: sha256 {digest[:12]}..., '
                                  f'its manifest lists {str(record["sha256"])[:12]}...; reinstall timm-moe or ship '
                                  'the tags again')

"""The results registry: one schema-checked JSON file per result, written atomically.

Layout: `registry/<dataset>/<threat_model>/<entry_id>.json` beside `registry/schema.json`.
Every number the project shows is read from these files (see `bench.results.leaderboard`, `bench.results.report`).
Field meanings and the schema versions are in docs/REGISTRY.md: version 2 entries store the exact
settings of every attack (`eval_settings`), which test points each measurement got right (`per_sample`)
and the model as built (`model.effective_kwargs`, `model.noisy_gating`); version 1 entries (no
`schema_version`, or 1) still load.

Writing is safe under concurrency (the sweep runs several jobs at once): the entry is written
through `bench.atomic`: to a temporary file in the target directory and then either linked into place (`os.link`
fails if the name exists, so of two racing writers exactly one wins) or, with
`overwrite=True`, moved over the old file with `os.replace` (atomic on POSIX). A reader
therefore never sees a half-written file.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

from bench.atomic import atomic_open
from bench.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REGISTRY = REPO_ROOT / 'registry'
# registry/schema.json is the one schema; bench/assets links to it so that wheels carry a copy
SCHEMA_PATH = Path(__file__).resolve().parents[1] / 'assets' / 'registry_schema.json'
SCHEMA_VERSION = 2  # what this code writes; every version in the schema's enum still loads
_ID_OK = re.compile(r'[^a-z0-9_.-]+')

PathLike = Union[str, os.PathLike]


@lru_cache(maxsize=1)
def load_schema() -> Dict[str, Any]:
    """The registry's JSON Schema (always the repository's, whatever registry dir is used)."""
    if not SCHEMA_PATH.is_file():
        raise UserError(f'registry schema {SCHEMA_PATH} is missing: reinstall timm-moe')
    return json.loads(SCHEMA_PATH.read_text(encoding='utf-8'))


def check_filters(datasets: Optional[Iterable[str]], threat_models: Optional[Iterable[str]]) -> None:
    """Refuse a --dataset or --threat-model value that no entry can have (the schema's enums)."""
    props = load_schema()['properties']
    for flag, values, allowed in (('--dataset', datasets, props['dataset']['enum']),
                                  ('--threat-model', threat_models, props['threat_model']['enum'])):
        for v in values or []:
            if v not in allowed:
                raise UserError(f'{flag} {v!r} is not known: choose from {", ".join(allowed)}')


@lru_cache(maxsize=1)
def _validator():
    import jsonschema  # imported lazily: only the registry verbs need it

    schema = load_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _field_path(error) -> str:
    """'model.experts' or 'robust_acc.pgd20' or 'per_expert[0].clean_acc'; '<entry>' for the top level."""
    out = ''
    for part in error.absolute_path:
        out += f'[{part}]' if isinstance(part, int) else (f'.{part}' if out else str(part))
    return out or '<entry>'


def validation_errors(entry: Mapping[str, Any]) -> List[str]:
    """Every schema violation of `entry` as 'field: reason', most specific first; [] if valid."""
    import jsonschema

    errors = sorted(_validator().iter_errors(entry), key=jsonschema.exceptions.relevance)
    out: List[str] = []
    for err in errors:
        # if/then and anyOf errors wrap the real reason: report the innermost one
        leaf = jsonschema.exceptions.best_match([err]) if err.context else err
        msg = f'{_field_path(leaf)}: {leaf.message}'
        if msg not in out:
            out.append(msg)
    return out


def schema_version(entry: Mapping[str, Any]) -> int:
    """The entry's schema version; entries written before versions were recorded are version 1."""
    return int(entry.get('schema_version', 1))


def validate_entry(entry: Mapping[str, Any]) -> None:
    """Raise UserError naming the first invalid field and jsonschema's reason.

    Beyond the schema: numbers must be finite (JSON has no NaN), every attacked accuracy has its attack's
    settings, and the per-sample bits agree with the accuracies they claim to be.

    Args:
        entry: a registry entry as a dict.
    """
    if not isinstance(entry, Mapping):
        raise UserError(f'a registry entry must be a JSON object (dict), got {type(entry).__name__}')
    errors = validation_errors(entry)
    if errors:
        more = f' (+{len(errors) - 1} more)' if len(errors) > 1 else ''
        raise UserError(f"invalid registry entry {entry.get('entry_id', '<no entry_id>')!r}: {errors[0]}{more}")
    try:
        json.dumps(entry, allow_nan=False)
    except ValueError as e:
        raise UserError(f"invalid registry entry {entry.get('entry_id')!r}: a number is NaN or infinite ({e}); "
                        'store null for a value that was not measured') from None
    _check_settings_cover_accuracies(entry)
    _check_per_sample(entry)


def _check_settings_cover_accuracies(entry: Mapping[str, Any]) -> None:
    """Every robust accuracy names the attack settings it was measured with ('ensemble' is their worst case)."""
    ev = entry.get('eval_settings')
    if not ev:
        return
    missing = [k for k in entry['robust_acc'] if k != 'ensemble' and k not in ev['attacks']]
    if missing:
        raise UserError(f"invalid registry entry {entry['entry_id']!r}: eval_settings.attacks has no settings for "
                        f"robust_acc.{missing[0]}; store the settings of every attack run")


def _check_per_sample(entry: Mapping[str, Any]) -> None:
    """The stored bits decode, cover n_examples points, name only measured metrics, and count to the accuracies.

    The count check is what makes the bits trustworthy for paired tests: bits that do not reproduce the
    entry's own accuracy to the last point belong to some other run.
    """
    from .stats import per_sample_vectors

    got = per_sample_vectors(entry)  # UserError for malformed bits
    if got is None:
        return
    name = entry['entry_id']
    (start, stop), vectors = got
    n = stop - start
    if entry.get('n_examples') is not None and n != entry['n_examples']:
        raise UserError(f'invalid registry entry {name!r}: per_sample covers {n} points but n_examples is '
                        f"{entry['n_examples']}")
    accuracies = {'clean': entry['clean_acc'], **entry['robust_acc']}
    for metric, bits in vectors.items():
        if metric not in accuracies:
            raise UserError(f'invalid registry entry {name!r}: per_sample.bits.{metric} is not clean_acc or a '
                            f'robust_acc key ({", ".join(accuracies)})')
        k = int(bits.sum())
        if abs(100.0 * k / n - accuracies[metric]) > 1e-6:
            field = 'clean_acc' if metric == 'clean' else f'robust_acc.{metric}'
            raise UserError(f'invalid registry entry {name!r}: per_sample.bits.{metric} has {k} of {n} points '
                            f'correct ({100.0 * k / n:.4f}%) but {field} is {accuracies[metric]}')


def entry_path(entry: Mapping[str, Any], registry_dir: PathLike = DEFAULT_REGISTRY) -> Path:
    """`<registry_dir>/<dataset>/<threat_model>/<entry_id>.json` of a (valid) entry."""
    return Path(registry_dir) / entry['dataset'] / entry['threat_model'] / f"{entry['entry_id']}.json"


def dumps_entry(entry: Mapping[str, Any]) -> str:
    """The canonical text of an entry: 2-space JSON in the entry's key order, UTF-8, final newline."""
    return json.dumps(entry, indent=2, ensure_ascii=False, allow_nan=False) + '\n'


def make_entry_id(*parts: Any, payload: Any = None, digest_len: int = 6) -> str:
    """A file-safe entry id from readable parts plus a short hash of `payload`.

    Example: make_entry_id('resnet18_blockmoe_e8_k1', 'pgd', 'fmnist', payload=config) ->
    'resnet18_blockmoe_e8_k1-pgd-fmnist-1a2b3c'. The hash keeps ids of runs that differ only in
    their config apart while staying reproducible (same payload, same id).

    Args:
        parts: readable components, joined with '-'.
        payload: anything JSON-serialisable; its sha256 (sorted keys) gives the suffix. None: no suffix.
        digest_len: hex digits of the suffix.
    """
    slug = '-'.join(_ID_OK.sub('-', str(p).lower()).strip('-.') for p in parts if p not in (None, ''))
    if payload is not None:
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        slug = f'{slug}-{hashlib.sha256(blob).hexdigest()[:digest_len]}' if slug else hashlib.sha256(blob).hexdigest()[:digest_len]
    slug = slug.strip('-.')
    if not slug:
        raise UserError('make_entry_id needs at least one non-empty part or a payload')
    return slug[:160]


def write_entry(entry: Mapping[str, Any], registry_dir: PathLike = DEFAULT_REGISTRY, overwrite: bool = False) -> Path:
    """Validate `entry` and write it to its place in the registry, atomically.

    Args:
        entry: a registry entry (see registry/schema.json).
        registry_dir: the registry root (default: the repository's `registry/`).
        overwrite: replace an existing entry with the same dataset/threat model/id. Without it an
            existing entry is never touched, and of several concurrent writers exactly one wins.

    Returns:
        The path written.

    Raises:
        UserError: the entry is invalid, or it exists and overwrite is False.
    """
    validate_entry(entry)
    path = entry_path(entry, registry_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and path.exists():  # cheap early answer; the link below is the real guard
        raise UserError(f'registry entry {path} exists: pass overwrite=True (--overwrite) to replace it')
    try:
        with atomic_open(path, exclusive=not overwrite) as f:
            f.write(dumps_entry(entry))
    except FileExistsError:
        raise UserError(f'registry entry {path} exists: pass overwrite=True (--overwrite) to replace it') from None
    return path


def _entry_files(registry_dir: Path) -> List[Path]:
    """All entry files: every *.json below the root except the root's own schema.json."""
    return sorted(p for p in registry_dir.rglob('*.json')
                  if not (p.parent == registry_dir and p.name == 'schema.json') and not p.name.startswith('.'))


def load_entry(path: PathLike, registry_dir: Optional[PathLike] = None) -> Dict[str, Any]:
    """Read and validate one entry file; with `registry_dir`, also check that it sits where it belongs.

    Args:
        path: the JSON file.
        registry_dir: the registry root it was found under (None: skip the location check).
    """
    path = Path(path)
    try:
        entry = json.loads(path.read_text(encoding='utf-8'))
    except json.JSONDecodeError as e:
        raise UserError(f'registry file {path} is not valid JSON: {e}') from None
    try:
        validate_entry(entry)
    except UserError as e:
        raise UserError(f'registry file {path}: {e}') from None
    if registry_dir is not None:
        want = entry_path(entry, registry_dir)
        if path.resolve() != want.resolve():
            raise UserError(f'registry file {path} is misplaced: its dataset, threat_model and entry_id say {want}')
    return entry


def load_entries(registry_dir: PathLike = DEFAULT_REGISTRY, dataset: Optional[Iterable[str]] = None,
                 threat_model: Optional[Iterable[str]] = None) -> List[Dict[str, Any]]:
    """Every entry under `registry_dir`, validated, in path order.

    Args:
        registry_dir: the registry root.
        dataset: keep only these data sets (None: all).
        threat_model: keep only these threat models (None: all).

    Raises:
        UserError: the directory is missing, or a file is invalid (the message names the file).
    """
    root = Path(registry_dir)
    if not root.is_dir():
        raise UserError(f'registry directory {root} does not exist: pass --registry DIR with an existing registry')
    entries = [load_entry(p, root) for p in _entry_files(root)]
    datasets, threats = set(dataset or ()), set(threat_model or ())
    return [e for e in entries if (not datasets or e['dataset'] in datasets)
            and (not threats or e['threat_model'] in threats)]


def robust_metric(entry: Mapping[str, Any]) -> tuple:
    """The headline robust accuracy of an entry and the attack it comes from.

    AutoAttack first; then our ensemble (worst case over the attacks run); then PGD-20; then the
    lowest number stored (the strongest attack on record). (None, None) when there is none.
    """
    ra = entry.get('robust_acc') or {}
    for key in ('autoattack', 'ensemble', 'pgd20'):
        if ra.get(key) is not None:
            return ra[key], key
    if ra:
        key = min(ra, key=lambda k: (ra[k], k))
        return ra[key], key
    return None, None


def effective_model_kwargs(model_name: str, model_kwargs: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The settings the plugin builds `model_name` with from `model_kwargs`: defaults and 'auto' resolved.

    Reads `moe_config` of the model built on the meta device (no memory, no weights): the same code as the
    real model, so the entry records what was built rather than what was typed. `num_experts` and `k` are
    left out (the model name fixes them; they are `model.experts` and `model.k`), so the result can be
    passed back to timm.create_model. None for a model that is not ours (no `moe_config`).
    """
    import timm
    import torch

    import timm_moe  # noqa: F401  registers the models

    if not timm.is_model(model_name):
        return None
    try:
        with torch.device('meta'):
            built = timm.create_model(model_name, **model_kwargs)
    except (TypeError, ValueError) as e:
        # the caller measured this very model a moment ago: failing to rebuild it is a bug, not bad input
        raise RuntimeError(f'cannot rebuild {model_name} with {dict(model_kwargs)} to read its settings: {e}') from e
    config = getattr(built, 'moe_config', None)
    if config is None:
        return None
    out = dict(model_kwargs)
    out.update({k: v for k, v in config.items() if k not in ('num_experts', 'k')})
    for attr in ('num_classes', 'in_chans'):
        if hasattr(built, attr):
            out[attr] = getattr(built, attr)
    return json.loads(json.dumps(out, default=str))  # JSON values only (a layer class becomes its name)


def eval_settings_of(eval_result: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The registry's `eval_settings` from an evaluation result: its settings, attacks keyed by accuracy key.

    `bench.evaluate` reports per-attack settings as `settings['attacks'][name]`; results written before
    that have the names in `settings['attacks']` and the settings in `settings['attack_settings']`.
    """
    settings = eval_result.get('settings')
    if not settings:
        return None
    out = json.loads(json.dumps(dict(settings), default=str))  # tuples become lists, as in the file
    per_attack = out.get('attacks')
    if not isinstance(per_attack, dict):
        per_attack = out.pop('attack_settings', None)
    else:
        out.pop('attack_settings', None)
    if not isinstance(per_attack, dict):
        raise ValueError(f'evaluation settings hold no per-attack settings (keys: {sorted(settings)})')
    out['attacks'] = per_attack
    return out


def measured_entry(*, model_name: str, model_kwargs: Mapping[str, Any], dataset: str, method: str,
                   eval_result: Mapping[str, Any], provenance: Mapping[str, Any], arch: Optional[str] = None,
                   experts: Optional[int] = None, k: Optional[int] = None, training_config: Optional[Mapping] = None,
                   config_path: Optional[str] = None, epochs: Optional[float] = None,
                   flops: Optional[Mapping[str, Any]] = None, params: Optional[Mapping[str, Any]] = None,
                   routing: Optional[Mapping[str, Any]] = None, entry_id: Optional[str] = None,
                   attack_note: Optional[str] = None, notes: Optional[List[str]] = None,
                   index_start: int = 0) -> Dict[str, Any]:
    """Assemble a `source: measured` entry from an evaluation result (bench.evaluate.evaluate_model).

    The entry keeps the evaluation's exact settings (`eval_settings`), its per-sample results as bits
    (`per_sample`, from `eval_result['correct']`) and the model's effective kwargs.

    The entry id defaults to `<model>-<method>-<dataset>-<hash>`, the hash over everything that
    defines the run (model, kwargs, training config, eval settings, seed, checkpoint), so that
    re-running the same job gives the same id and `write_entry` refuses to count it twice.

    Args:
        model_name: the timm name, e.g. 'resnet18_blockmoe_e8_k1'.
        model_kwargs: kwargs given to timm.create_model.
        dataset: one of the registry's data sets.
        method: 'normal' | 'pgd' | 'trades' | 'other'.
        eval_result: dict with clean_acc, robust_acc, n_examples, eps, threat_model, settings (the attacks'
            settings) and correct (per-sample 0/1 lists per metric), and optionally per_expert, flags,
            routing_under_attack.
        provenance: `bench.provenance.provenance(...)`.
        arch, experts, k: model facts (experts 0 and k None for a dense model).
        training_config: the training config (stored, and hashed into config_sha256).
        config_path: where that config lives, if in a file.
        epochs: epochs trained.
        flops: {'active', 'total', 'dense', 'ratio'} in MACs per image.
        params: {'total', 'active'}.
        routing: {'load': [...], 'collapse': float}; default: the clean load of routing_under_attack.
        entry_id: override the generated id.
        attack_note: free text about the attacks (e.g. 'quick suite, not AutoAttack').
        notes: free-text remarks.
        index_start: test-set index of the first evaluated point (`bench.data.eval_tensors` takes the
            first n, so 0).
    """
    from .stats import per_sample_block

    if not eval_result.get('correct'):
        raise ValueError("measured_entry needs eval_result['correct'] (the per-sample results); "
                         'keep it until the entry is made')
    per_sample = per_sample_block(eval_result['correct'], index_start)
    settings = eval_settings_of(eval_result)
    if settings is None:
        raise ValueError("measured_entry needs eval_result['settings'] (the attacks' exact settings)")
    cfg = dict(training_config) if training_config is not None else None
    cfg_sha = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest() if cfg else None
    if routing is None and eval_result.get('routing_under_attack'):
        rua = eval_result['routing_under_attack']
        routing = {'load': list(rua['load_clean']), 'collapse': None} if rua.get('load_clean') else None
    arch = arch or model_name.split('_')[0]
    if experts == 0:
        k = None  # a dense model has no top-k
    effective = effective_model_kwargs(model_name, model_kwargs)
    moe = dict(effective or model_kwargs) if experts else {}
    noisy = moe.get('noisy_gating')
    if entry_id is None:
        payload = dict(kwargs=dict(model_kwargs), config=cfg, settings=eval_result.get('settings'),
                       n=eval_result.get('n_examples'), eps=eval_result.get('eps'), seed=provenance.get('seed'),
                       ckpt=provenance.get('checkpoint_sha256'))
        short = {'fashion-mnist-bundled': 'fmnist-bundled', 'fashion-mnist': 'fmnist'}.get(dataset, dataset)
        entry_id = make_entry_id(model_name, method, short, payload=payload)
    return {
        'schema_version': SCHEMA_VERSION,
        'entry_id': entry_id,
        'source': 'measured',
        'model': {'name': model_name, 'kwargs': dict(model_kwargs), 'arch': arch, 'experts': experts, 'k': k,
                  'gate': moe.get('gate'), 'aux_loss': moe.get('aux_loss'), 'placement': moe.get('moe_blocks'),
                  # a bool once resolved; None for a dense model, or a model whose setting is not known
                  'noisy_gating': noisy if isinstance(noisy, bool) else None,
                  'effective_kwargs': effective if effective is not None else dict(model_kwargs)},
        'training': {'method': method, 'config': cfg, 'config_sha256': cfg_sha, 'config_path': config_path,
                     'epochs': epochs},
        'dataset': dataset,
        'threat_model': eval_result.get('threat_model', 'Linf'),
        'eps': eval_result['eps'],
        'n_examples': eval_result.get('n_examples'),
        'clean_acc': eval_result['clean_acc'],
        'robust_acc': dict(eval_result.get('robust_acc') or {}),
        'attack_note': attack_note,
        'eval_settings': settings,
        'per_sample': per_sample,
        'flops': dict(flops) if flops else None,
        'params': dict(params) if params else None,
        'per_expert': [dict(expert=p['expert'], clean_acc=p['clean_acc'], robust_acc=dict(p['robust_acc']))
                       for p in eval_result['per_expert']] if eval_result.get('per_expert') else None,
        'routing': dict(routing) if routing else None,
        'sanity_flags': list(eval_result.get('flags') or []),
        'notes': list(notes) if notes else None,
        'provenance': dict(provenance),
    }

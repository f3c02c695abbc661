"""The results registry: one schema-checked JSON file per result, written atomically.

Layout: `registry/<dataset>/<threat_model>/<entry_id>.json` beside `registry/schema.json`.

Which registry (docs/REGISTRY.md, "Where entries live"): the registry that ships with timm-moe is the
repository's `registry/`; the package reaches it as `bench/registry_data`, a link to it in a clone and a
copy of it in an installed wheel. That copy is read-only: writers refuse it (`check_writable`), and new
results go to a folder of the user's (`--registry DIR`, or `$TIMM_MOE_REGISTRY`, see `default_registry`).
Every number the project shows is read from these files (see `bench.results.leaderboard`, `bench.results.report`).
Field meanings and the schema versions are in docs/REGISTRY.md: version 2 entries store the exact
settings of every attack (`eval_settings`), which test points each measurement got right (`per_sample`)
and the model as built (`model.effective_kwargs`, `model.noisy_gating`); version 1 entries (no
`schema_version`, or 1) still load.

Writing is safe under concurrency (the sweep runs several jobs at once): the entry is written
through `bench.core.atomic`: to a temporary file in the target directory and then either linked into place (`os.link`
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

from bench.core.atomic import atomic_open
from bench.core.errors import UserError
from bench.core.values import find_control, printable
from bench.core.yaml_files import read_utf8
from bench.core.stats import bits_sha256, per_sample_vectors

REPO_ROOT = Path(__file__).resolve().parents[2]
_PACKAGE = Path(__file__).resolve().parents[1]  # bench/
# the shipped registry, resolved: the repository's registry/ in a clone (bench/registry_data links there),
# the package's own copy in an installed wheel (pyproject.toml's package-data copies it through the link)
# (a checkout without symlink support has a small text file there instead: then the repository's folder)
SHIPPED_REGISTRY = ((_PACKAGE / 'registry_data').resolve() if (_PACKAGE / 'registry_data').is_dir()
                    else REPO_ROOT / 'registry')
DEFAULT_REGISTRY = SHIPPED_REGISTRY  # what the library functions read when given no registry
REGISTRY_ENV = 'TIMM_MOE_REGISTRY'  # the user's default registry for every verb, when set
LOCAL_REGISTRY = Path('registry')  # where an installed package's writers put entries by default (./registry)
SCHEMA_PATH = SHIPPED_REGISTRY / 'schema.json'  # the one schema, whatever registry dir is used
SCHEMA_VERSION = 2  # what this code writes; every version in the schema's enum still loads
_ID_OK = re.compile(r'[^a-z0-9_.-]+')
# an entry is a few kB (a CIFAR entry with per-sample bits of 10,000 points, some tens): more is not an entry
MAX_ENTRY_BYTES = 16 * 2 ** 20

PathLike = Union[str, os.PathLike]


def shipped_is_package_data() -> bool:
    """True in an installed package: the shipped registry is a copy inside it, read-only (in a clone it is
    the repository's registry/, outside the package, where results are committed)."""
    return _PACKAGE in SHIPPED_REGISTRY.parents


def default_registry() -> Path:
    """The registry a reading verb uses without --registry: $TIMM_MOE_REGISTRY if set, else the shipped one."""
    env = os.environ.get(REGISTRY_ENV)
    return Path(env) if env else SHIPPED_REGISTRY


def default_write_registry() -> Path:
    """The registry a writing verb (import-paper) uses without --registry: $TIMM_MOE_REGISTRY if set, else the
    repository's registry/ in a clone, else ./registry (never the installed package's copy)."""
    env = os.environ.get(REGISTRY_ENV)
    if env:
        return Path(env)
    return LOCAL_REGISTRY if shipped_is_package_data() else SHIPPED_REGISTRY


def default_text(write: bool = False) -> str:
    """What the default registry is, exactly, for --help (`write`: the default of a verb that writes entries)."""
    env = os.environ.get(REGISTRY_ENV)
    if env:
        return f'{env}, from ${REGISTRY_ENV}'
    if not shipped_is_package_data():
        return f"the repository's registry, {SHIPPED_REGISTRY}; ${REGISTRY_ENV} changes it"
    if write:
        return f'./registry (the registry shipped in the package is read-only); ${REGISTRY_ENV} changes it'
    return f'the registry shipped with timm-moe, read-only, {SHIPPED_REGISTRY}; ${REGISTRY_ENV} changes it'


def is_read_only(registry_dir: PathLike) -> bool:
    """Whether `registry_dir` is (inside) the installed package's copy of the shipped registry."""
    target = Path(registry_dir).resolve()
    return shipped_is_package_data() and (target == SHIPPED_REGISTRY or SHIPPED_REGISTRY in target.parents)


def check_writable(registry_dir: PathLike) -> None:
    """Refuse to write into the installed package's copy of the shipped registry."""
    if is_read_only(registry_dir):
        raise UserError(f'registry {registry_dir} is the copy shipped inside the installed timm-moe package, '
                        f'which is read-only: pass --registry DIR (or set {REGISTRY_ENV}) for your own registry')


def registry_holding(path: PathLike, *registries: PathLike) -> Optional[Path]:
    """The registry that `path` lies in (or is), or None: one of `registries`, the shipped one, or any folder
    above `path` that holds a LEADERBOARD.md or a `<dataset>/<threat_model>` folder of entries. A file written
    there would be read as an entry, or make the registry fail to load ('misplaced')."""
    target = Path(path).resolve()
    for root in (*registries, SHIPPED_REGISTRY):
        root = Path(root).resolve()
        if target == root or root in target.parents:
            return root
    props = load_schema()['properties']
    for folder in (target, *target.parents):
        if (folder / 'LEADERBOARD.md').is_file() or any(
                (folder / d / t).is_dir() for d in props['dataset']['enum'] for t in props['threat_model']['enum']):
            return folder
    return None


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


# field names stored entries may still carry -> their names now; `migrate` is the one place they are read
RENAMED_MODEL_KWARGS = {'moe_blocks': 'placement'}
RENAMED_TRAIN_KEYS = {'method': 'training'}
# accuracy keys (`robust_acc`, `per_sample.bits`) and check names (`sanity_flags`)
RENAMED_METRICS = {'ensemble': 'worst_case'}
RENAMED_CHECKS = {'ensemble_reverified': 'worst_case_reverified'}


def _sha_holds(per_sample: Mapping[str, Any]) -> bool:
    try:
        return per_sample['sha256'] == bits_sha256(per_sample)
    except (KeyError, TypeError, ValueError):  # malformed: `per_sample_vectors` names what is wrong
        return False


def migrate(entry: Dict[str, Any]) -> Dict[str, Any]:
    """An entry as read from a file, with the field names of older code brought to today's (in place).

    Stored entries are data written by earlier versions: `model.kwargs` / `model.effective_kwargs` may say
    `moe_blocks` (now `placement`), `training.config` may say `method` (now `training`), the per-sample worst
    case over the attacks may be stored as `ensemble` (now `worst_case`, in `robust_acc` and
    `per_sample.bits`), and `sanity_flags` may name its check `ensemble_reverified`. No other code reads an
    old name; every reader of the registry goes through `load_entry`, which calls this.
    """
    def renamed(d: Dict[str, Any], names: Mapping[str, str]) -> Dict[str, Any]:
        # an old key yields to its new name when both are there: the new one was written later
        return {names.get(k, k): v for k, v in d.items() if not (k in names and names[k] in d)}

    model = entry.get('model')
    for block in ('kwargs', 'effective_kwargs'):
        kwargs = model.get(block) if isinstance(model, dict) else None
        if isinstance(kwargs, dict) and set(kwargs) & set(RENAMED_MODEL_KWARGS):
            model[block] = renamed(kwargs, RENAMED_MODEL_KWARGS)
    training = entry.get('training')
    config = training.get('config') if isinstance(training, dict) else None
    if isinstance(config, dict) and set(config) & set(RENAMED_TRAIN_KEYS):
        training['config'] = renamed(config, RENAMED_TRAIN_KEYS)
    if isinstance(entry.get('robust_acc'), dict) and set(entry['robust_acc']) & set(RENAMED_METRICS):
        entry['robust_acc'] = renamed(entry['robust_acc'], RENAMED_METRICS)
    per_sample = entry.get('per_sample')
    bits = per_sample.get('bits') if isinstance(per_sample, dict) else None
    if isinstance(bits, dict) and set(bits) & set(RENAMED_METRICS):
        # the checksum covers the keys: it is carried over only if it held for the old ones, so that a
        # changed bit is still caught (`stats.per_sample_vectors`)
        intact = 'sha256' not in per_sample or _sha_holds(per_sample)
        per_sample['bits'] = renamed(bits, RENAMED_METRICS)
        if 'sha256' in per_sample and intact:
            per_sample['sha256'] = bits_sha256(per_sample)
    if isinstance(entry.get('sanity_flags'), list):
        entry['sanity_flags'] = [RENAMED_CHECKS.get(f, f) if isinstance(f, str) else f for f in entry['sanity_flags']]
    return entry


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
    _check_text(entry)
    _check_settings_cover_accuracies(entry)
    _check_per_sample(entry)


def _check_text(entry: Mapping[str, Any]) -> None:
    """No text of an entry, key or value, holds a control character (`bench.core.values.printable`).

    Entries are shared and their text is printed to terminals and written into LEADERBOARD.md and the page: an
    ESC sequence in a model name would retitle or clear the reader's terminal, a newline split the table.
    """
    def walk(value: Any, where: str) -> None:
        if isinstance(value, str):
            at = find_control(value)
            if at is not None:
                raise UserError(f"invalid registry entry {printable(entry.get('entry_id'))!r}: {where or '<entry>'} "
                                f'holds the control character {printable(value[at])} at position {at}: text in an '
                                'entry may not hold control characters (escape sequences, NUL, newlines)')
        elif isinstance(value, Mapping):
            for k, v in value.items():
                walk(k, f'{where} (a key)' if where else '<entry> (a key)')
                walk(v, f'{where}.{k}' if where else str(k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f'{where}[{i}]')
    walk(entry, '')


def _check_settings_cover_accuracies(entry: Mapping[str, Any]) -> None:
    """Every robust accuracy names the attack settings it was measured with ('worst_case' is their worst case)."""
    ev = entry.get('eval_settings')
    if not ev:
        return
    missing = [k for k in entry['robust_acc'] if k != 'worst_case' and k not in ev['attacks']]
    if missing:
        raise UserError(f"invalid registry entry {entry['entry_id']!r}: eval_settings.attacks has no settings for "
                        f"robust_acc.{missing[0]}; store the settings of every attack run")


def _check_per_sample(entry: Mapping[str, Any]) -> None:
    """The stored bits decode, cover n_examples points, name only measured metrics, and count to the accuracies.

    The count check is what makes the bits trustworthy for paired tests: bits that do not reproduce the
    entry's own accuracy to the last point belong to some other run.
    """
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
    check_writable(registry_dir)
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
    """All entry files: every *.json below the root except the root's own schema.json. A link below the root is
    refused (`_refuse_link`), not silently skipped: a registry that looked empty would lose its LEADERBOARD.md."""
    found = []
    for folder, dirs, files in os.walk(registry_dir):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
        for name in dirs + [f for f in files if f.endswith('.json')]:  # what a reader would go into or read
            _refuse_link(here / name, registry_dir)
        found += [here / f for f in files if f.endswith('.json') and not f.startswith('.')
                  and not (here == registry_dir and f == 'schema.json')]
    return sorted(found)


def _refuse_link(path: Path, registry_dir: Path) -> None:
    """THE rule for links in a registry: every verb refuses one (UserError), whatever it points to.

    A linked folder or file would be seen by some readers and not others (a glob follows a link, a walk does
    not), and may point at a FIFO, a device or another registry; the registry's own root may be a link.
    """
    if path.is_symlink():
        raise UserError(f'{path} in registry {registry_dir} is a symbolic link (to {os.readlink(path)}): a registry '
                        'holds its own folders and files; replace the link with a copy, or pass that folder as --registry')


def load_entry(path: PathLike, registry_dir: Optional[PathLike] = None) -> Dict[str, Any]:
    """Read and validate one entry file; with `registry_dir`, also check that it sits where it belongs.

    Args:
        path: the JSON file.
        registry_dir: the registry root it was found under (None: skip the location check).
    """
    path = Path(path)
    if registry_dir is not None and Path(registry_dir) in path.parents:
        inside = path.relative_to(registry_dir)
        for part in (inside, *inside.parents[:-1]):  # the file, and the folders between it and the root
            _refuse_link(Path(registry_dir) / part, Path(registry_dir))
    try:
        entry = json.loads(read_utf8(path, 'registry file', max_bytes=MAX_ENTRY_BYTES))
    except json.JSONDecodeError as e:
        raise UserError(f'registry file {path} is not valid JSON: {e}') from None
    except UserError:
        raise
    except ValueError as e:  # Python's limit on the digits of an integer (a decimal text of thousands of digits)
        raise UserError(f'registry file {path} holds a number too long to read ({str(e).split(";")[0]})') from None
    except RecursionError:
        raise UserError(f'registry file {path} is nested too deep to be an entry') from None
    if isinstance(entry, dict):
        migrate(entry)
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

    AutoAttack first; then our worst case (per point, over the attacks run); then PGD-20; then the
    lowest number stored (the strongest attack on record). (None, None) when there is none.
    """
    ra = entry.get('robust_acc') or {}
    for key in ('autoattack', 'worst_case', 'pgd20'):
        if ra.get(key) is not None:
            return ra[key], key
    if ra:
        key = min(ra, key=lambda k: (ra[k], k))
        return ra[key], key
    return None, None

"""Training configuration: one dataclass, loadable from YAML, overridable by `--key value` arguments.

The defaults are the paper's CIFAR-100 ResNet-18 recipe; `bench/configs/*.yaml` hold the named recipes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import yaml

from bench.core.atomic import atomic_open
from bench.core.compile import TORCHCOMPILE_DEFAULT, check_torchcompile
from bench.core.config_keys import NOT_THE_RESULT
from bench.core.errors import UserError
from bench.core.yaml_files import RECIPE, read_yaml_mapping
from bench.core.values import parse_eps, parse_mapping, parse_number, parse_yaml_value
from bench.dataset_table import check_dataset_name

METHODS = ('normal', 'pgd', 'trades', 'fast', 'free')
ATTACK_PRECISIONS = ('fp32', 'amp')
SCHED_STEPS = ('epoch', 'update')


def _field(default: Any = dataclasses.MISSING, help: str = '', factory: Any = dataclasses.MISSING) -> Any:
    """A config field with its one description, which `train --help` shows (`field_help`)."""
    return field(default=default, default_factory=factory, metadata={'help': help})


@dataclass
class TrainConfig:
    # -- model
    model: str = _field('resnet18_blockmoe_e8_k1', 'any timm name; `import timm_moe` registers ours')
    model_kwargs: Dict[str, Any] = _field(help='passed to timm.create_model (gate, width, ...)', factory=dict)
    convert: Optional[Dict[str, Any]] = _field(None, "make a plain timm model an MoE: timm_moe.convert's arguments "
                                                     '(targets, num_experts, k, gate, ...)')
    img_size: Optional[int] = _field(None, 'resize images to this side inside the model, after any attack (for a '
                                           'model that needs larger ones); none: as they are')
    upcycle_from: Optional[str] = _field(None, 'start from a dense run directory or model.pth via timm_moe.upcycle')
    upcycle_noise: float = _field(0.01, 'relative noise on the copied expert weights, so experts can diverge')
    upcycle_sha256: Optional[str] = _field(None, "the source's sha256: filled in by the run, or given to pin the file")
    # -- data
    dataset: str = _field('cifar100', 'cifar100 | cifar10 | fashion-mnist | fashion-mnist-bundled')
    data_dir: Optional[str] = _field(None, 'torchvision root, or idx files for Fashion-MNIST')
    download: bool = _field(False, 'let torchvision fetch the data set (needs internet)')
    train_limit: Optional[int] = _field(None, 'use only the first N training images (quick runs)')
    eval_limit: Optional[int] = _field(1000, 'clean test accuracy after each epoch on the first N test images; '
                                             '0 = skip')
    augment: bool = _field(True, "the paper's augmentation (crop, flip, colour jitter on CIFAR)")
    workers: int = _field(4, 'loader processes; augmentation stays reproducible with any number')
    # -- optimisation (the paper: SGD 0.1 Nesterov, wd 5e-4, poly 0.9, 200 epochs, batch 640)
    epochs: int = _field(200, 'passes over the training set')
    batch_size: int = _field(640, 'global batch; each of N distributed ranks takes batch_size / N')
    accum_steps: int = _field(1, 'split each batch into this many sequential micro-batches (same gradient)')
    opt: str = _field('sgd', "timm optimizer name; timm's 'sgd' is Nesterov momentum")
    lr: float = _field(0.1, 'peak learning rate (after warm-up)')
    momentum: float = _field(0.9, 'SGD momentum')
    weight_decay: float = _field(5e-4, 'L2 weight decay (see filter_bias_and_bn)')
    filter_bias_and_bn: bool = _field(False, 'the reference decays every parameter; True exempts biases and norms')
    sched: str = _field('poly', 'timm scheduler name')
    poly_power: float = _field(0.9, "the poly schedule's power (timm's decay_rate)")
    warmup_epochs: int = _field(0, 'linear warm-up from warmup_lr to lr, stepped as sched_step '
                                   '(timm: not a prefix of `epochs`)')
    warmup_lr: float = _field(1e-5, "the LR of the first update (timm's default)")
    min_lr: float = _field(0.0, "the schedule's floor")
    sched_step: str = _field('epoch', "step the LR schedule once per 'epoch' (the paper's code) "
                                      "or per optimizer 'update'")
    clip_grad: Optional[float] = _field(None, 'clip the gradient norm to this (none: no clipping)')
    # -- adversarial training
    training: str = _field('normal', 'normal | pgd (Madry PGD-AT) | trades | fast (Fast-AT: FGSM from a random '
                                     'start) | free (Free-AT: minibatch replay)')
    eps: float = _field(8 / 255, "L-inf radius in [0, 1] pixels; accepts '8/255'")
    attack_step: float = _field(2 / 255, "the training attack's step size, in [0, 1] pixels; accepts '2/255'")
    attack_steps: int = _field(7, "the training attack's PGD steps")
    random_start: bool = _field(True, 'start the training attack at a uniform random point of the eps-ball')
    trades_beta: float = _field(6.0, "TRADES' weight of the robust KL term")
    fast_step: Optional[float] = _field(None, "Fast-AT's FGSM step; None = 1.25 * eps (Wong et al. 2020)")
    free_replays: int = _field(4, 'Free-AT: optimizer steps (replays) per minibatch; `epochs` counts data passes')
    free_step: Optional[float] = _field(None, "Free-AT's ascent step on the carried perturbation; None = eps")
    free_reset_prob: float = _field(0.0, 'Free-AT: chance per image and replay that its carried perturbation '
                                         'restarts at 0')
    attack_mode: str = _field('train', "craft training attacks in 'train' mode (the reference: BN batch stats) "
                                       "or 'eval'")
    attack_precision: str = _field('fp32', "with --amp: 'fp32' crafts outside autocast; 'amp' under it, "
                                           'loss-scaled in fp16')
    # -- extras
    ema: bool = _field(False, 'keep a ModelEmaV3 copy of the weights')
    ema_decay: float = _field(0.9998, "the EMA's decay per optimizer step")
    amp: bool = _field(False, 'mixed precision (bfloat16 on CPU, float16 + grad scaling on CUDA)')
    channels_last: bool = _field(False, 'channels-last memory format (faster convolutions on some GPUs)')
    torchcompile: Optional[str] = _field(None, "torch.compile backend, as timm's --torchcompile (bare flag: inductor)")
    torchcompile_mode: Optional[str] = _field(None, "inductor's mode: default | reduce-overhead | max-autotune | ...")
    device: str = _field('auto', 'auto | cpu | cuda | cuda:N')
    seed: int = _field(12345, "the reference's seed")
    deterministic: bool = _field(False, 'torch deterministic algorithms (exact resume and DDP equality on CPU)')
    # -- output
    out: str = _field('runs/train', 'run directory: config.yaml, checkpoints, metrics.jsonl')
    checkpoint_every: int = _field(0, 'also checkpoint every N optimizer steps inside an epoch (0 = per epoch only)')
    log_every: int = _field(20, 'steps between metric lines')
    max_steps: Optional[int] = _field(None, 'stop after this many optimizer steps in total (tests, smoke runs)')
    progress: bool = _field(True, 'rich progress bar')

    def validate(self) -> 'TrainConfig':
        """Raise UserError on values no run could use."""
        check_dataset_name(self.dataset)
        choices = {'training': METHODS, 'attack_mode': ('train', 'eval'), 'attack_precision': ATTACK_PRECISIONS,
                   'sched_step': SCHED_STEPS}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise UserError(f'{key}={getattr(self, key)!r} is not allowed; choose one of {", ".join(allowed)}')
        positive = ('epochs', 'batch_size', 'accum_steps', 'attack_steps')
        for key in positive:
            if getattr(self, key) < 1:
                raise UserError(f'{key}={getattr(self, key)} must be at least 1')
        parse_eps(self.eps, 'Linf', 'eps')  # training attacks are L-inf
        if self.lr <= 0:
            raise UserError(f'lr={self.lr} must be positive')
        if self.warmup_epochs < 0:
            raise UserError(f'warmup_epochs={self.warmup_epochs} must not be negative')
        if self.img_size is not None and self.img_size < 1:
            raise UserError(f'img_size={self.img_size} must be at least 1 (or none: the data set\'s size)')
        if self.convert is not None and self.upcycle_from is not None:
            raise UserError('convert with upcycle_from: upcycling builds its MoE from a timm-moe name; to start a '
                            'converted model from dense weights, give convert copy_weights=true and pretrained '
                            'weights instead')
        if self.upcycle_noise < 0:
            raise UserError(f'upcycle_noise={self.upcycle_noise} must not be negative')
        if self.upcycle_sha256 is not None and not re.fullmatch(r'[0-9a-f]{64}', self.upcycle_sha256):
            raise UserError(f'upcycle_sha256={self.upcycle_sha256!r} is not a sha256 (64 lower-case hex digits)')
        self._validate_fast_free()
        if self.batch_size % self.accum_steps:
            raise UserError(f'batch_size={self.batch_size} is not divisible by accum_steps={self.accum_steps}')
        check_torchcompile(self.torchcompile, self.torchcompile_mode)
        return self

    def _validate_fast_free(self) -> None:
        if self.free_replays < 1:
            raise UserError(f'free_replays={self.free_replays} must be at least 1')
        for key in ('fast_step', 'free_step'):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise UserError(f'{key}={value} must be positive (or none for its default)')
        if not 0 <= self.free_reset_prob <= 1:
            raise UserError(f'free_reset_prob={self.free_reset_prob} must be in [0, 1]')
        if self.training == 'fast' and not self.random_start:
            raise UserError('random_start=False with training=fast: Fast-AT is FGSM from a random start (without it, '
                            'it is the FGSM training that overfits catastrophically); use random_start=True')
        if self.training == 'free':
            if self.attack_mode != 'train':
                raise UserError(f'attack_mode={self.attack_mode!r} with training=free: Free-AT takes its perturbation '
                                "gradient from the update's own backward, in train mode; use attack_mode=train")
            if self.max_steps is not None and self.max_steps % self.free_replays:
                raise UserError(f'max_steps={self.max_steps} with training=free must be a multiple of '
                                f'free_replays={self.free_replays}: the replays of a minibatch are one unit')

    def to_dict(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        # keys added later are written only when set: the config of a run that does not use them, and every hash
        # and entry id made from it (config_sha256, the registry's), reads as before they existed
        for key in _LATER_KEYS:
            if out[key] is None:
                del out[key]
        return out

    def sha256(self) -> str:
        """The hash of the config that each run's result.json stores (`config_sha256`).

        It covers every field but `_NOT_HASHED` (where the run is written, how it is shown, the loader workers and
        torch.compile, which changes how the same computation runs: its forwards and gradients match eager's to
        rounding, tests/test_torchcompile_cli.py), the Fast-/Free-AT keys of a run that does not use them,
        `convert` and `img_size` when unset (`to_dict` leaves them out), and `sched_step` when it is 'update' (below).

        It does cover keys that do not change the result either (`HASHED_THOUGH_NOT_THE_RESULT`: the device, the
        kernel settings, where the data is read, the per-epoch eval size, checkpointing), because every hash written
        so far does: leaving them out now would change the hash of every config. Two runs that differ only in them
        have two hashes; what groups the runs of one configuration is `bench.core.stats.seed_group_key`, which
        leaves out all of `NOT_THE_RESULT`. The registry's `training.config_sha256` is another hash: of the entry's
        whole stored config (`bench.results.entries`), which does not depend on this one.
        """
        # the Fast-/Free-AT keys change only those runs: left out of others, so older configs keep their hashes
        unused = _FREE_KEYS + _FAST_KEYS if self.training not in ('fast', 'free') else \
            (_FREE_KEYS if self.training == 'fast' else _FAST_KEYS)
        d = {k: v for k, v in self.to_dict().items() if k not in _NOT_HASHED + unused}
        # every run before the key existed stepped its schedule per update: that value is left out, so their
        # stored hashes stay what their configs give; the per-epoch default is a different run, hashed apart
        if d['sched_step'] == 'update':
            del d['sched_step']
        # The field is serialised as 'method' here, its name when the first runs were written: every run's stored
        # config_sha256 (result.json) stays what this function gives for its config.
        # This is the hash's fixed text format, not an alias: no config, flag or attribute reads 'method'.
        d['method'] = d.pop('training')
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def field_help() -> Dict[str, str]:
    """{field: its description in TrainConfig}: the one description of each key, which `train --help` shows
    (tests/test_cli_help.py checks that every field has one). Read from the fields' metadata, so it needs no source
    file (an installation of bytecode only has none)."""
    return {name: f.metadata.get('help', '') for name, f in _FIELDS.items()}


# keys of NOT_THE_RESULT that `sha256` still covers, because every hash written so far does (see there)
HASHED_THOUGH_NOT_THE_RESULT = ('device', 'deterministic', 'channels_last', 'data_dir', 'download', 'eval_limit',
                                'checkpoint_every')
_NOT_HASHED = tuple(k for k in NOT_THE_RESULT if k not in HASHED_THOUGH_NOT_THE_RESULT)
# what a resume may change: where and how the run executes or is shown, and how far it goes, not what it trains
RESUME_MAY_CHANGE = NOT_THE_RESULT + ('max_steps',)
_LATER_KEYS = ('convert', 'img_size')  # left out of `to_dict` at their default, none
_FAST_KEYS = ('fast_step',)
_FREE_KEYS = ('free_replays', 'free_step', 'free_reset_prob')
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def _coerce(key: str, value: Any) -> Any:
    """Check and convert one value to its field's type; YAML and the command line give strings or loose types."""
    hint = _HINTS[key]
    optional = type(None) in typing.get_args(hint)
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint
    base = typing.get_origin(base) or base
    if value is None or (isinstance(value, str) and value.lower() in ('none', 'null') and optional):
        if optional:
            return None
        raise UserError(f'{key} must not be empty (a {base.__name__})')
    if isinstance(value, str) and base is dict:
        value = parse_mapping(key, value)
    elif isinstance(value, str) and base is not str:
        value = _parse_scalar(key, value, base)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if base is dict and isinstance(value, Mapping):
        return dict(value)
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise UserError(f'{key}={value!r} has the wrong type: expected {base.__name__}')
    if base is float and not math.isfinite(value):  # YAML's .nan and .inf, or 1e400
        raise UserError(f'{key}={value!r} is not a finite number')
    return value


def _parse_scalar(key: str, text: str, base: type) -> Any:
    if base is float:  # '8/255' and '1e-3' too (YAML 1.1 reads 1e-3 as a string); a finite number
        return parse_number(text, key)
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):
        raise UserError(f'{key}={text!r} could not be parsed as {base.__name__}') from None


def _set(cfg_dict: Dict[str, Any], key: str, value: Any) -> None:
    key = key.replace('-', '_')
    if '.' in key:  # model_kwargs.width=16
        head, sub = key.split('.', 1)
        if head != 'model_kwargs':
            raise UserError(f'unknown config key {key!r}: only model_kwargs takes dotted sub-keys')
        v = parse_yaml_value(key, value) if isinstance(value, str) else value
        cfg_dict.setdefault('model_kwargs', {})[sub] = v
        return
    if key not in _FIELDS:
        raise UserError(f'unknown config key {key!r}; allowed: {", ".join(_FIELDS)}')
    if key == 'torchcompile' and str(value).lower() in ('true', 'false'):  # a bare flag, or a YAML bool
        value = TORCHCOMPILE_DEFAULT if str(value).lower() == 'true' else None
    cfg_dict[key] = _coerce(key, value)


def load_config(path: Optional[str | Path] = None, overrides: Optional[List[str]] = None,
                **values: Any) -> TrainConfig:
    """Build a config from a YAML file, then `--key value` overrides, then keyword values.

    Args:
        path: YAML file, or the name of a shipped recipe in `bench/configs` (with or without `.yaml`).
        overrides: Command-line tokens such as ['--epochs', '3', '--model-kwargs.width=16'].
        **values: Final values by field name.
    """
    cfg: Dict[str, Any] = {}
    if path is not None:
        for k, v in read_yaml_mapping(path, 'config', RECIPE).items():
            _set(cfg, str(k), v)
    for k, v in _pairs(overrides or []):
        _set(cfg, k, v)
    for k, v in values.items():
        _set(cfg, k, v)
    return TrainConfig(**cfg).validate()


def _pairs(tokens: List[str]) -> List[tuple]:
    pairs, i = [], 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith('--') or tok == '--':
            raise UserError(f'unexpected argument {tok!r}; overrides look like --key value or --key=value')
        key = tok[2:]
        if '=' in key:
            key, value = key.split('=', 1)
            i += 1
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith('--'):
            value = tokens[i + 1]
            i += 2
        else:  # a bare flag: --amp
            value = 'true'
            i += 1
        pairs.append((key, value))
    return pairs


def check_resume_config(cfg: TrainConfig, saved: Mapping[str, Any], run_dir: Path) -> None:
    """Refuse, naming the keys, a resume whose config trains something else than the run's checkpoint (`saved`,
    its config). The optimizer, schedule and model come back from the checkpoint: a changed lr, epochs, training
    or model_kwargs would be half applied, and config.yaml would describe another run. A key the checkpoint
    lacks (a run of an older version) cannot be compared and is taken as given."""
    if cfg.upcycle_sha256 is None:  # filled in by the run itself from the source it read
        cfg.upcycle_sha256 = saved.get('upcycle_sha256')
    now = dataclasses.asdict(cfg)  # every key: one that to_dict leaves out at its default is compared as that
    changed = [k for k in now if (k in saved or k in _LATER_KEYS) and k not in RESUME_MAY_CHANGE
               and now[k] != saved.get(k)]
    if changed:
        def shown(values: Mapping[str, Any]) -> str:
            return ', '.join(f'{k}={str(values.get(k))[:40]}' for k in changed[:4]) + (', ...' if len(changed) > 4 else '')
        raise UserError(f'--resume: {run_dir} trains with {shown(saved)}, not {shown(now)}; a resume continues the '
                        f'same run (only {", ".join(RESUME_MAY_CHANGE)} may change): give its values, or train a new '
                        'run into another --out')


def save_config(cfg: TrainConfig, path: Path) -> None:
    with atomic_open(path) as f:  # eval, export and upcycling read it back: whole or not at all
        f.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

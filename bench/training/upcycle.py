"""Upcycling (`timm-moe train --upcycle-from`): an MoE run that starts from a dense run's weights through
`timm_moe.upcycle`, refusing a source whose architecture, data set or weights do not fit, in one line."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import torch

import timm_moe
from bench import checkpoints as ckpt
from bench.core.errors import UserError
from bench.core.provenance import sha256_file
from bench.models import create_model
from bench.core.yaml_files import read_yaml_mapping
from bench.training.config import TrainConfig
from timm_moe import ModelSpec
from timm_moe.spec import MOE_KWARGS


def _read_dense_source(source: Path) -> tuple:
    """The weights file of `--upcycle-from` (a run directory or a weights file) and its state_dict."""
    if not source.exists():
        raise UserError(f'--upcycle-from {source} does not exist; give a dense run directory or its model.pth')
    file = source / ckpt.WEIGHTS if source.is_dir() else source
    if not file.is_file():
        raise UserError(f'--upcycle-from {source} holds no {ckpt.WEIGHTS}; is it a finished training run?')
    state = ckpt.read_weights_file(file, '--upcycle-from')
    if isinstance(state, dict) and isinstance(state.get('model'), dict):  # a last.pth.tar training state
        state = state['model']
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f'--upcycle-from {file} does not hold a state_dict of tensors')
    return file, state


def _check_source_run(source: Path, cfg: TrainConfig, dense: ModelSpec) -> None:
    """Name what differs when the source is a run directory whose config.yaml says what it trained."""
    config = source / 'config.yaml' if source.is_dir() else None
    if config is None or not config.is_file():
        return
    # read as plain YAML, not as a TrainConfig: a run made by another version may hold other keys
    src = read_yaml_mapping(config, 'config')
    if src.get('model') != dense.name:
        raise UserError(f'--upcycle-from {source} trained {src.get("model")}; {cfg.model} upcycles from {dense.name}')
    if src.get('dataset') != cfg.dataset:
        raise UserError(f'--upcycle-from {source} trained on {src.get("dataset")}, this run uses {cfg.dataset}')
    # both sides as the dense model's spec kwargs (defaults dropped) plus timm kwargs, so that width=64 and no
    # width are one model
    ours = _dense_kwargs(dense.name, cfg.model_kwargs, 'model_kwargs')
    theirs = _dense_kwargs(dense.name, src.get('model_kwargs') or {}, f'--upcycle-from {config}: model_kwargs')
    differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if differ:
        k = differ[0]
        raise UserError(f'--upcycle-from {source}: model_kwargs {k}={theirs.get(k, "default")!r} there, '
                        f'{ours.get(k, "default")!r} here; the MoE must have the dense model\'s architecture')


def _dense_kwargs(name: str, kwargs: Dict[str, Any], what: str) -> Dict[str, Any]:
    """The kwargs of dense model `name` that `kwargs` amount to: MoE-only ones dropped, spec defaults dropped."""
    kwargs = {k: v for k, v in kwargs.items() if k not in MOE_KWARGS}
    try:
        spec, rest = ModelSpec.from_timm_kwargs(name, kwargs)
    except ValueError as e:
        raise UserError(f'{what} {kwargs}: {e}') from None
    return {**spec.kwargs, **rest}


def _check_state(state: Dict[str, torch.Tensor], reference: Dict[str, torch.Tensor], file: Path,
                 dense: ModelSpec) -> None:
    """The dense checkpoint must have exactly the keys and shapes of the `dense` spec built with this run's kwargs."""
    missing = [k for k in reference if k not in state]
    extra = [k for k in state if k not in reference]
    if extra:
        raise UserError(f'--upcycle-from {file} has {len(extra)} keys {dense.name} lacks, e.g. {extra[0]!r}: '
                        f'is it a dense {dense.arch} checkpoint?')
    if missing:
        raise UserError(f'--upcycle-from {file} lacks {len(missing)} keys of {dense.name}, e.g. {missing[0]!r}')
    for k, v in reference.items():
        if state[k].shape != v.shape:
            raise UserError(f'--upcycle-from {file}: {k} has shape {tuple(state[k].shape)} there, {tuple(v.shape)} '
                            f'for {dense.name} with this run\'s model_kwargs and data set (width, classes, channels?)')


def upcycle_model(cfg: TrainConfig, model_kwargs: Dict[str, Any]) -> tuple:
    """The MoE of `cfg` started from the dense checkpoint `cfg.upcycle_from` through `timm_moe.upcycle`.

    Every weight outside the MoE layers is the dense one; each expert is a copy of the dense block it
    replaces plus `cfg.upcycle_noise` relative noise drawn from `cfg.seed`; gates start fresh.

    Args:
        cfg: The run's configuration.
        model_kwargs: The MoE's timm kwargs (num_classes and in_chans included).

    Returns:
        (model, {'path', 'sha256', 'noise', 'seed'}) describing the source.
    """
    spec, timm_kwargs = _spec_of(cfg.model, model_kwargs)
    if spec.expert_width != 'full':
        raise UserError("--upcycle-from needs expert_width='full': each expert copies the dense block's shapes")
    dense = spec.dense()
    source = Path(cfg.upcycle_from)
    _check_source_run(source, cfg, dense)
    file, state = _read_dense_source(source)
    digest = sha256_file(file)
    if cfg.upcycle_sha256 is not None and cfg.upcycle_sha256 != digest:
        raise UserError(f'--upcycle-from {file} has sha256 {digest}, not the upcycle_sha256 {cfg.upcycle_sha256} '
                        'this config pins')
    _check_state(state, create_model(dense, timm_kwargs, 'model_kwargs').state_dict(), file, dense)
    model = timm_moe.upcycle(state, cfg.model, noise=cfg.upcycle_noise, seed=cfg.seed, **model_kwargs)
    return model, dict(path=str(file), sha256=digest, noise=cfg.upcycle_noise, seed=cfg.seed)




def _spec_of(name: str, model_kwargs: Dict[str, Any]) -> Tuple[ModelSpec, Dict[str, Any]]:
    """(the MoE spec, the remaining timm kwargs) of the run's model; only an MoE model can be upcycled."""
    try:
        named = ModelSpec.from_name(name)
    except ValueError:
        named = None
    if named is None or not named.is_moe:
        raise UserError(f'--upcycle-from needs a timm-moe MoE model such as resnet18_blockmoe_e4_k1, not {name}')
    try:
        return ModelSpec.from_timm_kwargs(name, model_kwargs)
    except ValueError as e:
        raise UserError(f'model_kwargs {model_kwargs} do not fit {name}: {e}') from None

"""One cell of a study: train -> evaluate -> audit -> register, for one model spec.

`run_cell` is the pipeline that both `timm-moe grid` (one call per cell of the sweep) and `timm-moe quickstart`
(one call per quickstart model) run; they differ only in what they pass: the spec, the training config, the
evaluation settings and where results go.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import torch

from timm_moe import ModelSpec  # importing timm_moe registers the models (also in a fresh worker process)
from timm_moe.conversion import TimmSpec, model_spec

from bench.audit import audit_model
from bench.audit.result import AuditResult
from bench.core.errors import UserError
from bench.core.provenance import provenance
from bench.data import dataset_info, eval_tensors
from bench.evaluation.loop import evaluate_model
from bench.evaluation.result import EvalResult
from bench.models import build_model, normalized, resized
from bench.results.entries import audit_fields, measured_entry
from bench.results.registry import entry_path, write_entry
from bench.training.config import TrainConfig, load_config
from bench.training.record import TrainRecord
from bench.training.trainer import run_training

AUDIT_IMAGES = 64  # the routing batch of the FLOP audit: the first test images attacked


@dataclass(frozen=True)
class Evaluation:
    """How a cell's trained model is attacked (the arguments of `evaluate_model`) and how its entry says so."""
    attacks: str = 'paper'
    n_examples: int = 1000
    batch_size: int = 250
    eps: float = 8 / 255
    norm: str = 'Linf'
    n_check: int = 100
    per_expert: bool = True
    per_expert_examples: Optional[int] = None  # the per-expert analyses on the first N images only (None: all)
    per_layer_expert: bool = False  # also expert e forced in one MoE layer at a time (L x E subpaths)
    seed: Optional[int] = None  # the attacks' seed; None: the training seed
    attack_note: Optional[str] = None  # free text stored in the entry (e.g. 'not AutoAttack')


@dataclass(frozen=True)
class Output:
    """Where a cell's results go, and what happens to those already there.

    Args:
        registry: The registry root the entry is written to.
        reuse_training: Reuse a finished training run (its result.json) at the training config's `out`;
            otherwise (or if it is unfinished) train afresh over whatever is there.
        overwrite_entry: Replace an entry with the same id. Without it an existing entry (the same run,
            written by an earlier, interrupted sweep or by another shard) counts as done and is kept.
    """
    registry: Path
    reuse_training: bool = True
    overwrite_entry: bool = False


@dataclass(frozen=True)
class CellResult:
    """What a cell produced: its registry entry (the JSON object as stored) and its file, the evaluation, the
    audit, the training record, and the wall seconds per stage (train, evaluate, audit)."""
    entry: Dict[str, Any]
    entry_path: Path
    evaluation: EvalResult
    audit: AuditResult
    training: TrainRecord
    seconds: Dict[str, float] = field(default_factory=dict)


Spec = Union[ModelSpec, TimmSpec]  # a timm-moe architecture, or any timm model (converted or not)


def training_config(spec: Spec, recipe: Optional[str] = None, timm_kwargs: Optional[Mapping[str, Any]] = None,
                    **values: Any) -> TrainConfig:
    """The training config of `spec`: `recipe` (a YAML or a shipped recipe), then `values`; the spec names the
    model and its architecture kwargs (a `TimmSpec` its conversion), `timm_kwargs` adds the timm kwargs the spec
    does not own (drop_rate, ...).

    The one place a spec becomes the (model, model_kwargs, convert) that training and its config.yaml hold.
    """
    # only where there is one: a timm-moe run's config (and every hash and entry id made from it) is as before
    convert = {'convert': spec.convert} if isinstance(spec, TimmSpec) and spec.convert is not None else {}
    return load_config(recipe, model=spec.name, model_kwargs={**(timm_kwargs or {}), **spec.kwargs}, **convert,
                       **values)


def _check_training(spec: Spec, cfg: TrainConfig) -> None:
    """The config must train the spec: another model there is a caller's bug, never the user's input."""
    got, _ = model_spec(cfg.model, cfg.model_kwargs, cfg.convert)
    if got != spec:
        raise ValueError(f'the training config builds {got}, not the spec {spec}: make it with training_config()')


def train_or_reuse(cfg: TrainConfig, reuse: bool) -> TrainRecord:
    """The training record (`run_training`'s, or its result.json) of `cfg`: reused when finished and `reuse`."""
    result_file = Path(cfg.out) / 'result.json'
    if reuse and result_file.exists():
        return TrainRecord.from_json(json.loads(result_file.read_text()))
    return run_training(cfg, overwrite=True)  # a half-finished run restarts cleanly


def run_cell(spec: Spec, training: TrainConfig, evaluation: Evaluation, out: Output,
             grid: Optional[Mapping[str, Any]] = None, trained: Optional[TrainRecord] = None,
             notes: Optional[List[str]] = None) -> CellResult:
    """Train `spec` with `training`, attack it as `evaluation` says, audit its FLOPs and register the entry.

    Args:
        spec: The architecture: a timm-moe one (`ModelSpec`), or any timm model, converted or not (`TimmSpec`).
        training: The training config of the spec (see `training_config`).
        evaluation: The attacks and their sizes.
        out: The registry and the reuse policy.
        grid: The sweep cell this run is (stored in the entry, so a study finds its runs).
        trained: Weights trained before `training.out` was lost (`bench.pipeline.shipped_weights`): evaluated as
            they are, nothing trains.
        notes: Remarks stored in the entry.
    """
    _check_training(spec, training)
    clock = _Clock()
    with clock('train'):
        train = trained if trained is not None else train_or_reuse(training, out.reuse_training)
    with clock('evaluate'):
        result, x = evaluate_run(spec, training, train, evaluation)
    with clock('audit'):
        audit = audit_run(spec, training, train, x[:AUDIT_IMAGES])
    entry = measured_entry(
        spec=spec, model_kwargs=train.model_kwargs, dataset=training.dataset, method=training.training,
        eval_result=result, provenance=provenance(seed=training.seed, checkpoint=train.checkpoint),
        training_config=training.to_dict(), config_path=str(Path(training.out) / 'config.yaml'),
        epochs=training.epochs, attack_note=evaluation.attack_note, grid=grid, timing=clock.seconds, notes=notes,
        **audit_fields(audit))
    return CellResult(entry, register(entry, out), result, audit, train, clock.seconds)


def evaluate_run(spec: Spec, cfg: TrainConfig, train: TrainRecord,
                 evaluation: Evaluation) -> Tuple[EvalResult, torch.Tensor]:
    """(evaluation result, the attacked images) of a finished training run, its weights read from disk."""
    info = dataset_info(cfg.dataset)
    _, timm_kwargs = model_spec(spec.name, train.model_kwargs, cfg.convert)  # the run's, beyond the spec
    model = build_model(spec, info['num_classes'], info['in_chans'], timm_kwargs, train.checkpoint)
    mean, std = info['mean'], info['std']
    if cfg.img_size is not None:  # resized inside the model, as it trained: the attacks stay in the data's pixels
        model, mean, std = normalized(model, mean, std, cfg.img_size), None, None
    x, y = eval_tensors(cfg.dataset, evaluation.n_examples, cfg.data_dir, cfg.download)
    result = evaluate_model(model, x, y, attacks=evaluation.attacks, eps=evaluation.eps, norm=evaluation.norm,
                            batch_size=evaluation.batch_size, per_expert=evaluation.per_expert,
                            seed=cfg.seed if evaluation.seed is None else evaluation.seed, mean=mean,
                            std=std, n_check=evaluation.n_check,
                            per_expert_examples=evaluation.per_expert_examples,
                            per_layer_expert=evaluation.per_layer_expert)
    return result, x


def audit_run(spec: Spec, cfg: TrainConfig, train: TrainRecord, images: torch.Tensor) -> AuditResult:
    """FLOPs and parameters of the run's architecture against its dense baseline (a converted timm model's: the
    unconverted one), routed on `images` (resized as the model sees them, where the run resizes)."""
    info = dataset_info(cfg.dataset)
    images = resized(images, cfg.img_size)
    convert = {'convert': spec.convert} if isinstance(spec, TimmSpec) and spec.convert is not None else {}
    return audit_model(spec.name, input_size=tuple(images.shape[1:]), latency=False, images=images,
                       in_chans=info['in_chans'], num_classes=info['num_classes'], **convert, **_timm_kwargs(train))


class _Clock:
    """Wall seconds per stage: `with clock('train'): ...` adds to `clock.seconds['train']`."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0


def _timm_kwargs(train: TrainRecord) -> Dict[str, Any]:
    """The run's model kwargs without classes and channels, which the data set fixes."""
    return {k: v for k, v in train.model_kwargs.items() if k not in ('num_classes', 'in_chans')}


def register(entry: Mapping[str, Any], out: Output) -> Path:
    """Write the entry; without `overwrite_entry`, an entry already there (same id: the same run) is kept."""
    path = entry_path(entry, out.registry)
    if out.overwrite_entry or not path.exists():
        try:
            path = write_entry(entry, out.registry, overwrite=out.overwrite_entry)
        except UserError:
            if not path.exists():
                raise
            # another process (a parallel cell or shard) wrote the same run between the check and the write
    return path

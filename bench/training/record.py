"""`TrainRecord`: what `bench.training.trainer.run_training` returns and writes to the run's `result.json`.

A typed record between the layers: the pipeline and the CLI read its attributes; `to_json()` is the one
place it becomes a dict (the atomic `result.json`, which a resumed grid reads back with `from_json`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional


@dataclass(frozen=True, kw_only=True)
class TrainRecord:
    """A finished training run.

    Args:
        run_dir: The run directory (config.yaml, checkpoints, metrics.jsonl, result.json).
        checkpoint: The final weights (`model.pth`).
        safetensors: The same weights as safetensors.
        model: The timm model name.
        model_kwargs: Every kwarg the model was built with (num_classes and in_chans included).
        history: One record per epoch, as in metrics.jsonl (clean accuracy, losses, routing, throughput).
        steps: Optimizer steps taken.
        img_per_s: Training throughput over all ranks (None if no step ran).
        config_sha256: The hash of the training config.
        world_size: Processes that trained (DDP).
        upcycled_from: The dense run the weights were upcycled from (path, sha256), or None.
    """
    run_dir: str
    checkpoint: str
    safetensors: str
    model: str
    model_kwargs: Dict[str, Any]
    history: List[Dict[str, Any]]
    steps: int
    img_per_s: Optional[float]
    config_sha256: str
    world_size: int = 1
    upcycled_from: Optional[Dict[str, Any]] = None

    def to_json(self) -> Dict[str, Any]:
        """The record as `result.json` holds it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> 'TrainRecord':
        """A record read back from a run's `result.json`; fields a newer version added are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

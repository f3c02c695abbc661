"""Checkpoints and run folders: every torch file read without unpickling code, run directories that are never
silently reused, the run config that `timm-moe train` leaves beside its weights, and strict weight loading that
names every mismatch."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from bench.core.errors import UserError
from bench.core.yaml_files import read_utf8

TRAIN_STATE = 'last.pth.tar'  # everything needed to resume
WEIGHTS = 'model.pth'  # the plain timm state_dict: pretrained_cfg_overlay=dict(file=...)
EMA_WEIGHTS = 'model_ema.pth'
# the same weights as safetensors: no pickle, so loading them cannot run code
SAFE_WEIGHTS = 'model.safetensors'
SAFE_EMA_WEIGHTS = 'model_ema.safetensors'


def read_torch_file(path: Path, what: str) -> Any:
    """torch.load on the CPU with `weights_only=True`, turning an unreadable file into one clear line.

    Every torch file is read this way, our own `last.pth.tar` included: a run folder can come from someone else,
    and unpickling anything beyond tensors and plain containers can run their code. What the trainer saves
    (tensors, dicts, lists, numbers, strings, None) needs no allow-list (tests/faults/test_no_pickles.py).

    Args:
        path: The file.
        what: How to name it in the error, e.g. '--checkpoint'.
    """
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, corrupt or foreign files fail in many ways
        if isinstance(e, pickle.UnpicklingError) and 'Weights only load failed' in str(e):
            raise UserError(f'{what} {path} holds pickled objects other than tensors and plain containers; refusing '
                            'to unpickle them (that could run code from the file)') from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else ''
        raise UserError(f'{what} {path} is not a readable torch file ({type(e).__name__}: {first[:120]}); '
                        'it may be truncated or corrupt') from None


def read_weights_file(path: Path, what: str) -> Any:
    """A weights file's contents: a safetensors file by its suffix (a shipped pretrained tag, an export), else a
    torch file (`read_torch_file`); an unreadable one is one line naming `what` and the file."""
    if Path(path).suffix == '.safetensors':
        from safetensors.torch import load_file
        try:
            return load_file(path)
        except Exception as e:  # noqa: BLE001 - a foreign or truncated file fails in several ways
            raise UserError(f'{what} {path} is not a readable safetensors file ({type(e).__name__})') from None
    return read_torch_file(path, what)


def load_train_state(run_dir: Path) -> Dict[str, Any]:
    path = Path(run_dir) / TRAIN_STATE
    if not path.exists():
        raise UserError(f'--resume: {path} does not exist; start without --resume, or point --out at the run')
    return read_torch_file(path, '--resume:')


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Create `run_dir`, refusing to mix two runs in one directory.

    Args:
        run_dir: The run's output directory.
        resume: Continue the run found there.
        overwrite: Delete whatever is there first.
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise UserError('--resume and --overwrite contradict each other; pick one')
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f'--out {run_dir} is a file, not a directory')
    busy = run_dir.exists() and any(run_dir.iterdir())
    if resume:
        if not busy:
            raise UserError(f'--resume: {run_dir} holds no run to resume')
        return
    if busy and not overwrite:
        raise UserError(f'--out {run_dir} is not empty; pass --resume to continue that run or --overwrite to replace it')
    if busy:
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------------------------- run config and loading

def _run_config(checkpoint: Optional[Path]) -> Dict[str, Any]:
    """The run config (config.yaml, as `timm-moe train` writes) next to a checkpoint; {} if there is none."""
    if checkpoint is None:
        return {}
    cfg = Path(checkpoint).parent / 'config.yaml'
    if not cfg.exists():
        return {}
    import yaml
    try:
        data = yaml.safe_load(read_utf8(cfg, 'run config')) or {}
    except yaml.YAMLError as e:
        raise UserError(f'{cfg} is not valid YAML: {str(e).splitlines()[0]}') from None
    return data if isinstance(data, dict) else {}


def run_config_kwargs(checkpoint: Optional[Path]) -> Dict[str, Any]:
    """`model_kwargs` from the run config next to a checkpoint."""
    kw = _run_config(checkpoint).get('model_kwargs')
    return dict(kw) if isinstance(kw, dict) else {}


def run_config_value(checkpoint: Optional[Path], key: str) -> Any:
    """One value of the run config next to a checkpoint (`convert`, `img_size`, ...); None if it has none."""
    return _run_config(checkpoint).get(key)


DEFAULT_EVAL_DATASET = 'cifar100'


def default_dataset(checkpoint: Optional[Path], pretrained_tag: Optional[str] = None) -> Tuple[str, str]:
    """(data set, where it comes from) for weights evaluated without --dataset: the data set the checkpoint's
    run trained on (its config.yaml), or the one the pretrained tag's manifest records, else CIFAR-100."""
    trained = _run_config(checkpoint).get('dataset')
    if isinstance(trained, str):
        return trained, f"{Path(checkpoint).parent / 'config.yaml'} names it"
    if pretrained_tag:
        from timm_moe.models.pretrained import tag_record
        record = tag_record(pretrained_tag) or {}
        if isinstance(record.get('dataset'), str):
            return record['dataset'], f"the pretrained tag {pretrained_tag}'s manifest names it"
    return DEFAULT_EVAL_DATASET, 'the default'


def check_run_model(checkpoint: Optional[Path], model: str) -> None:
    """Refuse weights whose run trained another model name: top-k routing changes no weight, so only the run
    config can tell an E4 k=1 run evaluated as E4 k=2 (which would silently measure another network)."""
    trained = _run_config(checkpoint).get('model')
    if isinstance(trained, str) and trained != model:
        raise UserError(f'--checkpoint {checkpoint} was trained as {trained} (its config.yaml), not --model {model}; '
                        f'pass --model {trained}')


def state_dict_of(obj: Any, path: Path) -> Dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ('state_dict', 'model', 'state_dict_ema'):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f'--checkpoint {path} holds no state_dict (a dict of tensors, or one under '
                        f"'state_dict' or 'model')")
    for prefix in ('module.', 'model.'):  # DDP and the Normalized wrapper
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def load_checkpoint(model: nn.Module, path: Union[str, Path], label: str = 'the model') -> None:
    """Load a checkpoint into `model`, refusing any mismatch with the missing/unexpected keys named.

    Accepts a plain state_dict (timm's format), or a dict with it under 'state_dict' or 'model' (our trainer's
    resume state), or a safetensors file (a shipped tag's float16 weights are cast to the model's dtype).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f'--checkpoint {path} does not exist')
    obj = read_weights_file(path, '--checkpoint')
    sd = state_dict_of(obj, path)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f'{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}' for k, v in own.items()
              if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        def few(keys: List[str]) -> str:
            return ', '.join(keys[:3]) + (', ...' if len(keys) > 3 else '')
        parts = [f'{len(missing)} missing keys ({few(missing)})' if missing else '',
                 f'{len(unexpected)} unexpected keys ({few(unexpected)})' if unexpected else '',
                 f'{len(shapes)} shape mismatches ({few(shapes)})' if shapes else '']
        raise UserError(f'--checkpoint {path} does not match {label}: ' + '; '.join(p for p in parts if p) +
                        '; check --model, --model-kwargs and --num-classes')
    model.load_state_dict(sd)

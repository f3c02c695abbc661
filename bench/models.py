"""Build and load models: checkpoints that survive a kill at any moment, run directories that are never silently
reused, and the normalising wrapper that keeps every attack in [0, 1] pixel space."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict, Mapping, Sequence

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from bench.core.atomic import atomic_open
from bench.core.errors import UserError

TRAIN_STATE = 'last.pth.tar'  # everything needed to resume
WEIGHTS = 'model.pth'  # the plain timm state_dict: pretrained_cfg_overlay=dict(file=...)
EMA_WEIGHTS = 'model_ema.pth'
# the same weights as safetensors: no pickle, so loading them cannot run code
SAFE_WEIGHTS = 'model.safetensors'
SAFE_EMA_WEIGHTS = 'model_ema.safetensors'


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save that a kill at any moment leaves either the previous or the new complete file."""
    with atomic_open(path, 'wb') as f:
        torch.save(obj, f)


def atomic_save_safetensors(state_dict: Mapping[str, torch.Tensor], path: Path) -> None:
    """A state_dict as a safetensors file, whole or not at all (timm loads it by its `.safetensors` suffix)."""
    # safetensors stores dense row-major buffers: channels_last or sliced tensors must be made contiguous
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    data = safetensors_bytes(tensors, metadata={'format': 'pt'})
    with atomic_open(path, 'wb') as f:
        f.write(data)


def read_torch_file(path: Path, what: str, weights_only: bool = True) -> Any:
    """torch.load on the CPU, turning an unreadable file into one clear line.

    Args:
        path: The file.
        what: How to name it in the error, e.g. '--checkpoint'.
        weights_only: Refuse arbitrary pickled objects (True for files from elsewhere).
    """
    try:
        return torch.load(path, map_location='cpu', weights_only=weights_only)
    except Exception as e:  # noqa: BLE001 - truncated, corrupt or foreign files fail in many ways
        first = str(e).strip().splitlines()[0] if str(e).strip() else ''
        raise UserError(f'{what} {path} is not a readable torch file ({type(e).__name__}: {first[:120]}); '
                        'it may be truncated or corrupt') from None


def load_train_state(run_dir: Path) -> Dict[str, Any]:
    path = Path(run_dir) / TRAIN_STATE
    if not path.exists():
        raise UserError(f'--resume: {path} does not exist; start without --resume, or point --out at the run')
    # our own file, holding RNG states and plain containers, so full unpickling is wanted
    return read_torch_file(path, '--resume:', weights_only=False)


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



class Normalized(nn.Module):
    """Wrap a model so that it takes images in [0, 1] and normalises them itself.

    Args:
        model: The classifier, expecting normalised input.
        mean: Per-channel mean, as in the model's `pretrained_cfg`.
        std: Per-channel standard deviation.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        # buffers, so that .to(device) moves them, but not persistent: checkpoints hold only `model`
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def normalized(model: nn.Module, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> Normalized:
    """Wrap `model`, taking mean/std from its timm `pretrained_cfg` unless given."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    mean = mean if mean is not None else cfg.get('mean', (0.0,))
    std = std if std is not None else cfg.get('std', (1.0,))
    in_chans = getattr(model, 'in_chans', len(mean))
    if len(mean) != in_chans:
        # a model built with in_chans != 3 keeps the RGB cfg; average it down so shapes agree
        mean = (sum(mean) / len(mean),) * in_chans
        std = (sum(std) / len(std),) * in_chans
    return Normalized(model, mean, std)


def unwrap(model: nn.Module) -> nn.Module:
    """The timm model inside any wrappers (Normalized, DDP, EMA)."""
    while True:
        inner = getattr(model, 'model', None) or getattr(model, 'module', None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner

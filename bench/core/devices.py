"""THE device chooser: 'auto' (CUDA when present, else the CPU) or an explicit torch device, refused in one line when
it does not exist here. `timm-moe train`, `eval` and `audit` all choose through `choose_device`."""
from __future__ import annotations

from typing import Optional, Union

import torch

from bench.core.errors import UserError


def choose_device(text: Optional[Union[str, torch.device]] = 'auto', what: str = '--device') -> torch.device:
    """The device `text` names; 'auto' or None = 'cuda' if available, else 'cpu'.

    Args:
        text: 'auto', 'cpu', 'cuda', 'cuda:N' (or a torch.device).
        what: How to name the value in errors ('--device', 'device').
    """
    if text is None or text == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise UserError(f'{what} {text!r} is not a device; use auto, cpu, cuda or cuda:N') from None
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise UserError(f'{what} {text}: CUDA is not available here; use {what} cpu')
    return dev

"""Build models: timm-moe names, plain and converted timm models, with their bad kwargs as one line; the input
size an architecture needs; and the normalising wrapper that keeps every attack in [0, 1] pixel space.
Checkpoints and run folders are `bench.checkpoints`."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import timm
import torch
from torch import nn

import timm_moe
from bench.checkpoints import load_checkpoint
from bench.core.errors import UserError
from timm_moe import ModelSpec
from timm_moe.conversion import TimmSpec
from timm_moe.models.pretrained import CorruptWeightsError


class Normalized(nn.Module):
    """Wrap a model so that it takes images in [0, 1] and normalises them itself (and resizes them, if asked).

    Args:
        model: The classifier, expecting normalised input.
        mean: Per-channel mean, as in the model's `pretrained_cfg`.
        std: Per-channel standard deviation.
        size: Resize every image to `size` x `size` (bilinear) before the model: for an architecture that needs
            larger images than the data set's (`timm-moe train --img-size`). Inside the wrapper, so that attacks
            and their eps stay in the data set's own pixels. None: as they come.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                 size: Optional[int] = None) -> None:
        super().__init__()
        self.model = model
        self.size = size
        # buffers, so that .to(device) moves them, but not persistent: checkpoints hold only `model`
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((resized(x, self.size) - self.mean) / self.std)


def resized(x: torch.Tensor, size: Optional[int]) -> torch.Tensor:
    """Images (B, C, H, W) resized to `size` x `size` (bilinear), as `Normalized` feeds them to its model; as
    they are for None or where they have that size already."""
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = nn.functional.interpolate(x, size=(size, size), mode='bilinear', align_corners=False)
    return x


def normalized(model: nn.Module, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
               size: Optional[int] = None) -> Normalized:
    """Wrap `model`, taking mean/std from its timm `pretrained_cfg` unless given; `size`: see `Normalized`."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    mean = mean if mean is not None else cfg.get('mean', (0.0,))
    std = std if std is not None else cfg.get('std', (1.0,))
    in_chans = getattr(model, 'in_chans', len(mean))
    if len(mean) != in_chans:
        # a model built with in_chans != 3 keeps the RGB cfg; average it down so shapes agree
        mean = (sum(mean) / len(mean),) * in_chans
        std = (sum(std) / len(std),) * in_chans
    return Normalized(model, mean, std, size)


def unwrap(model: nn.Module) -> nn.Module:
    """The timm model inside any wrappers (Normalized, DDP, EMA)."""
    while True:
        inner = getattr(model, 'model', None) or getattr(model, 'module', None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


# ---------------------------------------------------------------------------------------------- building

def check_model_name(name: str) -> None:
    if not timm.is_model(name):
        raise UserError(f'unknown model {name!r}; list ours with `timm-moe models`')


def create_model(model: Union[ModelSpec, TimmSpec, str], model_kwargs: Optional[Mapping[str, Any]] = None,
                 what: str = '--model-kwargs', pretrained: bool = False,
                 convert: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """THE model builder: `timm.create_model` of a spec or a timm name, with kwargs the user gave, converted to
    MoE as `convert` says (`timm_moe.create_model`).

    timm_moe validates its kwargs with a plain ValueError (it does not depend on bench), and timm refuses an
    unknown kwarg with a TypeError; both are the user's to fix here, so they become one `UserError` line.

    Args:
        model: A `timm_moe.ModelSpec` (its own kwargs come first), a `TimmSpec` (its conversion applied) or any
            timm model name.
        model_kwargs: Further kwargs (num_classes, in_chans, or model kwargs for a name).
        what: How to name the kwargs in errors ('--model-kwargs', '--width', 'model_kwargs').
        pretrained: Load the weights of the name's pretrained tag (`resnet18_dense.fmnist_pgd`), offline for
            the tags timm_moe ships.
        convert: `timm_moe.convert`'s arguments (a `timm_moe.Conversion` record), applied to the built model.
    """
    if isinstance(model, TimmSpec):  # any timm model: the spec carries its conversion
        if convert is not None:
            raise ValueError(f'create_model({model}, convert={convert}): the spec holds the conversion')
        model, convert = model.name, model.convert
    name = model.name if isinstance(model, ModelSpec) else model
    kwargs = {**(model.kwargs if isinstance(model, ModelSpec) else {}), **(model_kwargs or {})}
    check_model_name(name)
    if pretrained and not _has_weights(name):
        raise UserError(f'{name!r} has no pretrained weights; tags with weights: '
                        f'{", ".join(timm.list_pretrained(name.split(".")[0] + ".*")) or "none"}')
    conversion = check_convert(convert, what)
    try:
        net = timm.create_model(name, pretrained=pretrained, **kwargs)
    except CorruptWeightsError as e:  # the tag's file, not the kwargs
        raise UserError(str(e)) from None
    except (TypeError, ValueError) as e:
        shown = ','.join(f'{k}={v}' for k, v in kwargs.items())
        raise UserError(f'{what}: {name} cannot be built with {shown}: {_first_line(e)}') from None
    if conversion is None:
        return net
    try:
        return conversion.apply(net)
    except ValueError as e:  # a target that selects nothing, a module that cannot be an expert, ...
        raise UserError(f'{_convert_flag(what)}: {name}: {_first_line(e)}') from None


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _convert_flag(what: str) -> str:
    """How the conversion is named beside `what` (the model kwargs): --convert on the command line, else convert."""
    return '--convert' if what.startswith('--') else 'convert'


def check_convert(convert: Optional[Mapping[str, Any]], what: str = '--model-kwargs'
                  ) -> Optional[timm_moe.Conversion]:
    """The `timm_moe.Conversion` of `convert` (None: no conversion); bad input is one UserError line."""
    if convert is None:
        return None
    try:
        return timm_moe.Conversion.from_dict(convert)
    except ValueError as e:
        raise UserError(f'{_convert_flag(what)}: {_first_line(e)}') from None


def _has_weights(name: str) -> bool:
    """Whether `name` (with its tag, or the default tag) has weights timm can load."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # timm's answer to an unknown tag
        return False
    return bool(cfg is not None and cfg.has_weights)  # timm 1.0.9 answers with the url or file


def build_model(model: Union[ModelSpec, TimmSpec, str], num_classes: int, in_chans: int,
                model_kwargs: Optional[Mapping[str, Any]] = None,
                checkpoint: Optional[Union[str, Path]] = None, pretrained: bool = False,
                convert: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """A classifier for a data set (`num_classes`, `in_chans`), with weights from `checkpoint` if given.

    Args:
        model: A `timm_moe.ModelSpec`, a `timm_moe.conversion.TimmSpec` or a timm name (`import timm_moe`
            registers ours).
        num_classes: Classes, unless `model_kwargs` sets them.
        in_chans: Input channels, unless `model_kwargs` sets them.
        model_kwargs: Kwargs for `timm.create_model`, as the user gave them.
        checkpoint: A state_dict file (see `load_checkpoint`).
        pretrained: Start from the name's pretrained tag (see `create_model`).
        convert: The MoE conversion of a plain timm model (see `create_model`).
    """
    kwargs = dict(model_kwargs or {})
    kwargs.setdefault('num_classes', num_classes)
    kwargs.setdefault('in_chans', in_chans)
    net = create_model(model, kwargs, pretrained=pretrained, convert=convert)
    if checkpoint is not None:
        name = model if isinstance(model, str) else model.name
        load_checkpoint(net, checkpoint, f'{name}({", ".join(f"{k}={v}" for k, v in kwargs.items())})')
    return net


def param_counts(model: nn.Module) -> Dict[str, int]:
    """Total parameters, and the parameters one image uses.

    Active = everything outside the experts (gate included) + the k largest experts of each layer (all
    experts of a registered variant are the same size, so this is exact there and an upper bound else).
    """
    total = sum(p.numel() for p in model.parameters())
    idle = 0
    for _, layer in timm_moe.moe_layers(model):
        sizes = sorted((sum(p.numel() for p in e.parameters()) for e in layer.experts), reverse=True)
        idle += sum(sizes[layer.k:])
    return dict(total=total, active=total - idle)


# ---------------------------------------------------------------------------------------------- input size
# An input smaller than the architecture reduces it to nothing (ConvNeXt's 32x downsampling on Fashion-MNIST's
# 28x28) is bad input, said in one line with the size it needs instead of a traceback from inside a convolution.
# The probe is a shape-only forward (parameters, buffers and input on the meta device: nothing computed, no
# memory), so a check costs a fraction of a second.

LARGEST_PROBE = 1024  # the largest side the search for a working size tries


def runs_at(model: nn.Module, in_chans: int, side: int) -> bool:
    """Whether a forward of one `in_chans` x `side` x `side` image gets through `model`'s shapes (in eval mode:
    training-mode batch norm also refuses a single value per channel, which is not a size limit)."""
    meta = {n: torch.empty_like(t, device='meta') for n, t in (*model.named_parameters(), *model.named_buffers())}
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            torch.func.functional_call(model, meta, (torch.empty(1, in_chans, side, side, device='meta'),))
        return True
    except (RuntimeError, ValueError):
        return False
    finally:
        for m, training in modes:
            m.train(training)


def min_side(model: nn.Module, in_chans: int, side: int) -> Optional[int]:
    """The smallest side >= `side` at which `model` runs (`side` itself if it does); None when no side up to
    `LARGEST_PROBE` does, so the failure is not the size."""
    if runs_at(model, in_chans, side):
        return side
    hi = side
    while True:  # doubling until a side runs
        if hi >= LARGEST_PROBE:
            return None
        hi = min(2 * hi, LARGEST_PROBE)
        if runs_at(model, in_chans, hi):
            break
    lo = max(hi // 2, side)  # lo fails, hi runs
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if runs_at(model, in_chans, mid) else (mid, hi)
    return hi


def check_input_size(model: nn.Module, in_chans: int, side: int, label: str, hint: str) -> None:
    """Raise a one-line UserError when `model` cannot take `side` x `side` images, naming the side it needs.

    Args:
        model: The built model.
        in_chans: Channels of the images.
        side: Their height and width.
        label: The model, as the message names it (e.g. 'convnext_atto').
        hint: How to give larger images with this verb, e.g. '--img-size {need} resizes them inside the model'
            (`{need}` is filled in).
    """
    need = min_side(model, in_chans, side)
    if need is not None and need != side:
        raise UserError(f'{side}x{side} images are too small for {label}: it needs at least {need}x{need} '
                        f'({hint.format(need=need)})')

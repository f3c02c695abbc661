"""ResNets with sparse Mixture-of-Experts layers (BlockMoE, ConvMoE), for timm.

Reference: "Robust Experts: the Effect of Adversarial Training on CNNs with Sparse
Mixture-of-Experts Layers", Pavlitska et al., 2025 (arXiv 2509.05086).

Every registered name is a thin entry point: it builds timm's own `ResNet`, swaps in the CIFAR stem where asked,
and converts the placement's modules with `timm_moe.convert`, as the paper's code injects MoE layers into a built
network. Each ResNet of `RESNETS` registers its family with `.registry` (`register_resnet`), for E in
`GRID['experts']`, K in `GRID['k']`, K <= E:
- `resnet{18,50}_blockmoe_e{E}_k{K}` and `wide_resnet50_2_blockmoe_e{E}_k{K}`: experts are residual blocks;
- `resnet{18,50}_convmoe_e{E}_k{K}`: experts are convolutions, the BatchNorm after each stays shared;
- `resnet18_dense`, `resnet50_dense`, `wide_resnet50_2_dense`: the same base model, same stem, unconverted.
`ENTRYPOINTS` maps each name to its (arch, kind, experts, k); `model_names(arch=, kind=)` lists them by family.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn

from timm.models import build_model_with_cfg, resolve_pretrained_cfg, split_model_name_tag
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from ..convert import convert, resolve_targets
from ..layers import KINDS, MOE_DEFAULTS, MoEConfig, validate_moe_args
from . import registry
from .pretrained import (PathLike, check_has_weights, check_weights_file, check_weights_fit, read_manifest,
                         registered_tags, tag_model_kwargs, with_tags)
from .registry import ENTRYPOINTS, Entry

__all__ = ['CIFAR100_MEAN', 'CIFAR100_STD', 'KIND_KWARGS', 'MODEL_DEFAULTS', 'PLACEMENTS', 'RESNETS', 'STEMS',
           'base_model', 'default_placement', 'placement_targets', 'pool_size_of', 'register_resnet',
           'register_tags']

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

# the base ResNets (filled by `register_resnet`): the kwargs of timm's own ResNet entry points of the same name
RESNETS: Dict[str, Dict[str, Any]] = {}
STEMS = ('cifar', 'imagenet')
# named placements, relative to the last stage: 'last' its last module of the kind, 'all' every one; any other
# placement is module paths or patterns joined by '+' ('layer4.0', 'layer3+layer4', 'layer4.1.conv2')
PLACEMENTS = ('last', 'all')
_DEFAULT_PLACEMENT = {'block': 'last', 'conv': 'all'}  # the paper's best of each kind (docs/FIDELITY.md)


class _KindKwargs(Mapping):
    """kind -> the MoE kwargs its models take (a dense model takes none of them): the placement, then the fields
    of `timm_moe.layers.MoEConfig` that the kind's models take. Read from `KINDS` on each lookup, so that a kind
    registered later has its kwargs too."""

    def __getitem__(self, kind: str) -> Tuple[str, ...]:
        if kind not in KINDS:
            raise KeyError(kind)
        return ('placement', *MoEConfig.model_kwargs(kind))

    def __iter__(self) -> Iterator[str]:
        return iter(KINDS)

    def __len__(self) -> int:
        return len(KINDS)


KIND_KWARGS: Mapping[str, Tuple[str, ...]] = _KindKwargs()
# The defaults of the kwargs that shape a timm-moe architecture (the paper's best configuration): the base model's
# here, the MoE kwargs' those of `MoEConfig`; the entry points below and `ModelSpec` both read them. `placement`
# defaults per kind: `default_placement`.
MODEL_DEFAULTS: Dict[str, Any] = {
    'stem': 'cifar',
    'width': 64,
    **{key: MOE_DEFAULTS[key] for key in dict.fromkeys(k for keys in KIND_KWARGS.values() for k in keys[1:])},
}
_BASE_KWARGS = ('stem', 'width')


def default_placement(kind: str) -> str:
    """The default placement of a kind: 'last' for BlockMoE (the last layer4 block), 'all' for ConvMoE and any
    other kind (every module of the kind in the last stage)."""
    return _DEFAULT_PLACEMENT.get(kind, 'all')


def _check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f'{name}={value!r}: expected one of {list(allowed)}')


def _check_in_chans(in_chans: Any) -> None:
    # 0 would build a Conv2d of no input channel, which fails only at the first forward
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f'in_chans={in_chans!r}: expected an integer >= 1 (3 for RGB, 1 for greyscale)')


def _check_width(width: Any) -> None:
    # timm's ResNet makes its first stage as wide as its stem, and its stem 64 wide or 2 x stem_width
    if isinstance(width, bool) or not isinstance(width, int) or width < 2 or width % 2:
        raise ValueError(f'width={width!r}: expected an even integer >= 2 (64 is the paper\'s ResNet)')


# ----------------------------------------------------------------------------------------- the base model

def _stem(model: ResNet, stem: str, in_chans: int, width: int) -> None:
    """Give `model` the stem asked for: 'cifar' (3x3 stride-1 conv, no max-pool, as the paper) or 'imagenet'."""
    if stem == 'imagenet' and width == 64:
        return  # timm's own 7x7/2 conv and max-pool
    cifar = stem == 'cifar'
    # a width other than 64 was built with timm's deep stem (see base_model): one conv replaces its three
    # It keeps PyTorch's default init (std 1/sqrt(3 fan_in)), not timm's fan_out: the paper's code replaces conv1
    # after torchvision's init (src/models/nn/resnet.py), so its dense and MoE models both start from that.
    model.conv1 = nn.Conv2d(in_chans, width, kernel_size=3 if cifar else 7, stride=1 if cifar else 2,
                            padding=1 if cifar else 3, bias=False)
    if cifar:
        model.maxpool = nn.Identity()
        model.feature_info[0]['reduction'] = 1
        for info in model.feature_info[1:]:
            info['reduction'] //= 4  # timm's stages assume its stride-4 stem


def base_model(arch: str, stem: str, width: int, num_classes: int, in_chans: int, zero_init_last: bool,
          **kwargs: Any) -> ResNet:
    """timm's ResNet of `arch` with the stem and width asked for, BatchNorm weights 1 (the paper's init)."""
    channels = tuple(width * 2 ** i for i in range(4))
    # timm's first stage is as wide as its stem: 64 for its plain stem, 2 x stem_width for its deep stem
    stem_args = {} if width == 64 else dict(stem_type='deep', stem_width=width // 2)
    model = ResNet(**RESNETS[arch], num_classes=num_classes, in_chans=in_chans, channels=channels,
                   zero_init_last=zero_init_last, **stem_args, **kwargs)
    _stem(model, stem, in_chans, width)
    return model


def placement_targets(model: nn.Module, placement: str, kind: str) -> List[str]:
    """The module paths a placement selects in a (not yet converted) ResNet, for an MoE of `kind`."""
    last_stage = model.feature_info[-1]['module']  # 'layer4'
    if placement == 'all':
        return resolve_targets(model, last_stage, kind)
    if placement == 'last':
        return resolve_targets(model, last_stage, kind)[-1:]
    try:
        return resolve_targets(model, placement, kind)
    except ValueError as e:
        raise ValueError(f'placement={placement!r}: {e}; or one of {list(PLACEMENTS)}') from None


def _build(arch: str, kind: Optional[str] = None, num_experts: int = 0, k: Optional[int] = None, *,
           num_classes: int = 100, in_chans: int = 3, zero_init_last: bool = False,
           device: Optional[Union[str, torch.device]] = None, dtype: Optional[torch.dtype] = None,
           **kwargs: Any) -> ResNet:
    """The model of a registered name: timm's ResNet, the stem, then `convert` for an MoE kind.

    `kwargs` are the MoE and base kwargs (`MODEL_DEFAULTS`, `placement`) and timm's own ResNet kwargs
    (global_pool, drop_rate, act_layer, ...). The model's `moe_config` holds the kwargs it was built with,
    defaults and 'auto' resolved.
    """
    ours = {key: kwargs.pop(key) for key in (*MODEL_DEFAULTS, 'placement') if key in kwargs}
    allowed = (*_BASE_KWARGS, *KIND_KWARGS.get(kind, ()))
    foreign = sorted(key for key in ours if key not in allowed)
    if foreign:
        what = 'a dense model' if kind is None else f'a {kind}moe model'
        others = [kd for kd, keys in KIND_KWARGS.items() if foreign[0] in keys]
        raise ValueError(f'{foreign[0]}={ours[foreign[0]]!r}: {what} takes no {foreign[0]} (a kwarg of '
                         f'{" and ".join(o + "moe" for o in others) or "no"} models); it takes {list(allowed)}')
    settings = {key: ours.get(key, MODEL_DEFAULTS[key]) for key in (*_BASE_KWARGS, *KIND_KWARGS.get(kind, ()))
                if key != 'placement'}
    _check_choice('stem', settings['stem'], STEMS)
    _check_width(settings['width'])
    _check_in_chans(in_chans)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f'dtype={dtype!r}: expected a floating-point torch.dtype, e.g. torch.bfloat16')
    if kind is not None:
        settings['placement'] = ours.get('placement', default_placement(kind))
        if not isinstance(settings['placement'], str):
            raise ValueError(f"placement={settings['placement']!r}: expected a string, one of {list(PLACEMENTS)} "
                             "or module paths joined by '+', e.g. 'layer4.0' or 'layer3+layer4'")
        validate_moe_args(num_experts, k)
        config = MoEConfig(**{key: settings[key] for key in MoEConfig.model_kwargs(kind)})
        settings['noisy_gating'] = config.noisy_gating  # 'auto' resolved, once
    # timm's factory kwargs device/dtype: build under a device context and cast, because timm 1.0.9's
    # ResNet takes no device/dtype
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = base_model(arch, settings['stem'], settings['width'], num_classes, in_chans, zero_init_last, **kwargs)
        if kind is not None:
            targets = placement_targets(model, settings['placement'], kind)
            convert(model, targets, num_experts, k, kind=kind,
                    **{key: settings[key] for key in MoEConfig.model_kwargs(kind)})
    if dtype is not None:
        model.to(dtype)
    model.moe_config = dict(num_experts=num_experts, k=k, **settings) if kind else dict(num_experts=0, **settings)
    return model


# the final feature map is the input divided by this, rounded up (every stride-2 layer pads to ceil)
FEATURE_REDUCTION = {'cifar': 8, 'imagenet': 32}


def pool_size_of(input_size: Sequence[int], kwargs: Mapping[str, Any]) -> Optional[Tuple[int, int]]:
    """The final feature map of an input (..., H, W) for the model kwargs (None for an unknown stem)."""
    reduction = FEATURE_REDUCTION.get(kwargs.get('stem', MODEL_DEFAULTS['stem']))
    height, width = input_size[-2:]
    return None if reduction is None else (-(-height // reduction), -(-width // reduction))


def _create_resnet_moe(variant: str, pretrained: bool = False, **kwargs: Any) -> ResNet:
    # a pretrained tag ('name.tag' reaches us as pretrained_cfg='tag') fixes the architecture its weights need,
    # also without pretrained=True (to load its file later): its model_kwargs are defaults, the user's kwargs win
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'))
    kwargs = {**tag_model_kwargs(variant, cfg.tag), **kwargs}
    # pool_size depends on the stem, a kwarg, so the registered cfg cannot hold it for both stems;
    # an explicit pool_size in the user's overlay still wins
    overlay = dict(kwargs.pop('pretrained_cfg_overlay', None) or {})
    pool_size = pool_size_of(overlay.get('input_size', cfg.input_size), kwargs)
    if pool_size is not None:  # an unknown stem is reported by the model itself
        overlay.setdefault('pool_size', pool_size)
    entry = ENTRYPOINTS[variant]
    if pretrained:
        check_has_weights(variant, cfg, overlay, _tags_of(variant, entry))
        check_weights_file(variant, cfg, overlay)
    fixed = [key for key in ('arch', 'kind', 'num_experts', 'k') if key in kwargs]
    if fixed:
        others = [n for n, e in ENTRYPOINTS.items() if e.arch == entry.arch and e.kind == entry.kind][:3]
        raise ValueError(f'{fixed[0]}={kwargs[fixed[0]]!r}: fixed by the model name {variant!r}; pick the name '
                         f'instead, e.g. one of {others} (timm_moe.model_names() lists them)')
    return build_model_with_cfg(_build, variant, pretrained, pretrained_cfg_overlay=overlay, arch=entry.arch,
                                kind=entry.kind, num_experts=entry.experts, k=entry.k,
                                pretrained_filter_fn=lambda state_dict, model: _fitting(variant, state_dict, model),
                                **kwargs)


def _fitting(variant: str, state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, Any]:
    # timm's filter hook runs just before it loads: the one place that sees the weights of every source
    # (a tag, pretrained_cfg_overlay's file, local-dir:) beside the model they are loaded into
    check_weights_fit(variant, state_dict, model)
    return state_dict


def _tags_of(variant: str, entry: 'Entry') -> List[str]:
    """'name.tag' names with weights: `variant`'s own first, then the others of its architecture."""
    tags = [t for t in registered_tags() if t.split('.')[0] in ENTRYPOINTS and ENTRYPOINTS[t.split('.')[0]].arch == entry.arch]
    return sorted(tags, key=lambda t: (t.split('.')[0] != variant, t))


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        'url': '', 'num_classes': 100, 'input_size': (3, 32, 32), 'pool_size': (4, 4),
        'crop_pct': 1.0, 'interpolation': 'bilinear', 'mean': CIFAR100_MEAN, 'std': CIFAR100_STD,
        'first_conv': 'conv1', 'classifier': 'fc', 'license': 'apache-2.0',
        'paper_ids': 'arXiv:2509.05086', 'paper_name': 'Robust Experts', **kwargs,
    }


def register_resnet(arch: str, block: Type[nn.Module], layers: Sequence[int],
                    kinds: Sequence[str] = ('block', 'conv'), **resnet_kwargs: Any) -> List[str]:
    """Register the family of a ResNet: `{arch}_dense` and `{arch}_{kind}moe_e{E}_k{K}` for each kind.

    Args:
        arch: Its name, e.g. 'resnet34'.
        block: timm's `BasicBlock` or `Bottleneck` (or a block class that `timm.models.resnet.ResNet` takes).
        layers: Blocks per stage, e.g. (3, 4, 6, 3).
        kinds: Its MoE kinds (`timm_moe.layers.KINDS`).
        resnet_kwargs: Further kwargs of timm's `ResNet` that fix the architecture (base_width, cardinality, ...).

    Returns:
        The registered names.
    """
    if arch in registry.FAMILIES:  # before RESNETS changes: a refused call leaves the registered ResNet as it was
        raise ValueError(f'arch {arch!r} is registered already (archs: {list(registry.ARCHS)})')
    RESNETS[arch] = dict(block=block, layers=tuple(layers), **resnet_kwargs)
    try:
        return registry.register_family(arch, kinds, _create_resnet_moe, _cfg())
    except ValueError:
        del RESNETS[arch]
        raise


register_resnet('resnet18', BasicBlock, (2, 2, 2, 2))
register_resnet('resnet50', Bottleneck, (3, 4, 6, 3))
register_resnet('wide_resnet50_2', Bottleneck, (3, 4, 6, 3), kinds=('block',), base_width=128)


def register_tags(folder: Optional[PathLike] = None) -> List[str]:
    """Register the tags of `folder`'s manifest (default: the package's, or $TIMM_MOE_PRETRAINED_DIR's) with
    timm, replacing the tags registered before; returns the registered 'model.tag' names."""
    records = read_manifest(folder)
    changed = sorted({split_model_name_tag(key)[0] for key in (*registered_tags(), *records)})
    registry.default_cfgs.update(with_tags(registry.default_cfgs, records, pool_size_of))  # what reregister reads
    registry.reregister(changed)
    return sorted(records)


# plus the pretrained tags of the package's manifest (or $TIMM_MOE_PRETRAINED_DIR's): see .pretrained
register_tags()

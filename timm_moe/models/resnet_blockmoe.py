"""ResNet-18/50 with BlockMoE layers in the last stage (layer4), for timm.

Reference: "Robust Experts: the Effect of Adversarial Training on CNNs with Sparse
Mixture-of-Experts Layers", Pavlitska et al., 2025 (arXiv 2509.05086).

Registered: `resnet{18,50}_blockmoe_e{E}_k{K}` for E in {2, 4, 8, 16, 32}, K in {1, 2, 4}, K <= E,
and the dense baselines `resnet18_dense` / `resnet50_dense` with the identical stem.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import sys
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn

from timm.layers import get_act_layer, get_norm_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg
from timm.models.resnet import BasicBlock, Bottleneck, ResNet, make_blocks

from ..layers import BlockMoE, resolve_noisy_gating, validate_moe_args
from .pretrained import check_weights_file, read_manifest, tag_model_kwargs, with_tags

__all__ = ['ResNetBlockMoE', 'dense_name', 'MODEL_GRID']

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

STEMS = ('cifar', 'imagenet')
PLACEMENTS = ('last', 'all')
EXPERT_WIDTHS = ('full', 'matched')
MODEL_GRID = {'experts': (2, 4, 8, 16, 32), 'k': (1, 2, 4)}
_ARCHS = {'resnet18': (BasicBlock, (2, 2, 2, 2)), 'resnet50': (Bottleneck, (3, 4, 6, 3))}


def _conv_like(conv: nn.Conv2d, in_chs: Optional[int] = None, out_chs: Optional[int] = None) -> nn.Conv2d:
    return nn.Conv2d(
        in_chs or conv.in_channels, out_chs or conv.out_channels, conv.kernel_size, conv.stride,
        conv.padding, conv.dilation, conv.groups, conv.bias is not None)


def _narrow_block(block: nn.Module, inner: int) -> nn.Module:
    """A copy of a BasicBlock/Bottleneck whose inner width is `inner`; input, output and skip unchanged."""
    block = copy.deepcopy(block)
    if isinstance(block, Bottleneck):
        block.conv1 = _conv_like(block.conv1, out_chs=inner)
        block.bn1 = type(block.bn1)(inner)
        block.conv2 = _conv_like(block.conv2, in_chs=inner, out_chs=inner)
        block.bn2 = type(block.bn2)(inner)
        block.conv3 = _conv_like(block.conv3, in_chs=inner)
    else:
        block.conv1 = _conv_like(block.conv1, out_chs=inner)
        block.bn1 = type(block.bn1)(inner)
        block.conv2 = _conv_like(block.conv2, in_chs=inner)
    return block


def _conv_macs(block: nn.Module, in_chs: int) -> int:
    """Multiply-accumulates of the convs in a meta-device `block` on an 8x8 input."""
    total = 0

    def hook(mod: nn.Module, inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = mod.kernel_size
        total += (mod.in_channels // mod.groups) * kh * kw * out[0].numel()

    handles = [m.register_forward_hook(hook) for m in block.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        block.eval()(torch.empty(1, in_chs, 8, 8, device='meta'))
    for h in handles:
        h.remove()
    return total


def matched_inner_width(block: nn.Module, in_chs: int, k: int) -> int:
    """The widest inner width at which k experts cost no more conv MACs than the dense block.

    The skip path (and a downsample, if any) keeps its width, so it is paid k times; the search
    accounts for that instead of assuming inner width / k.
    """
    meta = copy.deepcopy(block).to('meta')  # shapes only: no memory, no init cost

    def cost(inner: int) -> int:
        with torch.device('meta'):
            return k * _conv_macs(_narrow_block(meta, inner), in_chs)

    budget = _conv_macs(meta, in_chs)
    lo, hi = 1, block.conv1.out_channels
    while lo < hi:  # largest inner width within budget; cost grows with it
        mid = (lo + hi + 1) // 2
        if cost(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    if cost(lo) > budget:
        raise ValueError(f'expert_width=matched: no inner width lets k={k} experts fit the dense block budget')
    return lo


def _placement(placement: str, moe_blocks: Optional[str]) -> str:
    """`placement`, or the value of its deprecated name `moe_blocks` (which warns; both given must agree)."""
    if moe_blocks is None:
        return placement
    warnings.warn("the model kwarg moe_blocks is deprecated and will be removed in the next release; use "
                  f"placement={moe_blocks!r}", DeprecationWarning, stacklevel=3)
    if placement != 'last' and placement != moe_blocks:
        raise ValueError(f'placement={placement!r} and moe_blocks={moe_blocks!r}: one setting under two names; '
                         'give only placement')
    return moe_blocks


class ResNetBlockMoE(ResNet):
    """A timm ResNet whose last-stage residual blocks can be BlockMoE layers.

    Subclasses timm's `ResNet` so that the whole model API (forward_features, forward_head,
    forward_intermediates, reset_classifier, group_matcher, features_only) stays timm's own. With
    `num_experts=0` it is the dense baseline.

    Args:
        block: Residual block class, `BasicBlock` (ResNet-18) or `Bottleneck` (ResNet-50).
        layers: Blocks per stage.
        num_classes: Classifier outputs.
        in_chans: Input channels.
        stem: 'cifar' (3x3 stride-1 conv, no max-pool, as the paper) or 'imagenet' (timm's 7x7/2 + max-pool).
        width: Channels of the stem and the first stage; stages double it. 64 is the paper's ResNet.
        num_experts: Experts per BlockMoE layer; 0 builds the dense baseline.
        k: Experts each image is routed to.
        gate: 'gap_fc' or 'conv_gap'.
        placement: 'last' (only the last layer4 block, the paper's best) or 'all' (every layer4 block).
        moe_blocks: Deprecated name of `placement` (kept for one release; warns).
        aux_loss: 'entropy', 'switch', 'kl', 'z_loss' or 'none'.
        aux_weight: Weight of the auxiliary loss.
        noisy_gating: Noisy top-k selection in training: True, False or 'auto' (on for the 'switch', 'kl'
            and 'z_loss' losses, off for 'entropy' and 'none', as the reference). `moe_config['noisy_gating']`
            holds the effective bool.
        expert_width: 'full' (each expert a full copy) or 'matched' (inner width shrunk so that k active
            experts cost no more than the dense block).
        global_pool: Global pooling type.
        drop_rate: Dropout before the classifier.
        zero_init_last: Zero the last BN of every residual branch (timm's default is True; the paper's
            code initialises BN weights to 1, so we default to False).
        act_layer: Activation layer.
        norm_layer: Normalisation layer.
        device: Where to create the parameters (timm's factory kwarg), e.g. 'meta' for a shape-only model.
        dtype: Floating-point dtype of the parameters and buffers (timm's factory kwarg).
    """

    def __init__(
            self,
            block: Union[Type[BasicBlock], Type[Bottleneck]],
            layers: Sequence[int],
            num_classes: int = 100,
            in_chans: int = 3,
            stem: str = 'cifar',
            width: int = 64,
            num_experts: int = 0,
            k: int = 1,
            gate: str = 'gap_fc',
            placement: str = 'last',
            aux_loss: str = 'entropy',
            aux_weight: float = 0.5,
            noisy_gating: Union[bool, str] = 'auto',
            expert_width: str = 'full',
            global_pool: str = 'avg',
            drop_rate: float = 0.0,
            zero_init_last: bool = False,
            act_layer: Union[str, Type[nn.Module]] = nn.ReLU,
            norm_layer: Union[str, Type[nn.Module]] = nn.BatchNorm2d,
            device: Optional[Union[str, torch.device]] = None,
            dtype: Optional[torch.dtype] = None,
            moe_blocks: Optional[str] = None,
            **kwargs: Any,
    ) -> None:
        _check_choice('stem', stem, STEMS)
        placement = _placement(placement, moe_blocks)
        _check_choice('placement', placement, PLACEMENTS)
        _check_choice('expert_width', expert_width, EXPERT_WIDTHS)
        if not isinstance(width, int) or width < 1:
            raise ValueError(f'width={width!r}: expected an integer >= 1')
        if num_experts:
            validate_moe_args(num_experts, k, gate=gate, aux_loss=aux_loss, noisy_gating=noisy_gating)
        noisy_gating = resolve_noisy_gating(noisy_gating, aux_loss)
        if kwargs:
            # TypeError, as Python gives for an unknown keyword: timm's model tests and factories expect it
            raise TypeError(f'unexpected model kwargs {sorted(kwargs)}')
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f'dtype={dtype!r}: expected a floating-point torch.dtype, e.g. torch.bfloat16')
        nn.Module.__init__(self)  # the stem and widths differ from ResNet.__init__'s, so build here
        # timm's factory kwargs device/dtype: build under a device context and cast, because timm 1.0.9's
        # blocks take no device/dtype (and timm 1.0.31 passes them to the model, not to us piecemeal)
        with torch.device(device) if device is not None else contextlib.nullcontext():
            act_layer = get_act_layer(act_layer)
            norm_layer = get_norm_layer(norm_layer)
            self.num_classes = num_classes
            self.in_chans = in_chans
            self.drop_rate = drop_rate
            self.grad_checkpointing = False

            # registration order is execution order for timm's FeatureListNet (features_only)
            cifar = stem == 'cifar'
            self.conv1 = nn.Conv2d(
                in_chans, width, kernel_size=3 if cifar else 7, stride=1 if cifar else 2, padding=1 if cifar else 3,
                bias=False)
            self.bn1 = norm_layer(width)
            self.act1 = act_layer(inplace=True)
            self.maxpool = nn.Identity() if cifar else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            stem_stride = 1 if cifar else 4
            self.feature_info = [dict(num_chs=width, reduction=max(stem_stride // 2, 1), module='act1')]

            channels = tuple(width * 2 ** i for i in range(4))
            stages, stage_info = make_blocks(
                _block_arg(block), channels, tuple(layers), width, act_layer=act_layer, norm_layer=norm_layer)
            for name, stage in stages:
                self.add_module(name, stage)
            for info in stage_info:
                # make_blocks assumes timm's stride-4 stem
                info['reduction'] = info['reduction'] * stem_stride // 4
            self.feature_info.extend(stage_info)

            self.num_features = self.head_hidden_size = channels[-1] * block.expansion
            from timm.layers import create_classifier
            self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
            self.head_hidden_size = self.num_features * self.global_pool.feat_mult()

            self.moe_config = dict(
                num_experts=num_experts, k=k, gate=gate, placement=placement, aux_loss=aux_loss,
                aux_weight=aux_weight, noisy_gating=noisy_gating, expert_width=expert_width, stem=stem, width=width)
            if num_experts:
                self._insert_moe(num_experts, k, gate, placement, aux_loss, aux_weight, noisy_gating, expert_width)
            self.init_weights(zero_init_last=zero_init_last)
        if dtype is not None:
            self.to(dtype)

    def _insert_moe(
            self, num_experts: int, k: int, gate: str, placement: str, aux_loss: str,
            aux_weight: float, noisy_gating: bool, expert_width: str) -> None:
        stage: nn.Sequential = self.layer4
        targets = range(len(stage)) if placement == 'all' else [len(stage) - 1]
        for idx in targets:
            dense = stage[idx]
            in_chs = dense.conv1.in_channels
            if expert_width == 'matched':
                inner = matched_inner_width(dense, in_chs, k)
                experts = [_narrow_block(dense, inner) for _ in range(num_experts)]
            else:
                experts = [copy.deepcopy(dense) for _ in range(num_experts)]
            moe = BlockMoE(
                experts, in_chs, k=k, gate=gate, aux_loss=aux_loss, aux_weight=aux_weight,
                noisy_gating=noisy_gating)
            # named, and told the smallest image its gate can take (3x3 after a reduction r: 2r + 1 pixels),
            # so that an unpadded Conv-GAP gate on too small an input says so in the user's terms
            reduction = self.feature_info[3 if idx == 0 else 4]['reduction']
            moe.describe(f'layer4.{idx}', min_image_size=2 * reduction + 1)
            stage[idx] = moe

    @torch.jit.ignore
    def init_weights(self, zero_init_last: bool = False) -> None:
        """Kaiming for convs (so every expert copy is re-initialised independently), BN to (1, 0).

        Gates then get PyTorch's default init back: timm's init walks every conv, the Conv-GAP gate's
        included, and the reference builds its gates after the backbone's init (docs/METHOD.md).
        """
        super().init_weights(zero_init_last=zero_init_last)
        if not zero_init_last:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, BlockMoE):
                m.gate.reset_parameters()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^conv1|bn1|maxpool', blocks=r'^layer(\d+)' if coarse else r'^layer(\d+)\.(\d+)')

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # an FX proxy has no concrete rank to check (and FX cannot branch on it)
        if not isinstance(x, torch.fx.Proxy) and x.ndim != 4:
            raise ValueError(f'expected a 4-D input (B, C, H, W), got shape {tuple(x.shape)}')
        return super().forward_features(x)


def _block_arg(block: type) -> Any:
    # newer timm takes one block class per stage; 1.0.9 (robustbench's pin) takes a single class
    first = next(iter(inspect.signature(make_blocks).parameters))
    return (block,) * 4 if first == 'block_fns' else block


def _check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f'{name}={value!r}: expected one of {list(allowed)}')


# the final feature map is the input divided by this, rounded up (every stride-2 layer pads to ceil)
FEATURE_REDUCTION = {'cifar': 8, 'imagenet': 32}


def pool_size_of(input_size: Sequence[int], kwargs: Mapping[str, Any]) -> Optional[Tuple[int, int]]:
    """The final feature map of an input (..., H, W) for the model kwargs (None for an unknown stem)."""
    reduction = FEATURE_REDUCTION.get(kwargs.get('stem', 'cifar'))
    height, width = input_size[-2:]
    return None if reduction is None else (-(-height // reduction), -(-width // reduction))


def _create_resnet_blockmoe(variant: str, pretrained: bool = False, **kwargs: Any) -> ResNetBlockMoE:
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
    if pretrained:
        check_weights_file(variant, cfg, overlay)
    return build_model_with_cfg(ResNetBlockMoE, variant, pretrained, pretrained_cfg_overlay=overlay, **kwargs)


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        'url': '', 'num_classes': 100, 'input_size': (3, 32, 32), 'pool_size': (4, 4),
        'crop_pct': 1.0, 'interpolation': 'bilinear', 'mean': CIFAR100_MEAN, 'std': CIFAR100_STD,
        'first_conv': 'conv1', 'classifier': 'fc', 'license': 'apache-2.0',
        'paper_ids': 'arXiv:2509.05086', 'paper_name': 'Robust Experts', **kwargs,
    }


def _moe_variants() -> List[tuple]:
    return [(arch, e, k) for arch in _ARCHS for e in MODEL_GRID['experts'] for k in MODEL_GRID['k'] if k <= e]


def _moe_name(arch: str, num_experts: int, k: int) -> str:
    return f'{arch}_blockmoe_e{num_experts}_k{k}'


# plus the pretrained tags of the package's manifest (or $TIMM_MOE_PRETRAINED_DIR's): see .pretrained
default_cfgs = with_tags(generate_default_cfgs({
    **{f'{arch}_dense': _cfg() for arch in _ARCHS},
    **{_moe_name(*v): _cfg() for v in _moe_variants()},
}), read_manifest(), pool_size_of)


@register_model
def resnet18_dense(pretrained: bool = False, **kwargs: Any) -> ResNetBlockMoE:
    """Dense ResNet-18 with the same stem and widths as the BlockMoE variants (the audit baseline)."""
    model_args = dict(block=BasicBlock, layers=_ARCHS['resnet18'][1], num_experts=0)
    return _create_resnet_blockmoe('resnet18_dense', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet50_dense(pretrained: bool = False, **kwargs: Any) -> ResNetBlockMoE:
    """Dense ResNet-50 with the same stem and widths as the BlockMoE variants (the audit baseline)."""
    model_args = dict(block=Bottleneck, layers=_ARCHS['resnet50'][1], num_experts=0)
    return _create_resnet_blockmoe('resnet50_dense', pretrained, **dict(model_args, **kwargs))


def _make_entrypoint(arch: str, num_experts: int, k: int) -> Callable[..., ResNetBlockMoE]:
    name = _moe_name(arch, num_experts, k)
    block, layers = _ARCHS[arch]

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> ResNetBlockMoE:
        model_args = dict(block=block, layers=layers, num_experts=num_experts, k=k)
        return _create_resnet_blockmoe(name, pretrained, **dict(model_args, **kwargs))

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = (
        f'{arch} with a BlockMoE of {num_experts} experts, top-{k} routing, at the last layer4 block '
        f"by default (`placement='all'` for every layer4 block).")
    return entrypoint


# 28 variants that differ only in (E, k): generated, so that each one only assembles kwargs
for _variant in _moe_variants():
    _fn = register_model(_make_entrypoint(*_variant))
    setattr(sys.modules[__name__], _fn.__name__, _fn)


def dense_name(name: str) -> str:
    """The dense baseline of a registered model name: 'resnet18_blockmoe_e8_k2' -> 'resnet18_dense'."""
    arch = name.split('_')[0]
    if arch not in _ARCHS:
        raise ValueError(f'{name!r} is not a timm-moe model: expected a name starting with one of {list(_ARCHS)}')
    return f'{arch}_dense'

"""`convert`: a built model whose target modules are replaced by MoE layers over copies of themselves.

    model = timm.create_model('resnet18', num_classes=100)
    model = timm_moe.convert(model, 'layer4.1', num_experts=4, k=1)                # a BlockMoE at layer4.1
    model = timm_moe.convert(model, 'layer4', num_experts=4, k=1, kind='conv')     # a ConvMoE at every conv of layer4

This is the paper code's construction (a filter selects modules of a built network, a replace function turns each
into a mixture of deep copies), written once for every kind of expert. A target is a module path or a glob
pattern over paths ('layer4.1', 'layer4.*.conv*'), or several joined by '+' or given as a list. In a pattern `*`
and `?` stay within one path component (`layer4.*` is the blocks of layer4, not the convs inside them), `**`
crosses dots (`layer4.**` is everything under layer4), and `[seq]` is one character of seq. With `kind`
('block', 'conv' or another of `timm_moe.layers.KINDS`) a target also selects every module of that kind under
the path it names ('layer4' with kind='conv' is every conv of layer4); without it a target must name the modules
themselves.
"""
from __future__ import annotations

import copy
import functools
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from timm.models.resnet import Bottleneck

from .layers import EXPERT_WIDTHS, GATES, KINDS, MOE_DEFAULTS, MoE, MoEConfig, validate_moe_args

__all__ = ['BLOCK_TYPES', 'EXPERT_WIDTHS', 'convert', 'matched_inner_width', 'module_paths', 'resolve_targets',
           'split_targets']

Targets = Union[str, Sequence[str]]

# the residual blocks a 'block' target selects, the only modules `expert_width='matched'` can narrow
BLOCK_TYPES = KINDS['block']
PROBE_SIZE = 256  # side of the shape-only input that finds each target's stride from the model input


def module_paths(model: nn.Module, kind: str) -> List[str]:
    """Paths of the modules of `kind` ('block', 'conv', ...: `KINDS`) in `model`, in registration order, outside MoE
    layers."""
    if kind not in KINDS:
        raise ValueError(f'kind={kind!r}: expected one of {sorted(KINDS)}')
    return [name for name, m in _named_modules_outside_moe(model) if isinstance(m, KINDS[kind])]


def _named_modules_outside_moe(model: nn.Module) -> List[tuple]:
    # an MoE's experts are not targets of another conversion
    inside = [name for name, m in model.named_modules() if isinstance(m, MoE)]
    return [(name, m) for name, m in model.named_modules()
            if name and not any(name == p or name.startswith(p + '.') for p in inside)]


def split_targets(targets: Targets) -> List[str]:
    """The patterns of `targets` (a '+'-joined string or a list); a one-line ValueError for anything else."""
    if isinstance(targets, str):
        parts = targets.split('+')
    else:  # None, a number, a dict, ...: not a list of targets
        parts = list(targets) if isinstance(targets, (list, tuple)) else []
    if not parts or any(not isinstance(p, str) or not p.strip() for p in parts):
        raise ValueError(f'targets={targets!r}: expected module paths or patterns, e.g. "layer4.1", '
                         '"layer3+layer4", "layer4.*.conv*"')
    return [p.strip() for p in parts]


@functools.lru_cache(maxsize=256)
def _glob(pattern: str) -> re.Pattern:
    """A glob over module paths as a regex: `*` and `?` never match a dot, `**` matches anything, `[seq]` one char.

    fnmatch's `*` crosses dots, so 'layer4.*' of a ResNet-50 selected the convs inside each block as well.
    """
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith('**', i):
            out.append('.*')
            i += 2
        elif pattern[i] == '*':
            out.append('[^.]*')
            i += 1
        elif pattern[i] == '?':
            out.append('[^.]')
            i += 1
        elif pattern[i] == '[':
            # as fnmatch: '!' negates, a ']' first in the set is a member, an unclosed '[' is literal
            j = i + 1 + (pattern[i + 1:i + 2] == '!')
            j = pattern.find(']', j + 1)
            if j < 0:
                out.append(re.escape('['))
                i += 1
                continue
            body = pattern[i + 1:j].replace('\\', '\\\\')
            body = '^' + body[1:] if body.startswith('!') else '\\' + body if body.startswith('^') else body
            out.append('(?!\\.)[' + body + ']')
            i = j + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile(''.join(out) + r'\Z')


def resolve_targets(model: nn.Module, targets: Targets, kind: Optional[str] = None) -> List[str]:
    """The module paths that `targets` select in `model` (see the module docstring), in the model's order.

    Raises a one-line ValueError for a target that selects nothing (naming it and the model's block and conv
    paths) and for targets that select one module inside another.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f'kind={kind!r}: expected one of {sorted(KINDS)} or None')
    modules = _named_modules_outside_moe(model)
    if kind is not None:
        modules = [(name, m) for name, m in modules if isinstance(m, KINDS[kind])]
    selected = set()
    for pattern in split_targets(targets):
        hits = [name for name, _ in modules if _glob(pattern).match(name)
                or (kind is not None and name.startswith(pattern + '.'))]
        if not hits:
            what = {'block': 'residual block', 'conv': 'conv', None: 'module'}.get(kind, f'{kind} module')
            raise ValueError(f'target {pattern!r} selects no {what} of {type(model).__name__}: expected paths or '
                             f'patterns over the blocks {module_paths(model, "block")} or the convs '
                             f'{module_paths(model, "conv")}')
        selected.update(hits)
    paths = [name for name, _ in modules if name in selected]
    for outer in paths:
        inner = [p for p in paths if p.startswith(outer + '.')]
        if inner:
            raise ValueError(f'targets={targets!r} select {inner[0]!r} inside {outer!r}: an expert cannot contain '
                             'another MoE layer (in a pattern `*` stays within one path component, `**` crosses '
                             'dots)')
    return paths


def convert(
        model: nn.Module,
        targets: Targets,
        num_experts: int,
        k: int = 1,
        *,
        kind: Optional[str] = None,
        gate: str = MOE_DEFAULTS['gate'],
        aux_loss: str = MOE_DEFAULTS['aux_loss'],
        aux_weight: float = MOE_DEFAULTS['aux_weight'],
        noisy_gating: Union[bool, str] = MOE_DEFAULTS['noisy_gating'],
        noise_std: float = MOE_DEFAULTS['noise_std'],
        straight_through: bool = MOE_DEFAULTS['straight_through'],
        expert_width: str = MOE_DEFAULTS['expert_width'],
        copy_weights: bool = False,
) -> nn.Module:
    """Replace each target module of `model`, in place, by an MoE layer over `num_experts` copies of it.

    Each expert is a deep copy of the module it replaces: re-initialised (`reinit_`: convs Kaiming normal, fan_in,
    as the paper's code; every other layer its PyTorch default, BatchNorm weight 1, bias 0, fresh running
    statistics), or, with `copy_weights`, an exact
    copy, so that at k=1 the converted model computes the original function (upcycling; `timm_moe.upcycle`).
    Gates are built after the experts and keep PyTorch's default init. The layer's gate sees the module's input.

    Args:
        model: A built model, e.g. `timm.create_model('resnet18')`.
        targets: Module paths or glob patterns ('layer4.1', 'layer3+layer4', 'layer4.*.conv*'; `*` stops at a
            dot, `**` crosses dots).
        num_experts: Experts per MoE layer.
        k: Experts per image, 1 <= k <= num_experts.
        kind: 'block', 'conv' (or another registered kind, `timm_moe.layers.KINDS`) to select the modules of that
            kind under each target path; None: the targets name the modules themselves.
        gate: 'gap_fc', 'conv_gap' or a gate registered with `timm_moe.layers.register_gate`.
        aux_loss: 'entropy', 'switch', 'kl', 'z_loss' or 'none'.
        aux_weight: Weight of the aux loss in `timm_moe.aux_loss(model)`.
        noisy_gating: True, False or 'auto' (the reference's policy; see `MoE`).
        noise_std: Standard deviation of the training-only gate noise.
        straight_through: For k=1, forward weight exactly 1 with a straight-through gradient (see `MoE`).
        expert_width: 'full' (each expert a full copy) or 'matched' (a residual block's inner width shrunk so that
            k active experts cost no more conv MACs than the block); 'matched' applies to residual blocks only.
        copy_weights: Copy the module's weights into every expert instead of re-initialising them.

    Returns:
        `model`, converted in place.
    """
    validate_moe_args(num_experts, k)
    config = MoEConfig(gate=gate, aux_loss=aux_loss, aux_weight=aux_weight, noisy_gating=noisy_gating,
                       noise_std=noise_std, straight_through=straight_through, expert_width=expert_width)
    paths = resolve_targets(model, targets, kind)
    for path in paths:  # all checked before the first is replaced: a refused call leaves the model as it was
        _in_channels(model.get_submodule(path), path)
    if expert_width == 'matched':
        if copy_weights:
            raise ValueError("expert_width='matched' with copy_weights=True: a narrowed expert cannot hold the "
                             "module's weights; use expert_width='full'")
        not_blocks = [p for p in paths if not isinstance(model.get_submodule(p), BLOCK_TYPES)]
        if not_blocks:
            raise ValueError(f"expert_width='matched' applies to residual blocks, not to {not_blocks[0]!r}: "
                             "use expert_width='full'")
    # only an unpadded Conv-GAP gate has a minimum input, which its error names in model pixels
    reductions = _input_reductions(model, paths) if getattr(GATES[gate], 'min_input_size', 1) > 1 else {}
    for path in paths:
        module = model.get_submodule(path)
        in_chs = _in_channels(module, path)
        reference = next(module.parameters())  # a Conv2d's weight at least
        make = _expert_factory(module, in_chs, k, expert_width, copy_weights)
        # built where the module lives; the gate comes last, so no init of the experts touches it
        with torch.device(reference.device):
            experts = [make() for _ in range(num_experts)]
            reduction = reductions.get(path)
            layer = MoE(experts, in_chs, k=k, **config.layer_kwargs(), name=path,
                        # an unpadded 3x3 gate needs 3x3 pixels: 2r + 1 model pixels after a stride of r
                        min_image_size=2 * reduction + 1 if reduction else None)
        layer.gate.to(dtype=reference.dtype)
        parent, _, child = path.rpartition('.')
        setattr(model.get_submodule(parent) if parent else model, child, layer)
    return model


def _in_channels(module: nn.Module, path: str) -> int:
    """Channels of the module's input: those of its first convolution (a block's conv1, or the conv itself)."""
    conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:  # an Identity, an activation, a Linear: nothing an image-routing gate can be fitted to
        raise ValueError(f'target {path!r} is a {type(module).__name__} with no Conv2d: expected a module with a '
                         'Conv2d (a residual block or a convolution), whose input channels the gate takes')
    return conv.in_channels


def reinit_(module: nn.Module) -> nn.Module:
    """Re-initialise a copied expert: every layer with parameters, and BatchNorm statistics. In place; returns it.

    As the paper's code (`_initialize_weights` in `resnet_block_moe.py`): every convolution (Conv1d/2d/3d, so
    also an SE block's 1x1 convs and ECA's Conv1d) Kaiming normal, its default mode fan_in (gain sqrt 2); every
    other layer with parameters (BatchNorm: weight 1, bias 0, fresh running statistics; GroupNorm, LayerNorm,
    Linear; conv biases) its PyTorch default `reset_parameters`. A layer with parameters of its own and no
    `reset_parameters` raises a ValueError: a copy left as it was would be an expert that was never
    re-initialised.
    """
    for name, m in module.named_modules():
        own = list(m.parameters(recurse=False))
        if hasattr(m, 'reset_parameters'):
            m.reset_parameters()  # also a parameter-free layer's buffers (BatchNorm(affine=False)'s statistics)
        elif own:
            where = f' ({name!r})' if name else ''
            raise ValueError(f'cannot re-initialise the {type(m).__name__}{where} of a copied {type(module).__name__}: '
                             'it has parameters and no reset_parameters(); pass copy_weights=True to keep the '
                             'copied weights')
        if isinstance(m, nn.modules.conv._ConvNd):
            # torch.nn.init's default mode, as the reference (which calls it without a mode)
            nn.init.kaiming_normal_(m.weight, mode='fan_in', nonlinearity='relu')
    return module


def _expert_factory(module: nn.Module, in_chs: int, k: int, expert_width: str,
                    copy_weights: bool) -> Callable[[], nn.Module]:
    if copy_weights:
        return lambda: copy.deepcopy(module)
    if expert_width == 'matched':
        inner = matched_inner_width(module, in_chs, k)
        return lambda: reinit_(_narrow_block(module, inner))
    return lambda: reinit_(copy.deepcopy(module))


def _input_reductions(model: nn.Module, paths: Sequence[str]) -> Dict[str, int]:
    """Per target path, the stride from the model input to the module's input (empty when it cannot be probed).

    Found with a shape-only forward: every parameter and buffer replaced by a meta tensor, nothing computed.
    """
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        return {}
    seen: Dict[str, int] = {}

    def record(path: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple) -> None:  # returns None: the input goes on unchanged
            seen.setdefault(path, inputs[0].shape[-1])
        return hook

    hooks = [model.get_submodule(p).register_forward_pre_hook(record(p)) for p in paths]
    meta = {n: torch.empty_like(t, device='meta') for n, t in (*model.named_parameters(), *model.named_buffers())}
    try:
        with torch.no_grad():
            torch.func.functional_call(
                model, meta, (torch.empty(1, conv.in_channels, PROBE_SIZE, PROBE_SIZE, device='meta'),))
    except (RuntimeError, ValueError, TypeError):
        # a model that takes no square image of this size: the layers then only lose a hint in their errors
        return {}
    finally:
        for h in hooks:
            h.remove()
    return {p: -(-PROBE_SIZE // size) for p, size in seen.items()}


# ------------------------------------------------------------------------------------ compute-matched experts

# A narrowed layer is a deep copy of the original with its channel counts and parameter shapes changed, so that it
# keeps everything else: its class (timm's Conv2dSame, BatchNormAct2d, ...), padding_mode, eps, momentum, affine,
# track_running_stats, a BatchNormAct's activation and drop, dtype and device. Rebuilding it from a few
# constructor arguments dropped them (a bf16 block got float32 experts).

def _narrow_conv(conv: nn.Conv2d, in_chs: Optional[int] = None, out_chs: Optional[int] = None) -> nn.Conv2d:
    """A copy of `conv` with `in_chs` input and `out_chs` output channels, freshly initialised as its class does."""
    conv = copy.deepcopy(conv)
    conv.in_channels, conv.out_channels = in_chs or conv.in_channels, out_chs or conv.out_channels
    if conv.in_channels % conv.groups or conv.out_channels % conv.groups:
        raise ValueError(f"expert_width='matched': {conv.in_channels} -> {conv.out_channels} channels do not "
                         f"divide into the conv's groups={conv.groups}; use expert_width='full'")
    old = conv.weight
    conv.weight = nn.Parameter(old.new_empty((conv.out_channels, conv.in_channels // conv.groups, *old.shape[2:])),
                               requires_grad=old.requires_grad)
    if conv.bias is not None:
        conv.bias = nn.Parameter(conv.bias.new_empty(conv.out_channels), requires_grad=conv.bias.requires_grad)
    conv.reset_parameters()
    return conv


def _narrow_norm(norm: nn.Module, channels: int) -> nn.Module:
    """A copy of a BatchNorm-like `norm` over `channels` channels: weight 1, bias 0, fresh running statistics."""
    if not isinstance(norm, (nn.BatchNorm2d, nn.SyncBatchNorm)):  # timm's BatchNormAct2d is a BatchNorm2d
        raise ValueError(f"expert_width='matched' narrows BatchNorm layers, not {type(norm).__name__}: "
                         "use expert_width='full'")
    norm = copy.deepcopy(norm)
    norm.num_features = channels
    for name in ('weight', 'bias'):
        old = getattr(norm, name)
        if old is not None:
            setattr(norm, name, nn.Parameter(old.new_empty(channels), requires_grad=old.requires_grad))
    for name in ('running_mean', 'running_var'):
        old = getattr(norm, name)
        if old is not None:
            setattr(norm, name, old.new_empty(channels))
    norm.reset_parameters()
    return norm


def _narrow_block(block: nn.Module, inner: int) -> nn.Module:
    """A copy of a BasicBlock/Bottleneck whose inner width is `inner`; input, output and skip unchanged."""
    block = copy.deepcopy(block)
    if isinstance(block, Bottleneck):
        block.conv1 = _narrow_conv(block.conv1, out_chs=inner)
        block.bn1 = _narrow_norm(block.bn1, inner)
        block.conv2 = _narrow_conv(block.conv2, in_chs=inner, out_chs=inner)
        block.bn2 = _narrow_norm(block.bn2, inner)
        block.conv3 = _narrow_conv(block.conv3, in_chs=inner)
    else:
        block.conv1 = _narrow_conv(block.conv1, out_chs=inner)
        block.bn1 = _narrow_norm(block.bn1, inner)
        block.conv2 = _narrow_conv(block.conv2, in_chs=inner)
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

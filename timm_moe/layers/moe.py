"""MoE: one module (a residual block, a convolution, ...) replaced by E copies of itself and a per-image top-k gate.

BlockMoE (the experts are residual blocks) and ConvMoE (the experts are convolutions, the BatchNorm after them
stays shared) are this one layer over different expert modules; `timm_moe.convert` builds them.
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

try:
    from timm.layers import register_notrace_module
except ImportError:  # timm 1.0.9 (robustbench's pin) keeps it in the FX feature module
    from timm.models._features_fx import register_notrace_module

from .config import MOE_DEFAULTS, MoEConfig
from .gates import create_gate
from .kinds import expert_kind
from .routing import AUX_LOSSES, Routing, route


def _in_backward() -> bool:
    """True while the autograd engine runs, i.e. in gradient checkpointing's recomputation forward."""
    graph_task_id = getattr(torch._C, '_current_graph_task_id', None)  # private, hence the guard
    return graph_task_id is not None and graph_task_id() != -1


# data-dependent dispatch (each expert's batch size depends on the routing) cannot be FX-traced, so the
# layer is a leaf for timm's FX feature extraction (features_only + feature_cls='fx') and its fx helpers
@register_notrace_module
class MoE(nn.Module):
    """Sparse Mixture-of-Experts over copies of one module: BlockMoE over residual blocks, ConvMoE over convs.

    Each image is routed to its top-k experts; each expert runs only on the images routed to it,
    and the outputs are combined with their routing weights. No (E, B, C, H, W) buffer is built.
    The layer takes what its expert takes: (B, C_in, H, W), for a block and a convolution alike.

    Args:
        experts: The experts, each mapping (B, C_in, H, W) to the same output shape.
        in_chs: Channels of the expert input (what the gate sees).
        k: Experts per image, 1 <= k <= len(experts).
        gate: Gate type, a name of `GATES`: 'gap_fc', 'conv_gap' or one registered with `register_gate`.
        aux_loss: Auxiliary loss, one of 'entropy', 'switch', 'kl', 'z_loss', 'none'.
        aux_weight: Weight of the auxiliary loss in `timm_moe.aux_loss(model)`.
        noisy_gating: Select experts on noisy scores in training (never in eval): True, False, or 'auto'
            (the reference's policy: on for 'switch', 'kl', 'z_loss'; off for 'entropy', 'none').
            The attribute holds the effective bool.
        noise_std: Standard deviation of that noise.
        straight_through: For k=1, forward weight exactly 1 with a straight-through gradient.
        name: The layer's path in its model (e.g. 'layer4.1'), for error messages.
        min_image_size: The smallest model input whose feature map the gate accepts, for error messages.
    """

    def __init__(
            self,
            experts: Sequence[nn.Module],
            in_chs: int,
            k: int = 1,
            gate: str = MOE_DEFAULTS['gate'],
            aux_loss: str = MOE_DEFAULTS['aux_loss'],
            aux_weight: float = MOE_DEFAULTS['aux_weight'],
            noisy_gating: Union[bool, str] = MOE_DEFAULTS['noisy_gating'],
            noise_std: float = MOE_DEFAULTS['noise_std'],
            straight_through: bool = MOE_DEFAULTS['straight_through'],
            name: str = 'MoE',
            min_image_size: Optional[int] = None,
    ) -> None:
        super().__init__()
        num_experts = len(experts)
        _check_counts(num_experts, k)
        # the one check (and resolution of noisy_gating='auto') of the arguments `convert` and the models share
        config = MoEConfig(gate=gate, aux_loss=aux_loss, aux_weight=aux_weight, noisy_gating=noisy_gating,
                           noise_std=noise_std, straight_through=straight_through)
        self.num_experts = num_experts
        self.k = k
        self.gate_type = config.gate
        self.aux_loss_type = config.aux_loss
        self.aux_weight = config.aux_weight
        self.noisy_gating = config.noisy_gating
        self.noise_std = config.noise_std
        self.straight_through = config.straight_through
        self.gate = create_gate(gate, in_chs, num_experts)
        self.experts = nn.ModuleList(experts)
        self.kind = expert_kind(self.experts[0])

        self.name = name
        self.min_image_size = min_image_size
        self._warned_aux = False
        self.forced_expert: Optional[int] = None
        self.last_routing: Optional[Routing] = None
        self.last_aux: Optional[torch.Tensor] = None
        self.record_stats = True  # off inside `timm_moe.paused_routing_stats`, e.g. while an attack probes
        self.reset_stats()
        self.reset_usage()

    def reset_usage(self) -> None:
        """Forget the per-expert image counts of counted training forwards (see `timm_moe.drop_idle_expert_grads`)."""
        self._usage: Optional[torch.Tensor] = None  # (E,) int64 on the routing's device: no host sync to update
        self._usage_forwards = 0

    def usage(self) -> Tuple[torch.Tensor, int]:
        """Images each expert received in counted training forwards since `reset_usage`, and how many such forwards.

        Counted: training mode with grad enabled, outside `paused_routing_stats`, no forced expert. The
        recomputation forward of gradient checkpointing is counted too (it repeats the same routing, so
        it only doubles counts, never turns an idle expert into a used one).
        """
        if self._usage is None:
            device = next(self.gate.parameters()).device
            return torch.zeros(self.num_experts, dtype=torch.long, device=device), self._usage_forwards
        return self._usage, self._usage_forwards

    def reset_stats(self) -> None:
        """Forget the accumulated expert load and importance."""
        self._load: Optional[torch.Tensor] = None
        self._importance: Optional[torch.Tensor] = None
        self._images = 0

    def _record(self, r: Routing, counts: torch.Tensor) -> None:
        self.last_routing = Routing(*(t.detach() for t in (r.logits, r.probs, r.indices, r.weights)))
        if not self.record_stats:
            return
        with torch.no_grad():
            load = counts.float()
            importance = r.probs.float().sum(dim=0)
            if self._load is None:
                self._load, self._importance = load, importance
            else:
                self._load += load.to(self._load.device)
                self._importance += importance.to(self._importance.device)
            self._images += r.indices.shape[0]

    def stats(self) -> Dict[str, object]:
        """Expert load and importance since the last `reset_stats`, and a collapse measure.

        `load[i]` is the fraction of (image, slot) assignments that went to expert i, `importance[i]`
        the mean gate probability of expert i, and `collapse` is 1 - H(load) / log E: 0 when load is
        uniform, 1 when a single expert takes everything.
        """
        num_experts = self.num_experts
        if self._load is None or self._images == 0:
            return dict(load=[0.0] * num_experts, importance=[0.0] * num_experts, collapse=float('nan'), images=0)
        load = self._load / self._load.sum()
        importance = self._importance / self._images
        entropy = -torch.special.xlogy(load, load).sum()
        collapse = 1.0 - float(entropy) / float(torch.log(torch.tensor(float(num_experts)))) if num_experts > 1 else 0.0
        return dict(load=load.tolist(), importance=importance.tolist(), collapse=collapse, images=self._images)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f'{self.name}: expects a 4-D input (B, C, H, W), got shape {tuple(x.shape)}')
        if self.forced_expert is not None or x.is_meta:
            if not _in_backward():
                # no gate ran: a routing or aux loss kept from an earlier forward would be read as this one's
                # (`timm_moe.aux_loss` would return a loss whose graph may be gone)
                self.last_aux = self.last_routing = None
            if self.forced_expert is not None:
                return self.experts[self.forced_expert](x)
            # meta tensors carry shapes only, and routing depends on values (bincount has no meta kernel):
            # every expert maps the input to the same shape, so expert 0 stands in for the routed output
            return self.experts[0](x)

        self._check_gate_input(x)
        logits = self.gate(x)
        noise = self.noise_std if (self.noisy_gating and self.training) else 0.0
        r = route(logits, self.k, straight_through=self.straight_through, noise_std=noise)
        counts = torch.bincount(r.indices.flatten(), minlength=self.num_experts)
        # computed even in checkpointing's recomputation: non-reentrant checkpointing checks that the
        # recomputation saves the same tensors for backward as the original forward did
        aux = self.aux_weight * AUX_LOSSES[self.aux_loss_type](r)
        if _in_backward():
            # that recomputation runs inside backward: the images were counted, and the aux loss (already
            # summed into the loss) taken, by the original forward
            self._warn_if_aux_had_no_grad()
        else:
            # kept with its graph only in training, where a backward follows. In eval (attacks, timm's
            # checkpointed forward tests) a graph held by the module can form a cycle through checkpointing's
            # C++ frames back to the module, which Python's GC cannot free: the whole model would leak
            self.last_aux = aux if self.training else aux.detach()
            self._record(r, counts)
        if self.training and torch.is_grad_enabled() and self.record_stats:
            self._count_usage(counts)
        return self._dispatch(x, r, counts.tolist())

    def aux_lacks_grad(self) -> bool:
        """True when the last forward's aux loss should train the gate but carries no gradient: that forward ran
        in eval mode or without grad. False with no stored loss, the 'none' loss, a zero weight or a frozen gate."""
        if self.last_aux is None or self.last_aux.requires_grad:
            return False
        if self.aux_loss_type == 'none' or self.aux_weight == 0:
            return False
        return any(p.requires_grad for p in self.gate.parameters())

    def _warn_if_aux_had_no_grad(self) -> None:
        # reentrant checkpointing runs the original forward without grad, so the aux loss the user
        # summed into the loss could not train the gate; say so once rather than train silently without it
        if self._warned_aux or not self.aux_lacks_grad():
            return
        self._warned_aux = True
        warnings.warn(
            f'{self.name}: the aux loss had no gradient because the forward ran under reentrant gradient '
            'checkpointing; use non-reentrant checkpointing (timm.layers.set_reentrant_ckpt(False), the default '
            'in recent timm) so that the aux loss trains the gate', RuntimeWarning, stacklevel=2)

    def _check_gate_input(self, x: torch.Tensor) -> None:
        min_size = getattr(self.gate, 'min_input_size', 1)
        height, width = x.shape[-2:]
        if height < min_size or width < min_size:
            hint = f' (model input at least {self.min_image_size}x{self.min_image_size})' if self.min_image_size else ''
            raise ValueError(
                f'{self.name}: the {self.gate_type} gate needs an input of at least {min_size}x{min_size}{hint}, '
                f'got {height}x{width}')

    def _count_usage(self, counts: torch.Tensor) -> None:
        counts = counts.detach()
        if self._usage is None:
            self._usage = counts.clone()
        else:
            self._usage += counts.to(self._usage.device)
        self._usage_forwards += 1

    def _dispatch(self, x: torch.Tensor, r: Routing, counts: List[int]) -> torch.Tensor:
        batch, k = r.indices.shape
        flat_expert = r.indices.flatten()
        # group the (image, slot) pairs by expert: one gather, then each expert gets a contiguous view
        order = torch.argsort(flat_expert, stable=True)
        image_of = order // k
        chunks = x.index_select(0, image_of).split(counts)
        targets = image_of.split(counts)
        # for k=1 with the straight-through estimator the weight is exactly 1, so the multiply only
        # matters when a gradient must reach the gate
        scale = k > 1 or not self.straight_through or torch.is_grad_enabled()
        weights = r.weights.flatten().index_select(0, order).split(counts) if scale else [None] * len(counts)

        out: Optional[torch.Tensor] = None
        for expert, chunk, target, w, n in zip(self.experts, chunks, targets, weights, counts):
            if n == 0:
                continue
            y = expert(chunk)
            if w is not None:
                y = y * w.view((-1,) + (1,) * (y.ndim - 1))
            if out is None:
                # every image receives k contributions; with k=1 each row is written exactly once
                out = y.new_zeros((batch,) + y.shape[1:]) if k > 1 else y.new_empty((batch,) + y.shape[1:])
            # in place: autograd tracks it, and an out-of-place op would copy the whole batch per expert
            if k > 1:
                out.index_add_(0, target, y)
            else:
                out.index_copy_(0, target, y)
        assert out is not None

        if self.training and torch.is_grad_enabled():
            out = out + self._idle_anchor(counts, out)
        return out

    def _idle_anchor(self, counts: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        """A zero that depends on every idle expert's parameters.

        An expert that received no image in this batch would otherwise get no gradient, which breaks
        DDP without `find_unused_parameters` and timm's all-parameters-get-grad test. Their gradient
        is exactly zero, but SGD momentum and weight decay would still move the expert: call
        `timm_moe.drop_idle_expert_grads(model)` before `optimizer.step()` to give it no grad at all.
        """
        anchor = like.new_zeros(())
        for expert, n in zip(self.experts, counts):
            if n == 0:
                for p in expert.parameters():
                    if p.requires_grad:
                        anchor = anchor + p.flatten()[0] * 0.0
        return anchor

    def extra_repr(self) -> str:
        return (f'kind={self.kind}, num_experts={self.num_experts}, k={self.k}, gate={self.gate_type}, '
                f'aux_loss={self.aux_loss_type}, aux_weight={self.aux_weight}, noisy_gating={self.noisy_gating}')


def validate_moe_args(
        num_experts: int, k: int, gate: str = MOE_DEFAULTS['gate'], aux_loss: str = MOE_DEFAULTS['aux_loss'],
        noisy_gating: Union[bool, str] = MOE_DEFAULTS['noisy_gating']) -> None:
    """Raise ValueError naming the first bad argument and what is allowed."""
    _check_counts(num_experts, k)
    MoEConfig(gate=gate, aux_loss=aux_loss, noisy_gating=noisy_gating)


def _check_counts(num_experts: int, k: int) -> None:
    # bool is an int subclass: num_experts=True would build a 1-expert MoE
    for name, value in (('num_experts', num_experts), ('k', k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f'{name}={value!r}: expected an integer >= 1')
    if k > num_experts:
        raise ValueError(f'k={k} > num_experts={num_experts}: expected 1 <= k <= num_experts')

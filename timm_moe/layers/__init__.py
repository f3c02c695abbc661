from .gates import GATES, ConvGapGate, GapFcGate, create_gate
from .moe import KINDS, NOISY_AUX_LOSSES, MoE, expert_kind, resolve_noisy_gating, validate_moe_args
from .routing import AUX_LOSSES, Routing, route

__all__ = ['AUX_LOSSES', 'GATES', 'KINDS', 'NOISY_AUX_LOSSES', 'ConvGapGate', 'GapFcGate', 'MoE', 'Routing',
           'create_gate', 'expert_kind', 'resolve_noisy_gating', 'route', 'validate_moe_args']

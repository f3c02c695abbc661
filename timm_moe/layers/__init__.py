from .block_moe import NOISY_AUX_LOSSES, BlockMoE, resolve_noisy_gating, validate_moe_args
from .gates import GATES, ConvGapGate, GapFcGate, create_gate
from .routing import AUX_LOSSES, Routing, route

__all__ = ['AUX_LOSSES', 'GATES', 'NOISY_AUX_LOSSES', 'BlockMoE', 'ConvGapGate', 'GapFcGate', 'Routing', 'create_gate',
           'resolve_noisy_gating', 'route', 'validate_moe_args']

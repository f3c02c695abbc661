from .config import EXPERT_WIDTHS, MOE_DEFAULTS, NOISY_AUX_LOSSES, MoEConfig, resolve_noisy_gating
from .gates import GATES, ConvGapGate, GapFcGate, create_gate, register_gate
from .kinds import KINDS, expert_kind, register_kind
from .moe import MoE, validate_moe_args
from .routing import AUX_LOSSES, Routing, route

__all__ = ['AUX_LOSSES', 'EXPERT_WIDTHS', 'GATES', 'KINDS', 'MOE_DEFAULTS', 'NOISY_AUX_LOSSES', 'ConvGapGate',
           'GapFcGate', 'MoE', 'MoEConfig', 'Routing', 'create_gate', 'expert_kind', 'register_gate', 'register_kind',
           'resolve_noisy_gating', 'route', 'validate_moe_args']

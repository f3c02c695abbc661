from .block_moe import BlockMoE, validate_moe_args
from .gates import GATES, ConvGapGate, GapFcGate, create_gate
from .routing import AUX_LOSSES, Routing, route

__all__ = ['AUX_LOSSES', 'GATES', 'BlockMoE', 'ConvGapGate', 'GapFcGate', 'Routing', 'create_gate', 'route',
           'validate_moe_args']

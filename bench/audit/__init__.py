"""The audit: FLOPs (flops.py), latency and memory against the dense baseline (latency.py), one model's report
(audit.py)."""
from bench.audit.audit import audit_model

__all__ = ['audit_model']

"""timm-moe benchmarking harness: adversarial training, robustness evaluation, FLOP audits, registry."""

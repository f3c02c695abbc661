"""Evaluation: the loop, resume, sanity checks, MoE analysis and RobustBench interop (imports core, data, models, attacks)."""

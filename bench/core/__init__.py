"""Foundations every other layer may use; nothing here imports from bench outside bench.core."""

"""The pipeline: one cell (train -> evaluate -> audit -> register) and the two studies built on it, grid and quickstart."""

"""One CPU kernel path on every x86-64 machine, for numbers that must match bit for bit across machines.

torch picks its CPU kernels by what the CPU offers: ATen's vectorised ops, oneDNN's convolutions and MKL's
matrix products each dispatch on their own to AVX2 or AVX-512 code. Kernels of different widths add floats in
different orders, and a few hundred training steps turn that rounding into other weights: the quickstart's
smoke numbers, pinned on an AVX2 machine, came out different on an AVX-512 one (the normally trained dense
model's clean accuracy 20.3 % pinned, 23.4 % there, on 64 points), and bit for bit as pinned there with these
variables set. They cap all three libraries at AVX2, which every x86-64 server CPU of the last decade has.
torch reads them when it loads, so they take effect in a new process only: pass `portable_cpu_env()` as a
subprocess's env.
"""
from __future__ import annotations

import os
from typing import Dict, Mapping, Optional

PORTABLE_CPU_ENV = {
    'ATEN_CPU_CAPABILITY': 'avx2',  # ATen's vectorised kernels (torch.backends.cpu.get_cpu_capability())
    'ONEDNN_MAX_CPU_ISA': 'AVX2',  # oneDNN (mkldnn) convolutions
    'MKL_CBWR': 'AVX2',  # MKL's conditional numerical reproducibility: its AVX2 code path
}


def portable_cpu_env(base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """`base` (default: this process's environment) with the portable kernel path set."""
    return {**(os.environ if base is None else base), **PORTABLE_CPU_ENV}

"""Benchmarks of timm-moe: measurements for people, not part of the installed package.

Each module runs from a clone's root as `python -m benchmarks.<name>` (`python -m` puts the working
directory on sys.path, so no install is needed). They use the plugin (`timm_moe`) and the harness's
helpers (`bench.core.timing`, `bench.attacks`, ...); nothing in `timm_moe` or `bench` imports them.
"""

"""Run RobustBench's `benchmark()` on our models: make robustbench 1.1.1 import and work on `pyautoattack`.

Public API (the RobustBench interop, documented in README.md and docs/ECOSYSTEM.md): `import_robustbench`,
`install_autoattack_alias`, `feed_examples` and `benchmark_on_examples` are for users'
own scripts and notebooks, so no `timm-moe` verb calls them; tests/test_robustbench.py keeps them working.

robustbench 1.1.1 (PyPI) cannot run as shipped, for three reasons:

1. it does `from autoattack import AutoAttack` and `from autoattack.state import EvaluationState`, but its
   dependency `pyautoattack` installs that package as `pyautoattack`;
2. pyautoattack 0.2.0 changed the API robustbench calls: `AutoAttack(model, norm=, eps=, version=, device=,
   log_path=)` lost `log_path`, and `run_standard_evaluation(x, y, bs=, state_path=)` now takes `batch_size=`
   and returns `(x_adv, y_adv)` instead of `x_adv`;
3. it imports `pkg_resources`, which setuptools >= 81 no longer ships (the `robustbench` extra pins
   setuptools < 81).

`install_autoattack_alias()` registers an `autoattack` package in `sys.modules` whose submodules are
pyautoattack's own modules (`autoattack.state`, `autoattack.autopgd_base`, ...) and whose `AutoAttack` is
`CompatAutoAttack`: pyautoattack's class behind the original (fra31/auto-attack) signature; `autoattack.state`
reads robust flags back as float, as robustbench's `aa_state_path` branch needs. The algorithm is
pyautoattack's, unchanged. One deliberate difference: with no seed given, the original seeds every
sub-attack from the clock, so two runs differ; the alias uses seed 0 (as `timm-moe eval` does), which makes
RobustBench's number reproducible and comparable with ours.

    from bench.evaluation.robustbench import import_robustbench
    robustbench = import_robustbench()
    clean, robust = robustbench.eval.benchmark(model, dataset='cifar100', threat_model='Linf', eps=8/255, ...)

Do not install `torchattacks` beside robustbench: its wheel ships a stub `robustbench/` package without
`eval.benchmark` that silently overwrites the real one; `import_robustbench` refuses such an install.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional, Tuple

import torch
from torch import nn

# pyautoattack's submodules, re-exported as autoattack.<name> (robustbench and user code import some of them)
SUBMODULES = ('autoattack', 'autopgd_base', 'checks', 'fab_base', 'fab_projections', 'fab_pt', 'other_utils',
              'square', 'state')
DEFAULT_SEED = 0


def _compat_class() -> type:
    from pyautoattack import AutoAttack as PyAutoAttack

    class CompatAutoAttack(PyAutoAttack):
        """pyautoattack's AutoAttack behind fra31/auto-attack's signature (which robustbench 1.1.1 calls).

        Args:
            model: The classifier, taking [0, 1] images.
            norm: 'Linf', 'L2' or 'L1'.
            eps: Radius.
            seed: Seed of every sub-attack; None = `DEFAULT_SEED` (the original would use the clock).
            verbose: Log progress (through the 'auto-attack' logger).
            attacks_to_run: Sub-attacks for version='custom'.
            version: 'standard', 'plus', 'rand' or 'custom'.
            is_tf_model: Not supported by pyautoattack's PyTorch path.
            device: Where the attack runs.
            log_path: Accepted for compatibility; logging goes through `logging` instead.
        """

        def __init__(self, model: nn.Module, norm: str = 'Linf', eps: float = .3, seed: Optional[int] = None,
                     verbose: bool = True, attacks_to_run: Any = (), version: str = 'standard',
                     is_tf_model: bool = False, device: Any = 'cuda', log_path: Optional[str] = None) -> None:
            if is_tf_model:
                raise NotImplementedError('is_tf_model: pyautoattack runs PyTorch models only')
            custom = list(attacks_to_run) if version == 'custom' else None
            super().__init__(model, attacks=custom, device=device, eps=eps, norm=norm,
                             seed=DEFAULT_SEED if seed is None else seed, version=version)
            self.verbose = verbose
            self.log_path = log_path

        def run_standard_evaluation(self, x_orig: torch.Tensor, y_orig: torch.Tensor, bs: int = 250,
                                    return_labels: bool = False, state_path: Any = None) -> Any:
            x_adv, y_adv = super().run_standard_evaluation(
                x_orig, y_orig, batch_size=bs, state_path=Path(state_path) if state_path is not None else None)
            return (x_adv, y_adv) if return_labels else x_adv

    return CompatAutoAttack


def _state_module() -> types.ModuleType:
    """`autoattack.state`: pyautoattack's, except that flags read back from disk are float.

    robustbench's benchmark(aa_state_path=...) computes `EvaluationState.from_disk(p).robust_flags.mean()`,
    which fails on pyautoattack's bool flags. pyautoattack itself keeps using its own module, unchanged.
    """
    from pyautoattack import state as base

    class EvaluationState(base.EvaluationState):
        __doc__ = base.EvaluationState.__doc__

        @property
        def robust_flags(self) -> Optional[torch.Tensor]:
            flags = self._robust_flags
            return None if flags is None else flags.float()

        @robust_flags.setter
        def robust_flags(self, flags: torch.Tensor) -> None:
            base.EvaluationState.robust_flags.fset(self, flags)

    module = types.ModuleType('autoattack.state', base.__doc__)
    module.__dict__.update({k: v for k, v in vars(base).items() if not k.startswith('__')})
    module.EvaluationState = EvaluationState
    return module


def _is_our_alias(module: Any) -> bool:
    return getattr(module, '__timm_moe_alias__', False)


def install_autoattack_alias() -> bool:
    """Make `import autoattack` (and its submodules) resolve to pyautoattack with the original API.

    Leaves a real `autoattack` package (fra31/auto-attack installed from git) alone.

    Returns:
        True if the alias is in place (now or already), False if a real `autoattack` is importable.
    """
    current = sys.modules.get('autoattack')
    if current is not None:
        return _is_our_alias(current)
    if importlib.util.find_spec('autoattack') is not None:
        return False
    import pyautoattack
    alias = types.ModuleType('autoattack', 'pyautoattack under the name robustbench imports (timm-moe alias)')
    alias.__dict__.update({k: v for k, v in vars(pyautoattack).items() if not k.startswith('__')})
    alias.__version__ = pyautoattack.__version__
    alias.__path__ = []  # a package: `import autoattack.state` looks in sys.modules first, then finds nothing
    alias.__timm_moe_alias__ = True
    for name in SUBMODULES:
        sub = _state_module() if name == 'state' else importlib.import_module(f'pyautoattack.{name}')
        sys.modules[f'autoattack.{name}'] = sub
        setattr(alias, name, sub)
    alias.AutoAttack = _compat_class()
    sys.modules['autoattack'] = alias
    return True


def import_robustbench() -> types.ModuleType:
    """Install the alias, import robustbench, and check that it is the real package.

    Raises:
        ImportError: robustbench missing, `pkg_resources` missing (setuptools >= 81), or torchattacks' stub.
    """
    install_autoattack_alias()
    try:
        with warnings.catch_warnings():
            # setuptools 80 warns that pkg_resources is deprecated, on every import of robustbench
            warnings.filterwarnings('ignore', message='.*pkg_resources.*')
            robustbench = importlib.import_module('robustbench')
            importlib.import_module('robustbench.eval')
    except ModuleNotFoundError as e:
        if e.name == 'pkg_resources':
            raise ImportError("robustbench 1.1.1 imports pkg_resources, which setuptools >= 81 dropped: "
                              "pip install 'setuptools<81' (or timm-moe[robustbench])") from e
        raise
    if not callable(getattr(robustbench.eval, 'benchmark', None)):
        raise ImportError('robustbench.eval has no benchmark(): this is the stub package that torchattacks ships; '
                          'pip uninstall torchattacks robustbench, then pip install timm-moe[robustbench]')
    return robustbench


@contextlib.contextmanager
def feed_examples(x: torch.Tensor, y: torch.Tensor) -> Iterator[None]:
    """Within the block, `robustbench.eval.benchmark` evaluates exactly (x, y) instead of loading its data set.

    benchmark() loads CIFAR through torchvision (md5-checked files; no network here), via the name
    `load_clean_dataset` in `robustbench.eval`; this replaces that name, so both evaluators see the same images.
    """
    rb_eval = importlib.import_module('robustbench.eval')
    original = rb_eval.load_clean_dataset

    def load_clean_dataset(dataset: Any, n_examples: Optional[int], data_dir: str, prepr: Any):
        n = len(x) if n_examples is None else min(n_examples, len(x))
        return x[:n].clone(), y[:n].clone()

    rb_eval.load_clean_dataset = load_clean_dataset
    try:
        yield
    finally:
        rb_eval.load_clean_dataset = original


def benchmark_on_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 8 / 255,
                          dataset: str = 'cifar100', threat_model: str = 'Linf', batch_size: int = 128,
                          device: Optional[torch.device] = None) -> Tuple[float, float]:
    """RobustBench's own `benchmark()` on given examples: (clean accuracy, AutoAttack accuracy), in [0, 1].

    Args:
        model: Takes [0, 1] images (e.g. `bench.models.normalized(model)`), in eval mode.
        x: The examples (the same ones `timm-moe eval` uses: `bench.data.eval_tensors`).
        y: Their labels.
        eps: Radius.
        dataset: RobustBench's data set name (only selects its preprocessing, ToTensor for CIFAR).
        threat_model: 'Linf' or 'L2'.
        batch_size: AutoAttack's batch size.
        device: Where to run; default: the model's device.
    """
    robustbench = import_robustbench()
    device = device or next(model.parameters()).device
    with feed_examples(x, y):
        return robustbench.eval.benchmark(model.eval(), n_examples=len(x), dataset=dataset,
                                          threat_model=threat_model, eps=eps, batch_size=batch_size,
                                          device=device)

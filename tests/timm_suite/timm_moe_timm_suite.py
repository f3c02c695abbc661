"""pytest plugin that runs timm's own, unmodified `tests/test_models.py` on timm-moe's models.

    python tests/timm_suite/fetch_timm_tests.py DIR          # -> DIR/timm-<version>/test_models.py
    python -m pytest -p timm_moe_timm_suite DIR/timm-<version>/test_models.py

What it does, and why:

- imports `timm_moe` before pytest collects timm's file, whose parametrisations call
  `timm.list_models()` at import time;
- keeps only the items parametrised with one of our model names (93: BlockMoE and ConvMoE on
  resnet18/resnet50, BlockMoE on wide_resnet50_2, and the 3 dense baselines; `-k moe` would drop the
  baselines) or one of our shipped pretrained tags
  (`resnet18_dense.fmnist_pgd`, ...: timm's tests of default cfgs with tags and of loading pretrained
  weights run on them), and deselects the rest;
- fails the run (exit 4) unless every core test of the file collected every one of our names, so
  that a timm filter list or a renamed test cannot silently shrink coverage;
- registers two timm models converted to MoE (`CONVERTED`: ConvNeXt and EfficientNet blocks made MoE layers by
  `timm_moe.create_model`) under names of their own, and runs every test that timm's file parametrises with
  them: the conversion must keep what timm promises of its own models (features, intermediates, FX);
- then, by default, runs each test on a representative subset of our names (`representative_subset`):
  every family (architecture x kind: BlockMoE, ConvMoE, dense), every k, every number of experts and every
  placement appear in every test, and each test draws its own subset, so that the tests together cover
  more names than any one of them; `--timm-moe-models=all` (or TIMM_MOE_TIMM_SUITE=all) runs every name;
- adds our names to the tests that timm selects by model *module* (its FEAT_INTER_FILTERS lists
  'resnet' and others): ours live in `timm_moe`'s module but inherit timm's ResNet feature API, so
  timm's own checks of `forward_intermediates` and pruning apply to them unchanged;
- fails a test (in teardown) when a BlockMoE layer it created outlives it: timm's tests create a
  few hundred models of up to 0.7 GB (resnet50, E=32), so a leak that holds each one grows the run
  past the memory of a CI machine (22 GB here before it was killed); the check names the leak and
  then releases the layer's graph-holding attributes so that the rest of the run can go on;
- runs the cyclic garbage collector after each test, for the same reason: Python's GC is
  triggered by object counts, not bytes, and frees big models in reference cycles too late;
- marks the TorchScript tests strict-xfail for exactly the models that fail them: TorchScript is
  deprecated by torch and not supported here (docs/ECOSYSTEM.md says why); strict, so that the mark
  fails once one of them passes;
- marks `test_prune_intermediate_layers_contract` slow: timm's own CI skips it ("slow, prunes every
  model at every feature index"), and on our first 30 models it took ~9 of a run's ~26 minutes on two
  busy cores; tox deselects it with `-m "not slow"`, a plain run includes it.
"""
from __future__ import annotations

import dataclasses
import gc
import os
import re
import sys
import types
import weakref
import zlib
from typing import Dict, Iterable, List, Sequence, Set, Tuple

import pytest
import timm

import timm_moe  # registers our models with timm before the test file is collected; builds the converted ones
from timm_moe.layers import MoE

# Core tests of timm's test_models.py that must run on every one of our models where the file defines
# them (1.0.9 and 1.0.31 both define all of these).
REQUIRED_TESTS = (
    'test_model_forward', 'test_model_backward', 'test_model_default_cfgs', 'test_model_forward_features',
    'test_model_forward_intermediates', 'test_model_forward_intermediates_features',
    'test_model_forward_fx', 'test_model_backward_fx',
)
# timm parametrises these with list_models(module=FEAT_INTER_FILTERS, ...), which names timm's modules only
MODULE_FILTERED_TESTS = (
    'test_model_forward_intermediates', 'test_model_forward_intermediates_features',
    'test_prune_intermediate_layers_contract',
)
# torch.jit.script fails on BlockMoE's data-dependent dispatch: see docs/ECOSYSTEM.md
# timm's CI leaves this one out (no marker, "slow ... excluded from CI for now" in timm's file)
SLOW_TESTS = ('test_prune_intermediate_layers_contract',)

# TorchScript is not supported (deprecated by torch; docs/ECOSYSTEM.md): test -> (which of our models fail it,
# why). Strict: a model that starts to pass fails the run, so that this list stays exact.
TORCHSCRIPT_XFAILS = {
    'test_model_forward_torchscript': (
        lambda name: 'moe_' in name,
        'TorchScript is not supported: MoE dispatches on data (ModuleList indexed at run time, host-side '
        'split sizes); the dense baselines are timm\'s own ResNet and script. Use torch.compile or torch.export '
        '(docs/ECOSYSTEM.md)'),
    'test_model_forward_fx_torchscript': (
        lambda name: 'moe_' in name,
        'TorchScript is not supported: the FX graph keeps MoE as a leaf module, which TorchScript then '
        'has to compile (data-dependent dispatch); the dense baselines trace and script (docs/ECOSYSTEM.md)'),
}

# timm models converted to MoE, under names of their own (`moe_` in the name: TorchScript is xfailed as for ours):
# name -> (timm architecture, `timm_moe.convert`'s arguments). ConvNeXt's layer scale cannot be re-initialised, so
# its experts are copies; EfficientNet's are re-initialised, and route k=2 of 4.
CONVERTED = {
    'convnext_atto_moe_stage3_e4_k1': ('convnext_atto', dict(targets='stages.3.blocks.*', num_experts=4, k=1,
                                                             copy_weights=True)),
    'efficientnet_b0_moe_blocks6_e4_k2': ('efficientnet_b0', dict(targets='blocks.6.*', num_experts=4, k=2)),
}
# timm's tests that fail for a converted model, with why. Strict: a pair that starts to pass fails the run.
FEATURES_ONLY = ("features_only=True: timm's feature wrapper keeps the model's modules under other paths, so the "
                 "conversion's targets (paths of the plain model) select nothing there")
CONVERTED_XFAILS = {
    # timm wraps the model (FeatureListNet, FeatureGetterNet) and moves its modules; EfficientNet's own features
    # class keeps the paths, so its plain features test passes
    ('test_model_forward_features', 'convnext_atto_moe_stage3_e4_k1'): FEATURES_ONLY,
    ('test_model_forward_intermediates_features', 'convnext_atto_moe_stage3_e4_k1'): FEATURES_ONLY,
    ('test_model_forward_intermediates_features', 'efficientnet_b0_moe_blocks6_e4_k2'): FEATURES_ONLY,
}
if tuple(int(p) for p in timm.__version__.split('.')[:3] if p.isdigit()) < (1, 0, 10):
    # timm 1.0.9's own ConvNeXt.forward_intermediates returns the stem's output as well: 5 maps against 4
    # feature_info entries, for the plain convnext_atto too. timm 1.0.9 runs this test on none of its ConvNeXts
    # ('convnext' is not in its FEAT_INTER_FILTERS); later timm fixes the method and lists the module.
    CONVERTED_XFAILS[('test_model_forward_intermediates', 'convnext_atto_moe_stage3_e4_k1')] = (
        "timm 1.0.9's ConvNeXt.forward_intermediates returns the stem too (5 maps for 4 feature_info entries), "
        'also for the plain convnext_atto; timm 1.0.9 does not run this test on ConvNeXt')
# timm's registry records each entrypoint's module (and reads its `default_cfgs`): the converted names get one of
# their own, so that neither timm's module filters nor `our_model_names` mistake them for another's
CONVERTED_MODULE = 'timm_moe_timm_suite_converted'


def register_converted() -> None:
    """Register `CONVERTED` with timm: each builds `timm_moe.create_model(arch, convert=...)` with its base
    architecture's pretrained cfg, less the weights (nothing to download), under its own name."""
    module = sys.modules.setdefault(CONVERTED_MODULE, types.ModuleType(CONVERTED_MODULE))
    module.default_cfgs = {}
    for name, (arch, convert) in CONVERTED.items():
        base = timm.models.get_pretrained_cfg(arch)
        module.default_cfgs[name] = dataclasses.asdict(dataclasses.replace(base, hf_hub_id=None, url=None, tag=None))

        def entrypoint(pretrained: bool = False, _arch: str = arch, _convert: dict = convert, _name: str = name,
                       **kwargs):
            cfg = kwargs.pop('pretrained_cfg', None) or timm.models.get_pretrained_cfg(_name)
            return timm_moe.create_model(_arch, convert=_convert, pretrained=pretrained, pretrained_cfg=cfg, **kwargs)

        entrypoint.__name__ = entrypoint.__qualname__ = name
        entrypoint.__module__ = CONVERTED_MODULE
        timm.models.register_model(entrypoint)


register_converted()  # before timm's file is collected: it lists the models when it is imported


# markers timm declares in its own pyproject.toml, which is not part of the fetched file
TIMM_MARKERS = ('base', 'cfg', 'cfg_nonstd', 'forward', 'backward', 'torchscript', 'features', 'fxforward',
                'fxbackward', 'timeout(seconds): a per-test limit, enforced only with pytest-timeout',
                "slow: long-running tests (deselect with -m 'not slow')")


def our_model_names() -> List[str]:
    """Every model name that importing timm_moe registered with timm."""
    return sorted(n for n in timm.list_models()
                  if timm.models.model_entrypoint(n).__module__.startswith('timm_moe.'))


def our_tagged_names() -> List[str]:
    """`model.tag` of every pretrained tag timm_moe ships (timm's pretrained-loading tests run on these)."""
    ours = set(our_model_names())  # once: a call lists all of timm's ~1,300 models
    return sorted(n for n in timm.list_pretrained() if '.' in n and n.split('.')[0] in ours)


# ----------------------------------------------------------------------------------- representative subset
# A name is <arch>_<kind>[_<token>...]: kind is `dense` or `<something>moe`; tokens e<E> and k<K> are the number of
# experts and of active experts, any other token is part of the placement (none: the default placement).
_NAME = re.compile(r'^(?P<arch>.+?)_(?P<kind>dense|[a-z]+moe)(?:_(?P<rest>.+))?$')
_MODES = ('subset', 'all')
ENV_VAR = 'TIMM_MOE_TIMM_SUITE'


def name_features(name: str) -> Set[Tuple[str, ...]]:
    """What a model name stands for in the subset: its family, its k, its E and its placement.

    A name of an unknown shape is its own feature, so that the subset always includes it.
    """
    m = _NAME.match(name.split('.')[0])
    if m is None:
        return {('name', name)}
    arch, kind, rest = m['arch'], m['kind'], m['rest']
    features = {('family', arch, kind)}
    placement = []
    for token in (rest.split('_') if rest else []):
        if re.fullmatch(r'e\d+', token):
            features.add(('experts', kind, token))
        elif re.fullmatch(r'k\d+', token):
            features.add(('k', kind, token))
        else:
            placement.append(token)
    if kind != 'dense':
        features.add(('placement', kind, '_'.join(placement) or 'default'))
    elif placement:
        features.add(('variant', kind, '_'.join(placement)))
    return features


def representative_subset(names: Iterable[str], salt: str = '') -> List[str]:
    """A small subset of `names` that covers every feature (`name_features`) of the whole list, deterministically.

    Greedy set cover: take the name that covers most features not yet covered; ties go by a hash of (salt, name),
    so that each test (the salt) draws its own subset, the same in every run. Greedy is within a factor ln(#features)
    of the smallest cover, which is small enough here: today 13 of the 93 names per test.
    """
    names = sorted(set(names))
    features = {n: name_features(n) for n in names}
    uncovered = set().union(*features.values()) if names else set()
    chosen: List[str] = []
    while uncovered:
        best = max(names, key=lambda n: (len(features[n] & uncovered), -zlib.crc32(f'{salt}:{n}'.encode())))
        chosen.append(best)
        uncovered -= features[best]
    return sorted(chosen)


def selection_mode(config: pytest.Config) -> str:
    mode = config.getoption('timm_moe_models', None) or os.environ.get(ENV_VAR) or 'subset'
    if mode not in _MODES:
        raise pytest.UsageError(f'--timm-moe-models / {ENV_VAR}={mode!r}: expected one of {", ".join(_MODES)}')
    return mode


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption('--timm-moe-models', dest='timm_moe_models', choices=_MODES, default=None,
                     help=f'run each of timm\'s tests on a representative subset of timm-moe\'s names (default) or on '
                          f'all of them; default from ${ENV_VAR}, else subset')


def pytest_configure(config: pytest.Config) -> None:
    for marker in TIMM_MARKERS:
        config.addinivalue_line('markers', marker)
    MoE.__init__ = _tracked_init  # undone in pytest_unconfigure


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Extend timm's module-filtered parametrisations with our names (before pytest expands the marks)."""
    if metafunc.function.__name__ not in MODULE_FILTERED_TESTS:
        return
    markers = metafunc.definition.own_markers
    for i, mark in enumerate(markers):
        if mark.name == 'parametrize' and mark.args and mark.args[0] == 'model_name':
            names = list(mark.args[1])
            extra = [n for n in [*our_model_names(), *CONVERTED] if n not in names]
            markers[i] = pytest.mark.parametrize('model_name', names + extra, **mark.kwargs).mark


def model_name_of(item: pytest.Item) -> object:
    callspec = getattr(item, 'callspec', None)
    return callspec.params.get('model_name') if callspec is not None else None


def coverage_problems(items: List[pytest.Item], ours: List[str]) -> List[str]:
    """Which core tests miss which of our names; empty when every one runs on every name."""
    collected: Dict[str, Set[str]] = {}
    for item in items:
        name = model_name_of(item)
        if name in ours:
            collected.setdefault(item.originalname, set()).add(name)
    defined = {item.originalname for item in items}
    problems = []
    for test in REQUIRED_TESTS:
        if test not in defined:
            continue  # an older timm without this test
        missing = sorted(set(ours) - collected.get(test, set()))
        if missing:
            problems.append(f'{test} misses {len(missing)} of our {len(ours)} models ({", ".join(missing[:4])}'
                            f'{", ..." if len(missing) > 4 else ""})')
    if not any(test in defined for test in REQUIRED_TESTS):
        problems.append(f'none of the core tests {", ".join(REQUIRED_TESTS)} was collected')
    return problems


@pytest.hookimpl(tryfirst=True)  # before -k/-m, so that the check sees the whole file
def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    ours = set(our_model_names())
    problems = coverage_problems(items, sorted(ours | set(CONVERTED)))
    if problems:
        raise pytest.UsageError("timm's test_models.py does not exercise all of timm-moe's models: " +
                                '; '.join(problems))
    # our shipped tags too: timm's tests parametrised with tags (default cfgs with include_tags, loading
    # pretrained weights with another in_chans/num_classes, features_only) must hold for them as for timm's own
    keep = select_items(items, ours, our_tagged_names(), everything=selection_mode(config) == 'all',
                        always=CONVERTED)
    kept = {id(item) for item in keep}
    dropped = [item for item in items if id(item) not in kept]
    for item in keep:
        fails, reason = TORCHSCRIPT_XFAILS.get(item.originalname, (None, ''))
        if fails is not None and fails(model_name_of(item)):
            item.add_marker(pytest.mark.xfail(strict=True, reason=reason))
        why = CONVERTED_XFAILS.get((item.originalname, model_name_of(item)))
        if why:
            item.add_marker(pytest.mark.xfail(strict=True, reason=why))
        if item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = keep


def select_items(items: Sequence[pytest.Item], ours: Sequence[str], tags: Sequence[str],
                 everything: bool = False, always: Iterable[str] = ()) -> List[pytest.Item]:
    """The items to run, in collection order: every item of one of our shipped tags (a few small weights) or of
    a name in `always` (the converted models), and per test function the items of a representative subset of our
    names (of all of them if `everything`)."""
    tags = set(tags) | set(always)
    per_test: Dict[str, Set[str]] = {}
    for item in items:
        if model_name_of(item) in ours:
            per_test.setdefault(item.originalname, set()).add(model_name_of(item))
    if not everything:
        per_test = {test: set(representative_subset(names, salt=test)) for test, names in per_test.items()}
    return [item for item in items
            if model_name_of(item) in tags or model_name_of(item) in per_test.get(item.originalname, ())]


# every MoE layer built during the current test, held weakly: whatever is left after the test is a leak
_BUILT: 'weakref.WeakSet[MoE]' = weakref.WeakSet()
_ORIGINAL_INIT = MoE.__init__


def _tracked_init(self: MoE, *args, **kwargs) -> None:
    _ORIGINAL_INIT(self, *args, **kwargs)
    _BUILT.add(self)


def pytest_unconfigure(config: pytest.Config) -> None:
    MoE.__init__ = _ORIGINAL_INIT


def pytest_runtest_setup(item: pytest.Item) -> None:
    _BUILT.clear()


def leaked_layers() -> List[MoE]:
    """MoE layers built in the current test that are still alive after a full garbage collection."""
    if not _BUILT:  # nothing built, or all of it already freed: no collection needed (it costs ~0.3 s a test)
        return []
    gc.collect()
    return list(_BUILT)


def release(layers: List[MoE]) -> None:
    """Drop what a layer keeps from its last forward, which may hold an autograd graph (and through it the model)."""
    for layer in layers:
        layer.last_aux = None
        layer.last_routing = None
    gc.collect()


_CALL_PASSED = pytest.StashKey[bool]()


@pytest.hookimpl(hookwrapper=True)  # the old-style wrapper: pytest 7 too
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.when == 'call':
        item.stash[_CALL_PASSED] = report.passed


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    leaked = leaked_layers()
    _BUILT.clear()
    if not leaked:
        return
    # a failed (or xfailed) test's model may still sit in its traceback, which pytest and its plugins
    # keep for reporting: only a test that passed must have let go of everything
    passed = item.stash.get(_CALL_PASSED, False)
    message = (f'{len(leaked)} MoE layer(s) built by this test outlived it '
               f'({", ".join(sorted({layer.name for layer in leaked}))}): something still references them, so '
               'their model leaks; released their last_aux/last_routing')
    release(leaked)
    leaked.clear()  # the traceback pytest keeps must not hold the layers either
    if passed:
        raise AssertionError(message)


def pytest_report_header(config: pytest.Config) -> str:
    n = len(our_model_names())
    if selection_mode(config) == 'all':
        return f'timm-moe plugin: timm {timm.__version__}, all {n} timm-moe models in every test'
    return (f'timm-moe plugin: timm {timm.__version__}, {n} timm-moe models; each test runs a representative subset '
            f'of about {len(representative_subset(our_model_names()))} (--timm-moe-models=all or {ENV_VAR}=all: every one)')

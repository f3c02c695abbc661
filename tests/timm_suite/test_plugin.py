"""The plugin that runs timm's own test_models.py on our models: selection, the coverage check, the
module-filter extension and the strict TorchScript xfail, each shown on a small file shaped like timm's.

(The real file runs in tox: `python -m pytest -p timm_moe_timm_suite <timm's test_models.py>`.)
"""
import importlib.util
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import timm

pytest_plugins = ['pytester']

HERE = Path(__file__).resolve().parent


def _load(name: str):
    # by path: the module name `tests.timm_suite...` only resolves when the repo root is on sys.path
    spec = importlib.util.spec_from_file_location(f'_timm_suite_{name}', HERE / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PLUGIN = _load('timm_moe_timm_suite')
FETCH = _load('fetch_timm_tests')
OURS = PLUGIN.our_model_names()
# every run also builds the timm models the plugin converts to MoE (their own names, with `_moe_` in them)
RUN = OURS + list(PLUGIN.CONVERTED)

HEADER = '''
import pytest
from timm import list_models
ALL = list_models()
'''


def _run(pytester, body: str, *args, models: str = 'all'):
    """Run a timm-like file with the plugin; `models='all'` unless a test is about the subset."""
    pytester.makepyfile(test_timm_like=HEADER + body)
    return pytester.runpytest('-p', 'no:cacheprovider', *args, *([f'--timm-moe-models={models}'] if models else []),
                              plugins=[PLUGIN])


def test_our_names_are_the_90_moe_variants_and_3_baselines():
    # 5 families (ResNet-18/50 BlockMoE and ConvMoE, WideResNet-50-2 BlockMoE) x 18 (E, k) pairs with k <= E
    assert len(OURS) == 93
    assert sum('_blockmoe_' in n for n in OURS) == 54 and sum('_convmoe_' in n for n in OURS) == 36
    assert {'resnet18_dense', 'resnet50_dense', 'wide_resnet50_2_dense'} < set(OURS)


def test_selects_only_our_models_and_xfails_torchscript(pytester):
    result = _run(pytester, '''
@pytest.mark.parametrize('model_name', ALL)
def test_model_forward(model_name):
    assert 'resnet' in model_name or '_moe_' in model_name

@pytest.mark.parametrize('model_name', ALL)
def test_model_forward_torchscript(model_name):
    if 'moe_' in model_name:  # dense models script; the MoE layer's data-dependent dispatch does not
        raise RuntimeError('cannot script')
''')
    moe = sum('moe_' in n for n in RUN)
    result.assert_outcomes(passed=2 * len(RUN) - moe, xfailed=moe)
    assert f'{2 * (len(timm.list_models()) - len(RUN))} deselected' in result.stdout.str()


def test_torchscript_xfail_is_strict(pytester):
    # once TorchScript works, the xfail mark must go (and docs/ECOSYSTEM.md with it)
    result = _run(pytester, '''
@pytest.mark.parametrize('model_name', ALL)
def test_model_forward(model_name):
    pass

@pytest.mark.parametrize('model_name', ['resnet18_blockmoe_e2_k1'])
def test_model_forward_torchscript(model_name):
    pass

@pytest.mark.parametrize('model_name', ['resnet18_dense', 'resnet18_blockmoe_e2_k1'])
def test_model_forward_fx_torchscript(model_name):
    assert model_name == 'resnet18_dense'  # FX-traced dense models script; MoE ones do not
''')
    result.assert_outcomes(passed=len(RUN) + 1, failed=1, xfailed=1)
    assert 'XPASS(strict)' in result.stdout.str()


def test_coverage_check_fires_when_a_filter_drops_our_models(pytester):
    result = _run(pytester, '''
@pytest.mark.parametrize('model_name', ALL)
def test_model_forward(model_name):
    pass

@pytest.mark.parametrize('model_name', list_models(exclude_filters=['resnet50_*']))
def test_model_backward(model_name):
    pass
''')
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert f'test_model_backward misses 37 of our {len(RUN)} models (resnet50_blockmoe_e16_k1' in err
    assert 'test_model_forward misses' not in err


def test_coverage_check_fires_when_no_core_test_is_collected(pytester):
    result = _run(pytester, '''
@pytest.mark.parametrize('model_name', ALL)
def test_something_else(model_name):
    pass
''')
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert 'none of the core tests' in result.stderr.str()


def test_module_filtered_tests_get_our_names(pytester):
    # timm picks these by model module ('resnet', ...): ours inherit ResNet's feature API, so they join
    result = _run(pytester, '''
@pytest.mark.parametrize('model_name', ALL)
def test_model_forward(model_name):
    pass

@pytest.mark.parametrize('model_name', list_models(module=['resnet']))
@pytest.mark.parametrize('batch_size', [1])
def test_model_forward_intermediates(model_name, batch_size):
    pass
''', '--co', '-q')
    out = result.stdout.str()
    assert all(f'test_model_forward_intermediates[1-{name}]' in out for name in OURS), out[-2000:]


def test_fetch_extracts_the_sdist_file_unchanged(tmp_path):
    # an sdist-shaped archive stands in for PyPI: the member comes out byte for byte, once
    src = tmp_path / 'timm-9.9.9' / 'tests'
    src.mkdir(parents=True)
    (src / 'test_models.py').write_bytes(b'# timm tests\n')
    sdist = tmp_path / 'timm-9.9.9.tar.gz'
    with tarfile.open(sdist, 'w:gz') as tar:
        tar.add(tmp_path / 'timm-9.9.9', arcname='timm-9.9.9')
    out = FETCH.extract_test_file(sdist, '9.9.9', tmp_path / 'cache' / 'timm-9.9.9' / 'test_models.py')
    assert out.read_bytes() == b'# timm tests\n'
    assert FETCH.fetch(tmp_path / 'cache', '9.9.9') == out  # cached: no download
    with pytest.raises(SystemExit, match='holds no timm-1.0.0/tests/test_models.py'):
        FETCH.extract_test_file(sdist, '1.0.0', tmp_path / 'x.py')


def test_fetch_reports_a_failed_download(tmp_path):
    with pytest.raises(SystemExit, match='failed'):
        FETCH.download_sdist('0.0.0.no.such.version', tmp_path)


def test_fetch_script_runs(tmp_path):
    (tmp_path / 'timm-9.9.9').mkdir()
    (tmp_path / 'timm-9.9.9' / 'test_models.py').write_text('cached')
    done = subprocess.run([sys.executable, str(HERE / 'fetch_timm_tests.py'), str(tmp_path), '--version', '9.9.9'],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(tmp_path / 'timm-9.9.9' / 'test_models.py')
    fixed = tmp_path / 'run' / 'test_models.py'
    subprocess.run([sys.executable, str(HERE / 'fetch_timm_tests.py'), str(tmp_path), '--version', '9.9.9',
                    '--out', str(fixed)], check=True, capture_output=True)
    assert fixed.read_text() == 'cached'


def test_leak_check_fires_when_a_model_outlives_its_test(pytester):
    # a model kept after its test, as a leak would keep it; a failing test's traceback is not a leak
    result = _run(pytester, '''
import timm
KEPT = []

@pytest.mark.parametrize('model_name', ALL)
def test_model_forward(model_name):
    model = timm.create_model(model_name, **({'width': 4} if 'resnet' in model_name else {}))
    if model_name == 'resnet18_blockmoe_e2_k1':
        KEPT.append(model)
    if model_name == 'resnet18_blockmoe_e2_k2':
        raise RuntimeError('fails with the model in its frame')
''')
    result.assert_outcomes(passed=len(RUN) - 1, failed=1, errors=1)
    out = result.stdout.str()
    assert 'ERROR at teardown of test_model_forward[resnet18_blockmoe_e2_k1]' in out
    assert 'ERROR at teardown of test_model_forward[resnet18_blockmoe_e2_k2]' not in out
    assert '1 MoE layer(s) built by this test outlived it (layer4.1)' in out


def test_prune_contract_is_marked_slow(pytester):
    result = _run(pytester, '''
@pytest.mark.parametrize('model_name', ALL)
def test_model_forward(model_name):
    pass

@pytest.mark.parametrize('model_name', ['resnet18_dense'])
def test_prune_intermediate_layers_contract(model_name):
    pass
''', '-m', 'not slow', '-p', 'no:warnings')
    result.assert_outcomes(passed=len(RUN))


# ------------------------------------------------------------------------------------------- representative subset

# the names the design space adds (ConvMoE, k=3, placements, a WideResNet): the selection must cover them unseen
FUTURE = OURS + ['resnet18_convmoe_e4_k1', 'resnet18_convmoe_e4_k3', 'resnet50_convmoe_e8_k2',
                 'resnet18_convmoe_all_e4_k1', 'resnet18_blockmoe_layer3_e4_k2', 'resnet18_blockmoe_e4_k3',
                 'wide_resnet50_2_blockmoe_e4_k1', 'wide_resnet50_2_dense']


def _features(names):
    return set().union(*(PLUGIN.name_features(n) for n in names))


def test_name_features_read_family_k_experts_and_placement():
    f = PLUGIN.name_features
    assert f('wide_resnet50_2_blockmoe_e4_k1') == {('family', 'wide_resnet50_2', 'blockmoe'),
                                                   ('experts', 'blockmoe', 'e4'), ('k', 'blockmoe', 'k1'),
                                                   ('placement', 'blockmoe', 'default')}
    assert ('placement', 'convmoe', 'all') in f('resnet18_convmoe_all_e4_k1')
    assert f('resnet50_dense') == {('family', 'resnet50', 'dense')}
    assert f('some_new_thing') == {('name', 'some_new_thing')}  # an unknown shape is always selected


@pytest.mark.parametrize('names', [OURS, FUTURE], ids=['today', 'design-space'])
def test_subset_covers_every_family_k_experts_and_placement(names):
    subsets = [PLUGIN.representative_subset(names, salt=test) for test in PLUGIN.REQUIRED_TESTS]
    for test, subset in zip(PLUGIN.REQUIRED_TESTS, subsets):
        assert set(subset) <= set(names) and _features(subset) == _features(names)
        assert len(subset) <= len(names) // 2, subset
        assert PLUGIN.representative_subset(list(reversed(names)), salt=test) == subset  # deterministic
    # each test draws its own subset: together they run on more names than one of them
    assert len(set().union(*subsets)) > max(len(s) for s in subsets)
    assert {'resnet18_dense', 'resnet50_dense'} <= set(subsets[0])
    assert PLUGIN.representative_subset(names + ['some_new_thing'], 'x').count('some_new_thing') == 1


def test_default_runs_each_test_on_its_subset_and_every_tag(pytester):
    result = _run(pytester, '''
@pytest.mark.parametrize('model_name', ALL)
def test_model_forward(model_name):
    pass

@pytest.mark.parametrize('model_name', ALL)
def test_model_backward(model_name):
    pass

@pytest.mark.parametrize('model_name', list_models(pretrained=True, include_tags=True))
def test_model_load_pretrained(model_name):
    pass
''', '-v', models='')
    # a subset of ours, and every converted model
    expected = {test: PLUGIN.representative_subset(OURS, salt=test) + list(PLUGIN.CONVERTED)
                for test in ('test_model_forward', 'test_model_backward')}
    tags = PLUGIN.our_tagged_names()
    result.assert_outcomes(passed=sum(map(len, expected.values())) + len(tags))
    out = result.stdout.str()
    for test, names in expected.items():
        assert all(f'{test}[{name}] PASSED' in out for name in names)
        assert sum(f'{test}[' in line for line in out.splitlines()) == len(names)
    assert all(f'test_model_load_pretrained[{tag}] PASSED' in out for tag in tags)
    assert 'each test runs a representative subset' in out


def test_env_var_runs_every_name_and_a_bad_mode_is_refused(pytester, monkeypatch):
    body = '''
@pytest.mark.parametrize('model_name', ALL)
def test_model_forward(model_name):
    pass
'''
    monkeypatch.setenv(PLUGIN.ENV_VAR, 'all')
    _run(pytester, body, models='').assert_outcomes(passed=len(RUN))
    monkeypatch.setenv(PLUGIN.ENV_VAR, 'some')
    result = _run(pytester, body, models='')
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "TIMM_MOE_TIMM_SUITE='some': expected one of subset, all" in result.stderr.str()

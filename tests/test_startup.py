"""Start-up: `timm-moe --help`, a verb's --help, argument errors and `leaderboard` must not wait for torch, timm,
matplotlib or the attack libraries; `timm-moe models` counts parameters without building at full size.
benchmarks/bench_startup.py times them as whole processes."""
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import bench_startup

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ('torch', 'timm', 'torchvision', 'matplotlib', 'autoattack', 'fvcore')
# every verb's parser (--help, argument errors) is built without the heavy libraries: the names its options list
# (attacks, presets, data sets, config fields) live in torch-free modules (bench/attacks/names.py,
# bench/dataset_table.py, bench/training/config.py)
LIGHT_VERBS = (None, 'quickstart', 'train', 'eval', 'audit', 'leaderboard', 'grid', 'report', 'models', 'export',
               'compare', 'import-paper', 'ship')
# per verb, an argument error that argparse or the verb's checks of its options find before any model or data
# work: each must answer (exit 2) without importing the heavy libraries
ARGUMENT_ERRORS = {
    'quickstart': ['quickstart', '--procs', 'two'],
    'train': ['train', '--eps', '2'],
    'eval': ['eval', '--model', 'resnet18_dense', '--eps', '2'],
    'eval attacks': ['eval', '--model', 'resnet18_dense', '--attacks', 'pgd7'],
    'eval dataset': ['eval', '--model', 'resnet18_dense', '--dataset', 'mnist'],
    'audit': ['audit', '--all', '--max-flops-ratio', '0'],
    'leaderboard': ['leaderboard', '--no-such-flag'],
    'grid': ['grid', 'grid_tiny', '--shard', '4/4'],
    'report': ['report', '--no-such-flag'],
    'models': ['models', '--no-such-flag'],
    'export': ['export'],
    'compare': ['compare', '--no-such-flag'],
    'import-paper': ['import-paper', '--no-such-flag'],
    'ship': ['ship', 'grid_tiny', '--dtipe', 'float16'],
}


def _imported(code: str) -> list:
    out = subprocess.run([sys.executable, '-c', code + '\nimport sys\nprint(sorted(m for m in sys.modules))'],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    modules = set(eval(out.stdout.strip().splitlines()[-1]))
    return [m for m in HEAVY if m in modules]


def test_importing_the_cli_imports_no_heavy_library():
    assert _imported('import bench.cli') == []


@pytest.mark.parametrize('verb', LIGHT_VERBS)
def test_a_verbs_parser_is_built_without_torch(verb):
    assert _imported(f'from bench.cli import build_parser\nbuild_parser({verb!r})') == []


@pytest.mark.parametrize('verb', [v for v in LIGHT_VERBS if v])
def test_a_verbs_help_imports_no_heavy_library(verb):
    code = (f'from bench.cli import main\ntry:\n    main([{verb!r}, "--help"])\nexcept SystemExit as e:\n'
            '    assert e.code == 0, e.code\nelse:\n    raise AssertionError("--help did not exit")')
    assert _imported(code) == []


@pytest.mark.parametrize('name', ARGUMENT_ERRORS)
def test_an_argument_error_imports_no_heavy_library(name):
    code = (f'from bench.cli import main\ntry:\n    rc = main({ARGUMENT_ERRORS[name]!r})\nexcept SystemExit as e:\n'
            '    rc = e.code\nassert rc == 2, rc')
    assert _imported(code) == []


def test_every_verb_has_an_argument_error_checked():
    from bench.cli import VERBS
    assert {args[0] for args in ARGUMENT_ERRORS.values()} == set(VERBS)


def test_the_argument_error_check_sees_a_verb_that_went_past_its_checks():
    # a valid eval that reaches the model: the same check must see torch (and fail the verb with exit 2 here,
    # on an unknown model, after the import)
    code = ('from bench.cli import main\nrc = main(["eval", "--model", "no_such_model", "--n-examples", "1"])\n'
            'assert rc == 2, rc')
    assert 'torch' in _imported(code)


def test_ship_parser_takes_every_dtype_ship_takes():
    # the parser cannot import DTYPE_CHOICES (torch): it writes them out, and the two must stay equal
    from bench.cli.ship import DTYPE_CHOICES as parsed
    from bench.pipeline.ship import DTYPE_CHOICES
    assert parsed == DTYPE_CHOICES


def test_the_check_sees_a_heavy_import():
    assert _imported('import bench.cli.models\nbench.cli.models.plugin_models()') == ['torch', 'timm', 'torchvision']


def test_leaderboard_runs_without_torch(tmp_path):
    code = 'from bench.cli import main\nassert main(["leaderboard", "--no-write"]) == 0'
    assert _imported(code) == []


def test_models_counts_parameters_on_the_meta_device_and_lists_the_tags():
    import timm
    import timm_moe  # noqa: F401
    from bench.cli import models
    from bench.models import param_counts
    names = models.plugin_models('resnet18_*')
    assert 'resnet18_blockmoe_e4_k2' in names and 'resnet18_dense' in names
    assert all(timm.models.model_entrypoint(n).__module__.startswith('timm_moe') for n in names)
    assert models.plugin_models('resnet18d') == []  # timm's own model, not the plugin's
    # k changes no parameter, so siblings that differ in k share one build: their counts must still be each one's own
    siblings = ['resnet18_blockmoe_e4_k1', 'resnet18_blockmoe_e4_k2', 'resnet18_convmoe_e4_k1',
                'resnet18_convmoe_e4_k3', 'resnet18_dense']
    for s in models.summarize(siblings, width=8):
        built = param_counts(timm.create_model(s['model'], width=8))
        assert (s['params_total'], s['params_active']) == (built['total'], built['active']), s['model']
    s = models.summarize(['resnet18_blockmoe_e4_k2'], width=8)[0]
    assert (s['experts'], s['k']) == (4, 2) and s['params_active'] < s['params_total']
    tags = {r['tag']: r for r in models.pretrained_tags(['resnet18_blockmoe_e4_k2'])}
    assert tags['resnet18_blockmoe_e4_k2.fmnist_pgd']['dataset'] == 'fashion-mnist-bundled'


def test_bench_startup_times_the_commands_against_the_baseline():
    med = bench_startup.run_benchmark(['--help'], repeats=1, warmup=0)
    assert set(med) == {bench_startup.BASELINE, '--help'} and all(t > 0 for t in med.values())

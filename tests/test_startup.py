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
# the verbs whose parser (--help, argument errors) is built without the heavy libraries; eval, train, audit and
# ship still name torch-backed constants (attack presets, data sets, config fields, dtypes) in their options
LIGHT_VERBS = (None, 'leaderboard', 'compare', 'report', 'import-paper', 'models', 'grid', 'quickstart', 'export')


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
    s = models.summarize('resnet18_blockmoe_e4_k2', width=8)
    built = param_counts(timm.create_model('resnet18_blockmoe_e4_k2', width=8))
    assert (s['params_total'], s['params_active']) == (built['total'], built['active'])
    assert (s['experts'], s['k']) == (4, 2) and s['params_active'] < s['params_total']
    tags = {r['tag']: r for r in models.pretrained_tags(['resnet18_blockmoe_e4_k2'])}
    assert tags['resnet18_blockmoe_e4_k2.fmnist_pgd']['dataset'] == 'fashion-mnist-bundled'


def test_bench_startup_times_the_commands_against_the_baseline():
    med = bench_startup.run_benchmark(['--help'], repeats=1, warmup=0)
    assert set(med) == {bench_startup.BASELINE, '--help'} and all(t > 0 for t in med.values())

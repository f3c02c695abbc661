"""`timm-moe report`: PNG plots from a registry of synthetic measured entries (and an empty one)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict

import pytest

from bench.results import report
from bench.cli import main
from bench.results.entries import measured_entry
from bench.results.registry import DEFAULT_REGISTRY, write_entry
from timm_moe import ModelSpec
from registry_fakes import fake_eval_result

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
PLOT_NAMES = ['clean_vs_robust.png', 'expert_load.png', 'per_expert.png', 'flops_vs_robust.png']


def synthetic(entry_id: str, experts: int, clean: float, robust: float, aa: bool = True) -> Dict[str, Any]:
    """A measured entry with routing, per-expert results and FLOPs (dense: none of the MoE parts)."""
    moe = experts > 0
    ra = {'pgd20': robust + 2, 'apgd-ce': robust + 1, 'worst_case': robust}
    if aa:
        ra['autoattack'] = robust - 0.5
    per_expert = [{'expert': i, 'clean_acc': clean - 3 * i, 'robust_acc': {'autoattack': robust - i, 'pgd20': robust}}
                  for i in range(experts)] if moe else None
    name = f'resnet18_blockmoe_e{experts}_k1' if moe else 'resnet18_dense'
    kwargs = {'width': 16, 'gate': 'gap_fc', 'placement': 'last'} if moe else {'width': 16}
    return measured_entry(
        spec=ModelSpec.from_timm_kwargs(name, kwargs)[0], model_kwargs=kwargs,
        dataset='fashion-mnist-bundled', method='pgd',
        eval_result=fake_eval_result(clean, ra, n=200, eps=0.1, per_expert=per_expert),
        provenance={'package_version': '0.1.0', 'git_commit': None, 'torch': '2', 'timm': '1', 'device': 'cpu',
                    'command': 'pytest', 'seed': 0, 'date': '2026-01-01T00:00:00Z', 'checkpoint_sha256': None},
        flops={'active': 5.6e8, 'total': 5.6e8 + experts * 7.5e7, 'dense': 5.57e8,
               'ratio': (5.6e8 if moe else 5.57e8) / 5.57e8},
        routing={'load': [0.5] + [0.5 / (experts - 1)] * (experts - 1), 'collapse': 0.2} if moe else None,
        entry_id=entry_id,
    )


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    root = tmp_path / 'registry'
    for e in (synthetic('moe4', 4, 80.0, 50.0), synthetic('moe8', 8, 78.0, 53.0), synthetic('dense', 0, 82.0, 45.0),
              synthetic('moe2-noaa', 2, 75.0, 40.0, aa=False)):
        write_entry(e, root)
    # reported entries beside the measured ones (another data set: a panel of their own)
    for p in sorted(DEFAULT_REGISTRY.rglob('*.json'))[:6]:
        if p.name != 'schema.json':
            dst = root / p.relative_to(DEFAULT_REGISTRY)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, dst)
    return root


def _assert_pngs(paths, out: Path) -> None:
    assert [p.name for p in paths] == PLOT_NAMES
    for p in paths:
        assert p.parent == out and p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 5000


def test_report_writes_all_plots(registry: Path, tmp_path: Path):
    out = tmp_path / 'out'
    _assert_pngs(report.write_report(registry, out), out)


def test_report_without_data_still_writes_every_plot(tmp_path: Path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    out = tmp_path / 'out'
    _assert_pngs(report.write_report(empty, out), out)


def test_report_cli(registry: Path, tmp_path: Path, capsys):
    out = tmp_path / 'cli-out'
    assert main(['report', '--registry', str(registry), '--out', str(out), '--dataset', 'fashion-mnist-bundled']) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in PLOT_NAMES)
    assert sorted(p.name for p in out.iterdir()) == sorted(PLOT_NAMES)


def test_report_cli_errors(registry: Path, tmp_path: Path, capsys):
    (tmp_path / 'afile').write_text('x')
    assert main(['report', '--registry', str(registry), '--out', str(tmp_path / 'afile')]) == 2
    assert main(['report', '--registry', str(registry), '--out', str(tmp_path / 'o'), '--threat-model', 'L3']) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and 'afile' in err[0] and "'L3'" in err[1]
    with pytest.raises(SystemExit) as info:  # --out is required: argparse's one-line error, exit 2
        main(['report', '--registry', str(registry)])
    assert info.value.code == 2


def test_pareto_front():
    pts = [(50, 10), (60, 5), (55, 12), (40, 11), (60, 4), (30, 20)]
    assert report.pareto_front(pts) == [(30, 20), (55, 12), (60, 5)]
    assert report.pareto_front([]) == []


def test_per_expert_bars_compare_the_same_attack():
    e = synthetic('moe2-noaa', 2, 75.0, 40.0, aa=False)  # gated: no AutoAttack; experts: AutoAttack and PGD-20
    assert report.common_attack(e) == 'pgd20'
    assert report.common_attack(synthetic('moe4', 4, 80.0, 50.0)) == 'autoattack'
    e['per_expert'][0]['robust_acc'] = {'fgsm': 1.0}
    assert report.common_attack(e) is None

"""The installed package works without the repository: build the wheel, install it into a fresh venv, run the
registry verbs from an empty folder (docs/REGISTRY.md, "Where entries live").

The fresh venv gets timm-moe from the wheel only; its dependencies (torch, timm, ...: gigabytes) come from the
environment running the tests through a plain path list in a .pth file. Such a list puts those folders on
sys.path without running their own .pth files, so the repository's editable install (an import hook installed
by a .pth) is not visible there: `bench` and `timm_moe` can only come from the wheel, and the test checks that
they do. Everything is offline (no index, no build isolation).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what the build reads: the package sources, the registry (bench/registry_data links to it), the metadata
BUILD_INPUTS = ('pyproject.toml', 'README.md', 'bench', 'timm_moe', 'registry')
STUDY = 'study_fashion_mnist'


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f'{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}'
    return proc


def _clean_env() -> dict:
    """The user's environment: no PYTHONPATH (the repo), no registry override."""
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'TIMM_MOE_REGISTRY', 'PYTHONHOME')}
    return dict(env, OMP_NUM_THREADS='1', MPLBACKEND='Agg', PYTHONDONTWRITEBYTECODE='1')


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    """(venv python, venv bin, its site-packages, an empty working folder) with the wheel installed."""
    pytest.importorskip('setuptools', reason='building the wheel offline (--no-build-isolation) needs setuptools')
    base = tmp_path_factory.mktemp('wheel')
    src = base / 'src'  # a copy, so that the build's build/ and *.egg-info never land in the checkout
    src.mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, symlinks=True,
                            ignore=shutil.ignore_patterns('__pycache__', '*.pyc', '*.egg-info'))
        else:
            shutil.copy2(ROOT / name, src / name)
    _run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-index', '--no-build-isolation',
          '-w', base / 'dist', src], env=_clean_env())
    wheel, = (base / 'dist').glob('timm_moe-*.whl')

    venv = base / 'venv'
    _run([sys.executable, '-m', 'venv', '--without-pip', venv])
    bindir = venv / ('Scripts' if os.name == 'nt' else 'bin')
    python = bindir / ('python.exe' if os.name == 'nt' else 'python')
    site = Path(_run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])']).stdout.strip())
    ours = {sysconfig.get_paths()[k] for k in ('purelib', 'platlib')}
    (site / '_timm_moe_test_deps.pth').write_text(''.join(f'{p}\n' for p in sorted(ours)), encoding='utf-8')
    # --ignore-installed: the .pth above also shows pip the test environment's own timm-moe (tox installs it
    # editable); without it pip calls the wheel "already satisfied" and installs nothing into the venv
    _run([sys.executable, '-m', 'pip', '--python', python, 'install', '-q', '--no-deps', '--no-index',
          '--ignore-installed', wheel], env=_clean_env())
    work = base / 'work'  # the user's folder: no registry, no repository
    work.mkdir()
    return python, bindir, site, work


# Runs inside the venv: every verb through bench.cli.main in one process (torch imports once), recording
# where the code and data came from, each verb's exit status and its output.
DRIVER = textwrap.dedent('''
    import contextlib, io, json, sys, time
    t0 = time.perf_counter()
    from pathlib import Path
    import bench, timm_moe
    from bench.cli import main
    from bench.results import registry

    def verb(*argv):
        out, err = io.StringIO(), io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(list(argv))
            except SystemExit as e:  # --help
                rc = e.code
        return {'rc': rc, 'out': out.getvalue(), 'err': err.getvalue(), 's': time.perf_counter() - start}

    shipped = registry.SHIPPED_REGISTRY
    manifest = json.loads((Path(timm_moe.__file__).parent / 'pretrained' / 'manifest.json').read_text())
    a, b = sorted(v['entry_id'] for v in manifest.values())[:2]
    res = {
        'import_s': time.perf_counter() - t0,
        'bench': bench.__file__, 'timm_moe': timm_moe.__file__, 'shipped': str(shipped),
        'csv': str(__import__('bench.results.import_paper', fromlist=['x']).DEFAULT_CSV),
        'help': {v: verb(v, '--help') for v in ('leaderboard', 'compare', 'report', 'import-paper', 'export')},
        'compare': verb('compare', a, b, '--boot', '200', '--allow-different-settings'),
        'report': verb('report', '--out', 'plots', '--dataset', 'fashion-mnist-bundled'),
        'study': verb('report', '--study', '%(study)s', '--out', 'study-report'),
        'import': verb('import-paper'),
        'page': verb('leaderboard', '--no-write', '--html', 'site/index.html'),
        'own_leaderboard': verb('leaderboard', '--registry', 'registry', '--limit', '2'),
        'into_package': verb('import-paper', '--registry', str(shipped), '--overwrite'),
    }
    print(json.dumps(res))
''') % {'study': STUDY}


def test_installed_wheel_runs_the_registry_verbs_outside_the_repo(installed):
    python, bindir, site, work = installed
    shipped = site / 'bench' / 'registry_data'
    before = {p: p.read_bytes() for p in shipped.rglob('*') if p.is_file()}
    assert shipped / 'schema.json' in before and shipped / 'LEADERBOARD.md' in before
    assert any(p.suffix == '.csv' for p in before), 'the paper CSV is not in the wheel'

    # the console script, as a user types it: the shipped leaderboard, read-only
    script = bindir / ('timm-moe.exe' if os.name == 'nt' else 'timm-moe')
    board = _run([script, 'leaderboard', '--dataset', 'fashion-mnist-bundled', '--limit', '3'],
                 cwd=work, env=_clean_env()).stdout
    assert 'fashion-mnist-bundled' in board and 'read-only registry shipped in the package' in board

    res = json.loads(_run([python, '-c', DRIVER], cwd=work, env=_clean_env()).stdout.splitlines()[-1])
    for key in ('bench', 'timm_moe', 'shipped', 'csv'):  # code and data from the wheel, not the repository
        assert Path(res[key]).resolve().is_relative_to(site.resolve()), (key, res[key])
    for verb, got in res['help'].items():  # every --help names the default registry exactly
        text = ' '.join(got['out'].split())
        assert got['rc'] == 0 and "repo's" not in text and 'repository' not in text, (verb, text)
        if verb == 'import-paper':
            assert 'write to (default: ./registry (the registry shipped in the package is read-only)' in text
        elif verb == 'export':  # the registry beside the run first, then the default
            assert 'then the registry shipped with timm-moe, read-only' in text, (verb, text)
        else:
            assert 'default: the registry shipped with timm-moe, read-only' in text, (verb, text)
            assert str(shipped) in text.replace(' ', ''), (verb, text)
    for verb in ('compare', 'report', 'study', 'import', 'page', 'own_leaderboard'):
        assert res[verb]['rc'] == 0, (verb, res[verb])
    assert 'A - B' in res['compare']['out'] and 'verdict' in res['compare']['out']
    assert (work / 'plots').is_dir() and any((work / 'plots').glob('*.png'))
    # the leaderboard page, with its inlined assets and copies of the entries it links
    page = (work / 'site' / 'index.html').read_text(encoding='utf-8')
    assert '<script>' in page and 'sortBy' in page and (work / 'site' / 'entries').is_dir()
    # the study report from the shipped entries (the study's own registry does not exist here)
    study_md = (work / 'study-report' / 'STUDY.md').read_text(encoding='utf-8')
    assert 'does not exist: reading' in res['study']['out'] and '|' in study_md
    # ... the same bytes as in the repository: the claims file and the report's templates came with the wheel
    assert study_md == (ROOT / 'docs' / 'STUDY.md').read_text(encoding='utf-8')
    assert any(site.joinpath('bench', 'results', 'study', 'templates').glob('*.md.j2'))
    assert len(list((work / 'study-report' / 'study').glob('*.png'))) >= 1
    # import-paper writes the user's ./registry, byte-identical to the shipped reported entries
    imported = sorted((work / 'registry').rglob('*.json'))
    assert imported and all((shipped / p.relative_to(work / 'registry')).read_bytes() == p.read_bytes()
                            for p in imported)
    assert (work / 'registry' / 'LEADERBOARD.md').is_file()  # the user's registry is theirs to regenerate
    # writing into the package is refused with one line, and nothing in it changed
    refused = res['into_package']
    assert refused['rc'] == 2 and 'read-only' in refused['err'] and refused['err'].count('\n') == 1
    assert {p: p.read_bytes() for p in shipped.rglob('*') if p.is_file()} == before

"""Which registry a verb reads and writes: the shipped one, $TIMM_MOE_REGISTRY, ./registry; the installed
package's copy is read-only (docs/REGISTRY.md, "Where entries live"). tests/test_wheel.py runs the same in a
real installed wheel; here the package case is simulated, so that each rule fires in every test run."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.cli import main
from bench.core.errors import UserError
from bench.results import registry
from bench.results.leaderboard.html import write_html
from bench.results.registry import REGISTRY_ENV, SHIPPED_REGISTRY, write_entry
from registry_fakes import make_entry


@pytest.fixture
def as_installed(monkeypatch):
    """Behave as an installed package: the shipped registry is package data."""
    monkeypatch.delenv(REGISTRY_ENV, raising=False)
    monkeypatch.setattr(registry, 'shipped_is_package_data', lambda: True)


def test_clone_defaults_to_the_repository_registry(monkeypatch):
    monkeypatch.delenv(REGISTRY_ENV, raising=False)
    assert not registry.shipped_is_package_data()  # the tests run from a clone
    assert SHIPPED_REGISTRY == Path(__file__).resolve().parents[1] / 'registry'
    assert registry.default_registry() == registry.default_write_registry() == SHIPPED_REGISTRY
    assert str(SHIPPED_REGISTRY) in registry.default_text() and "repository's" in registry.default_text()


def test_env_variable_is_every_verbs_default(tmp_path, monkeypatch, capsys):
    own = tmp_path / 'mine'
    write_entry(make_entry('resnet18_dense-pgd-envtest-000001', experts=0), own)
    monkeypatch.setenv(REGISTRY_ENV, str(own))
    assert registry.default_registry() == registry.default_write_registry() == own
    with pytest.raises(SystemExit):
        main(['compare', '--help'])
    assert f'(default:{own},from${REGISTRY_ENV})' in ''.join(capsys.readouterr().out.split())
    assert main(['leaderboard', '--wide']) == 0  # the wide view shows entry ids
    out = capsys.readouterr().out
    assert 'envtest' in out and (own / 'LEADERBOARD.md').is_file()


def test_installed_package_never_writes_its_registry(as_installed, tmp_path, capsys):
    assert registry.default_registry() == SHIPPED_REGISTRY
    assert registry.default_write_registry() == Path('registry')  # ./registry, the user's
    assert 'read-only' in registry.default_text() and './registry' in registry.default_text(write=True)
    entry = make_entry('resnet18_dense-pgd-readonly-000001', experts=0)
    for target in (SHIPPED_REGISTRY, SHIPPED_REGISTRY / 'fashion-mnist-bundled'):
        with pytest.raises(UserError, match='read-only'):
            write_entry(entry, target)
    assert not any(SHIPPED_REGISTRY.rglob('*readonly*'))
    with pytest.raises(UserError, match='read-only'):
        write_html(SHIPPED_REGISTRY / 'LEADERBOARD.html', SHIPPED_REGISTRY, [])
    # import-paper refuses even when every entry would be unchanged; leaderboard leaves LEADERBOARD.md alone
    assert main(['import-paper', '--registry', str(SHIPPED_REGISTRY)]) == 2
    assert 'read-only' in capsys.readouterr().err
    board = SHIPPED_REGISTRY / 'LEADERBOARD.md'
    stamp = board.stat().st_mtime_ns
    assert main(['leaderboard', '--dataset', 'fashion-mnist-bundled', '--limit', '1']) == 0
    assert 'LEADERBOARD.md is left as it is' in capsys.readouterr().out and board.stat().st_mtime_ns == stamp
    # a user's own registry is theirs to write
    write_entry(entry, tmp_path / 'registry')
    assert main(['leaderboard', '--registry', str(tmp_path / 'registry')]) == 0
    assert (tmp_path / 'registry' / 'LEADERBOARD.md').is_file()


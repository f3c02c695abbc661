"""Fetch timm's own `tests/test_models.py`, unmodified, for the installed timm version.

timm's wheel ships no tests, but its sdist on PyPI does. `pip download` goes through the user's
pip configuration (index, mirror, proxy), so this works wherever `pip install timm` works.

    python tests/timm_suite/fetch_timm_tests.py DEST     # prints DEST/timm-<version>/test_models.py
    python tests/timm_suite/fetch_timm_tests.py DEST --out FILE    # and copies it to FILE (tox's fixed path)

The file is extracted on its own (no `tests/__init__.py`), so that it imports as `test_models`
and cannot collide with any other `tests` package on the path.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Optional

TEST_FILE = 'test_models.py'


def sdist_member(version: str) -> str:
    """Path of timm's model tests inside the sdist of `version`."""
    return f'timm-{version}/tests/{TEST_FILE}'


def download_sdist(version: str, dest: Path) -> Path:
    """`pip download` timm's sdist (never a wheel: wheels hold no tests) into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps', '--no-binary', ':all:',
           f'timm=={version}', '-d', str(dest)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ['(no output)']
        raise SystemExit(f'fetch_timm_tests: `{" ".join(cmd)}` failed: {tail[0]}')
    found = sorted(dest.glob(f'timm-{version}.tar.gz'))
    if not found:
        raise SystemExit(f'fetch_timm_tests: pip left no timm-{version}.tar.gz in {dest}')
    return found[0]


def extract_test_file(sdist: Path, version: str, out: Path) -> Path:
    """Copy the sdist's test_models.py, byte for byte, to `out`."""
    member = sdist_member(version)
    with tarfile.open(sdist) as tar:
        try:
            data = tar.extractfile(member)
        except KeyError:
            data = None
        if data is None:
            raise SystemExit(f'fetch_timm_tests: {sdist} holds no {member}')
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix('.part')
        tmp.write_bytes(data.read())
        tmp.replace(out)  # a killed run leaves no half file that a later run would trust
    return out


def fetch(dest: Path, version: Optional[str] = None) -> Path:
    """timm's test_models.py for `version` (default: the installed timm), cached under `dest`."""
    if version is None:
        import timm
        version = timm.__version__
    out = Path(dest) / f'timm-{version}' / TEST_FILE
    if out.is_file():
        return out
    sdist = download_sdist(version, Path(dest) / 'sdist')
    return extract_test_file(sdist, version, out)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('dest', type=Path, help='cache directory, e.g. tox\'s {envtmpdir}')
    parser.add_argument('--version', default=None, help='timm version (default: the installed one)')
    parser.add_argument('--out', type=Path, default=None,
                        help='also copy the file here, e.g. a fixed path that a later tox command runs')
    args = parser.parse_args(argv)
    path = fetch(args.dest, args.version)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, args.out)
        path = args.out
    print(path)
    return 0


if __name__ == '__main__':
    sys.exit(main())

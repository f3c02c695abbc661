"""Pinned numbers of a slow run (tests/fixtures/*.json), and how they are re-pinned (TIMM_MOE_REPIN=1)."""
import json
import os
from pathlib import Path

import pytest

REPIN = 'TIMM_MOE_REPIN'


def pinned_numbers(path: Path, got: dict) -> dict:
    """The pins to compare `got` with.

    With $TIMM_MOE_REPIN set, `got` becomes the pins: written, read back whole, and the comparison skipped with a
    reason. A run compared with the pins it has just written would pass whatever it measured; the comparison is the
    next run's, without the variable.
    """
    if os.environ.get(REPIN):
        path.write_text(json.dumps(got, indent=1) + '\n')
        assert json.loads(path.read_text()) == got, f'{path} does not read back as the numbers written'
        pytest.skip(f'{REPIN} is set: wrote {path.name}; run again without it to compare a fresh run with the pins')
    return json.loads(path.read_text())

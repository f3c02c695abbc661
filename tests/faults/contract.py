"""The contract every fault test checks, in one place: bad input is one line on stderr, with no traceback."""
from __future__ import annotations


def one_line(capsys, *needles: str) -> str:
    """The CLI's stderr, which must be one line holding every needle and no traceback."""
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'Traceback' not in err, err
    for needle in needles:
        assert needle in err, err
    return err

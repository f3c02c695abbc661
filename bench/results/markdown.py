"""Markdown tables, shared by the leaderboard and the study report."""
from __future__ import annotations

from typing import Any, Iterable, List, Sequence


def md_cell(value: Any) -> str:
    """A table cell's text, with any `|` escaped so that it cannot split the cell."""
    return str(value).replace('|', '\\|')


def md_table(header: Sequence[Any], rows: Iterable[Sequence[Any]], right: Iterable[str] = ()) -> List[str]:
    """A markdown table as lines, ending with a blank line; `right`: headers of right-aligned columns."""
    right = set(right)
    out = ['| ' + ' | '.join(md_cell(h) for h in header) + ' |',
           '|' + '|'.join('---:' if h in right else '---' for h in header) + '|']
    return out + ['| ' + ' | '.join(md_cell(c) for c in row) + ' |' for row in rows] + ['']

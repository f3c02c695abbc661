"""Markdown tables, shared by the leaderboard and the study report."""
from __future__ import annotations

import re
from typing import Any, Iterable, List, Sequence

from bench.core.values import printable

# a backslash before ASCII punctuation escapes it in Markdown: doubled, it shows as itself (and `\|` cannot
# turn our escaped `\|` into `\\|`, a backslash and a live column separator)
_ESCAPING_BACKSLASH = re.compile(r'\\(?=[!-/:-@\[-`{-~])')


def md_text(value: Any) -> str:
    """Text from an entry or a spec as Markdown shows it literally: control characters written out (a newline would
    end the line, and with it the table), `<` and `>` as entities (raw HTML such as `<script>` or `<img onerror>` is
    rendered by GitHub and editors), and a backslash that would escape what follows doubled."""
    text = _ESCAPING_BACKSLASH.sub(r'\\\\', printable(value))
    return text.replace('<', '&lt;').replace('>', '&gt;')


def md_code(value: Any) -> str:
    """`value` as an inline code span, whose fence is longer than any run of backticks inside (CommonMark), so that
    the text cannot close it early."""
    text = printable(value)
    fence = '`' * (max((len(r) for r in re.findall('`+', text)), default=0) + 1)
    pad = ' ' if text.startswith('`') or text.endswith('`') else ''
    return f'{fence}{pad}{text}{pad}{fence}'


def md_cell(value: Any) -> str:
    """A table cell's text (`md_text`), with any `|` escaped so that it cannot split the cell."""
    return md_text(value).replace('|', '\\|')


def md_table(header: Sequence[Any], rows: Iterable[Sequence[Any]], right: Iterable[str] = ()) -> List[str]:
    """A markdown table as lines, ending with a blank line; `right`: headers of right-aligned columns."""
    right = set(right)
    out = ['| ' + ' | '.join(md_cell(h) for h in header) + ' |',
           '|' + '|'.join('---:' if h in right else '---' for h in header) + '|']
    return out + ['| ' + ' | '.join(md_cell(c) for c in row) + ' |' for row in rows] + ['']

"""The study report's text: Jinja2 templates (`templates/*.md.j2`) filled with the data `render` computes.

Markdown, not HTML: nothing is HTML-escaped; table cells get the markdown escaping of `markdown.md_table` (the
`table` function of the templates). Each template is lines, each ended by a newline, so that a section renders
to a list of lines (`render`), and a section that has nothing to say renders to none.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, List, Sequence

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from bench.results.markdown import md_table

TEMPLATES = Path(__file__).resolve().parent / 'templates'


def table(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table (`md_table`) as text without its closing blank line, which the template writes."""
    return '\n'.join(md_table(header, rows)[:-1])


# block tags on lines of their own leave no trace (trim_blocks, lstrip_blocks); the final newline is a line's end
ENV = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=False, undefined=StrictUndefined,
                  trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
ENV.globals['table'] = table
ENV.filters['fmt'] = format  # {{ x | fmt('+.2f') }}: Python's format spec, as the f-strings had it


def render(template: str, /, **data: Any) -> List[str]:
    """The lines of `template` filled with `data` (a template's text ends every line with a newline)."""
    return ENV.get_template(template).render(**data).split('\n')[:-1]

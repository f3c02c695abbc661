"""The study report's text lives in Jinja2 templates (`bench/results/study/templates`): markdown, so nothing is
HTML-escaped, but table cells keep their markdown escaping; missing data is a bug that fails loudly."""
from __future__ import annotations

import re
from pathlib import Path

import jinja2
import pytest

from bench.results.study import document

STUDY_CODE = Path(document.__file__).parent


def test_table_cells_keep_their_markdown_escaping_and_nothing_else_is_escaped():
    lines = document.render('pieces.md.j2', rows=[['a|b', '<script>', 1, '2026-01-01 00:00', 'x', '0.50']])
    assert '| a\\|b | &lt;script&gt; | 1 | 2026-01-01 00:00 | x | 0.50 |' in lines
    # prose is written as it is: the report's own markers are HTML comments, which an HTML autoescape would break
    assert document.render('sanity.md.j2', flags=['cell-seed0 (main): <b>']) == [
        '## Sanity flags', '', '- cell-seed0 (main): <b>', '']


def test_a_section_with_nothing_to_say_renders_no_lines_and_missing_data_fails():
    assert document.render('_superseded.md.j2', later=None, closed=[]) == []
    with pytest.raises(jinja2.UndefinedError, match="'rows' is undefined"):
        document.render('pieces.md.j2')


def test_every_template_is_used():
    names = {p.name for p in document.TEMPLATES.glob('*.j2')}
    code = ''.join(p.read_text(encoding='utf-8') for p in STUDY_CODE.rglob('*') if p.suffix in ('.py', '.j2'))
    used = set(re.findall(r"'([\w.]+\.md\.j2)'", code))
    assert names and names == used

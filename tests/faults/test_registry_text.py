"""Registry text reaches terminals, LEADERBOARD.md and the page as text (issue 25, section 1): a control character
in an entry is refused where every entry is read and written (`validate_entry`), and each renderer escapes what its
format would act on (the terminal: control characters and rich markup; Markdown: control characters, `|`, `<`, `>`
and an escaping backslash; HTML: everything, the model card's `create_model(...)` line included). Every test here
failed before its fix."""
from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from bench.cli import main
from bench.core.errors import UserError
from bench.results import leaderboard as lb
from bench.results.leaderboard.html import render_html
from bench.results.registry import dumps_entry, entry_path, write_entry
from registry_fakes import make_entry
from contract import one_line as _one_line

ESC_TITLE_CLEAR = '\x1b]0;pwned\x07\x1b[2J'
HOSTILE_HTML = '<script>alert(1)</script><img src=x onerror=alert(2)>'


def _plant(registry: Path, entry) -> Path:
    """An entry file as someone else's registry may hold it: written as text, past our writer's checks."""
    path = entry_path(entry, registry)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps_entry(entry), encoding='utf-8')
    return path


@pytest.mark.parametrize('field, value', [
    ('name', f'resnet18_dense{ESC_TITLE_CLEAR}'),  # retitles and clears the terminal
    ('name', 'resnet18_dense\n## injected heading'),  # splits the markdown table
    ('arch', 'resnet18\x00'),  # NUL
    ('gate', 'gap_fc\u202e'),  # a bidirectional override turns the text that follows around
])
def test_a_control_character_in_an_entry_is_refused_in_one_line(tmp_path, capsys, field, value):
    entry = make_entry()
    entry['model'][field] = value
    registry = tmp_path / 'registry'
    _plant(registry, entry)
    assert main(['leaderboard', '--registry', str(registry)]) == 2
    _one_line(capsys, f'model.{field}', 'control character')
    assert not (registry / 'LEADERBOARD.md').exists()
    with pytest.raises(UserError, match='control character'):  # and never written by us either
        write_entry(entry, tmp_path / 'other')


def test_a_control_character_in_a_nested_key_or_list_is_refused(tmp_path):
    for change in (lambda e: e['training']['config'].update({'lr\x1b[2J': 1}),
                   lambda e: e.update(notes=['fine', 'bad\x00'])):
        entry = make_entry()
        change(entry)
        with pytest.raises(UserError, match='control character') as err:
            write_entry(entry, tmp_path / 'registry')
        assert '\n' not in str(err.value) and '\x1b' not in str(err.value) and '\x00' not in str(err.value)


def _table_lines(text: str):
    return [line for line in text.splitlines() if line.startswith('|')]


def test_markdown_escapes_table_metacharacters_and_raw_html():
    """Renderer level, past the schema: the text that is not a control character is legal in an entry."""
    a = make_entry('a-1', model=dict(make_entry()['model'], name=f'net|x\\|y {HOSTILE_HTML}'),
                   sanity_flags=[f'flag`{HOSTILE_HTML}'])
    b = make_entry('b-1', lr=0.2)
    b['grid'] = {'spec': 'study', 'config': '<img src=x onerror=alert(3)>', 'seed': 0, 'cell': 'c', 'stage': 'main'}
    text = lb.render_markdown([a, b])
    body = text.split('\nFlags:')[0]  # the flags are listed as code spans, where markup is text
    assert '<script>' not in body and '<img' not in body
    assert '&lt;script&gt;' in body and '&lt;img src=x onerror=alert(3)&gt;' in body
    # every row of a table has as many cells as its header: no `|` (escaped or not) split one
    unescaped = re.compile(r'(?<!\\)(?:\\\\)*\|')
    lines = _table_lines(text)
    assert lines and len({len(unescaped.findall(line)) for line in lines}) == 1, lines
    # the flag's code span is not closed by its own backtick (a longer fence)
    assert f'- ``flag`{HOSTILE_HTML}``' in text


def test_markdown_and_console_write_out_control_characters():
    """Renderer level, past the schema (an entry built in memory by a library user): the renderers do not act on
    a control character either."""
    entry = make_entry()
    entry['model']['name'] = f'net{ESC_TITLE_CLEAR}\n## injected'
    text = lb.render_markdown([entry])
    assert '\x1b' not in text and '\n## injected' not in text and '\\x1b]0;pwned' in text
    from rich.console import Console
    for wide in (False, True):
        out = io.StringIO()
        lb.print_table([entry], console=Console(file=out, width=300, force_terminal=True), wide=wide)
        printed = out.getvalue()
        assert '\x1b]0;' not in printed and '\x1b[2J' not in printed and '\x07' not in printed
        assert 'x1b]0;pwned' in printed


def test_the_model_card_escapes_its_tag():
    entry = make_entry()
    card = {'tag': f"x'</code>{HOSTILE_HTML}", 'entry_id': entry['entry_id'], 'training': {}}
    page = render_html([entry], lambda e: 'e.json', {entry['entry_id']: card})
    assert '<script>alert(1)' not in page and '<img src=x' not in page
    assert 'timm.create_model(&#34;x&#39;&lt;/code&gt;&lt;script&gt;' in page


def test_an_entry_id_is_a_name_by_the_one_pattern():
    """The schema's entry_id pattern is the one pattern of names (`bench.core.values.NAME_PATTERN`)."""
    from bench.core.values import NAME_PATTERN
    from bench.results.registry import load_schema
    schema_id = load_schema()['properties']['entry_id']
    assert schema_id['pattern'] == f'^{NAME_PATTERN.pattern}$'

"""The README and docs say what runs: every ```python block runs, every `timm-moe VERB --flag` parses, and every
repository path they name exists, so that no snippet or pointer can drift from the code again.

A python block runs in a fresh namespace, in a temporary working directory. An HTML comment right before a
block (blank lines allowed) changes that: `<!-- snippet: OPTION, OPTION -->` with the options

- `skip REASON`: not run (a shape description, a fragment); the reason is required;
- `slow`: marked slow (`-m "not slow"` leaves it out; the default run and CI run it);
- `setup=NAME`: the working directory first gets what `SETUPS[NAME]` makes (an exported folder, ...), and
  `SETUPS[NAME]`'s check runs on the namespace afterwards.

Fresh namespaces, not one per file: a reader copies one block, so each block says its own imports.

Bash blocks are not run (they train and download); each `timm-moe VERB ...` in them (also behind `&&`, in
`--wrap '...'`, or as `python -m bench.cli VERB`) must name a verb that exists and parse with that verb's
real parser, required arguments and choices included.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / 'README.md', *sorted((REPO / 'docs').glob('*.md'))]

_FENCE = re.compile(r'^```(\w*)[^\n]*\n(.*?)^```[ \t]*$', re.S | re.M)
_MARKER = re.compile(r'<!--\s*snippet:\s*(.*?)\s*-->', re.S)


@dataclasses.dataclass
class Block:
    path: Path
    line: int
    lang: str
    code: str
    options: Dict[str, str]

    @property
    def id(self) -> str:
        return f'{self.path.relative_to(REPO)}:{self.line}'


def parse_options(text: str) -> Dict[str, str]:
    """`slow, setup=exported, skip the reason` -> {'slow': '', 'setup': 'exported', 'skip': 'the reason'};
    `skip` comes last and takes the rest, commas included."""
    options = {}
    skip = re.search(r'(?:^|,)\s*skip\b(.*)\Z', text, re.S)
    if skip:
        if not skip.group(1).strip():
            raise ValueError('<!-- snippet: skip --> needs a reason')
        options['skip'] = skip.group(1).strip()
        text = text[:skip.start()]
    for item in filter(None, (s.strip() for s in text.split(','))):
        key, _, value = item.partition('=')
        if key not in ('slow', 'setup') or (key == 'setup') != bool(value):
            raise ValueError(f'unknown snippet option {item!r} (slow, setup=NAME, skip REASON)')
        options[key] = value
    return options


def blocks(path: Path) -> List[Block]:
    text = path.read_text(encoding='utf-8')
    out = []
    for m in _FENCE.finditer(text):
        before = text[:m.start()].rstrip()
        marker = _MARKER.fullmatch(before[before.rfind('<!--'):]) if before.endswith('-->') else None
        options = parse_options(marker.group(1)) if marker else {}
        out.append(Block(path, text.count('\n', 0, m.start()) + 1, m.group(1), m.group(2), options))
    return out


def python_blocks() -> List[Block]:
    return [b for path in DOCS for b in blocks(path) if b.lang == 'python']


# ---------------------------------------------------------------------------------------------- setups

def _exported_folder(cwd: Path) -> Dict[str, torch.Tensor]:
    """`exported/`, as `timm-moe export` writes it, of the README's CIFAR-100 resnet18_blockmoe_e8_k1 (random
    weights: what is checked is that they arrive), and its weights also as a bare `model.safetensors` (the
    overlay example). Returns the weights."""
    import timm
    import timm_moe  # noqa: F401
    from bench.data import dataset_info
    from bench.results.export import WEIGHTS_FILE, write_hub_folder
    name = 'resnet18_blockmoe_e8_k1'
    model = timm.create_model(name, num_classes=100)
    write_hub_folder(cwd / 'exported', model, name, {'num_classes': 100}, 'cifar100', dataset_info('cifar100'),
                     run_cfg={'training': 'pgd'}, entry=None, entry_note='a docs test')
    shutil.copy(cwd / 'exported' / WEIGHTS_FILE, cwd / 'model.safetensors')
    return model.state_dict()


def _has_local_dir() -> bool:
    from timm.models import _hub
    return hasattr(_hub, 'load_model_config_from_path')


def _loaded_the_export(namespace: dict, weights: Dict[str, torch.Tensor]) -> None:
    """Every model the snippet built holds the exported weights (a missing pretrained=True builds random ones)."""
    models = {k: v for k, v in namespace.items() if isinstance(v, torch.nn.Module)}
    assert models, 'the snippet assigned no model to check'
    for key, model in models.items():
        got = model.state_dict()
        assert got.keys() == weights.keys(), key
        assert all(torch.equal(got[k], w) for k, w in weights.items()), \
            f'{key} does not hold the exported weights (random init? pretrained=True missing?)'


@dataclasses.dataclass
class Setup:
    make: Callable[[Path], object]
    check: Callable[[dict, object], None]
    skip_reason: Callable[[], Optional[str]] = lambda: None


SETUPS: Dict[str, Setup] = {
    'exported': Setup(_exported_folder, _loaded_the_export,
                      lambda: None if _has_local_dir() else "this timm has no 'local-dir:' model source"),
}


def _block_param(b: Block):
    marks = [pytest.mark.slow] if 'slow' in b.options else []
    if 'skip' in b.options:
        marks.append(pytest.mark.skip(reason=f'marked in the doc: {b.options["skip"]}'))
    return pytest.param(b, id=b.id, marks=marks)


@pytest.fixture(scope='module')
def made_setups(tmp_path_factory):
    """Each setup is made once per module, into its own folder; a block's working directory links to it."""
    cache: Dict[str, Tuple[Path, object]] = {}

    def get(name: str) -> Tuple[Path, object]:
        if name not in cache:
            folder = tmp_path_factory.mktemp(f'setup-{name}')
            cache[name] = folder, SETUPS[name].make(folder)
        return cache[name]
    return get


@pytest.mark.parametrize('block', [_block_param(b) for b in python_blocks()])
def test_python_snippet_runs(block, made_setups, tmp_path, monkeypatch):
    setup = None
    if 'setup' in block.options:
        name = block.options['setup']
        assert name in SETUPS, f'{block.id}: unknown snippet setup {name!r}; known: {", ".join(SETUPS)}'
        setup = SETUPS[name]
        reason = setup.skip_reason()
        if reason:
            pytest.skip(reason)
        folder, made = made_setups(name)
        for item in folder.iterdir():
            (tmp_path / item.name).symlink_to(item, target_is_directory=item.is_dir())
    monkeypatch.chdir(tmp_path)
    namespace: dict = {'__name__': '__doc_snippet__'}
    exec(compile(block.code, block.id, 'exec'), namespace)  # noqa: S102 - the docs' own code: what is tested
    if setup is not None:
        setup.check(namespace, made)


# ---------------------------------------------------------------------------------------------- bash blocks

_CLI_ENTRY = re.compile(r'(^|/)timm-moe$')


def cli_commands(script: str) -> List[List[str]]:
    """Every `timm-moe ...` (or `-m bench.cli ...`) argument list in a shell snippet, up to its end."""
    script = re.sub(r'\\\n', ' ', script)
    script = re.sub(r'<([^<>\n]+)>', lambda m: m.group(1).replace(' ', '-'), script)  # <entry-id-A> placeholders
    found = []
    for line in script.splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        lex.commenters = '#'
        tokens = list(lex)
        for i, tok in enumerate(tokens):
            if ' ' in tok and 'timm-moe' in tok:  # sbatch --wrap '... timm-moe grid ...'
                found += cli_commands(tok)
                continue
            if _CLI_ENTRY.search(tok):
                start = i + 1
            elif tok == 'bench.cli' and i and tokens[i - 1] == '-m':
                start = i + 1
            else:
                continue
            end = next((j for j in range(start, len(tokens)) if re.fullmatch(r'[;&|<>()]+', tokens[j])), len(tokens))
            found.append(tokens[start:end])
    return found


def _bash_params():
    params = []
    for path in DOCS:
        for b in blocks(path):
            if b.lang in ('bash', 'sh', 'shell') and 'skip' not in b.options:
                for n, argv in enumerate(cli_commands(b.code)):
                    params.append(pytest.param(argv, id=f'{b.id}#{n}:{" ".join(argv[:1])}'))
    return params


@pytest.fixture(scope='module')
def cli_parser():
    from bench.cli import build_parser
    return build_parser(full=True)


@pytest.mark.parametrize('argv', _bash_params())
def test_bash_snippet_parses(argv, cli_parser, capsys):
    verbs = cli_parser.verbs
    assert argv and argv[0] in verbs, f'`timm-moe {" ".join(argv)}`: no verb {argv[:1]}; verbs: {", ".join(verbs)}'
    try:
        cli_parser.parse_args(argv)
    except SystemExit as e:
        pytest.fail(f'`timm-moe {" ".join(argv)}` does not parse: {capsys.readouterr().err.strip()} (exit {e.code})')


def inline_commands(text: str) -> List[Tuple[str, List[str]]]:
    """(verb, --flags) of each `timm-moe verb ...` in inline code (prose: a synopsis, so only the verb and the
    flags are checked, not required arguments). `train/eval` names two verbs; VERB is a placeholder."""
    found = []
    for m in re.finditer(r'`(?:[\w./]*/)?timm-moe ([a-z][a-z-]*(?:/[a-z][a-z-]*)*)([^`]*)`', text):
        flags = re.findall(r'(?<![\w-])(--[a-z][\w-]*)', m.group(2))
        found += [(verb, flags) for verb in m.group(1).split('/')]
    return found


@pytest.mark.parametrize('doc', [pytest.param(d, id=str(d.relative_to(REPO))) for d in DOCS])
def test_inline_commands_name_real_verbs_and_flags(doc, cli_parser):
    verbs = cli_parser.verbs
    wrong = []
    for verb, flags in inline_commands(doc.read_text(encoding='utf-8')):
        if verb not in verbs:
            wrong.append(f'timm-moe {verb}: no such verb')
            continue
        known = {s for a in verbs[verb].arguments for s in a.option_strings}
        wrong += [f'timm-moe {verb} {f}: no such option' for f in flags if f not in known]
    assert not wrong, f'{doc.relative_to(REPO)}: ' + '; '.join(sorted(set(wrong)))


def test_inline_commands_are_found():
    assert inline_commands('`timm-moe train/eval --torchcompile [BACKEND]`, `timm-moe VERB`, '
                           '`.venv/bin/timm-moe compare A B [--metric …]`') == \
        [('train', ['--torchcompile']), ('eval', ['--torchcompile']), ('compare', ['--metric'])]


def test_cli_commands_are_found():
    """The extraction sees commands behind &&, after a path, through -m, inside --wrap, across a line break."""
    script = ("python3 -m venv .venv && .venv/bin/timm-moe quickstart --out x --overwrite\n"
              "torchrun --nproc_per_node=4 -m bench.cli train --config c   # comment --bogus\n"
              "sbatch --array=0-7 --wrap 'OMP_NUM_THREADS=8 timm-moe grid g --shard $I/8'\n"
              "timm-moe compare <entry-id-A> <entry-id-B> \\\n    --registry r > out.txt\n")
    assert cli_commands(script) == [['quickstart', '--out', 'x', '--overwrite'], ['train', '--config', 'c'],
                                     ['grid', 'g', '--shard', '$I/8'],
                                     ['compare', 'entry-id-A', 'entry-id-B', '--registry', 'r']]


def test_a_bad_flag_in_a_doc_fails(cli_parser, capsys):
    with pytest.raises(SystemExit):
        cli_parser.parse_args(['eval', '--model', 'm', '--chekpoint', 'x'])


def test_markers_are_read(tmp_path):
    doc = tmp_path / 'x.md'
    doc.write_text('a\n\n<!-- snippet: slow, setup=exported -->\n\n```python\nx = 1\n```\n\n'
                   '<!-- snippet: skip types, not code -->\n```python\n{...}\n```\n```python\ny = 2\n```\n')
    got = [(b.lang, b.options) for b in blocks(doc)]
    assert got == [('python', {'slow': '', 'setup': 'exported'}), ('python', {'skip': 'types, not code'}),
                   ('python', {})]
    with pytest.raises(ValueError, match='needs a reason'):
        parse_options('skip')
    with pytest.raises(ValueError, match='unknown snippet option'):
        parse_options('slwo')


# ---------------------------------------------------------------------------------------------- paths

_TOP = ('bench', 'docs', 'tests', 'registry', 'timm_moe', 'scripts', 'benchmarks', '.ci')
_PATH = re.compile(r'(?<![\w./$-])((?:' + '|'.join(re.escape(t) for t in _TOP) + r')/[\w./*<>{}-]*)')


def named_paths(path: Path) -> List[Tuple[str, Path]]:
    """(as written, resolved) for every repository path a doc names: markdown links relative to the doc, and
    paths under a top-level folder of the repo, relative to the repository root (in code or in prose)."""
    text = path.read_text(encoding='utf-8')
    found = []
    for m in re.finditer(r'\]\(([^)\s#]+)', text):
        if '://' not in m.group(1) and not m.group(1).startswith('mailto:'):
            found.append((m.group(1), path.parent / m.group(1)))
    for m in _PATH.finditer(text):
        written = m.group(1).rstrip('.')
        found.append((written, REPO / written.split('::')[0]))
    return found


def _exists(p: Path) -> bool:
    """A path, or a pattern: `*` must match something; `<placeholder>` parts stand for any name."""
    text = re.sub(r'<[^<>/]+>', '*', str(p))
    if any(c in text for c in '*{}'):
        return bool(list(Path('/').glob(text.lstrip('/').replace('{', '*').replace('}', '*'))))
    return p.exists()


def _path_params():
    files = DOCS + [REPO / 'pyproject.toml']
    return [pytest.param(f, id=str(f.relative_to(REPO))) for f in files]


@pytest.mark.parametrize('doc', _path_params())
def test_named_paths_exist(doc):
    missing = [written for written, resolved in named_paths(doc) if not _exists(resolved)]
    assert not missing, f'{doc.relative_to(REPO)} names paths that do not exist: {", ".join(sorted(set(missing)))}'


def test_a_moved_path_is_caught(tmp_path):
    doc = tmp_path / 'x.md'
    doc.write_text('see `bench/atomic.py` and [x](missing.md); `registry/<dataset>/` and `docs/study/*.png` exist\n')
    assert [w for w, r in named_paths(doc) if not _exists(r)] == ['missing.md', 'bench/atomic.py']


def test_every_doc_is_linked_from_the_readme():
    readme = (REPO / 'README.md').read_text(encoding='utf-8')
    unlinked = [d.name for d in DOCS[1:] if f'](docs/{d.name})' not in readme]
    assert not unlinked, f'README.md links none of: {", ".join(unlinked)}'

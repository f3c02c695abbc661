"""The harness as layers (docs/CONTRACTS.md): who may import whom, and no import cycles.

Module length is a guideline (docs/CONTRACTS.md), not a test: a module is split where its parts are separate
things, never to meet a line count.

The import graph is read from the source with `ast` (every import statement, also those inside functions:
a lazy import is still a dependency), so a violation fails here before anyone runs the code path.
"""
import ast
from pathlib import Path
from typing import Dict, Set


ROOT = Path(__file__).resolve().parents[1]

# package (first component under bench/) -> the packages it may import besides itself
ALLOWED = {
    'core': set(),
    'dataset_table': {'core'},
    'data': {'core', 'dataset_table'},
    'checkpoints': {'core'},
    'models': {'core', 'checkpoints'},
    'attacks': {'core'},
    'training': {'core', 'dataset_table', 'data', 'checkpoints', 'models', 'attacks'},
    'evaluation': {'core', 'dataset_table', 'data', 'checkpoints', 'models', 'attacks'},
    'audit': {'core', 'models'},
    'results': {'core', 'dataset_table', 'models'},
    'pipeline': {'core', 'dataset_table', 'data', 'checkpoints', 'models', 'attacks', 'training', 'evaluation',
                 'audit', 'results'},
    'cli': {'core', 'dataset_table', 'data', 'checkpoints', 'models', 'attacks', 'training', 'evaluation', 'audit',
            'results', 'pipeline'},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix('').parts)
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _modules(package: str) -> Dict[str, Path]:
    return {_module_name(p): p for p in sorted((ROOT / package).rglob('*.py'))}


def _imports(path: Path, module: str) -> Set[str]:
    """Absolute names of the modules `path` imports (a `from X import y` counts as X.y when X.y is a module)."""
    is_pkg = path.name == '__init__.py'
    out: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = module.split('.') if is_pkg else module.split('.')[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = '.'.join(anchor + ([base] if base else []))
            out.add(base)
            out.update(f'{base}.{a.name}' for a in node.names)
    return out


def _graph() -> Dict[str, Set[str]]:
    """bench module -> the bench modules it imports (names that are not modules are dropped)."""
    mods = _modules('bench')
    return {m: {i for i in _imports(p, m) if i in mods and i != m} for m, p in mods.items()}


def _layer(module: str) -> str:
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else ''


def test_every_bench_module_is_in_a_known_layer():
    unknown = sorted(m for m in _graph() if m != 'bench' and _layer(m) not in ALLOWED)
    assert not unknown, f'modules outside the layers of docs/CONTRACTS.md: {unknown}'


def test_layers_import_only_what_they_may():
    bad = [f'{m} imports {i}' for m, deps in _graph().items() for i in sorted(deps)
           if _layer(m) and _layer(i) and _layer(i) != _layer(m) and _layer(i) not in ALLOWED[_layer(m)]]
    assert not bad, '\n'.join(bad)


def test_no_library_module_imports_the_cli():
    bad = [f'{m} imports {i}' for m, deps in _graph().items() for i in sorted(deps)
           if _layer(m) != 'cli' and _layer(i) == 'cli']
    assert not bad, '\n'.join(bad)


def test_timm_moe_imports_nothing_of_the_harness():
    bad = [f'{m} imports {i}' for m, p in _modules('timm_moe').items() for i in sorted(_imports(p, m))
           if i.split('.')[0] in ('bench', 'benchmarks')]
    assert not bad, '\n'.join(bad)


def _cycle(graph: Dict[str, Set[str]]):
    """One import cycle as a list of modules, or None (iterative DFS, white/grey/black)."""
    colour = dict.fromkeys(graph, 0)
    for start in graph:
        if colour[start]:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        colour[start], path = 1, [start]
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour[nxt] == 1:
                return path[path.index(nxt):] + [nxt]
            elif colour[nxt] == 0:
                colour[nxt] = 1
                stack.append((nxt, iter(sorted(graph[nxt]))))
                path.append(nxt)
    return None


def test_the_import_graph_has_no_cycle():
    # a package's __init__ re-exporting its modules is not a cycle of logic: the modules never import it back
    graph = {m: {i for i in deps if not m.startswith(i + '.')} for m, deps in _graph().items()}
    assert _cycle(graph) is None, ' -> '.join(_cycle(graph))


def _timm_moe_graph() -> Dict[str, Set[str]]:
    """timm_moe module -> the timm_moe modules it imports (a package's __init__ re-exporting its modules dropped)."""
    mods = _modules('timm_moe')
    return {m: {i for i in _imports(p, m) if i in mods and i != m and not m.startswith(i + '.')}
            for m, p in mods.items()}


def test_timm_moe_has_no_import_cycle():
    # lazy imports count: models/pretrained.py once imported the model module inside a function, and back
    assert _cycle(_timm_moe_graph()) is None, ' -> '.join(_cycle(_timm_moe_graph()))


def _absolute(node: ast.ImportFrom, module: str, path: Path) -> str:
    """The absolute module name a `from X import ...` of `module` (at `path`) reads from."""
    base = node.module or ''
    if not node.level:
        return base
    anchor = module.split('.') if path.name == '__init__.py' else module.split('.')[:-1]
    return '.'.join(anchor[:len(anchor) - node.level + 1] + ([base] if base else []))


def _is_private(name: str) -> bool:
    return name.startswith('_') and not name.startswith('__')


def _private_imports(package: str) -> list:
    """'module imports name' for every `from X import _name` where X is another module of `package`, and 'module
    uses name' for every `alias._name` where `alias` is another module of `package` (`from . import x as alias`,
    `import package.x as alias`): both reach into a private name of another module."""
    mods = _modules(package)
    out = []
    for m, p in mods.items():
        tree = ast.parse(p.read_text(), str(p))
        aliases = {}  # local name -> the module of `package` it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                aliases.update((a.asname, a.name) for a in node.names if a.asname and a.name in mods)
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, m, p)
                if base.split('.')[0] != package:
                    continue
                if base != m:
                    out += [f'{m} imports {base}.{a.name}' for a in node.names if _is_private(a.name)]
                aliases.update((a.asname or a.name, f'{base}.{a.name}') for a in node.names
                               if f'{base}.{a.name}' in mods)
        out += [f'{m} uses {aliases[node.value.id]}.{node.attr}' for node in ast.walk(tree)
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _is_private(node.attr)
                and aliases.get(node.value.id, m) != m]
    return sorted(set(out))


def test_timm_moe_modules_import_no_private_name_of_another():
    assert not _private_imports('timm_moe'), '\n'.join(_private_imports('timm_moe'))


def test_bench_modules_use_no_private_name_of_another():
    found = _private_imports('bench')
    assert not found, '\n'.join(found)


def test_the_private_import_finder_finds_one(tmp_path, monkeypatch):
    pkg = tmp_path / 'pkg'
    (pkg / 'sub').mkdir(parents=True)
    (pkg / '__init__.py').write_text('')
    (pkg / 'sub' / '__init__.py').write_text('')
    (pkg / 'a.py').write_text('_SECRET = 1\n\n\ndef _helper():\n    return _SECRET\n')
    (pkg / 'b.py').write_text('from .a import _SECRET\nfrom . import a\n')
    (pkg / 'c.py').write_text('from pkg import a as an\nimport pkg.a as pa\nimport pkg.a\n\n\n'
                              'def f(obj):\n    return an._helper(), pa._SECRET, obj._private, an.__name__\n')
    (pkg / 'sub' / 'd.py').write_text('from .. import a\n\n\ndef g():\n    return a._helper()\n')
    monkeypatch.setitem(globals(), 'ROOT', tmp_path)
    assert _private_imports('pkg') == ['pkg.b imports pkg.a._SECRET', 'pkg.c uses pkg.a._SECRET',
                                       'pkg.c uses pkg.a._helper', 'pkg.sub.d uses pkg.a._helper']


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}) == ['a', 'b', 'c', 'a']
    assert _cycle({'a': {'b'}, 'b': set()}) is None

"""The package's shape: imports run one way between layers, no module imports itself back
through others (no cycles), and modules stay short (docs/architecture.md).

The layers, lowest first. A module may import its own layer's modules (acyclically) and
lower layers, never a higher one; imports inside functions count too.
"""

import ast
import os
import pathlib

import pytest

from conftest import ROOT

PACKAGE = 'denseav_jax'
LAYERS = (
    ('errors', 'io', 'tb'),
    ('configs',),  # The loader (configs/__init__.py); the config files sit on top.
    ('parallel',),
    ('data',),
    ('models',),
    ('similarity',),
    ('losses',),
    ('checkpoint',),
    ('evals',),
    ('trainer',),
    ('inference', 'conversion', 'experiments'),
    # Entry points, command-line plumbing, benchmarks, developer tools, test scaffolding
    # and the experiment configs themselves.
    ('cli', 'train', 'evaluate', 'predict', 'convert', 'prepare', 'sweep', 'report',
     'compile', 'demo', 'bench', 'tools', 'testing', 'configs.*'),
)
MAX_LINES = 500
LONG_MARKER = '# Long module:'  # A module over MAX_LINES says why after this marker.


def _modules() -> dict[str, pathlib.Path]:
  root = pathlib.Path(ROOT, PACKAGE)
  out = {}
  for dirpath, _, files in os.walk(root, followlinks=True):
    for f in files:
      if f.endswith('.py'):
        path = pathlib.Path(dirpath, f)
        parts = path.relative_to(root).with_suffix('').parts
        if parts[-1] == '__init__':
          parts = parts[:-1]
        out['.'.join((PACKAGE,) + parts)] = path
  return out


MODULES = _modules()


def _imports(path: pathlib.Path) -> set[str]:
  """The project modules `path` imports, anywhere in the file."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names = [f'{node.module}.{a.name}' for a in node.names] + [node.module]
      names = [n for n in names if n in MODULES][:1] or [node.module]
      # `from P import a, b`: each name that is a module is an import of that module.
      names = [f'{node.module}.{a.name}' for a in node.names
               if f'{node.module}.{a.name}' in MODULES] or [node.module]
    else:
      continue
    for n in names:
      while n and n not in MODULES:
        n = n.rpartition('.')[0]
      if n.startswith(PACKAGE + '.') or n == PACKAGE:
        found.add(n)
  return found


GRAPH = {m: _imports(p) - {m} for m, p in MODULES.items()}


def _layer(module: str) -> int:
  rel = module[len(PACKAGE) + 1:]
  if rel.startswith('configs.'):
    return len(LAYERS) - 1
  top = rel.split('.')[0]
  for i, names in enumerate(LAYERS):
    if top in names:
      return i
  raise AssertionError(f'{module} is in no layer: add its package to LAYERS and to '
                       'docs/architecture.md')


def test_every_module_has_a_layer():
  for m in MODULES:
    if m != PACKAGE:
      _layer(m)


def test_no_upward_imports():
  bad = [f'{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})'
         for m, deps in sorted(GRAPH.items()) if m != PACKAGE
         for d in sorted(deps) if d != PACKAGE and _layer(d) > _layer(m)]
  assert not bad, 'upward imports:\n' + '\n'.join(bad)


def _package_edges():
  """Package-level edges: a module importing its parent package's __init__ is not a cycle."""
  return {m: {d for d in deps if not m.startswith(d + '.')} for m, deps in GRAPH.items()}


def test_no_import_cycles():
  graph = _package_edges()
  index, low, stack, on_stack, cycles = {}, {}, [], set(), []

  def visit(v):  # Tarjan's strongly connected components.
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        cycles.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  assert not cycles, 'import cycles:\n' + '\n'.join(' <-> '.join(c) for c in cycles)


@pytest.mark.parametrize('module', sorted(MODULES))
def test_module_is_short_or_says_why(module):
  text = MODULES[module].read_text()
  n = text.count('\n')
  assert n <= MAX_LINES or LONG_MARKER in text, (
      f'{MODULES[module]} has {n} lines: split it, or say why it is long in a comment '
      f'starting {LONG_MARKER!r}')


def test_module_docstrings():
  missing = [m for m, p in MODULES.items() if not ast.get_docstring(ast.parse(p.read_text()))]
  assert not missing, 'modules without a docstring: ' + ', '.join(sorted(missing))

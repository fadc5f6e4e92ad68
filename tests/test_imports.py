"""The package's shape: imports go one way (no cycle, counting imports inside functions), the
bottom floors import nothing of robust_med above them, nothing imports an entry point, and every
module says in its docstring's first line what it is for."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / 'robust_med'


def module_name(path: Path, root: Path = PACKAGE) -> str:
  parts = list(path.relative_to(root.parent).with_suffix('').parts)
  if parts[-1] == '__init__':
    parts.pop()
  return '.'.join(parts)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
  return {module_name(p, root): p for p in sorted(root.rglob('*.py'))}


def imported(path: Path, name: str, known: set[str]) -> set[str]:
  """The package modules `path` (module `name`) imports anywhere in its body."""
  package = name if path.name == '__init__.py' else name.rpartition('.')[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      candidates = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        base = '.'.join(package.split('.')[:len(package.split('.')) - node.level + 1] +
                        ([base] if base else []))
      candidates = [f'{base}.{a.name}' if f'{base}.{a.name}' in known else base
                    for a in node.names]
    else:
      continue
    for c in candidates:
      while c and c not in known:  # `import a.b.c` imports a.b.c, or a.b when c is a name.
        c = c.rpartition('.')[0]
      if c and c != name:
        found.add(c)
  return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
  mods = modules(root)
  return {name: imported(path, name, set(mods)) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan), each sorted."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
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
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def test_the_package_has_no_import_cycle():
  assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle_through_a_function_local_import(tmp_path):
  pkg = tmp_path / 'pkg'
  (pkg / 'sub').mkdir(parents=True)
  (pkg / '__init__.py').write_text('')
  (pkg / 'sub' / '__init__.py').write_text('')
  (pkg / 'a.py').write_text('from pkg.sub import b\n')
  (pkg / 'sub' / 'b.py').write_text('def f():\n  from pkg import c\n')
  (pkg / 'c.py').write_text('from . import a\n')
  (pkg / 'd.py').write_text('import pkg.a\n')
  assert cycles(import_graph(pkg)) == [['pkg.a', 'pkg.c', 'pkg.sub.b']]


@pytest.mark.parametrize('bottom', ['robust_med.errors', 'robust_med.reports'])
def test_bottom_floors_import_nothing_of_robust_med(bottom):
  assert import_graph()[bottom] == set()


def test_the_range_table_sits_on_the_bottom_floor():
  """Heads state their keys' ranges with `ranges.Range`; it must not pull config_base up."""
  assert import_graph()['robust_med.ranges'] == {'robust_med.errors'}


def test_the_command_line_plumbing_imports_no_run_module():
  below = import_graph()['robust_med.cli']
  assert below <= {'robust_med.errors', 'robust_med.config_base', 'robust_med.compile_cache',
                   'robust_med.sharding'}, below


def test_nothing_imports_an_entry_point():
  graph = import_graph()
  importers = {m for m, deps in graph.items() if 'robust_med.main' in deps}
  assert not importers


def test_every_module_says_what_it_is_for_in_its_first_docstring_line():
  missing = []
  for name, path in modules().items():
    doc = ast.get_docstring(ast.parse(path.read_text()))
    first = (doc or '').split('\n', 1)[0].strip()
    if len(first) < 10 or not first.endswith(('.', ':')):
      missing.append(f'{name}: {first!r}')
  assert not missing, '\n'.join(missing)

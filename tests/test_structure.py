"""The package's shape: features in folders, a handful of modules at the top, small modules, no import cycles."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('ddpm_jax', 'eval_bridge')
# 9: the CLIs main, convert, report, stats and phema (post-hoc EMA reconstruction), plus cli, errors, paths, __init__.
MAX_TOP_LEVEL_MODULES = 9
MAX_LINES = 320  # STYLE.md: a file past ~300 lines is asking to be split


def project_modules() -> dict:
  """Returns {dotted module name: file path} of every module of the project's packages."""
  modules = {}
  for package in PACKAGES:
    for directory, _, files in os.walk(os.path.join(ROOT, package)):
      for name in files:
        if name.endswith('.py'):
          path = os.path.join(directory, name)
          dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
          modules[dotted.removesuffix('.__init__')] = path
  return modules


def imports_of(path: str, name: str, modules: dict) -> set:
  """Returns the project modules a file imports, at the top or inside functions (a lazy import is still a use)."""
  package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      found |= {alias.name for alias in node.names if alias.name in modules}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        base = '.'.join(package.split('.')[:len(package.split('.')) - node.level + 1] + ([base] if base else []))
      for alias in node.names:
        target = f'{base}.{alias.name}'
        if target in modules:
          found.add(target)
        elif base in modules:
          found.add(base)
  return found - {name}


def find_cycle(graph: dict) -> list:
  """Returns one import cycle as a list of modules, or [] when the graph has none."""
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for target in sorted(graph.get(node, ())):
      if state.get(target) == 'open':
        return stack[stack.index(target):] + [target]
      if target not in state:
        cycle = visit(target)
        if cycle:
          return cycle
    stack.pop()
    state[node] = 'done'
    return []

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return []


def test_no_import_cycles_between_project_modules():
  modules = project_modules()
  graph = {name: imports_of(path, name, modules) for name, path in modules.items()}
  assert find_cycle(graph) == []


def test_the_cycle_finder_finds_a_cycle():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}) == ['a', 'b', 'c', 'a']
  assert find_cycle({'a': {'b'}, 'b': set()}) == []


def test_few_modules_sit_directly_in_the_package():
  top = [name for name in os.listdir(os.path.join(ROOT, 'ddpm_jax')) if name.endswith('.py')]
  assert len(top) <= MAX_TOP_LEVEL_MODULES, sorted(top)


def test_no_module_is_over_the_size_limit():
  long = {os.path.relpath(path, ROOT): n for path in project_modules().values()
          if (n := len(open(path).read().splitlines())) > MAX_LINES}
  assert long == {}

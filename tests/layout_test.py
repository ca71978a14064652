"""The package's architecture: imports flow one way, models know themselves."""

import ast
import os

import pytest

import sparsify
from sparsify import models

PACKAGE = os.path.dirname(sparsify.__file__)


def _modules():
  """``{module name: path}`` of every module of the package."""
  out = {}
  for root, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(root, name)
        rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3]
        parts = rel.split(os.sep)
        if parts[-1] == "__init__":
          parts = parts[:-1]
        out[".".join(parts)] = path
  return out


def _imports(path, modules):
  """The package modules that a file imports (anywhere in it)."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    else:
      continue
    found.update(n for n in names if n in modules)
  return found


def _cycle(graph):
  """One import cycle of ``graph`` as a list of modules, or None."""
  state = {}

  def visit(node, stack):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt, stack)
        if found:
          return found
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node, [])
      if found:
        return found
  return None


def test_the_package_has_no_import_cycle():
  modules = _modules()
  # A package's __init__ re-exports its modules: importing `sparsify.spz`
  # from `sparsify.spz.container` is not a dependency of the module on its
  # siblings, so edges into a package's own __init__ from inside it are
  # left out; every other edge counts, including imports inside functions.
  graph = {}
  for name, path in modules.items():
    deps = _imports(path, modules) - {name}
    graph[name] = {d for d in deps
                   if not (name.startswith(d + ".") and d != "sparsify")}
    graph[name].discard("sparsify")  # the flat API imports everything
  assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_cycle_finder_finds_a_cycle():  # the check above can fail
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("name,path", sorted(_modules().items()))
def test_no_model_name_switch_outside_models(name, path):
  if name.startswith("sparsify.models"):
    return
  names = set(models.MODELS)
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Compare):
      for operand in [node.left, *node.comparators]:
        values = (operand.elts if isinstance(operand, (ast.Tuple, ast.List,
                                                       ast.Set))
                  else [operand])
        for v in values:
          assert not (isinstance(v, ast.Constant) and v.value in names), (
              f"{path}:{node.lineno} compares with the model name "
              f"{v.value!r}")

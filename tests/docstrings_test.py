"""Reference docs: every public symbol is documented, and every example runs.

The rules, for every public function, class and method of every module of
the package (names without a leading underscore, defined in that module):

* a docstring whose first line is a one-sentence summary;
* functions with parameters: an ``Args:`` section naming each of them
  (``*args`` / ``**kwargs`` with their stars);
* functions that return something: a ``Returns:`` (or ``Yields:``) section;
* every function of the flat API (``sparsify.__all__``,
  ``sparsify.data.__all__``, ``sparsify.models.__all__``): an ``Example:``
  that runs as a doctest from a clean namespace, imports included;
* every method (`METHODS`): the math it implements (a formula line) and a
  ``References:`` section naming the paper.

Every doctest of the package runs here, each in a fresh namespace, so an
example that a user copies works as written.
"""

import doctest
import importlib
import inspect
import pkgutil
import re

import pytest

import sparsify
from sparsify import data
from sparsify import models

# The symbols that implement a method of the literature.
METHODS = (
    "accelerated_proximal_gradient", "binary_attractor",
    "binary_search_prune", "dynamic_adaptive_threshold", "erk_densities",
    "Gate", "gradual_magnitude_pruning", "group_lasso", "group_lasso_prox",
    "kcentre_attractor", "kmeans", "l1", "layer_significance",
    "magnitude_pruning", "network_slimming", "neuron_scores", "pq_encode",
    "pq_quantize", "proximal_sgd", "random_sparsity", "share_params",
    "share_weights", "sigma_of", "slim", "slimming_threshold",
    "soft_threshold", "sparse_structure_selection", "sss_optimizer",
    "ternarize", "ternary_constrained", "rigl", "sparse_evolutionary_training",
    "snip", "gradual_saliency_pruning", "magnitude_ste", "random_ste")

_SECTION = re.compile(r"^(Args|Returns|Yields|Raises|Example|Examples|"
                      r"References|Attributes):\s*$", re.M)


def _modules():
  yield sparsify
  for info in pkgutil.walk_packages(sparsify.__path__, "sparsify."):
    yield importlib.import_module(info.name)


def _public():
  """(qualified name, object) of every public function, class and method."""
  for module in _modules():
    for name, obj in sorted(vars(module).items()):
      if name.startswith("_") or not (inspect.isfunction(obj) or
                                      inspect.isclass(obj)):
        continue
      if getattr(obj, "__module__", None) != module.__name__:
        continue
      yield f"{module.__name__}.{name}", obj
      if inspect.isclass(obj):
        for attr, member in sorted(vars(obj).items()):
          # Methods written here, not those a decorator generates.
          if (not attr.startswith("_") and inspect.isfunction(member) and
              member.__module__ == module.__name__):
            yield f"{module.__name__}.{name}.{attr}", member


PUBLIC = dict(_public())
FUNCTIONS = {q: o for q, o in PUBLIC.items() if inspect.isfunction(o)}
FLAT_API = {f"{m.__name__}.{n}": getattr(m, n)
            for m in (sparsify, data, models) for n in m.__all__
            if inspect.isfunction(getattr(m, n))}


def _section(doc, name):
  """The body of a Google-style section, or None."""
  match = re.search(rf"^{name}:\s*$", doc, re.M)
  if not match:
    return None
  rest = doc[match.end():]
  end = _SECTION.search(rest)
  return rest[:end.start()] if end else rest


def test_the_public_surface_is_large_enough_to_mean_something():
  # Guards the discovery above against silently finding nothing.
  assert len(PUBLIC) > 150 and len(FLAT_API) > 60
  assert set(METHODS) <= set(sparsify.__all__)


@pytest.mark.parametrize("qualname", sorted(PUBLIC))
def test_has_a_summary_line(qualname):
  doc = inspect.getdoc(PUBLIC[qualname])
  assert doc, f"{qualname} has no docstring"
  first = doc.splitlines()[0]
  assert first.rstrip().endswith((".", ":")), (
      f"{qualname}: the first line should be a one-sentence summary, "
      f"got {first!r}")


@pytest.mark.parametrize("qualname", sorted(FUNCTIONS))
def test_documents_its_arguments_and_result(qualname):
  fn = FUNCTIONS[qualname]
  doc = inspect.getdoc(fn) or ""
  signature = inspect.signature(fn)
  params = [p for p in signature.parameters.values()
            if p.name not in ("self", "cls")]
  if params:
    args = _section(doc, "Args")
    assert args is not None, f"{qualname} has no Args: section"
    for p in params:
      star = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
      assert re.search(rf"^\s+{re.escape(star + p.name)}( \(.*?\))?:", args,
                       re.M), f"{qualname}: Args does not name {star}{p.name}"
  if signature.return_annotation not in (None, "None"):
    assert re.search(r"^(Returns|Yields):", doc, re.M), (
        f"{qualname} has no Returns: section")


@pytest.mark.parametrize("qualname", sorted(FLAT_API))
def test_flat_api_functions_have_an_example(qualname):
  doc = inspect.getdoc(FLAT_API[qualname]) or ""
  example = _section(doc, "Example") or _section(doc, "Examples")
  assert example and ">>>" in example, f"{qualname} has no runnable Example:"


@pytest.mark.parametrize("name", METHODS)
def test_methods_give_their_math_and_paper(name):
  doc = inspect.getdoc(getattr(sparsify, name)) or ""
  refs = _section(doc, "References")
  assert refs and re.search(r"(19|20)\d\d", refs), (
      f"sparsify.{name}: References: should name the paper and its year")
  prose = doc.split("Args:")[0]
  assert re.search(r"^\s*\S.*( = | <= | >= |argmin|argmax|\u2211|sum_)",
                   prose, re.M), f"sparsify.{name}: no formula in its summary"


def _doctests():
  finder = doctest.DocTestFinder(exclude_empty=True)
  seen = set()
  for module in _modules():
    for test in finder.find(module, module.__name__, globs={}):
      if test.examples and test.name not in seen:
        seen.add(test.name)
        yield test


DOCTESTS = {t.name: t for t in _doctests()}


@pytest.mark.parametrize("name", sorted(DOCTESTS))
def test_example_runs(name):
  test = DOCTESTS[name]
  test.globs = {}  # a clean namespace: examples import what they use
  runner = doctest.DocTestRunner(
      optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  out = []
  result = runner.run(test, out=out.append)
  assert result.failed == 0, "".join(out)

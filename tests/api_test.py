"""The flat public API: everything listed imports and is documented."""

import inspect

import pytest

import sparsify
from sparsify import data
from sparsify import models


@pytest.mark.parametrize("module", [sparsify, data, models],
                         ids=lambda m: m.__name__)
def test_all_names_import_and_have_docstrings(module):
  for name in module.__all__:
    obj = getattr(module, name)
    if inspect.isfunction(obj) or inspect.isclass(obj):
      assert inspect.getdoc(obj), f"{module.__name__}.{name} has no docstring"

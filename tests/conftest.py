"""Shared fixtures, and how JAX compiles under the tests."""

import os
import shutil
import tempfile
from unittest import mock

# The tests compile far more than they compute. Compiled programs are shared
# through JAX's persistent cache by every test, xdist worker and subprocess
# of one session (workers inherit the directory the main process makes), and
# XLA skips its costliest LLVM optimization passes. Set
# before JAX reads its configuration.
_OWN_CACHE = None
if ("PYTEST_XDIST_WORKER" not in os.environ
    and "JAX_COMPILATION_CACHE_DIR" not in os.environ):
  _OWN_CACHE = tempfile.mkdtemp(prefix="sparsify-tests-jax-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ["XLA_FLAGS"] = " ".join(filter(None, [
    os.environ.get("XLA_FLAGS", ""), "--xla_llvm_disable_expensive_passes=true"]))

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture
def mock_tfds():
  """tfds's own mocked ArrayRecord data (random examples, no network).

  tfds 4.9.10's mock stores `__getitems__` on the mocked reader as a plain
  instance attribute, so Python calls it without `self` and it fails; the
  patch drops the missing argument (reading is unchanged).
  """

  def getitems(record_keys, generator, serialized=False):
    assert not serialized
    return [generator[k] for k in record_keys]

  with tfds.testing.mock_data(num_examples=64,
                              policy=tfds.testing.MockPolicy.USE_CODE), \
      mock.patch.object(tfds.testing.mocking, "_getitems", getitems):
    yield

"""Shared fixtures."""

from unittest import mock

import pytest
import tensorflow_datasets as tfds


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

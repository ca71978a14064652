"""Tests for sparsify.spz.inspect: bytes per leaf, counted by hand."""

import json
import math
import os

import numpy as np
import pytest
from spz_cases import DIGEST
from spz_cases import PREAMBLE
from spz_cases import rewrite
from spz_cases import sparse
from spz_cases import ternary

from sparsify import spz


def _params(rng):
  return {"fc1": {"kernel": sparse(rng, (40, 30), 0.05),
                  "bias": rng.normal(size=30).astype(np.float32)},
          "fc2": {"kernel": ternary(rng, (30, 8), 0.5)},
          "scale": np.array(2.0, np.float32)}


def test_file_report_lists_every_buffer_of_every_leaf(tmp_path):
  rng = np.random.default_rng(40)
  params = _params(rng)
  path = tmp_path / "m.spz"
  spz.save(path, params, {"fc1/kernel": "csr", "fc2/kernel": "ternary"},
           metadata={"model": "mlp"})
  report = spz.file_report(path)
  rows = {row.path: row for row in report.leaves}
  assert [row.path for row in report.leaves] == [
      "fc1/bias", "fc1/kernel", "fc2/kernel", "scale"]
  nnz1 = int(np.count_nonzero(params["fc1"]["kernel"]))
  nnz2 = int(np.count_nonzero(params["fc2"]["kernel"]))
  # csr: 41 one-byte row pointers (nnz < 256), one-byte column indices.
  assert nnz1 < 256
  want = {"fc1/bias": ("dense", (30,), {"values": 120}),
          "fc1/kernel": ("csr", (40, 30), {"indptr": 41, "indices": nnz1,
                                           "values": 4 * nnz1}),
          "fc2/kernel": ("ternary", (30, 8), {"mask": 30, "sign":
                                              math.ceil(nnz2 / 8),
                                              "sigma": 4}),
          "scale": ("dense", (), {"values": 4})}
  for name, (encoding, shape, buffers) in want.items():
    row = rows[name]
    assert (row.encoding, row.shape, row.dtype) == (encoding, shape,
                                                    "float32"), name
    assert row.buffers == buffers, name
    assert row.nbytes == sum(buffers.values()), name
    assert row.float32_bytes == 4 * math.prod(shape), name
  size = os.path.getsize(path)
  h = int.from_bytes(path.read_bytes()[12:20], "little")
  assert report.file_bytes == size
  assert report.header_bytes == PREAMBLE + h + DIGEST
  assert report.header_bytes + sum(r.nbytes for r in rows.values()) == size
  assert report.float32_bytes == 4 * (30 + 1200 + 240 + 1)
  assert report.compression_ratio == pytest.approx(4 * 1471 / size)
  as_json = json.loads(json.dumps(report.to_dict()))
  assert as_json["leaves"][1]["shape"] == [40, 30]
  assert as_json["float32_bytes"] == 4 * 1471
  assert as_json["compression_ratio"] == pytest.approx(4 * 1471 / size)


def test_file_report_does_not_decode_the_leaves(tmp_path):
  path = tmp_path / "m.spz"
  kernel = np.zeros((4, 10), np.float32)
  kernel[1, 3] = 1.0
  spz.save(path, {"fc": {"kernel": kernel}}, {"fc/kernel": "csr"})

  def bad_index(header, data):
    offset, _ = header["leaves"][0]["buffers"]["indices"]
    data[offset] = 10  # Column 10 of 10 columns: only decoding sees it.

  rewrite(path, edit_data=bad_index)
  with pytest.raises(spz.CompressedFileError, match="'fc/kernel'"):
    spz.load(path)
  (row,) = spz.file_report(path).leaves
  assert row.buffers == {"indptr": 5, "indices": 1, "values": 4}


def test_float32_bytes_counts_every_entry_as_four_bytes():
  params = {"a": {"kernel": np.zeros((3, 5), np.int8),
                  "bias": np.zeros(5, np.float64)},
            "b": np.zeros((), bool), "c": {"d": {"e": np.zeros((2, 0))}}}
  assert spz.float32_bytes(params) == 4 * (15 + 5 + 1 + 0)
  with pytest.raises(ValueError, match="nested dict"):
    spz.float32_bytes(np.zeros(3))

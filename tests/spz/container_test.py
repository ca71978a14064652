"""Tests for sparsify.spz.container: the file layout, checks and atomic save."""

import hashlib
import json
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from spz_cases import AUTO
from spz_cases import DIGEST
from spz_cases import pq_reference
from spz_cases import PREAMBLE
from spz_cases import rewrite
from spz_cases import same_bits
from spz_cases import sparse
from spz_cases import ternary

from sparsify import models
from sparsify import spz
from sparsify.core import paths


def test_file_layout_is_as_documented(tmp_path):
  path = tmp_path / "layout.spz"
  params = {name: {"kernel": x} for name, (x, _, _) in AUTO.items()}
  spz.save(path, params, metadata={"model": "mlp"})
  blob = path.read_bytes()
  magic, version, h, d = struct.unpack_from("<8sIQQ", blob)
  assert (magic, version) == (b"\x89SPZ\r\n\x1a\n", 1)
  assert len(blob) == PREAMBLE + h + d + DIGEST
  assert hashlib.sha256(blob[:-DIGEST]).digest() == blob[-DIGEST:]
  header = json.loads(blob[PREAMBLE:PREAMBLE + h].decode("utf-8"))
  assert header["metadata"] == {"model": "mlp"}
  assert [e["path"] for e in header["leaves"]] == [
      name for name, _ in paths.named_leaves(params)]
  spans = [span for e in header["leaves"] for span in e["buffers"].values()]
  assert [s[0] for s in spans] == list(
      np.cumsum([0] + [s[1] for s in spans[:-1]]))  # back to back.
  assert sum(s[1] for s in spans) == d == sum(nbytes for _, _, nbytes in
                                              AUTO.values())
  report = spz.file_report(path)
  assert report.file_bytes == os.path.getsize(path) == len(blob)
  assert report.header_bytes == PREAMBLE + h + DIGEST
  assert report.float32_bytes == 4 * (12 + 64 + 600 + 16 + 1)
  assert report.compression_ratio == pytest.approx(4 * 693 / len(blob))
  assert json.loads(json.dumps(report.to_dict()))["file_bytes"] == len(blob)


@pytest.fixture
def saved(tmp_path):
  rng = np.random.default_rng(5)
  path = tmp_path / "model.spz"
  params = {"fc1": {"kernel": sparse(rng, (20, 10), 0.3),
                    "bias": rng.normal(size=10).astype(np.float32)},
            "fc2": {"kernel": ternary(rng, (10, 4), 0.5)}}
  spz.save(path, params, {"fc1/kernel": "csr", "fc2/kernel": "ternary"},
           metadata={"model": "mlp", "accuracy": 0.5})
  return path, params


def _check_same(params, loaded):
  assert (jax.tree.structure(params) == jax.tree.structure(loaded))
  for (name, a), (_, b) in zip(paths.named_leaves(params),
                               paths.named_leaves(loaded)):
    assert same_bits(a, b), name


def _load_fails(path, match):
  for reader in (spz.load, spz.file_report):
    with pytest.raises(spz.CompressedFileError, match=match) as e:
      reader(path)
    assert str(path) in str(e.value)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("keep", [0, 5, 20, 27, -40, -1])
def test_truncated_file_is_refused(saved, keep):
  path, _ = saved
  blob = path.read_bytes()
  path.write_bytes(blob[:keep] if keep >= 0 else blob[:len(blob) + keep])
  _load_fails(path, "truncated")


def test_trailing_bytes_are_refused(saved):
  path, _ = saved
  path.write_bytes(path.read_bytes() + b"\0")
  _load_fails(path, "too long")


@pytest.mark.parametrize("where", ["header", "data", "checksum"])
def test_flipped_byte_is_refused(saved, where):
  path, _ = saved
  blob = bytearray(path.read_bytes())
  h = struct.unpack_from("<Q", blob, 12)[0]
  pos = {"header": PREAMBLE + 5, "data": PREAMBLE + h + 3,
         "checksum": len(blob) - 1}[where]
  blob[pos] ^= 0x10
  path.write_bytes(bytes(blob))
  _load_fails(path, "checksum")


def test_bad_magic_and_version_are_refused(saved):
  path, _ = saved
  blob = path.read_bytes()
  path.write_bytes(b"PK\x03\x04" + blob[4:])
  _load_fails(path, "magic")
  path.write_bytes(blob[:8] + struct.pack("<I", 2) + blob[12:])
  _load_fails(path, "version 2")
  path.write_bytes(b"")
  _load_fails(path, "truncated")


def test_inconsistent_content_with_valid_checksum_is_refused(saved):
  path, params = saved

  def bad_index(header, data):
    entry = next(e for e in header["leaves"] if e["path"] == "fc1/kernel")
    assert entry["encoding"] == "csr"
    offset, _ = entry["buffers"]["indices"]
    data[offset] = 10  # Column 10 of 10 columns.

  blob = path.read_bytes()
  rewrite(path, edit_data=bad_index)
  with pytest.raises(spz.CompressedFileError, match="'fc1/kernel'"):
    spz.load(path)
  path.write_bytes(blob)
  rewrite(path, lambda h: h["leaves"][0].update(encoding="zip"))
  _load_fails(path, "encoding 'zip'")
  path.write_bytes(blob)
  rewrite(path, lambda h: h["leaves"][0]["buffers"]["values"].__setitem__(
      1, 10**6))
  _load_fails(path, "data section")
  path.write_bytes(blob)
  _check_same(params, spz.load(path)[0])


@pytest.mark.parametrize("edit,match", [
    (lambda e, d: e["attrs"].update(nnz=e["attrs"]["nnz"] - 1),
     "weights"),
    (lambda e, d: e["attrs"].update(code_bits=3), "code_bits"),
    (lambda e, d: e["attrs"].update(gap_bits=17), "gap_bits"),
    (lambda e, d: e["attrs"].update(gap_entries=e["attrs"]["gap_entries"] - 1),
     "buffer 'gaps'|weights"),
    # The last gap entry (bits 4-5 of byte 3) 0 -> 1: position 35 of 35.
    (lambda e, d: d.__setitem__(e["buffers"]["gaps"][0] + 3,
                                d[e["buffers"]["gaps"][0] + 3] | 0x04),
     "past"),
])
def test_inconsistent_shared_leaf_is_refused(tmp_path, edit, match):
  mask = np.zeros(35, bool)
  mask[[0, 10, 12, 13, 18, 34]] = True
  layer = spz.shared_layer([0.5, -1.25, 2.0], [2, 0, 1, 1, 0, 2],
                           mask.reshape(5, 7), (5, 7))
  path = tmp_path / "s.spz"
  spz.save(path, {"fc": {"kernel": np.zeros((5, 7), np.float32)}},
           {"fc/kernel": layer})

  def edit_data(header, data):
    edit(header["leaves"][0], data)

  rewrite(path, edit_data=edit_data)
  with pytest.raises(spz.CompressedFileError,
                     match=f"'fc/kernel'.*({match})"):
    spz.load(path)


def test_metadata_round_trip(tmp_path):
  metadata = {"model": {"name": "lenet5", "kwargs": {"hidden": [300, 100]}},
              "accuracy": 0.9812345678901234, "step": 1200, "pruned": True,
              "note": None, "label": "h\u00e9llo"}
  path = tmp_path / "m.spz"
  spz.save(path, {"w": {"kernel": np.ones(3, np.float32)}},
           metadata=metadata)
  assert spz.load(path)[1] == metadata
  spz.save(path, {"w": {"kernel": np.ones(3, np.float32)}},
           metadata={"acc": np.float32(0.5), "n": jnp.asarray(3),
                     "v": np.arange(2)})
  assert spz.load(path)[1] == {"acc": 0.5, "n": 3, "v": [0, 1]}


def _only_file(directory, name):
  assert sorted(os.listdir(directory)) == [name]  # no temporary file left.


@pytest.mark.parametrize("bad_params,encodings,metadata,match", [
    ({"a": {"b": "text"}}, None, None, "'a/b'.*unsupported"),
    ({"a": {"b": object()}}, None, None, "unsupported"),
    ({"a": {"b": np.ones(2)}}, {"a/c": "csr"}, None, r"\['a/c'\]"),
    ({"a": {"b": np.ones(2)}}, {"a/b": "zip"}, None, "unknown encoding"),
    ({"a": {"b": np.ones(2)}}, None, {"acc": float("nan")}, "JSON"),
    ({"a": {1: np.ones(2)}}, None, None, "strings"),
    (np.ones(2), None, None, "nested dict"),
])
def test_failed_save_keeps_the_previous_file(saved, bad_params, encodings,
                                             metadata, match):
  path, params = saved
  with pytest.raises(ValueError, match=match):
    spz.save(path, bad_params, encodings, metadata=metadata)
  _check_same(params, spz.load(path)[0])
  _only_file(path.parent, path.name)


@pytest.mark.parametrize("fail", ["fsync", "replace"])
def test_save_failing_on_disk_keeps_the_previous_file(saved, monkeypatch,
                                                      fail):
  path, params = saved

  def boom(*args):
    raise OSError("disk full")

  monkeypatch.setattr(spz.container.os, fail, boom)
  with pytest.raises(OSError, match="disk full"):
    spz.save(path, {"other": {"w": np.zeros(3, np.float32)}})
  monkeypatch.undo()
  _check_same(params, spz.load(path)[0])
  _only_file(path.parent, path.name)


def test_save_to_a_directory_is_refused(saved):
  path, _ = saved
  with pytest.raises(ValueError, match="directory"):
    spz.save(path.parent, {"w": {"kernel": np.ones(2)}})
  _only_file(path.parent, path.name)


def _flax_like_params(rng):
  return {
      "conv1": {"kernel": sparse(rng, (5, 5, 1, 6), 0.3),
                "bias": rng.normal(size=6).astype(np.float32)},
      "fc1": {"kernel": rng.normal(size=(96, 32)).astype(np.float32),
              "bias": rng.normal(size=32).astype(np.float32)},
      "fc2": {"kernel": ternary(rng, (32, 16), 0.5),
              "bias": np.zeros(16, np.float32)},
      "head": {"kernel": sparse(rng, (16, 10), 0.1),
               "bias": rng.normal(size=10).astype(np.float32)},
  }


def test_nested_mlp_params_with_every_encoding(tmp_path):
  rng = np.random.default_rng(6)
  params = _flax_like_params(rng)
  codebooks = rng.normal(size=(8, 4, 12)).astype(np.float32)
  codes = rng.integers(0, 4, size=(32, 8))
  pq = spz.pq_layer(codebooks, codes, (96, 32))
  path = tmp_path / "mlp.spz"
  spz.save(path, params, {"fc1/kernel": pq, "fc2/kernel": "ternary",
                          "head/kernel": "csr"},
           metadata={"model": "mlp"})
  loaded, metadata = spz.load(path)
  assert metadata == {"model": "mlp"}
  assert jax.tree.structure(loaded) == jax.tree.structure(params)
  assert [n for n, _ in paths.named_leaves(loaded)] == [
      n for n, _ in paths.named_leaves(params)]
  for name, x in paths.named_leaves(params):
    got = dict(paths.named_leaves(loaded))[name]
    if name == "fc1/kernel":
      np.testing.assert_array_equal(got, pq_reference(codebooks, codes,
                                                      (96, 32)))
    else:
      assert same_bits(got, x), name
  rows = {r.path: r for r in spz.file_report(path).leaves}
  assert {n: r.encoding for n, r in rows.items()} == {
      "conv1/bias": "dense", "conv1/kernel": "bitmask",
      "fc1/bias": "dense", "fc1/kernel": "pq",
      "fc2/bias": "bitmask", "fc2/kernel": "ternary",
      "head/bias": "dense", "head/kernel": "csr"}
  # fc1: 8 * 4 * 12 float32 codebook entries + 32 * 8 two-bit codes.
  assert rows["fc1/kernel"].nbytes == 4 * 8 * 4 * 12 + 32 * 8 * 2 // 8
  # 150 + 6 + 3072 + 32 + 512 + 16 + 160 + 10 = 3958 entries.
  assert spz.float32_bytes(params) == 4 * 3958
  assert spz.file_report(path).float32_bytes == 4 * 3958


def test_lenet5_params_round_trip(tmp_path):
  model = models.get_model("lenet5")
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32))
  rng = np.random.default_rng(7)
  params = jax.tree.map(lambda s: sparse(rng, s.shape, 0.3),
                        shapes["params"])
  path = tmp_path / "lenet.spz"
  spz.save(path, jax.tree.map(jnp.asarray, params),
           metadata={"model": {"name": "lenet5"}})
  loaded, metadata = spz.load(path)
  assert metadata == {"model": {"name": "lenet5"}}
  _check_same(params, loaded)
  rows = {r.path: r for r in spz.file_report(path).leaves}
  conv2 = rows["conv2/kernel"]
  assert conv2.shape == (5, 5, 20, 50) and conv2.encoding == "bitmask"
  nnz = int(np.count_nonzero(params["conv2"]["kernel"]))
  assert conv2.nbytes == 25000 // 8 + 4 * nnz


def _leaf(header, name):
  return next(e for e in header["leaves"] if e["path"] == name)


def _set(name, field, value):
  return lambda h: _leaf(h, name).update({field: value})


def _attr(name, attr, value):
  return lambda h: _leaf(h, name)["attrs"].update({attr: value})


def _span(name, buffer, span):
  return lambda h: _leaf(h, name)["buffers"].update({buffer: span})


def _raw_header(path, edit):
  """Edits the header's bytes and writes a valid checksum again."""
  blob = path.read_bytes()
  h, d = struct.unpack_from("<QQ", blob, 12)
  head = edit(blob[PREAMBLE:PREAMBLE + h])
  body = (blob[:12] + struct.pack("<QQ", len(head), d) + head
          + blob[PREAMBLE + h:PREAMBLE + h + d])
  path.write_bytes(body + hashlib.sha256(body).digest())


@pytest.mark.parametrize("edit,match", [
    (_set("fc1/kernel", "shape", "20x10"), "shape '20x10' must be a list"),
    (_set("fc1/kernel", "shape", [-20, 10]), r"shape \(-20, 10\)"),
    (_set("fc1/kernel", "shape", [20.0, 10]), r"shape \(20.0, 10\)"),
    (_set("fc1/kernel", "shape", [True, 10]), r"shape \(True, 10\)"),
    (_set("fc1/kernel", "shape", [10**30, 10]), "spans more than"),
    (_set("fc1/kernel", "shape", [1] * 33), "at most 32"),
    (_set("fc1/bias", "shape", [11]), "'values'.* 40 bytes, expected 44"),
    (_set("fc1/kernel", "encoding", "zip"), "unknown encoding 'zip'"),
    (_set("fc1/kernel", "encoding", ["csr"]), r"unknown encoding \['csr'\]"),
    (_set("fc1/kernel", "dtype", "float128"), "unknown dtype 'float128'"),
    (_set("fc1/kernel", "dtype", {"a": 1}), "unknown dtype"),
    (_set("fc1/bias", "dtype", "int64"), "40 bytes, expected 80"),
    (_set("fc2/kernel", "dtype", "int32"), "ternary leaf must be float"),
    (_attr("fc1/kernel", "nnz", -1), r"nnz=-1 must be an int in \[0, 200\]"),
    (_attr("fc1/kernel", "nnz", True), "nnz=True"),
    (_attr("fc1/kernel", "nnz", 10**400), r"nnz=1000000.*\.\.\. must be"),
    (_attr("fc1/kernel", "indptr_bytes", 3), "indptr_bytes=3 must be 1, 2"),
    (_attr("fc1/kernel", "zip", 1), "attributes of a csr leaf must be"),
    (lambda h: _leaf(h, "fc2/kernel")["attrs"].clear(), "attributes of a"),
    (lambda h: _leaf(h, "fc2/kernel")["buffers"].pop("sign"),
     r"buffers of this ternary leaf must be exactly \['mask', 'sigma'"),
    (_span("fc1/bias", "values", [0, -40]), r"span \[0, -40\] must be"),
    (_span("fc1/bias", "values", [0, 40.0]), r"span \[0, 40.0\] must be"),
    (_span("fc1/bias", "values", [2**64, 40]), "data section"),
    (_span("fc1/bias", "values", [4, 40]),
     "overlaps buffer 'values' of leaf 'fc1/bias'"),
    (_span("fc1/bias", "values", "all"), "span 'all'"),
    (_set("fc1/bias", "keys", ["fc1", "b"]), "do not join to its path"),
    (_set("fc1/bias", "keys", []), "list of 1 to 64 strings"),
    (_set("fc1/bias", "keys", ["fc1", 2]), "list of 1 to 64 strings"),
    (_set("fc1/bias", "path", 7), "entry 0: 'path' 7 must be a string"),
    (lambda h: h["leaves"].append(dict(h["leaves"][0])),
     "'fc1/bias' is stored twice"),
    (lambda h: h["leaves"][0].update(path="fc1/kernel/x",
                                     keys=["fc1", "kernel", "x"]),
     "'fc1/kernel' is stored twice or has leaves under it"),
    (lambda h: h["leaves"][1].update(path="fc1/bias/x",
                                     keys=["fc1", "bias", "x"]),
     "'fc1/bias/x' lies under another leaf"),
    (lambda h: h["leaves"][1].update(path="fc1/bias", keys=["fc1/bias"]),
     "'fc1/bias' is stored twice"),
    (_set("fc1/bias", "comment", "hi"), "fields must be exactly"),
    (lambda h: h["leaves"][0].pop("attrs"), "fields must be exactly"),
    (lambda h: h["leaves"].__setitem__(0, [1]), "entry 0 must be an object"),
    (lambda h: h.update(metadata=[]), "header must be a JSON object"),
    (lambda h: h.update(version=2), "header must be a JSON object"),
])
def test_malformed_header_is_refused_in_one_line(saved, edit, match):
  path, _ = saved
  rewrite(path, edit)
  _load_fails(path, match)
  with pytest.raises(spz.CompressedFileError) as e:
    spz.load(path)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("edit,match", [
    (lambda b: b[:-1] + b', "metadata": {}}', "key 'metadata' appears twice"),
    (lambda b: b.replace(b'"accuracy": 0.5', b'"accuracy": NaN'),
     "NaN is not a JSON number"),
    (lambda b: b.replace(b'"accuracy": 0.5', b'"accuracy": 1e999'),
     "number '1e999' is out of range"),
    (lambda b: b.replace(b'"mlp"', b'"ml\xff"'), "header is not UTF-8"),
    (lambda b: b.replace(b'"mlp"', b'"ml\n"'), "header is not valid JSON"),
    (lambda b: b.replace(b'"mlp"', b"1" * 5000), "header is not valid JSON"),
    (lambda b: b"\xef\xbb\xbf" + b, "header is not valid JSON"),  # BOM.
    (lambda b: b.encode("utf-16") if isinstance(b, str) else b.decode(
        "utf-8").encode("utf-16"), "header is not UTF-8"),
    (lambda b: b[:len(b) // 2], "header is not valid JSON"),
])
def test_malformed_header_json_is_refused(saved, edit, match):
  path, _ = saved
  rewrite(path, lambda h: None)  # The header as json.dumps writes it.
  _raw_header(path, edit)
  _load_fails(path, match)

"""Fuzzing the loader: a damaged or hostile file loads as it was, or is refused.

A few small valid files (every encoding, with metadata) are damaged a few
thousand ways, from a seeded `np.random.RandomState`:

* raw damage (byte and bit flips, truncations, insertions, deletions, forged
  preamble sizes), which the checksum or the sizes catch: each file must
  load bit for bit as the original or raise `CompressedFileError`;
* header rewrites with the checksum recomputed, so that they reach the
  header and shape checks (shapes times huge numbers, attributes, buffer
  spans, dtypes, encodings, paths and keys, fields, nesting, raw header
  bytes) and data rewrites that reach the decoders. Such a file may be a
  valid file of other arrays (a float32 leaf declared int32), so it must
  raise `CompressedFileError` or load exactly what its header declares
  (paths, shapes, dtypes, metadata; the original arrays if the header and
  data are the original's), within the ``max_elements`` cap.

`load` and `file_report` both run on each file, and every file that `load`
accepts `file_report` accepts too (it checks all but the buffers' contents).
Special cases follow: /dev/zero, a huge file, a pipe, deep nesting, huge
shapes.
"""

import hashlib
import io
import json
import os
import struct
import threading
import time

import numpy as np
import pytest
from spz_cases import DIGEST
from spz_cases import PREAMBLE
from spz_cases import same_bits
from spz_cases import sparse
from spz_cases import ternary

from sparsify import spz
from sparsify.spz import container
from sparsify.spz import encodings

CAP = 2**16  # max_elements here: a larger claim is refused, and quickly.
WEIRD = (-1, 0, 1, 2, 3, 7, 255, 2**16, 2**31, 2**32, 2**63 - 1, 2**63, 2**64,
         -2**63, 10**30, 10**400, 1.0, 1.5, True, False, None, "1", "", [],
         [1], {}, {"a": 1})


def _files(tmp_path):
  """``{name: (blob, params, metadata)}``: small valid files, as loaded."""
  rng = np.random.default_rng(11)
  mask = np.zeros(35, bool)
  mask[[0, 10, 12, 13, 18, 34]] = True
  shared = spz.shared_layer([0.5, -1.25, 2.0], [2, 0, 1, 1, 0, 2],
                            mask.reshape(5, 7), (5, 7))
  pq_mask = rng.random((12, 6)) < 0.7
  pq = spz.pq_layer(rng.normal(size=(3, 4, 4)), rng.integers(0, 4, (6, 3)),
                    (12, 6), pq_mask)
  pq1 = spz.pq_layer(rng.normal(size=(2, 1, 2)), np.zeros((5, 2), int),
                     (4, 5))
  tern = ternary(rng, (6, 8), 0.5)
  few = np.zeros((40, 10), np.float32)
  few[[3, 31], [2, 7]] = [0.375, -0.375]
  files = {
      "lossless": ({
          "dense": {"kernel": rng.normal(size=(3, 4)).astype(np.float32)},
          "bitmask": {"kernel": sparse(rng, (8, 8), 0.3)},
          "csr": {"kernel": sparse(rng, (4, 300), 0.02)},
          "zeros": {"kernel": np.zeros((3, 50), np.float32)},
          "bool": rng.random((3, 5)) < 0.5,
          "int": rng.integers(-9, 9, 6).astype(np.int16),
          "bf16": rng.normal(size=(2, 3)).astype(encodings.DTYPES[
              "bfloat16"]),
          "scalar": np.array(-0.0, np.float32),
          "empty": np.zeros((0, 3), np.float64),
      }, {"csr/kernel": "csr", "bitmask/kernel": "bitmask",
          "zeros/kernel": "csr"},
                   {"model": {"name": "mlp", "kwargs": {"hidden": [30, 10]}},
                    "accuracy": 0.5, "note": None, "flag": True,
                    "label": "h\u00e9llo"}),
      "quantized": ({
          "fc1": {"kernel": np.zeros((12, 6), np.float32),
                  "bias": np.zeros(6, np.float32)},
          "fc2": {"kernel": np.zeros((4, 5), np.float32)},
      }, {"fc1/kernel": pq, "fc2/kernel": pq1}, {"stage": "pq"}),
      "shared": ({
          "a": {"kernel": np.zeros((5, 7), np.float32)},
          "b": {"kernel": tern},
          "c": {"kernel": few},
      }, {"a/kernel": shared, "b/kernel": "ternary",
          "c/kernel": spz.smallest_ternary(few)}, {}),
  }
  out = {}
  for name, (params, encs, metadata) in files.items():
    path = tmp_path / f"{name}.spz"
    spz.save(path, params, encs, metadata=metadata)
    loaded, meta = spz.load(path)
    out[name] = (path.read_bytes(), loaded, meta)
  encs = {r.encoding for name in out for r in spz.file_report(
      tmp_path / f"{name}.spz").leaves}
  assert encs == set(encodings.ENCODINGS)
  return out


def _split(blob):
  h, d = struct.unpack_from("<QQ", blob, 12)
  return blob[PREAMBLE:PREAMBLE + h], blob[PREAMBLE + h:PREAMBLE + h + d]


def _assemble(head, data):
  body = (container.MAGIC + struct.pack("<IQQ", 1, len(head), len(data))
          + head + data)
  return body + hashlib.sha256(body).digest()


def _leaves_of(params):
  return dict(container.flatten(params))


def _same(params, meta, want_params, want_meta):
  a, b = _leaves_of(params), _leaves_of(want_params)
  return (meta == want_meta and a.keys() == b.keys()
          and all(same_bits(a[k], b[k]) for k in a))


def _raw(rng, blob):
  """Damage that the checksum or the declared sizes must catch."""
  b = bytearray(blob)
  kind = rng.randint(7)
  pos = rng.randint(len(b))
  if kind == 0:
    b[pos] ^= rng.randint(1, 256)
  elif kind == 1:
    b[pos] ^= 1 << rng.randint(8)
  elif kind == 2:
    del b[pos:]
  elif kind == 3:
    b[pos:pos] = rng.bytes(rng.randint(1, 17))
  elif kind == 4:
    del b[pos:pos + rng.randint(1, 17)]
  elif kind == 5:  # Forged header or data length.
    field = 12 + 8 * rng.randint(2)
    value = _pick(rng, [0, 1, 2**63, 2**64 - 1, rng.randint(2**31)])
    b[field:field + 8] = struct.pack("<Q", value)
  else:  # The header or data grows, the preamble says so, the digest not.
    h = struct.unpack_from("<Q", b, 12)[0]
    b[PREAMBLE + h:PREAMBLE + h] = b" "
    b[12:20] = struct.pack("<Q", h + 1)
  return bytes(b)


def _pick(rng, options):
  return options[rng.randint(len(options))]


def _value(rng):
  return _pick(rng, WEIRD)


def _deep(value, depth, rng):
  for _ in range(depth):
    value = [value] if rng.randint(2) else {"x": value}
  return value


def _edit_entry(rng, entry, leaves):
  """One random change to one header entry."""
  kind = rng.randint(16)
  attrs, buffers, shape = entry["attrs"], entry["buffers"], entry["shape"]
  if kind == 0 and shape:  # A dimension times a huge number.
    i = rng.randint(len(shape))
    shape[i] = max(shape[i], 1) * int(2 ** rng.randint(1, 70))
  elif kind == 1:
    if shape and rng.randint(2):
      shape[rng.randint(len(shape))] = _value(rng)
    else:
      entry["shape"] = (shape + [rng.randint(1, 4)] if rng.randint(2)
                        else shape[:-1])
  elif kind == 2 and attrs:
    key = sorted(attrs)[rng.randint(len(attrs))]
    v = attrs[key]
    attrs[key] = (v + _pick(rng, [-1, 1, 8, 2**32]) if encodings.is_int(v)
                  and rng.randint(2) else _value(rng))
  elif kind == 3:
    if attrs and rng.randint(2):
      del attrs[sorted(attrs)[rng.randint(len(attrs))]]
    else:
      attrs["extra"] = _value(rng)
  elif kind == 4 and buffers:  # A span moved or resized.
    name = sorted(buffers)[rng.randint(len(buffers))]
    i = rng.randint(2)
    buffers[name][i] = max(0, buffers[name][i] + _pick(
        rng, [-8, -1, 1, 3, 100, 2**40]))
  elif kind == 5 and buffers:
    name = sorted(buffers)[rng.randint(len(buffers))]
    buffers[name] = _value(rng) if rng.randint(2) else [_value(rng),
                                                         _value(rng)]
  elif kind == 6 and buffers:  # A span onto another buffer's bytes.
    spans = [s for e in leaves for s in e["buffers"].values()
             if isinstance(s, list)]
    name = sorted(buffers)[rng.randint(len(buffers))]
    buffers[name] = list(spans[rng.randint(len(spans))])
  elif kind == 7 and buffers:
    name = sorted(buffers)[rng.randint(len(buffers))]
    span = buffers.pop(name)
    if rng.randint(2):
      buffers[name + "x"] = span
  elif kind == 8:
    entry["dtype"] = (sorted(encodings.DTYPES) + ["float8", "object", 3])[
        rng.randint(len(encodings.DTYPES) + 3)]
  elif kind == 9:
    entry["encoding"] = (list(encodings.ENCODINGS) + ["zip", None])[
        rng.randint(len(encodings.ENCODINGS) + 2)]
  elif kind == 10:  # Path and keys that disagree, or are no strings.
    if rng.randint(2):
      entry["keys"] = entry["keys"] + ["x"]
    else:
      entry[["path", "keys"][rng.randint(2)]] = _value(rng)
  elif kind == 11:  # Another leaf's path, or a path under another leaf.
    other = leaves[rng.randint(len(leaves))]
    keys = list(other["keys"]) + (["w"] if rng.randint(2) else [])
    entry["keys"], entry["path"] = keys, "/".join(map(str, keys))
  elif kind == 12:
    field = sorted(entry)[rng.randint(len(entry))]
    if rng.randint(2):
      del entry[field]
    else:
      entry[field] = _value(rng)
  elif kind == 13:
    entry["more"] = 1
  elif kind == 14:  # Nesting deepened inside the entry.
    field = ("shape", "attrs", "buffers")[rng.randint(3)]
    entry[field] = _deep(entry[field], rng.randint(1, 80), rng)
  else:
    attrs["nnz" if "nnz" in attrs else "extra"] = int(2 ** rng.randint(70))


def _rewrite(rng, blob):
  """A changed header or data, with a valid checksum: ``(file, header)``."""
  head, data = _split(blob)
  header = json.loads(head)
  kind = rng.randint(10)
  if kind < 6 and header["leaves"]:
    leaves = header["leaves"]
    _edit_entry(rng, leaves[rng.randint(len(leaves))], leaves)
  elif kind == 6:  # Whole-header changes.
    choice = rng.randint(6)
    if choice == 0:
      header["leaves"].append(dict(header["leaves"][rng.randint(
          len(header["leaves"]))]))  # A leaf stored twice.
    elif choice == 1:
      header["leaves"][rng.randint(len(header["leaves"]))] = _value(rng)
    elif choice == 2:
      header["metadata"] = _deep(header["metadata"], rng.randint(55, 70),
                                 rng)
    elif choice == 3:
      header[["leaves", "metadata"][rng.randint(2)]] = _value(rng)
    elif choice == 4:
      header["extra"] = 1
    else:
      header["leaves"].reverse()  # Still a valid file: order is free.
  elif kind == 7:  # Raw header bytes: JSON, UTF-8 and nesting errors.
    b = bytearray(head)
    pos = rng.randint(len(b))
    choice = rng.randint(4)
    if choice == 0:
      b[pos] = rng.randint(256)
    elif choice == 1:
      b[pos:pos] = _pick(rng, [b"[" * 100000, b"{\"a\":" * 70, b"\xff\xfe",
                               b"\\", b"\"", b"NaN", b"1e999", b"\x00"])
    elif choice == 2:
      del b[pos:]
    else:  # A key twice.
      b = bytearray(head[:-1] + b', "metadata": {}}')
    return _assemble(bytes(b), data), None
  else:  # Data bytes: only the decoders see these.
    d = bytearray(data)
    if d:
      d[rng.randint(len(d))] ^= rng.randint(1, 256)
    return _assemble(head, bytes(d)), header
  text = json.dumps(header).encode()
  return _assemble(text, data), header


def _check(path, blob, original, strict):
  """Loads and reports one damaged file; returns what happened."""
  params0, meta0 = original
  path.write_bytes(blob)
  outcome = {}
  for name, reader in (("report", spz.file_report), ("load", spz.load)):
    try:
      outcome[name] = reader(path, max_elements=CAP)
    except spz.CompressedFileError as e:
      message = str(e)
      assert message.startswith(f"{path}: ") and "\n" not in message
      outcome[name] = None
  report, loaded = outcome["report"], outcome["load"]
  if loaded is None:
    return "refused"
  assert report is not None, "file_report refused what load accepts"
  params, meta = loaded
  if _same(params, meta, params0, meta0):
    return "same"
  assert not strict, "raw damage loaded as something else"
  header = json.loads(_split(blob)[0])
  arrays = _leaves_of(params)
  assert len(arrays) == len(header["leaves"]) == len(report.leaves)
  assert meta == header["metadata"]
  assert sum(a.size for a in arrays.values()) <= CAP
  for entry, row in zip(header["leaves"], report.leaves):
    x = arrays[tuple(entry["keys"])]
    assert x.shape == tuple(entry["shape"]) == row.shape
    assert x.dtype == encodings.DTYPES[entry["dtype"]]
    assert row.buffers == {k: v[1] for k, v in entry["buffers"].items()}
  return "other"


def test_damaged_files_load_as_they_were_or_are_refused(tmp_path):
  files = _files(tmp_path)
  rng = np.random.RandomState(2024)
  path = tmp_path / "fuzz.spz"
  counts = {}
  start = time.perf_counter()
  for i in range(5000):
    blob, params0, meta0 = files[sorted(files)[i % len(files)]]
    strict = i // len(files) % 3 == 0  # Every file gets both kinds.
    if strict:
      damaged, header = _raw(rng, blob), None
    else:
      damaged, header = _rewrite(rng, blob)
    same_content = (header is not None and _split(damaged)[1] == _split(
        blob)[1] and header == json.loads(_split(blob)[0]))
    outcome = _check(path, damaged, (params0, meta0),
                     strict or same_content)
    key = ("raw" if strict else "rewrite", outcome)
    counts[key] = counts.get(key, 0) + 1
  elapsed = time.perf_counter() - start
  print(f"fuzz: {sum(counts.values())} files in {elapsed:.1f} s: {counts}")
  # No raw damage slips past; rewrites reach every outcome.
  assert {k for k in counts if k[0] == "raw"} == {("raw", "refused")}
  assert counts.get(("rewrite", "refused"), 0) > 2000
  assert counts.get(("rewrite", "same"), 0) > 0
  assert counts.get(("rewrite", "other"), 0) > 0


class _CountingFile(io.FileIO):
  """A file that counts the bytes read from it, in ``READ``."""
  READ: list[int] = []  # noqa: RUF012  (one list, shared on purpose)

  def read(self, size=-1):
    data = super().read(size)
    self.READ.append(len(data))
    return data

  def readinto(self, buffer):
    n = super().readinto(buffer)
    self.READ.append(n)
    return n


@pytest.fixture
def bytes_read(monkeypatch):
  """The list of byte counts each read of the loader returned."""
  _CountingFile.READ = []
  monkeypatch.setattr(container, "open",
                      lambda path, mode, buffering: _CountingFile(path, "r"),
                      raising=False)
  return _CountingFile.READ


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_dev_zero_is_refused_after_the_preamble(bytes_read):
  for reader in (spz.load, spz.file_report):
    with pytest.raises(spz.CompressedFileError, match="magic"):
      reader("/dev/zero")
  assert sum(bytes_read) <= 2 * PREAMBLE


def test_huge_file_is_refused_reading_only_its_preamble(tmp_path, bytes_read):
  path = tmp_path / "huge.bin"
  with open(path, "wb") as f:
    f.truncate(2**34)  # 16 GiB, sparse: no disk used, never read.
  if os.stat(path).st_blocks * 512 > 2**20:
    pytest.skip("this file system has no sparse files")
  for reader in (spz.load, spz.file_report):
    with pytest.raises(spz.CompressedFileError, match="magic"):
      reader(path)
  blob = _assemble(b'{"leaves": [], "metadata": {}}', b"")
  with open(path, "r+b") as f:  # The magic, and sizes that do not fit.
    f.write(blob[:PREAMBLE])
  with pytest.raises(spz.CompressedFileError, match="too long"):
    spz.load(path)
  with open(path, "r+b") as f:
    f.write(blob[:12] + struct.pack("<QQ", 2**34 - PREAMBLE - DIGEST, 0))
  with pytest.raises(spz.CompressedFileError, match="header of 1717986"):
    spz.load(path)
  assert sum(bytes_read) <= 5 * PREAMBLE


def test_a_file_read_from_a_pipe(tmp_path):
  rng = np.random.default_rng(3)
  path = tmp_path / "m.spz"
  params = {"w": {"kernel": sparse(rng, (30, 20), 0.1)}}
  spz.save(path, params, metadata={"a": 1})
  blob = path.read_bytes()
  for cut in (len(blob), len(blob) - 1):
    read, write = os.pipe()

    def feed(write=write, cut=cut):
      os.write(write, blob[:cut])
      os.close(write)

    writer = threading.Thread(target=feed)
    writer.start()
    try:
      if cut == len(blob):
        loaded, meta = spz.load(f"/dev/fd/{read}")
        assert meta == {"a": 1}
        assert same_bits(loaded["w"]["kernel"], params["w"]["kernel"])
      else:
        with pytest.raises(spz.CompressedFileError, match="truncated"):
          spz.load(f"/dev/fd/{read}")
    finally:
      writer.join()
      os.close(read)


def test_deeply_nested_header_is_refused_before_parsing(tmp_path):
  path = tmp_path / "deep.spz"
  for head in (b'{"leaves": [], "metadata": {"x": ' + b"[" * 100000
               + b"]" * 100000 + b"}}",
               b"[" * 10**6,  # Not even JSON.
               b'{"leaves": [], "metadata": ' + b'{"a": ' * 65 + b"1"
               + b"}" * 66):
    path.write_bytes(_assemble(head, b""))
    for reader in (spz.load, spz.file_report):
      with pytest.raises(spz.CompressedFileError, match="deep"):
        reader(path)
  # Brackets inside strings do not count, nor does the limit's own depth.
  meta = _deep(1, container.MAX_DEPTH - 2, np.random.RandomState(0))
  meta = {"s": "[[[[" * 100, "deep": meta}
  path.write_bytes(_assemble(json.dumps(
      {"leaves": [], "metadata": meta}).encode(), b""))
  assert spz.load(path) == ({}, meta)
  with pytest.raises(ValueError, match="deep"):
    spz.save(path, {"w": np.ones(2)}, metadata={"deep": meta})


def test_huge_claimed_shapes_are_refused_before_allocating(tmp_path):
  path = tmp_path / "claim.spz"

  def claim(shape):
    spz.save(path, {"fc": {"kernel": np.zeros((1, 8), np.float32)}},
             {"fc/kernel": "csr"})
    blob = path.read_bytes()
    head, data = _split(blob)
    header = json.loads(head)
    header["leaves"][0]["shape"] = shape
    path.write_bytes(_assemble(json.dumps(header).encode(), data))

  # 2**31 all-zero float32 entries (8 GiB) in 322 bytes: csr needs only its
  # row pointers, so only the cap on elements refuses it.
  claim([1, 2**31])
  assert os.path.getsize(path) < 400
  for reader in (spz.load, spz.file_report):
    with pytest.raises(spz.CompressedFileError,
                       match=r"2147483648 elements.*max_elements=2147483648"):
      reader(path)
  report = spz.file_report(path, max_elements=2**31)  # Allocates nothing.
  assert report.leaves[0].shape == (1, 2**31)
  claim([1, 2**20])
  with pytest.raises(spz.CompressedFileError, match="max_elements"):
    spz.load(path, max_elements=2**20 - 1)
  assert spz.load(path, max_elements=2**20)[0]["fc"]["kernel"].shape == (
      1, 2**20)
  for shape in ([2**20, 2**20], [1, 2**62], [2**40, 0, 2**40], [1] * 33,
                [1, -1], [1, 2.0], [1, True], [1, 10**400]):
    claim(shape)
    for reader in (spz.load, spz.file_report):
      with pytest.raises(spz.CompressedFileError):
        reader(path, max_elements=2**62)
  with pytest.raises(ValueError, match="max_elements"):
    spz.load(path, max_elements=-1)

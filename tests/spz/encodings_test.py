"""Tests for sparsify.spz.encodings: sizes and bits are worked out by hand."""

import math
import os
import struct

import ml_dtypes
import numpy as np
import pytest
from spz_cases import AUTO
from spz_cases import pq_reference
from spz_cases import same_bits
from spz_cases import SIGMA
from spz_cases import sparse
from spz_cases import ternary

from sparsify import quantize
from sparsify import spz


def _width(max_value):
  """Bytes of the smallest unsigned int that holds ``max_value``."""
  for w in (1, 2, 4, 8):
    if max_value < 2 ** (8 * w):
      return w
  raise AssertionError(max_value)


def _expected_lossless(x):
  """Hand formula of the three lossless sizes, nnz from the raw bytes."""
  b, size = x.dtype.itemsize, x.size
  nnz = int(np.frombuffer(x.tobytes(), np.uint8).reshape(size, b).any(
      axis=1).sum()) if size else 0
  rows = math.prod(x.shape[:-1]) if x.ndim else 1
  cols = x.shape[-1] if x.ndim else 1
  return {"dense": b * size,
          "bitmask": -(-size // 8) + b * nnz,
          "csr": (rows + 1) * _width(nnz) + nnz * (_width(max(cols - 1, 0))
                                                   + b)}


def _lossless_cases():
  rng = np.random.default_rng(0)
  return {
      "conv4d": sparse(rng, (3, 3, 2, 5), 0.3),
      "dense2d": rng.normal(size=(7, 4)).astype(np.float32),
      "special": np.array([[0., -0., np.nan, 1.5], [np.inf, 0., -2., 0.]],
                          np.float32),
      "scalar": np.array(2.5, np.float32),
      "neg_zero_scalar": np.array(-0.0, np.float32),
      "vector": sparse(rng, (300,), 0.1),
      "empty": np.zeros((0, 4), np.float32),
      "all_zero": np.zeros((5, 3), np.float32),
      "float64": sparse(rng, (5, 6), 0.5, np.float64),
      "float16": sparse(rng, (4, 9), 0.5, np.float16),
      "bfloat16": sparse(rng, (6, 5), 0.4).astype(ml_dtypes.bfloat16),
      "int32": rng.integers(-3, 3, size=(4, 5)).astype(np.int32),
    "big_endian": sparse(rng, (3, 4), 0.5).astype(">f4"),
      "uint8": rng.integers(0, 3, size=(10,)).astype(np.uint8),
      "bool": rng.random((3, 9)) < 0.3,
      "wide_rows": sparse(rng, (2, 300), 0.02),  # 2-byte column indices.
      "long_row": rng.normal(size=(1, 70000)).astype(np.float32),  # 4-byte.
  }


LOSSLESS = _lossless_cases()


@pytest.mark.parametrize("encoding", ["dense", "bitmask", "csr"])
@pytest.mark.parametrize("case", sorted(LOSSLESS))
def test_lossless_round_trip_is_bitwise_with_hand_sizes(tmp_path, case,
                                                        encoding):
  x = LOSSLESS[case]
  want = x.astype(x.dtype.newbyteorder("="))  # Loaded in native byte order.
  leaf = spz.encode_leaf(x, encoding)
  assert same_bits(spz.decode_leaf(leaf), want)
  path = tmp_path / "m.spz"
  spz.save(path, {"layer": {"w": x}}, {"layer/w": encoding})
  params, metadata = spz.load(path)
  assert metadata == {}
  assert same_bits(params["layer"]["w"], want)
  (row,) = spz.file_report(path).leaves
  assert row.encoding == encoding
  assert row.nbytes == _expected_lossless(x)[encoding]


def test_lossless_buffers_have_the_documented_bits():
  x = np.array([[0., 1.5, 0.], [-2., 0., 0.]], np.float32)
  values = struct.pack("<2f", 1.5, -2.0)
  bitmask = spz.encode_leaf(x, "bitmask")
  # Entries 010 100 -> 0b01010000.
  assert bitmask.buffers == {"mask": bytes([0b01010000]), "values": values}
  csr = spz.encode_leaf(x, "csr")
  assert csr.buffers == {"indptr": bytes([0, 1, 2]),
                         "indices": bytes([1, 0]), "values": values}
  dense = spz.encode_leaf(x, "dense")
  assert dense.buffers == {"values": struct.pack("<6f", *x.ravel())}


@pytest.mark.parametrize("case", sorted(LOSSLESS))
def test_lossless_sizes_follow_the_hand_formula(case):
  x = LOSSLESS[case]
  b, size = x.dtype.itemsize, x.size
  nnz = int(np.frombuffer(x.tobytes(), np.uint8).reshape(size, b).any(
      axis=1).sum()) if size else 0
  want = _expected_lossless(x)
  sizes = spz.lossless_sizes(x.shape, nnz, b)
  assert [s.encoding for s in sizes] == ["dense", "bitmask", "csr"]
  assert {s.encoding: s.nbytes for s in sizes} == want
  assert {s.encoding: s.index_bytes for s in sizes} == {
      "dense": 0, "bitmask": -(-size // 8), "csr": want["csr"] - b * nnz}
  best = spz.smallest_lossless(x.shape, nnz, b)
  first = next(e for e in ("dense", "bitmask", "csr")
               if want[e] == min(want.values()))
  assert (best.encoding, best.nbytes) == (first, want[first])
  assert spz.choose_encoding(x) == first


def test_automatic_choice_picks_the_smallest(tmp_path):
  params = {name: {"kernel": x} for name, (x, _, _) in AUTO.items()}
  path = tmp_path / "auto.spz"
  spz.save(path, params)
  report = spz.file_report(path)
  rows = {row.path: row for row in report.leaves}
  assert sorted(rows) == sorted(f"{n}/kernel" for n in AUTO)
  for name, (x, encoding, nbytes) in AUTO.items():
    assert spz.choose_encoding(x) == encoding, name
    assert (rows[f"{name}/kernel"].encoding,
            rows[f"{name}/kernel"].nbytes) == (encoding, nbytes), name
  loaded, _ = spz.load(path)
  for name, (x, _, _) in AUTO.items():
    assert same_bits(loaded[name]["kernel"], x)


@pytest.mark.parametrize("shape,s,k,masked,codebook_bytes,code_bytes", [
    # n = 36 inputs, m = 6 rows, d = 9, 3-bit codes: 6 * 4 * 3 = 72 bits.
    ((3, 3, 4, 6), 4, 5, True, 4 * 4 * 5 * 9, 9),
    # n = 20, m = 7, d = 4, 4-bit codes: 7 * 5 * 4 = 140 bits -> 18 bytes.
    ((20, 7), 5, 16, False, 4 * 5 * 16 * 4, 18),
    # k = 1: codes take 0 bits.
    ((8, 3), 2, 1, False, 4 * 2 * 1 * 4, 0),
    # n = 6, m = 10, d = 2, 1-bit codes: 30 bits -> 4 bytes.
    ((6, 10), 3, 2, True, 4 * 3 * 2 * 2, 4),
    # n = 16, m = 4, d = 4, 8-bit codes: 16 bytes.
    ((16, 4), 4, 256, False, 4 * 4 * 256 * 4, 16),
])
def test_pq_round_trip_and_sizes(tmp_path, shape, s, k, masked,
                                 codebook_bytes, code_bytes):
  rng = np.random.default_rng(1)
  m, n = shape[-1], math.prod(shape[:-1])
  codebooks = rng.normal(size=(s, k, n // s)).astype(np.float32)
  codes = rng.integers(0, k, size=(m, s))
  mask = rng.random(shape) < 0.6 if masked else None
  layer = spz.pq_layer(codebooks, codes, shape, mask)
  expected = pq_reference(codebooks, codes, shape, mask)
  path = tmp_path / "pq.spz"
  spz.save(path, {"fc": {"kernel": np.zeros(shape, np.float32)}},
           {"fc/kernel": layer})
  params, _ = spz.load(path)
  got = params["fc"]["kernel"]
  assert got.dtype == np.float32 and got.shape == shape
  np.testing.assert_array_equal(got, expected)
  (row,) = spz.file_report(path).leaves
  mask_bytes = -(-math.prod(shape) // 8) if masked else 0
  assert row.encoding == "pq"
  assert row.buffers == {"codebooks": codebook_bytes, "codes": code_bytes,
                         **({"mask": mask_bytes} if masked else {})}
  assert row.nbytes == codebook_bytes + code_bytes + mask_bytes


def test_pq_decodes_a_hand_worked_kernel():
  codebooks = np.array([[[1, 2], [3, 4]], [[5, 6], [7, 8]]], np.float32)
  layer = spz.pq_layer(codebooks, [[0, 1], [1, 0]], (4, 2))
  # W rows: [1, 2 | 7, 8] and [3, 4 | 5, 6]; the kernel is W.T.
  want = np.array([[1, 3], [2, 4], [7, 5], [8, 6]], np.float32)
  np.testing.assert_array_equal(layer.decode(), want)
  leaf = spz.encode_leaf(want, layer)
  np.testing.assert_array_equal(spz.decode_leaf(leaf), want)
  # 1-bit codes 0 1 1 0 -> 0b01100000.
  assert leaf.buffers["codes"] == bytes([0b01100000])


@pytest.mark.parametrize("k,codes,packed", [
    (4, [[0, 1], [2, 3]], [0b00011011]),  # 00 01 10 11
    (5, [[4, 1], [2, 3]], [0b10000101, 0b00110000]),  # 100 001 010 011
])
def test_pq_codes_are_packed_most_significant_bit_first(k, codes, packed):
  layer = spz.pq_layer(np.zeros((2, k, 1)), codes, (2, 2))
  leaf = spz.encode_leaf(np.zeros((2, 2), np.float32), layer)
  assert leaf.buffers["codes"] == bytes(packed)
  assert leaf.attrs["code_bits"] == (2 if k == 4 else 3)


@pytest.mark.parametrize("args,match", [
    ((np.zeros((2, 4, 3)), np.zeros((5, 2), int), (7, 5)), "prod"),
    ((np.zeros((2, 4)), np.zeros((5, 2), int), (6, 5)), "codebooks"),
    ((np.zeros((2, 4, 3)), np.zeros((5, 3), int), (6, 5)), r"\(m, s\)"),
    ((np.zeros((2, 4, 3)), np.zeros((5, 2)), (6, 5)), "integers"),
    ((np.zeros((2, 4, 3)), np.full((5, 2), 4), (6, 5)), r"\[0, 4\)"),
    ((np.zeros((2, 4, 3)), np.full((5, 2), -1), (6, 5)), r"\[0, 4\)"),
    ((np.zeros((2, 4, 3)), np.zeros((5, 2), int), (6, 5), np.ones((5, 6),
                                                                  bool)),
     "mask"),
])
def test_pq_layer_rejects_bad_input(args, match):
  with pytest.raises(ValueError, match=match):
    spz.pq_layer(*args)


def test_pq_record_must_fit_the_leaf(tmp_path):
  layer = spz.pq_layer(np.zeros((2, 4, 3)), np.zeros((5, 2), int),
                       (6, 5))
  with pytest.raises(ValueError, match=r"'fc/kernel'.*shape"):
    spz.save(tmp_path / "x.spz", {"fc": {"kernel": np.zeros((5, 6))}},
             {"fc/kernel": layer})
  with pytest.raises(ValueError, match="float"):
    spz.encode_leaf(np.zeros((6, 5), np.int32), layer)
  with pytest.raises(ValueError, match="PQLayer"):
    spz.encode_leaf(np.zeros((6, 5), np.float32), "pq")
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize("density", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("as_string", [False, True])
def test_ternary_round_trip_and_sizes(tmp_path, density, as_string):
  rng = np.random.default_rng(2)
  kernel = ternary(rng, (3, 3, 2, 8), density)
  encoding = "ternary" if as_string else spz.ternary_layer(kernel)
  path = tmp_path / "t.spz"
  spz.save(path, {"conv": {"kernel": kernel}},
           {"conv/kernel": encoding})
  got = spz.load(path)[0]["conv"]["kernel"]
  assert got.dtype == np.float32 and got.shape == kernel.shape
  assert set(np.unique(got)) <= {-SIGMA, 0.0, SIGMA}
  np.testing.assert_array_equal(got, kernel)
  nnz = int(np.count_nonzero(kernel))
  (row,) = spz.file_report(path).leaves
  # 144 mask bits, one sign bit per nonzero, one float32 sigma.
  assert row.buffers == {"mask": 18, "sign": -(-nnz // 8), "sigma": 4}
  assert row.encoding == "ternary"


def test_ternary_costs_two_bits_per_weight_at_worst():
  kernel = ternary(np.random.default_rng(3), (4, 8), 1.0)
  leaf = spz.encode_leaf(kernel, "ternary")
  assert leaf.nbytes == 2 * 32 // 8 + 4


@pytest.mark.parametrize("density", [0.01, 0.05, 0.3, 1.0])
def test_smallest_ternary_takes_the_fewer_bytes_of_two_layouts(density):
  kernel = ternary(np.random.default_rng(4), (64, 50), density)
  layer = spz.smallest_ternary(kernel)
  np.testing.assert_array_equal(layer.decode(), kernel)
  mask = kernel.ravel() != 0
  nnz = int(mask.sum())
  bitmask = -(-mask.size // 8) + -(-nnz // 8) + 4
  # Relative indices by hand: each nonzero follows r skipped positions,
  # written as r // E escapes plus one entry, for the best g in 1..16.
  skips = np.diff(np.concatenate([[-1], np.flatnonzero(mask)])) - 1
  gaps = min(-(-g * int(np.sum(skips // (2**g - 1) + 1)) // 8)
             for g in range(1, 17))
  relative = 8 + gaps + -(-nnz // 8)
  leaf = spz.encode_leaf(kernel, layer)
  assert leaf.nbytes == min(bitmask, relative)
  want = "ternary" if bitmask <= relative else "shared"
  assert leaf.encoding == want
  if density <= 0.05:
    assert want == "shared"


def test_ternary_buffers_have_the_documented_bits():
  s = SIGMA
  kernel = np.array([[s, 0, -s], [0, -s, s]], np.float32)
  layer = spz.ternary_layer(kernel)
  assert layer.sigma == 0.375
  leaf = spz.encode_leaf(kernel, layer)
  # mask 101011 -> 0b10101100; signs of +s, -s, -s, +s -> 0b01100000.
  assert leaf.buffers == {"mask": bytes([0b10101100]),
                          "sign": bytes([0b01100000]),
                          "sigma": struct.pack("<f", 0.375)}
  np.testing.assert_array_equal(layer.decode(), kernel)


def test_ternary_keeps_bfloat16_and_all_zero_kernels(tmp_path):
  rng = np.random.default_rng(4)
  bf = ternary(rng, (6, 4), 0.5).astype(ml_dtypes.bfloat16)
  zeros = np.zeros((3, 4), np.float32)
  assert spz.ternary_layer(zeros).sigma == 0.0
  path = tmp_path / "t.spz"
  spz.save(path, {"a": {"kernel": bf}, "b": {"kernel": zeros}},
           {"a/kernel": "ternary", "b/kernel": "ternary"})
  params, _ = spz.load(path)
  assert same_bits(params["a"]["kernel"], bf)
  assert same_bits(params["b"]["kernel"], zeros)


@pytest.mark.parametrize("kernel,match", [
    (np.array([0.5, -0.5, 0.25], np.float32), "not ternary"),
    (np.array([1, 0, -1], np.int32), "float"),
    (np.array([0.1, 0.0, -0.1], np.float64), "float32"),
    (np.array([np.inf, 0.0], np.float32), "finite"),
])
def test_ternary_layer_rejects_non_ternary_kernels(kernel, match):
  with pytest.raises(ValueError, match=match):
    spz.ternary_layer(kernel)


# --- shared: weight sharing with relative indices ---------------------------


def _bitstream(buf):
  return "".join(format(byte, "08b") for byte in buf)


def _np_gap_entries(mask, g):
  """The documented gap stream, written out entry by entry."""
  escape, entries, previous = 2**g - 1, [], -1
  for position in np.flatnonzero(mask):
    skip = position - previous - 1
    while skip >= escape:
      entries.append(escape)
      skip -= escape
    entries.append(skip)
    previous = position
  return entries


def _np_best_gap_bits(mask):
  """(g, gap bytes) of the smallest gap buffer, brute force over g."""
  sizes = [-(-g * len(_np_gap_entries(mask, g)) // 8) for g in range(1, 17)]
  best = min(sizes)
  return sizes.index(best) + 1, best


def _np_shared_decode_leaf(leaf):
  """Decodes a shared leaf's buffers bit by bit, as the docstring says."""
  shape, attrs = leaf.shape, leaf.attrs
  g, e, nnz = attrs["gap_bits"], attrs["gap_entries"], attrs["nnz"]
  k, c = attrs["centroids"], attrs["code_bits"]
  codebook = struct.unpack(f"<{k}f", leaf.buffers["codebook"])
  gap_bits = _bitstream(leaf.buffers["gaps"])
  code_bits = _bitstream(leaf.buffers["codes"])
  out = np.zeros(math.prod(shape), np.float32)
  position, weights = 0, 0
  for i in range(e):
    entry = int(gap_bits[i * g:(i + 1) * g], 2)
    if entry == 2**g - 1:
      position += entry
      continue
    position += entry
    code = int(code_bits[weights * c:(weights + 1) * c] or "0", 2)
    out[position] = codebook[code]
    position += 1
    weights += 1
  assert weights == nnz
  return out.reshape(shape)


def _np_shared_reference(codebook, codes, mask):
  out = np.zeros(mask.shape, np.float32)
  out[mask] = np.asarray(codebook, np.float32)[np.asarray(codes)]
  return out


def _random_shared(rng, shape, density, k):
  mask = rng.random(shape) < density
  codebook = rng.normal(size=k).astype(np.float32)
  codes = rng.integers(0, k, size=int(mask.sum()))
  return spz.shared_layer(codebook, codes, mask, shape)


@pytest.mark.parametrize("shape,density,k", [
    ((40, 30), 0.05, 32),  # sparse: long gaps.
    ((3, 3, 4, 6), 0.4, 5),  # conv kernel, 3-bit codes for k = 5.
    ((7, 11), 1.0, 2),  # nothing pruned: every gap 0.
    ((6, 9), 0.0, 4),  # everything pruned.
    ((2, 500), 0.003, 1),  # k = 1: 0-bit codes, gaps of hundreds.
    ((5,), 0.6, 65536),  # 16-bit codes.
])
def test_shared_round_trip_is_exact_with_the_documented_sizes(
    tmp_path, shape, density, k):
  rng = np.random.default_rng(30)
  layer = _random_shared(rng, shape, density, k)
  want = _np_shared_reference(layer.codebook, layer.codes, layer.mask)
  path = tmp_path / "s.spz"
  spz.save(path, {"fc": {"kernel": np.zeros(shape, np.float32)}},
           {"fc/kernel": layer})
  got = spz.load(path)[0]["fc"]["kernel"]
  assert same_bits(got, want)
  leaf = spz.encode_leaf(np.zeros(shape, np.float32), layer)
  assert same_bits(_np_shared_decode_leaf(leaf), want)
  nnz = int(layer.mask.sum())
  g, gap_bytes = _np_best_gap_bits(layer.mask)
  c = math.ceil(math.log2(k)) if k > 1 else 0
  assert leaf.attrs == {"nnz": nnz, "centroids": k, "code_bits": c,
                        "gap_bits": g,
                        "gap_entries": len(_np_gap_entries(layer.mask, g))}
  (row,) = spz.file_report(path).leaves
  assert row.encoding == "shared"
  assert row.buffers == {"codebook": 4 * k, "gaps": gap_bytes,
                         "codes": -(-c * nnz // 8)}
  assert row.nbytes == 4 * k + gap_bytes + -(-c * nnz // 8)


def test_shared_buffers_of_a_hand_worked_kernel():
  # Kept positions 0, 10, 12, 13, 18, 34 of 35: skips 0, 9, 1, 0, 4, 15.
  mask = np.zeros(35, bool)
  mask[[0, 10, 12, 13, 18, 34]] = True
  mask = mask.reshape(5, 7)
  codebook = np.array([0.5, -1.25, 2.0], np.float32)
  layer = spz.shared_layer(codebook, [2, 0, 1, 1, 0, 2], mask, (5, 7))
  # Gap entries (e) and bytes ceil(g e / 8) per g, escape E = 2**g - 1:
  # g=1, E=1:  e = 6 + 29 = 35 -> 5 bytes;
  # g=2, E=3:  e = 6 + 3 + 1 + 5 = 15 -> 30 bits, 4 bytes;
  # g=3, E=7:  e = 6 + 1 + 2 = 9 -> 27 bits, 4 bytes;
  # g=4, E=15: e = 6 + 1 = 7 -> 28 bits, 4 bytes;
  # g=5: e = 6 -> 30 bits, 4 bytes; g=6..16: 5 bytes or more.
  # The tie at 4 bytes goes to g = 2.
  leaf = spz.encode_leaf(np.zeros((5, 7), np.float32), layer)
  assert leaf.attrs == {"nnz": 6, "centroids": 3, "code_bits": 2,
                        "gap_bits": 2, "gap_entries": 15}
  # Entries 0 | 3 3 3 0 | 1 | 0 | 3 1 | 3 3 3 3 3 0, two bits each:
  # 00111111 00010011 01111111 1111 + 0000 padding.
  assert leaf.buffers["gaps"] == bytes([0x3F, 0x13, 0x7F, 0xF0])
  # Codes 2 0 1 1 0 2: 10000101 0010 + 0000 padding.
  assert leaf.buffers["codes"] == bytes([0b10000101, 0b00100000])
  assert leaf.buffers["codebook"] == struct.pack("<3f", 0.5, -1.25, 2.0)
  assert leaf.nbytes == 12 + 4 + 2
  want = np.zeros(35, np.float32)
  want[[0, 10, 12, 13, 18, 34]] = [2.0, 0.5, -1.25, -1.25, 0.5, 2.0]
  np.testing.assert_array_equal(spz.decode_leaf(leaf),
                                want.reshape(5, 7))


def test_shared_one_long_gap_picks_the_narrowest_entry_that_holds_it():
  mask = np.zeros(1000, bool)
  mask[999] = True
  layer = spz.shared_layer([1.5], [0], mask, (1000,))
  leaf = spz.encode_leaf(np.zeros(1000, np.float32), layer)
  # Skip 999: g = 9 needs 999 // 511 = 1 escape, 2 entries, 18 bits -> 3
  # bytes; g = 10 holds 999 < 1023 in one entry, 10 bits -> 2 bytes, and no
  # g gives fewer than 2 bytes.
  assert leaf.attrs["gap_bits"] == 10 and leaf.attrs["gap_entries"] == 1
  assert leaf.buffers["gaps"] == bytes([0b11111001, 0b11000000])  # 999
  assert leaf.buffers["codes"] == b""
  assert leaf.nbytes == 4 + 2
  assert spz.decode_leaf(leaf)[999] == 1.5
  assert np.count_nonzero(spz.decode_leaf(leaf)) == 1


@pytest.mark.parametrize("density", [0.002, 0.02, 0.1, 0.3, 0.7, 0.97])
def test_shared_gap_bits_minimise_the_gap_buffer(density):
  rng = np.random.default_rng(31)
  layer = _random_shared(rng, (60, 50), density, 4)
  leaf = spz.encode_leaf(np.zeros((60, 50), np.float32), layer)
  sizes = {g: -(-g * len(_np_gap_entries(layer.mask, g)) // 8)
           for g in range(1, 17)}
  assert len(leaf.buffers["gaps"]) == min(sizes.values())
  assert leaf.attrs["gap_bits"] == min(g for g in sizes
                                       if sizes[g] == min(sizes.values()))


def test_shared_95_percent_sparse_lenet_layer_size_on_disk(tmp_path):
  rng = np.random.default_rng(32)
  shape = (784, 300)
  kernel = sparse(rng, shape, 0.05)
  code = quantize.share_weights(kernel, bits=5)
  layer = spz.shared_layer(*code)
  path = tmp_path / "fc1.spz"
  spz.save(path, {"fc1": {"kernel": kernel}}, {"fc1/kernel": layer})
  loaded = spz.load(path)[0]["fc1"]["kernel"]
  assert same_bits(loaded, np.asarray(quantize.shared_decode(code)))
  mask = kernel != 0
  nnz = int(mask.sum())
  g, gap_bytes = _np_best_gap_bits(mask)
  want = 4 * 32 + gap_bytes + -(-5 * nnz // 8)
  (row,) = spz.file_report(path).leaves
  assert row.nbytes == want
  # The mask alone as a bitmask (what pq with a mask pays) takes 29400 bytes;
  # the gap stream costs less than 6.5 bits per kept weight.
  assert gap_bytes < 6.5 * nnz / 8
  assert want < math.ceil(784 * 300 / 8)
  assert 4 * 784 * 300 / want > 55


@pytest.mark.parametrize("args,match", [
    ((np.zeros(65537), [], np.zeros((2, 2), bool), (2, 2)), "65536"),
    ((np.zeros((2, 2)), [], np.zeros((2, 2), bool), (2, 2)), "codebook"),
    ((np.zeros(0), [], np.zeros((2, 2), bool), (2, 2)), "codebook"),
    ((np.zeros(4), [0], np.ones((2, 3), bool), (2, 2)),
     r"mask must be booleans of the kernel's shape \(2, 2\)"),
    ((np.zeros(4), [0], np.ones((2, 2)), (2, 2)), "booleans"),
    ((np.zeros(4), [0, 1], np.eye(2, dtype=bool) | True, (2, 2)),
     r"shape \(4,\)"),
    ((np.zeros(4), [0.0], np.eye(1, dtype=bool), (1, 1)), "integers"),
    ((np.zeros(4), [4], np.eye(1, dtype=bool), (1, 1)), r"\[0, 4\)"),
    ((np.zeros(4), [0], np.eye(1, dtype=bool), "ab"), "ints"),
])
def test_shared_layer_rejects_bad_input(args, match):
  with pytest.raises(ValueError, match=match):
    spz.shared_layer(*args)


def test_shared_record_must_fit_the_leaf(tmp_path):
  layer = spz.shared_layer(np.zeros(2), [0], np.eye(1, 6, dtype=bool),
                           (1, 6))
  with pytest.raises(ValueError, match=r"'fc/kernel'.*SharedLayer of shape"):
    spz.save(tmp_path / "x.spz", {"fc": {"kernel": np.zeros((6, 1))}},
             {"fc/kernel": layer})
  with pytest.raises(ValueError, match="float"):
    spz.encode_leaf(np.zeros((1, 6), np.int32), layer)
  with pytest.raises(ValueError, match="SharedLayer"):
    spz.encode_leaf(np.zeros((1, 6), np.float32), "shared")
  assert not os.listdir(tmp_path)

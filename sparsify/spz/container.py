"""One file for a compressed model: dense, bitmask, CSR, PQ, ternary, shared.

`save` writes a parameter pytree (nested dicts of arrays, such as
``variables['params']`` of a Flax Linen model) to one file, each leaf in one
encoding, with JSON metadata; `load` reads both back. `file_report` lists the
bytes each leaf takes on disk, so compression is counted in real bytes.

Encodings of a leaf with ``size`` entries of ``b`` bytes each (4 for float32)
of which ``nnz`` are stored. An entry is stored when its bit pattern is not
all zeros: +0.0 is a zero, while -0.0 and NaN are kept, so the three lossless
encodings give the leaf back bit for bit.

* ``dense`` (lossless): ``values``, every entry in C order; ``b * size`` bytes.
* ``bitmask`` (lossless): ``mask``, one bit per entry in C order, 1 where the
  entry is stored; ``values``, the stored entries in C order.
  ``ceil(size / 8) + b * nnz`` bytes.
* ``csr`` (lossless): the leaf viewed as a ``rows x cols`` matrix with
  ``cols = shape[-1]`` and ``rows = prod(shape[:-1])`` (a scalar is 1 x 1), in
  compressed sparse rows: ``indptr`` (``rows + 1`` entries, ``indptr[r]`` =
  entries stored before row ``r``), ``indices`` (the ``nnz`` column indices,
  increasing within a row) and ``values`` (``nnz``). Each index buffer uses
  the fewest of 1, 2, 4, 8 bytes (``wp``, ``wi``) whose unsigned range holds
  its largest possible value, ``nnz`` for ``indptr`` and ``cols - 1`` for
  ``indices``. ``(rows + 1) * wp + nnz * (wi + b)`` bytes.
* ``pq`` (lossy, from a `PQLayer`): a kernel with output features last is
  the matrix ``W = kernel.reshape(-1, shape[-1]).T`` of shape ``(m, n)``; its
  columns split into ``s`` blocks of ``d = n / s``, and block ``j`` of row
  ``i`` is ``codebooks[j, codes[i, j]]``. Buffers: ``codebooks``, float32
  ``(s, k, d)``; ``codes``, the ``m x s`` codes in C order, ``c = ceil(log2
  k)`` bits each (0 bits when ``k = 1``); optional ``mask``, one bit per
  kernel entry in C order, decoded entries are 0 where it is 0.
  ``4 s k d + ceil(m s c / 8)`` bytes, plus ``ceil(size / 8)`` with a mask.
* ``ternary`` (from a `TernaryLayer`; lossless for a kernel with values in
  ``{-sigma, 0, +sigma}``): ``mask``, one bit per entry, 1 for nonzero;
  ``sign``, one bit per nonzero in C order, 1 for ``-sigma``; ``sigma``, one
  float32. ``ceil(size / 8) + ceil(nnz / 8) + 4`` bytes: ``size + nnz`` bits,
  so at most 2 bits per weight, plus 4 bytes.
* ``shared`` (lossy, from a `SharedLayer`; Deep Compression's pruning, weight
  sharing and relative indices): the ``nnz`` kept weights, in C order of the
  flattened kernel at positions ``p_0 < p_1 < ...``, each take one of ``k``
  shared values. Buffers: ``codebook``, ``k`` float32; ``gaps``, ``e``
  entries of ``g`` bits (``1 <= g <= 16``, escape ``E = 2**g - 1``) telling
  where the kept weights lie; ``codes``, one ``c = ceil(log2 k)``-bit code
  per kept weight in C order (0 bits when ``k = 1``), the weight being
  ``codebook[code]``. Kept weight ``i`` follows ``r_i = p_i - p_{i-1} - 1``
  skipped positions (``p_{-1} = -1``, so ``r_0 = p_0``), written as
  ``r_i // E`` entries ``E`` ("skip ``E`` positions, no weight here")
  followed by one entry ``r_i % E`` ("skip that many, then a weight"); so
  ``e = nnz + sum_i (r_i // E)``, and positions after the last kept weight
  are not written. ``g`` is the value in 1..16 whose gap buffer is smallest
  (the smallest such ``g`` on a tie). ``4 k + ceil(g e / 8) + ceil(c nnz /
  8)`` bytes.

A leaf without an explicit encoding gets the smallest of dense, bitmask and
csr (ties go to the first in that order); for float32 leaves these are the
sizes `report.compression_report` counts, except that -0.0 is stored here.

Bit buffers are packed as `np.packbits` packs: bit ``i`` of the stream is bit
``7 - i % 8`` (most significant first) of byte ``i // 8``, the last byte
padded with 0 bits; a PQ code enters the stream most significant bit first.
Typed buffers and all integers of the layout are little-endian.

File layout, version 1::

  offset       bytes  field
  0            8      magic b"\\x89SPZ\\r\\n\\x1a\\n"
  8            4      format version, uint32 (1)
  12           8      H: length of the header, uint64
  20           8      D: length of the data section, uint64
  28           H      header, UTF-8 JSON (below)
  28 + H       D      data section: every buffer, back to back, no padding
  28 + H + D   32     SHA-256 of bytes [0, 28 + H + D)

The header is ``{"leaves": [entry, ...], "metadata": {...}}`` with one entry
per leaf in `base.named_leaves` order (dict keys sorted)::

  {"path": "fc1/kernel", "keys": ["fc1", "kernel"], "encoding": "csr",
   "shape": [784, 300], "dtype": "float32",
   "attrs": {"nnz": 23520, "indptr_bytes": 2, "index_bytes": 2},
   "buffers": {"indptr": [0, 1570], "indices": [1570, 47040],
               "values": [48610, 94080]}}

``keys`` rebuilds the nested dicts; ``dtype`` (a numpy dtype name: bool,
int8-64, uint8-64, float16/32/64, bfloat16) is the leaf's, which is also the
type of stored ``values``; ``buffers`` maps each buffer to ``[offset,
length]`` in bytes from the start of the data section. ``attrs``: dense
``{}``; bitmask and ternary ``{"nnz"}``; csr ``{"nnz", "indptr_bytes",
"index_bytes"}``; pq ``{"subspaces": s, "centroids": k, "code_bits": c,
"masked": bool}``; shared ``{"nnz", "centroids": k, "code_bits": c,
"gap_bits": g, "gap_entries": e}``.

Saving is atomic: the file is written under a temporary name in the same
directory, then renamed over ``path``, so a failed save leaves a previous
file as it was.
"""

from collections.abc import Mapping
import dataclasses
import hashlib
import json
import math
import os
import struct
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np

MAGIC = b"\x89SPZ\r\n\x1a\n"
VERSION = 1
ENCODINGS = ("dense", "bitmask", "csr", "pq", "ternary", "shared")
_LOSSLESS = ("dense", "bitmask", "csr")  # Also the order that breaks ties.
_PREAMBLE = struct.Struct("<8sIQQ")
_DIGEST_BYTES = 32
_DTYPES = {name: np.dtype(name) for name in (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
    "uint64", "float16", "float32", "float64")}
_DTYPES["bfloat16"] = np.dtype(ml_dtypes.bfloat16)


class CompressedFileError(ValueError):
  """A compressed model file that cannot be read; says which file and why."""

  def __init__(self, path: Any, problem: str):
    self.path = os.fspath(path)
    self.problem = problem
    super().__init__(f"{self.path}: {problem}")


class PQLayer(NamedTuple):
  """A product-quantized kernel; `pq_layer` builds one and validates it.

  ``W = kernel.reshape(-1, shape[-1]).T`` (``m x n``) has
  ``W[:, j*d:(j+1)*d] = codebooks[j][codes[:, j]]``, ``d = n // s``, and
  ``kernel = W.T.reshape(shape)``, zeroed where ``mask`` is False.

  Attributes:
    codebooks: float32 ``(s, k, d)``.
    codes: integers ``(m, s)`` in ``[0, k)``.
    shape: the kernel's shape; ``m = shape[-1]``, ``n = prod(shape[:-1])``.
    mask: None, or booleans of ``shape``: the weights kept after pruning.
  """
  codebooks: np.ndarray
  codes: np.ndarray
  shape: tuple[int, ...]
  mask: np.ndarray | None = None

  def decode(self) -> np.ndarray:
    """Returns the float32 kernel.

    Returns:
      A float32 array of ``shape``, zero where ``mask`` is False.
    """
    s, _, d = self.codebooks.shape
    w = self.codebooks[np.arange(s), self.codes]  # (m, s, d)
    kernel = w.reshape(len(self.codes), s * d).T.reshape(self.shape)
    if self.mask is not None:
      kernel = np.where(self.mask, kernel, np.float32(0))
    return kernel.astype(np.float32)


class TernaryLayer(NamedTuple):
  """A kernel with values in ``{-sigma, 0, +sigma}``; see `ternary_layer`.

  Attributes:
    sigma: the magnitude of every nonzero weight (a float32 value).
    mask: booleans of the kernel's shape, True where the weight is nonzero.
    negative: booleans of the kernel's shape, True where the weight is
      ``-sigma`` (read only where ``mask`` is True).
  """
  sigma: float
  mask: np.ndarray
  negative: np.ndarray

  def decode(self) -> np.ndarray:
    """Returns the float32 kernel ``where(mask, ±sigma, 0)``.

    Returns:
      A float32 array of the shape of ``mask``.
    """
    sigma = np.float32(self.sigma)
    return np.where(self.mask, np.where(self.negative, -sigma, sigma),
                    np.float32(0)).astype(np.float32)


class SharedLayer(NamedTuple):
  """A pruned kernel whose kept weights share ``k`` values; see `shared_layer`.

  Attributes:
    codebook: float32 ``(k,)``, the shared values.
    codes: integers ``(nnz,)`` in ``[0, k)``, one per kept weight in C order.
    mask: booleans of ``shape``, True where a weight is kept.
    shape: the kernel's shape.
  """
  codebook: np.ndarray
  codes: np.ndarray
  mask: np.ndarray
  shape: tuple[int, ...]

  def decode(self) -> np.ndarray:
    """Returns the float32 kernel: ``codebook[codes]`` where kept, else 0.

    Returns:
      A float32 array of ``shape``.
    """
    kernel = np.zeros(self.shape, np.float32)
    kernel[self.mask] = self.codebook[self.codes]
    return kernel


LayerEncoding = str | PQLayer | TernaryLayer | SharedLayer


class EncodedLeaf(NamedTuple):
  """One leaf as the file stores it (see the module docstring).

  Attributes:
    encoding: one of `ENCODINGS`.
    shape: the leaf's shape.
    dtype: the name of the leaf's dtype.
    attrs: the encoding's integers (``nnz``, index widths, PQ sizes).
    buffers: ``{name: bytes}`` in file order.
  """
  encoding: str
  shape: tuple[int, ...]
  dtype: str
  attrs: dict[str, Any]
  buffers: dict[str, bytes]

  @property
  def nbytes(self) -> int:
    """Bytes of all buffers: what the leaf takes in the data section."""
    return sum(len(b) for b in self.buffers.values())


def pq_layer(codebooks: Any, codes: Any, shape: Any,
             mask: Any = None) -> PQLayer:
  """Checks a product quantization of a kernel and returns its `PQLayer`.

  Args:
    codebooks: floats ``(s, k, d)``, cast to float32.
    codes: integers ``(m, s)`` in ``[0, k)``.
    shape: the kernel's shape, with ``shape[-1] = m`` output features and
      ``prod(shape[:-1]) = n = s * d`` inputs.
    mask: None, or booleans of ``shape`` (False: the weight is pruned).

  Returns:
    A `PQLayer` of numpy arrays.

  Raises:
    ValueError: on a shape, dtype or code that breaks the convention.

  Example:
    >>> import numpy as np
    >>> import sparsify
    >>> codebooks = np.arange(24.).reshape(2, 4, 3)  # s=2, k=4, d=3
    >>> codes = np.array([[0, 1], [3, 3], [2, 0], [1, 2], [0, 0]])  # m=5
    >>> layer = sparsify.pq_layer(codebooks, codes, (6, 5))
    >>> kernel = layer.decode()
    >>> kernel.shape
    (6, 5)
    >>> kernel[:, 1]  # output 1: block 0 is codebooks[0, 3], 1 codebooks[1, 3]
    array([ 9., 10., 11., 21., 22., 23.], dtype=float32)
  """
  cb, cd = np.asarray(codebooks), np.asarray(codes)
  if cb.ndim != 3 or cb.dtype.kind not in "iuf" or 0 in cb.shape:
    raise ValueError(f"codebooks must be a non-empty float array (s, k, d); "
                     f"got shape {cb.shape} of {cb.dtype}")
  s, k, d = cb.shape
  try:
    shape = tuple(int(x) for x in shape)
  except TypeError:
    raise ValueError(f"shape must be a tuple of ints; got {shape!r}") from None
  if not shape or min(shape) < 0:
    raise ValueError(f"shape must have at least one non-negative dimension; "
                     f"got {shape}")
  m, n = shape[-1], math.prod(shape[:-1])
  if s * d != n:
    raise ValueError(
        f"codebooks {cb.shape} cover s * d = {s * d} inputs, but a kernel of "
        f"shape {shape} has n = prod(shape[:-1]) = {n}")
  if cd.shape != (m, s) or cd.dtype.kind not in "iu":
    raise ValueError(f"codes must be integers of shape (m, s) = {(m, s)}; "
                     f"got shape {cd.shape} of {cd.dtype}")
  if cd.size and (cd.min() < 0 or cd.max() >= k):
    raise ValueError(f"codes must lie in [0, k) = [0, {k}); got values in "
                     f"[{cd.min()}, {cd.max()}]")
  if mask is not None:
    mask = np.asarray(mask)
    if mask.shape != shape or mask.dtype != bool:
      raise ValueError(f"mask must be booleans of shape {shape}; got shape "
                       f"{mask.shape} of {mask.dtype}")
  return PQLayer(cb.astype(np.float32), cd.astype(np.int64), shape, mask)


def shared_layer(codebook: Any, codes: Any, mask: Any,
                 shape: Any) -> SharedLayer:
  """Checks a weight-shared kernel and returns its `SharedLayer`.

  Takes the fields of a `quantization.SharedCode` in order, so
  ``shared_layer(*code)`` converts one.

  Args:
    codebook: ``k`` floats, ``1 <= k <= 2**16``, cast to float32.
    codes: ``nnz`` integers in ``[0, k)``, one per kept weight in C order.
    mask: booleans of ``shape``, True where a weight is kept (``nnz`` Trues).
    shape: the kernel's shape.

  Returns:
    A `SharedLayer` of numpy arrays.

  Raises:
    ValueError: on a shape, dtype or code that breaks the convention.

  Example:
    >>> import sparsify
    >>> layer = sparsify.shared_layer([-0.5, 0.5], [1, 0],
    ...                               [[True, False, True]], (1, 3))
    >>> layer.decode()
    array([[ 0.5,  0. , -0.5]], dtype=float32)
  """
  cb, cd, mk = np.asarray(codebook), np.asarray(codes), np.asarray(mask)
  if cb.ndim != 1 or cb.dtype.kind not in "iuf" or not 1 <= cb.size <= 2**16:
    raise ValueError(f"codebook must be k floats with 1 <= k <= 65536 (codes "
                     f"of at most 16 bits); got shape {cb.shape} of "
                     f"{cb.dtype}")
  try:
    shape = tuple(int(x) for x in shape)
  except (TypeError, ValueError):
    raise ValueError(f"shape must be a tuple of ints; got {shape!r}") from None
  if min(shape, default=0) < 0:
    raise ValueError(f"shape must have non-negative dimensions; got {shape}")
  if mk.shape != shape or mk.dtype != bool:
    raise ValueError(f"mask must be booleans of the kernel's shape {shape}; "
                     f"got shape {mk.shape} of {mk.dtype}")
  nnz = int(np.count_nonzero(mk))
  if cd.shape != (nnz,) or cd.dtype.kind not in "iu":
    raise ValueError(f"codes must be integers of shape ({nnz},), one per kept "
                     f"weight; got shape {cd.shape} of {cd.dtype}")
  k = cb.size
  if cd.size and (cd.min() < 0 or cd.max() >= k):
    raise ValueError(f"codes must lie in [0, k) = [0, {k}); got values in "
                     f"[{cd.min()}, {cd.max()}]")
  return SharedLayer(cb.astype(np.float32), cd.astype(np.int64), mk, shape)


def ternary_layer(kernel: Any) -> TernaryLayer:
  """Returns the `TernaryLayer` of a kernel with values in {-sigma, 0, sigma}.

  ``sigma`` is the one magnitude of the nonzero weights (0 if there are none);
  it must be finite and exact in float32, so that decoding gives the kernel
  back.

  Args:
    kernel: a float array whose nonzero entries all have the same magnitude.

  Returns:
    A `TernaryLayer`.

  Raises:
    ValueError: if the kernel is not float or not ternary.

  Example:
    >>> import numpy as np
    >>> import sparsify
    >>> layer = sparsify.ternary_layer(np.array([0.5, 0., -0.5]))
    >>> layer.sigma, layer.negative
    (0.5, array([False, False,  True]))
  """
  x = np.asarray(kernel)
  if _dtype_name(x.dtype) not in ("float16", "float32", "float64",
                                  "bfloat16"):
    raise ValueError(f"a ternary kernel must be float; got {x.dtype}")
  mask = x != 0
  magnitudes = np.unique(np.abs(x[mask]).astype(np.float64))
  if magnitudes.size > 1:
    raise ValueError(
        f"kernel is not ternary: its nonzero weights have {magnitudes.size} "
        f"magnitudes (e.g. {magnitudes[0]}, {magnitudes[-1]}); a ternary "
        "kernel has one, sigma")
  sigma = magnitudes[0] if magnitudes.size else 0.0
  if not np.isfinite(sigma) or float(np.float32(sigma)) != sigma:
    raise ValueError(f"sigma = {sigma!r} must be finite and exact in float32")
  return TernaryLayer(float(sigma), mask, mask & (x < 0))


def smallest_ternary(kernel: Any) -> TernaryLayer | SharedLayer:
  """The smaller of the two lossless layouts of a ternary kernel.

  A `TernaryLayer` stores one bit per weight plus a sign bit per nonzero,
  ``size + nnz`` bits; a `SharedLayer` with the codebook ``(+sigma,
  -sigma)`` stores the nonzeros' positions as relative indices and the same
  sign bit, ``g * e + nnz`` bits (``e >= nnz`` gap entries of ``g`` bits,
  see the module docstring). Relative indices win once fewer than about one
  weight in ``g`` is nonzero, which is the case for the heavily pruned
  layers that LCT ternarizes.

  Args:
    kernel: a float array whose nonzero entries all have the same magnitude.

  Returns:
    The `TernaryLayer` or `SharedLayer` of ``kernel`` whose encoding takes
    fewer bytes (the `TernaryLayer` on a tie); both decode to ``kernel``.

  Example:
    >>> import numpy as np
    >>> from sparsify import spz
    >>> kernel = np.zeros((100, 10), np.float32)
    >>> kernel[::50, 0], kernel[25, 3] = 0.5, -0.5
    >>> layer = spz.smallest_ternary(kernel)
    >>> type(layer).__name__, np.array_equal(layer.decode(), kernel)
    ('SharedLayer', True)
  """
  ternary = ternary_layer(kernel)
  sigma = np.float32(ternary.sigma)
  shared = SharedLayer(np.array([sigma, -sigma], np.float32),
                       ternary.negative[ternary.mask].astype(np.int64),
                       ternary.mask, tuple(np.shape(kernel)))
  sizes = [encode_leaf(kernel, layer).nbytes for layer in (ternary, shared)]
  return ternary if sizes[0] <= sizes[1] else shared


def _dtype_name(dtype: np.dtype) -> str | None:
  for name, d in _DTYPES.items():
    if dtype == d:
      return name
  return None


def _leaf_array(value: Any) -> np.ndarray:
  x = np.asarray(value)
  if x.dtype.kind in "iuf" and not x.dtype.isnative:
    x = x.astype(x.dtype.newbyteorder("="))
  if _dtype_name(x.dtype) is None:
    raise ValueError(f"unsupported leaf {type(value).__name__} of dtype "
                     f"{x.dtype}; leaves must be arrays of {list(_DTYPES)}")
  return x if x.flags.c_contiguous else x.copy(order="C")


def _little(dtype: np.dtype) -> np.dtype:
  return dtype.newbyteorder("<") if dtype.kind in "iuf" else dtype


def _uint_bytes(max_value: int) -> int:
  return next(w for w in (1, 2, 4, 8) if max(max_value, 0) < 256**w)


def _matrix(shape: tuple[int, ...]) -> tuple[int, int]:
  return (math.prod(shape[:-1]), shape[-1]) if shape else (1, 1)


def _stored(x: np.ndarray) -> np.ndarray:
  """True where the entry's bit pattern is not all zeros."""
  return x.view(f"u{x.dtype.itemsize}") != 0


def _pack_codes(codes: np.ndarray, bits: int) -> bytes:
  shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
  stream = (codes.astype(np.uint64).reshape(-1, 1) >> shifts) & 1
  return np.packbits(stream.astype(np.uint8).ravel()).tobytes()


def _unpack_codes(buf: bytes, count: int, bits: int) -> np.ndarray:
  stream = np.unpackbits(np.frombuffer(buf, np.uint8), count=count * bits)
  weights = np.left_shift(1, np.arange(bits - 1, -1, -1), dtype=np.int64)
  return stream.reshape(count, bits).astype(np.int64) @ weights


def _bits(mask: np.ndarray) -> bytes:
  return np.packbits(np.ravel(mask).astype(bool)).tobytes()


def _sizes(x: np.ndarray) -> dict[str, int]:
  nnz, b = int(np.count_nonzero(_stored(x))), x.dtype.itemsize
  rows, cols = _matrix(x.shape)
  return {"dense": b * x.size,
          "bitmask": math.ceil(x.size / 8) + b * nnz,
          "csr": (rows + 1) * _uint_bytes(nnz) + nnz * (
              _uint_bytes(cols - 1) + b)}


def choose_encoding(value: Any) -> str:
  """Returns the smallest lossless encoding of a leaf: dense, bitmask or csr.

  Sizes as in the module docstring; ties go to dense, then bitmask.

  Args:
    value: the leaf, an array of a supported dtype.

  Returns:
    ``'dense'``, ``'bitmask'`` or ``'csr'``.

  Raises:
    ValueError: on a leaf of an unsupported dtype.

  Example:
    >>> import numpy as np
    >>> from sparsify import spz
    >>> spz.choose_encoding(np.ones((2, 300)))
    'dense'
    >>> spz.choose_encoding(np.zeros((2, 300)))
    'csr'
  """
  sizes = _sizes(_leaf_array(value))
  return min(_LOSSLESS, key=sizes.__getitem__)


def encode_leaf(value: Any, encoding: LayerEncoding = "auto") -> EncodedLeaf:
  """Encodes one leaf as the file stores it.

  Args:
    value: the leaf (an array).
    encoding: ``'auto'`` (see `choose_encoding`), ``'dense'``,
      ``'bitmask'``, ``'csr'``, ``'ternary'`` (``value`` must be ternary, see
      `ternary_layer`), or a `PQLayer`, `TernaryLayer` or `SharedLayer` of
      ``value``'s shape, whose content replaces ``value``'s (which must be
      float).

  Returns:
    An `EncodedLeaf`; `decode_leaf` turns it back into an array.

  Raises:
    ValueError: on an unknown encoding, an unsupported leaf, or a record that
      does not fit the leaf.
  """
  x = _leaf_array(value)
  shape, dtype = tuple(int(n) for n in x.shape), _dtype_name(x.dtype)
  if isinstance(encoding, str) and encoding == "ternary":
    encoding = ternary_layer(x)
  if isinstance(encoding, (PQLayer, TernaryLayer, SharedLayer)):
    if dtype not in ("float16", "float32", "float64", "bfloat16"):
      raise ValueError(f"pq, ternary and shared encode float leaves; got "
                       f"{dtype}")
    if isinstance(encoding, SharedLayer):
      layer = shared_layer(*encoding)
      if layer.shape != shape:
        raise ValueError(f"SharedLayer of shape {layer.shape} for a leaf of "
                         f"shape {shape}")
      return _encode_shared(layer, dtype)
    if isinstance(encoding, PQLayer):
      layer = pq_layer(*encoding)
      if layer.shape != shape:
        raise ValueError(f"PQLayer of shape {layer.shape} for a leaf of "
                         f"shape {shape}")
      return _encode_pq(layer, dtype)
    return _encode_ternary(encoding, shape, dtype)
  if encoding == "auto":
    encoding = choose_encoding(x)
  if encoding == "pq":
    raise ValueError("encoding 'pq' needs codebooks and codes: pass a "
                     "PQLayer (see pq_layer)")
  if encoding == "shared":
    raise ValueError("encoding 'shared' needs a codebook and codes: pass a "
                     "SharedLayer (see shared_layer)")
  if encoding not in _LOSSLESS:
    raise ValueError(
        f"unknown encoding {encoding!r}; use 'auto', 'dense', 'bitmask', "
        "'csr', 'ternary', a PQLayer, a TernaryLayer or a SharedLayer")
  values = x.astype(_little(x.dtype), copy=False)
  if encoding == "dense":
    return EncodedLeaf("dense", shape, dtype, {}, {"values": values.tobytes()})
  keep = _stored(x)
  nnz = int(np.count_nonzero(keep))
  if encoding == "bitmask":
    return EncodedLeaf("bitmask", shape, dtype, {"nnz": nnz}, {
        "mask": _bits(keep), "values": values[keep].tobytes()})
  rows, cols = _matrix(shape)
  keep = keep.reshape(rows, cols)
  indptr = np.concatenate([[0], np.cumsum(keep.sum(axis=1))])
  wp, wi = _uint_bytes(nnz), _uint_bytes(cols - 1)
  return EncodedLeaf("csr", shape, dtype, {
      "nnz": nnz, "indptr_bytes": wp, "index_bytes": wi}, {
          "indptr": indptr.astype(f"<u{wp}").tobytes(),
          "indices": np.nonzero(keep)[1].astype(f"<u{wi}").tobytes(),
          "values": values.reshape(rows, cols)[keep].tobytes()})


def _encode_pq(layer: PQLayer, dtype: str) -> EncodedLeaf:
  s, k, _ = layer.codebooks.shape
  bits = (k - 1).bit_length()
  buffers = {"codebooks": layer.codebooks.astype("<f4").tobytes(),
             "codes": _pack_codes(layer.codes, bits)}
  if layer.mask is not None:
    buffers["mask"] = _bits(layer.mask)
  attrs = {"subspaces": s, "centroids": k, "code_bits": bits,
           "masked": layer.mask is not None}
  return EncodedLeaf("pq", layer.shape, dtype, attrs, buffers)


def _skips(mask: np.ndarray) -> np.ndarray:
  """``r_i``: positions skipped before each kept weight, in C order."""
  positions = np.flatnonzero(mask).astype(np.int64)
  return np.diff(positions, prepend=-1) - 1


def _gap_entries(skips: np.ndarray, g: int) -> np.ndarray:
  """The gap stream of ``g``-bit entries (see the module docstring)."""
  escape = 2**g - 1
  counts = skips // escape + 1
  entries = np.full(int(counts.sum()), escape, np.int64)
  entries[np.cumsum(counts) - 1] = skips % escape
  return entries


def _gap_bits(skips: np.ndarray) -> int:
  """The ``g`` in 1..16 with the fewest gap bytes (smallest on a tie)."""
  def nbytes(g):
    return math.ceil(g * (skips.size + int(np.sum(skips // (2**g - 1)))) / 8)
  return min(range(1, 17), key=nbytes)


def _encode_shared(layer: SharedLayer, dtype: str) -> EncodedLeaf:
  k = layer.codebook.size
  bits = (k - 1).bit_length()
  skips = _skips(layer.mask)
  g = _gap_bits(skips)
  entries = _gap_entries(skips, g)
  attrs = {"nnz": int(skips.size), "centroids": k, "code_bits": bits,
           "gap_bits": g, "gap_entries": int(entries.size)}
  return EncodedLeaf("shared", layer.shape, dtype, attrs, {
      "codebook": layer.codebook.astype("<f4").tobytes(),
      "gaps": _pack_codes(entries, g),
      "codes": _pack_codes(layer.codes, bits)})


def _encode_ternary(layer: TernaryLayer, shape: tuple[int, ...],
                    dtype: str) -> EncodedLeaf:
  mask, negative = np.asarray(layer.mask), np.asarray(layer.negative)
  for name, a in (("mask", mask), ("negative", negative)):
    if a.shape != shape or a.dtype != bool:
      raise ValueError(f"TernaryLayer.{name} must be booleans of the leaf's "
                       f"shape {shape}; got shape {a.shape} of {a.dtype}")
  sigma = np.float32(layer.sigma)
  if not np.isfinite(sigma) or sigma < 0:
    raise ValueError(f"TernaryLayer.sigma must be finite and >= 0; got "
                     f"{layer.sigma}")
  return EncodedLeaf("ternary", shape, dtype,
                     {"nnz": int(np.count_nonzero(mask))}, {
                         "mask": _bits(mask), "sign": _bits(negative[mask]),
                         "sigma": sigma.astype("<f4").tobytes()})


def _buffer(leaf: EncodedLeaf, name: str, nbytes: int) -> bytes:
  if name not in leaf.buffers:
    raise ValueError(f"{leaf.encoding} leaf without buffer {name!r}")
  buf = leaf.buffers[name]
  if len(buf) != nbytes:
    raise ValueError(f"buffer {name!r} of a {leaf.encoding} leaf of shape "
                     f"{leaf.shape} has {len(buf)} bytes, expected {nbytes}")
  return buf


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _count(attrs: Mapping[str, Any], name: str, low: int, high: int) -> int:
  v = attrs.get(name)
  if not _is_int(v) or not low <= v <= high:
    raise ValueError(f"attribute {name}={v!r} must be an int in [{low}, "
                     f"{high}]")
  return v


def _mask(leaf: EncodedLeaf, name: str, size: int) -> np.ndarray:
  buf = _buffer(leaf, name, math.ceil(size / 8))
  return np.unpackbits(np.frombuffer(buf, np.uint8), count=size).astype(bool)


def decode_leaf(leaf: EncodedLeaf) -> np.ndarray:
  """Returns the array an `EncodedLeaf` stores, in the leaf's dtype.

  Args:
    leaf: an `EncodedLeaf`, from `encode_leaf` or read from a file.

  Returns:
    A numpy array of ``leaf.shape`` and ``leaf.dtype``.

  Raises:
    ValueError: if the buffers or attributes do not fit the encoding.
  """
  if leaf.dtype not in _DTYPES:
    raise ValueError(f"unsupported dtype {leaf.dtype!r}")
  dtype, shape = _DTYPES[leaf.dtype], tuple(leaf.shape)
  size = math.prod(shape)
  if leaf.encoding == "dense":
    buf = _buffer(leaf, "values", size * dtype.itemsize)
    return np.frombuffer(buf, _little(dtype)).astype(dtype).reshape(shape)
  if leaf.encoding == "pq":
    return _decode_pq(leaf, shape, size).astype(dtype)
  if leaf.encoding == "shared":
    return _decode_shared(leaf, shape, size).astype(dtype)
  if leaf.encoding not in ("bitmask", "csr", "ternary"):
    raise ValueError(f"unknown encoding {leaf.encoding!r}; this reader knows "
                     f"{ENCODINGS}")
  nnz = _count(leaf.attrs, "nnz", 0, size)
  out = np.zeros(size, dtype)
  if leaf.encoding == "ternary":
    keep = _mask(leaf, "mask", size)
    if np.count_nonzero(keep) != nnz:
      raise ValueError(f"ternary mask has {np.count_nonzero(keep)} nonzeros, "
                       f"nnz says {nnz}")
    negative = _mask(leaf, "sign", nnz)
    sigma = np.frombuffer(_buffer(leaf, "sigma", 4), "<f4")[0]
    out[keep] = np.where(negative, -sigma, sigma).astype(dtype)
    return out.reshape(shape)
  values = np.frombuffer(_buffer(leaf, "values", nnz * dtype.itemsize),
                         _little(dtype)).astype(dtype)
  if leaf.encoding == "bitmask":
    keep = _mask(leaf, "mask", size)
    if np.count_nonzero(keep) != nnz:
      raise ValueError(f"bitmask has {np.count_nonzero(keep)} ones, nnz says "
                       f"{nnz}")
    out[keep] = values
    return out.reshape(shape)
  rows, cols = _matrix(shape)
  wp = _count(leaf.attrs, "indptr_bytes", 1, 8)
  wi = _count(leaf.attrs, "index_bytes", 1, 8)
  if wp not in (1, 2, 4, 8) or wi not in (1, 2, 4, 8):
    raise ValueError(f"index widths must be 1, 2, 4 or 8 bytes; got {wp}, "
                     f"{wi}")
  indptr = np.frombuffer(_buffer(leaf, "indptr", (rows + 1) * wp),
                         f"<u{wp}").astype(np.int64)
  indices = np.frombuffer(_buffer(leaf, "indices", nnz * wi),
                          f"<u{wi}").astype(np.int64)
  counts = np.diff(indptr)
  if indptr[0] != 0 or indptr[-1] != nnz or np.any(counts < 0):
    raise ValueError("csr indptr must rise from 0 to nnz")
  flat = np.repeat(np.arange(rows, dtype=np.int64), counts) * cols + indices
  if np.any(indices >= cols) or np.any(np.diff(flat) <= 0):
    raise ValueError(f"csr column indices must be increasing within a row "
                     f"and below {cols}")
  out[flat] = values
  return out.reshape(shape)


def _decode_pq(leaf: EncodedLeaf, shape: tuple[int, ...],
               size: int) -> np.ndarray:
  if not shape:
    raise ValueError("a pq leaf needs at least one dimension")
  m, n = shape[-1], math.prod(shape[:-1])
  s = _count(leaf.attrs, "subspaces", 1, n)
  k = _count(leaf.attrs, "centroids", 1, 2**32)
  bits = _count(leaf.attrs, "code_bits", 0, 32)
  if n % s or bits != (k - 1).bit_length():
    raise ValueError(f"pq attributes s={s}, k={k}, code_bits={bits} do not "
                     f"fit n={n} inputs")
  d = n // s
  codebooks = np.frombuffer(_buffer(leaf, "codebooks", 4 * s * k * d),
                            "<f4").astype(np.float32).reshape(s, k, d)
  codes = _unpack_codes(_buffer(leaf, "codes", math.ceil(m * s * bits / 8)),
                        m * s, bits).reshape(m, s)
  if codes.size and codes.max() >= k:
    raise ValueError(f"pq code {codes.max()} is not below k = {k}")
  masked = leaf.attrs.get("masked")
  if not isinstance(masked, bool):
    raise ValueError(f"attribute masked={masked!r} must be a bool")
  mask = _mask(leaf, "mask", size).reshape(shape) if masked else None
  return PQLayer(codebooks, codes, shape, mask).decode()


def _decode_shared(leaf: EncodedLeaf, shape: tuple[int, ...],
                   size: int) -> np.ndarray:
  nnz = _count(leaf.attrs, "nnz", 0, size)
  k = _count(leaf.attrs, "centroids", 1, 2**16)
  bits = _count(leaf.attrs, "code_bits", 0, 16)
  g = _count(leaf.attrs, "gap_bits", 1, 16)
  e = _count(leaf.attrs, "gap_entries", nnz, size)
  if bits != (k - 1).bit_length():
    raise ValueError(f"shared attributes k={k}, code_bits={bits} disagree: "
                     f"k centroids take {(k - 1).bit_length()} bits")
  codebook = np.frombuffer(_buffer(leaf, "codebook", 4 * k),
                           "<f4").astype(np.float32)
  entries = _unpack_codes(_buffer(leaf, "gaps", math.ceil(g * e / 8)), e, g)
  codes = _unpack_codes(_buffer(leaf, "codes", math.ceil(bits * nnz / 8)),
                        nnz, bits)
  escape = 2**g - 1
  weight = entries != escape
  if np.count_nonzero(weight) != nnz or (e and not weight[-1]):
    raise ValueError(f"shared gaps hold {np.count_nonzero(weight)} weights, "
                     f"nnz says {nnz}, or end in an escape")
  positions = (np.cumsum(np.where(weight, entries + 1, escape)) - 1)[weight]
  if nnz and positions[-1] >= size:
    raise ValueError(f"shared gaps reach position {positions[-1]}, past the "
                     f"{size} entries of shape {shape}")
  if codes.size and codes.max() >= k:
    raise ValueError(f"shared code {codes.max()} is not below k = {k}")
  mask = np.zeros(size, bool)
  mask[positions] = True
  return SharedLayer(codebook, codes, mask.reshape(shape), shape).decode()


def _flatten(params: Any) -> list[tuple[tuple[str, ...], Any]]:
  """``[(keys, leaf), ...]`` of nested string-keyed mappings, keys sorted."""
  if not isinstance(params, Mapping):
    raise ValueError(f"params must be a nested dict of arrays; got "
                     f"{type(params).__name__}")
  out = []

  def walk(tree, keys):
    if not isinstance(tree, Mapping):
      out.append((keys, tree))
      return
    for key in tree:
      if not isinstance(key, str):
        raise ValueError(f"params keys must be strings; got {key!r} under "
                         f"{'/'.join(keys)!r}")
    for key in sorted(tree):
      walk(tree[key], (*keys, key))

  walk(params, ())
  return out


def _json_default(obj: Any) -> Any:
  if hasattr(obj, "tolist"):  # numpy and jax arrays and scalars.
    return obj.tolist()
  raise TypeError(f"{type(obj).__name__} {obj!r} is not JSON")


def save(
    path: str | os.PathLike[str],
    params: Any,
    encodings: Mapping[str, LayerEncoding] | None = None,
    *,
    metadata: Mapping[str, Any] | None = None,
) -> None:
  """Writes parameters, each leaf in one encoding, and metadata to one file.

  Args:
    path: the file to write; replaced atomically if it exists.
    params: nested dicts (any `Mapping`) with string keys and array leaves
      (numpy or jax; dtypes bool, int, uint, float16/32/64, bfloat16).
    encodings: ``{leaf path: encoding}`` with paths as `base.named_leaves`
      names them (``'fc1/kernel'``) and encodings as `encode_leaf` takes
      them. Leaves not named get the smallest lossless encoding.
    metadata: a JSON-able dict stored in the header (model name and kwargs,
      accuracy, ...); numpy and jax values are stored as `tolist` gives them.

  Raises:
    ValueError: on an unsupported leaf or encoding, an encoding for a path
      that is no leaf, metadata that is not JSON, or a directory as ``path``.
      Nothing is written then, and an existing file at ``path`` is kept.

  Example:
    >>> import os, tempfile
    >>> import numpy as np
    >>> import sparsify
    >>> kernel = np.where(np.eye(4, 3) > 0, 0.5, 0.).astype(np.float32)
    >>> params = {'fc1': {'kernel': kernel, 'bias': np.zeros(3, np.float32)}}
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...   path = os.path.join(tmp, 'model.spz')
    ...   sparsify.save_compressed(path, params, {'fc1/kernel': 'ternary'},
    ...                            metadata={'model': 'mlp', 'accuracy': 0.98})
    ...   loaded, metadata = sparsify.load_compressed(path)
    >>> np.array_equal(loaded['fc1']['kernel'], kernel), metadata['accuracy']
    (True, 0.98)
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    raise ValueError(f"{path} is a directory; save needs a file path")
  leaves = _flatten(params)
  names = ["/".join(keys) for keys, _ in leaves]
  if len(set(names)) != len(names):
    raise ValueError(f"two leaves share a path name among {names}; keys must "
                     "not contain '/'")
  encodings = dict(encodings or {})
  unknown = sorted(set(encodings) - set(names))
  if unknown:
    raise ValueError(f"encodings for {unknown}, which are not leaves of "
                     f"params; the leaves are {names}")
  if metadata is not None and not isinstance(metadata, Mapping):
    raise ValueError(f"metadata must be a dict; got {type(metadata).__name__}")
  entries, chunks, offset = [], [], 0
  for (keys, value), name in zip(leaves, names):
    try:
      leaf = encode_leaf(value, encodings.get(name, "auto"))
    except ValueError as e:
      raise ValueError(f"leaf {name!r}: {e}") from None
    spans = {}
    for buffer_name, buf in leaf.buffers.items():
      spans[buffer_name] = [offset, len(buf)]
      chunks.append(buf)
      offset += len(buf)
    entries.append({"path": name, "keys": list(keys),
                    "encoding": leaf.encoding, "shape": list(leaf.shape),
                    "dtype": leaf.dtype, "attrs": leaf.attrs,
                    "buffers": spans})
  try:
    header = json.dumps(
        {"leaves": entries, "metadata": dict(metadata or {})},
        allow_nan=False, default=_json_default, separators=(",", ":"),
    ).encode("utf-8")
  except (TypeError, ValueError) as e:
    raise ValueError(f"metadata must be JSON (finite numbers, strings, "
                     f"lists, dicts): {e}") from None
  _write_atomic(path, [_PREAMBLE.pack(MAGIC, VERSION, len(header), offset),
                       header, *chunks])


def _write_atomic(path: str, chunks: list[bytes]) -> None:
  tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                     f".{os.path.basename(path)}.{os.urandom(4).hex()}.tmp")
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(fd, "wb") as f:
      digest = hashlib.sha256()
      for chunk in chunks:
        f.write(chunk)
        digest.update(chunk)
      f.write(digest.digest())
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def _read(path: Any) -> tuple[dict[str, Any], memoryview, int]:
  """Checks the layout and checksum; returns header, data and file size."""
  with open(path, "rb") as f:
    blob = f.read()
  n = len(blob)
  if blob[:8] != MAGIC:
    if n < 8 and MAGIC.startswith(blob):
      raise CompressedFileError(path, f"truncated: {n} bytes, not even the "
                                "8-byte magic")
    raise CompressedFileError(
        path, f"not a sparsify compressed model: starts with {blob[:8]!r}, "
        f"expected the magic {MAGIC!r}")
  if n < _PREAMBLE.size:
    raise CompressedFileError(path, f"truncated: {n} bytes, shorter than the "
                              f"{_PREAMBLE.size}-byte preamble")
  _, version, header_len, data_len = _PREAMBLE.unpack_from(blob)
  if version != VERSION:
    raise CompressedFileError(path, f"unsupported format version {version}; "
                              f"this reader reads version {VERSION}")
  end = _PREAMBLE.size + header_len + data_len
  if n != end + _DIGEST_BYTES:
    problem = "truncated" if n < end + _DIGEST_BYTES else "too long"
    raise CompressedFileError(
        path, f"{problem}: {n} bytes, but its preamble declares "
        f"{end + _DIGEST_BYTES} (or the preamble is corrupted)")
  if hashlib.sha256(blob[:end]).digest() != blob[end:]:
    raise CompressedFileError(path, "corrupted: the SHA-256 checksum of its "
                              "contents does not match the stored one")
  try:
    header = json.loads(blob[_PREAMBLE.size:_PREAMBLE.size + header_len])
  except ValueError as e:
    raise CompressedFileError(path, f"header is not valid JSON: {e}") from None
  if (not isinstance(header, dict) or not isinstance(
      header.get("leaves"), list) or not isinstance(
          header.get("metadata"), dict)):
    raise CompressedFileError(path, "header must be a JSON object with "
                              "'leaves' (a list) and 'metadata' (an object)")
  return header, memoryview(blob)[_PREAMBLE.size + header_len:end], n


def _entry(path: Any, entry: Any,
           data: memoryview) -> tuple[str, list[str], EncodedLeaf]:
  """The leaf path, keys and `EncodedLeaf` of one header entry."""
  name = entry.get("path") if isinstance(entry, dict) else None
  try:
    keys, shape = entry["keys"], entry["shape"]
    if (not isinstance(name, str) or not isinstance(keys, list) or not keys
        or not all(isinstance(k, str) for k in keys)):
      raise ValueError("'path' must be a string and 'keys' a list of strings")
    if not isinstance(shape, list) or not all(
        _is_int(d) and d >= 0 for d in shape):
      raise ValueError(f"shape {shape!r} must be a list of ints >= 0")
    if not isinstance(entry["attrs"], dict) or not isinstance(
        entry["buffers"], dict):
      raise ValueError("'attrs' and 'buffers' must be objects")
    if entry["encoding"] not in ENCODINGS or entry["dtype"] not in _DTYPES:
      raise ValueError(f"encoding {entry['encoding']!r} or dtype "
                       f"{entry['dtype']!r} unknown; this reader knows "
                       f"{ENCODINGS} and {list(_DTYPES)}")
    buffers = {}
    for buffer_name, span in entry["buffers"].items():
      if not isinstance(span, list) or len(span) != 2 or not all(
          _is_int(v) and v >= 0 for v in span):
        raise ValueError(f"buffer {buffer_name!r} span {span!r} must be "
                         "[offset, length]")
      if span[0] + span[1] > len(data):
        raise ValueError(f"buffer {buffer_name!r} {span} ends past the "
                         f"{len(data)}-byte data section")
      buffers[buffer_name] = bytes(data[span[0]:span[0] + span[1]])
    return name, keys, EncodedLeaf(entry["encoding"], tuple(shape),
                                   entry["dtype"], entry["attrs"], buffers)
  except (KeyError, TypeError, ValueError) as e:
    raise CompressedFileError(path, f"bad header entry for leaf {name!r}: "
                              f"{e}") from None


def load(
    path: str | os.PathLike[str],
) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads a file written by `save`.

  Args:
    path: the file.

  Returns:
    ``(params, metadata)``: nested dicts of numpy arrays (of the saved shapes
    and dtypes; PQ, ternary and shared leaves decoded) and the metadata dict.

  Raises:
    CompressedFileError: if the file is truncated, corrupted (checksum), not
      such a file (magic), of another format version, or inconsistent.

  Example:
    >>> import os, tempfile
    >>> import numpy as np
    >>> import sparsify
    >>> params = {'fc': {'kernel': np.eye(3, dtype=np.float32)}}
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...   path = os.path.join(tmp, 'model.spz')
    ...   sparsify.save_compressed(path, params, metadata={'model': 'mlp'})
    ...   loaded, metadata = sparsify.load_compressed(path)
    >>> loaded['fc']['kernel'].dtype, metadata
    (dtype('float32'), {'model': 'mlp'})
  """
  header, data, _ = _read(path)
  params = {}
  for entry in header["leaves"]:
    name, keys, leaf = _entry(path, entry, data)
    try:
      value = decode_leaf(leaf)
    except ValueError as e:
      raise CompressedFileError(path, f"leaf {name!r}: {e}") from None
    node = params
    for key in keys[:-1]:
      node = node.setdefault(key, {})
      if not isinstance(node, dict):
        raise CompressedFileError(path, f"leaf {name!r} lies under a leaf")
    if keys[-1] in node:
      raise CompressedFileError(path, f"leaf {name!r} is stored twice")
    node[keys[-1]] = value
  return params, header["metadata"]


@dataclasses.dataclass(frozen=True)
class LeafBytes:
  """Bytes one leaf takes on disk; a row of `FileReport`.

  Attributes:
    path: the leaf's path name, e.g. ``'fc1/kernel'``.
    encoding: one of `ENCODINGS`.
    shape: the leaf's shape.
    dtype: the leaf's dtype name.
    nbytes: bytes of its buffers in the file.
    buffers: ``{buffer name: bytes}``.
    float32_bytes: ``4 * size``, its dense float32 size.
  """
  path: str
  encoding: str
  shape: tuple[int, ...]
  dtype: str
  nbytes: int
  buffers: dict[str, int]
  float32_bytes: int


@dataclasses.dataclass(frozen=True)
class FileReport:
  """Bytes on disk of a file written by `save`; see `file_report`.

  Attributes:
    path: the file.
    leaves: one `LeafBytes` per leaf, in file order.
    file_bytes: size of the file.
    header_bytes: ``file_bytes`` minus the leaves' buffers: preamble, JSON
      header (metadata included) and checksum.
  """
  path: str
  leaves: tuple[LeafBytes, ...]
  file_bytes: int
  header_bytes: int

  @property
  def float32_bytes(self) -> int:
    """Dense float32 size of all leaves."""
    return sum(leaf.float32_bytes for leaf in self.leaves)

  @property
  def compression_ratio(self) -> float:
    """``float32_bytes / file_bytes``."""
    return self.float32_bytes / self.file_bytes

  def to_dict(self) -> dict[str, Any]:
    """Returns the fields and both properties as JSON types.

    Returns:
      A dict with the dataclass fields (``leaves`` as a list of dicts) plus
      ``float32_bytes`` and ``compression_ratio``.
    """
    out = dataclasses.asdict(self)
    out["leaves"] = [{**row, "shape": list(row["shape"])}
                     for row in out["leaves"]]
    out["float32_bytes"] = self.float32_bytes
    out["compression_ratio"] = self.compression_ratio
    return out


def file_report(path: str | os.PathLike[str]) -> FileReport:
  """Returns the bytes each leaf of a saved file takes on disk.

  Reads and checks the file (magic, version, size, checksum) without
  decoding the leaves.

  Args:
    path: a file written by `save`.

  Returns:
    A `FileReport`: one `LeafBytes` per leaf, and the file's total size.

  Raises:
    CompressedFileError: as `load`.

  Example:
    >>> import os, tempfile
    >>> import numpy as np
    >>> import sparsify
    >>> kernel = np.zeros((100, 100), np.float32)
    >>> kernel[::10, ::10] = 1.0  # 100 nonzeros of 10,000
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...   path = os.path.join(tmp, 'model.spz')
    ...   sparsify.save_compressed(path, {'fc': {'kernel': kernel}})
    ...   report = sparsify.file_report(path)
    >>> [(leaf.path, leaf.encoding, leaf.nbytes) for leaf in report.leaves]
    [('fc/kernel', 'csr', 601)]
    >>> report.float32_bytes, report.file_bytes < report.float32_bytes / 40
    (40000, True)
  """
  header, data, size = _read(path)
  rows = []
  for entry in header["leaves"]:
    name, _, leaf = _entry(path, entry, data)
    rows.append(LeafBytes(
        path=name, encoding=leaf.encoding, shape=leaf.shape, dtype=leaf.dtype,
        nbytes=leaf.nbytes,
        buffers={k: len(v) for k, v in leaf.buffers.items()},
        float32_bytes=4 * math.prod(leaf.shape)))
  return FileReport(path=os.fspath(path), leaves=tuple(rows), file_bytes=size,
                    header_bytes=size - sum(r.nbytes for r in rows))


def float32_bytes(params: Any) -> int:
  """Returns ``4 * (number of entries)`` of a params pytree: its float32 size.

  Args:
    params: nested dicts (any `Mapping`) with string keys and array leaves.

  Returns:
    The number of bytes the leaves take stored densely as float32.

  Example:
    >>> import numpy as np
    >>> from sparsify import spz
    >>> params = {'fc': {'kernel': np.zeros((3, 2)), 'b': np.zeros(2)}}
    >>> spz.float32_bytes(params)
    32
  """
  return 4 * sum(math.prod(np.shape(leaf)) for _, leaf in _flatten(params))

"""How one array is stored: dense, bitmask, CSR, PQ, ternary or shared.

`encode_leaf` turns one array into an `EncodedLeaf` (named byte buffers and
a few integers), `decode_leaf` turns it back; `choose_encoding` picks the
smallest lossless one. `sparsify.spz.container` writes the leaves of a model
to one file, `sparsify.spz.inspect` lists their bytes.

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
csr (ties go to the first in that order, `smallest_lossless`); for float32
leaves these are the sizes `report.compression_report` counts, except that
-0.0 is stored here.

Bit buffers are packed as `sparsify.spz.bits` describes (`np.packbits`
order, most significant bit first, the last byte padded with 0 bits). Typed
buffers and all integers of the layout are little-endian.

``EncodedLeaf.attrs``: dense ``{}``; bitmask and ternary ``{"nnz"}``; csr
``{"nnz", "indptr_bytes", "index_bytes"}``; pq ``{"subspaces": s,
"centroids": k, "code_bits": c, "masked": bool}``; shared ``{"nnz",
"centroids": k, "code_bits": c, "gap_bits": g, "gap_entries": e}``.
`check_leaf` checks a leaf read from a file against all of the above (every
attribute's range, every buffer's exact length) before `decode_leaf`
allocates anything.
"""

from collections.abc import Mapping
import math
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np

from sparsify.spz import bits

ENCODINGS = ("dense", "bitmask", "csr", "pq", "ternary", "shared")
LOSSLESS = ("dense", "bitmask", "csr")  # Also the order that breaks ties.
# The leaf dtypes the format stores, by the name the header gives them.
DTYPES = {name: np.dtype(name) for name in (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
    "uint64", "float16", "float32", "float64")}
DTYPES["bfloat16"] = np.dtype(ml_dtypes.bfloat16)
MAX_NDIM = 32  # The most dimensions a leaf may have.
# The most entries a shape may span, its empty dimensions counted as 1 (so
# that numpy can make it at any item size, even when it holds no entry).
MAX_EXTENT = 2**56

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

  Takes the fields of a `sparsify.quantize.SharedCode` in order, so
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
  for name, d in DTYPES.items():
    if dtype == d:
      return name
  return None


def _leaf_array(value: Any) -> np.ndarray:
  x = np.asarray(value)
  if x.dtype.kind in "iuf" and not x.dtype.isnative:
    x = x.astype(x.dtype.newbyteorder("="))
  if _dtype_name(x.dtype) is None:
    raise ValueError(f"unsupported leaf {type(value).__name__} of dtype "
                     f"{x.dtype}; leaves must be arrays of {list(DTYPES)}")
  return x if x.flags.c_contiguous else x.copy(order="C")


def _little(dtype: np.dtype) -> np.dtype:
  return dtype.newbyteorder("<") if dtype.kind in "iuf" else dtype


def _matrix(shape: tuple[int, ...]) -> tuple[int, int]:
  return (math.prod(shape[:-1]), shape[-1]) if shape else (1, 1)


def _stored(x: np.ndarray) -> np.ndarray:
  """True where the entry's bit pattern is not all zeros."""
  return x.view(f"u{x.dtype.itemsize}") != 0


class LosslessSize(NamedTuple):
  """Bytes of a leaf in one lossless encoding; see `lossless_sizes`.

  Attributes:
    encoding: ``'dense'``, ``'bitmask'`` or ``'csr'``.
    nbytes: bytes of all its buffers.
    index_bytes: the part of ``nbytes`` spent on the bitmask or the CSR row
      pointers and column indices (0 for dense).
  """
  encoding: str
  nbytes: int
  index_bytes: int


def lossless_sizes(shape: tuple[int, ...], nnz: int,
                   itemsize: int) -> tuple[LosslessSize, ...]:
  """Bytes of the dense, bitmask and csr encodings of a leaf.

  With ``b = itemsize``, ``rows x cols`` the leaf's matrix view and ``wp =
  uint_bytes(nnz)``, ``wi = uint_bytes(cols - 1)`` (`bits.uint_bytes`)::

    dense   = b * size
    bitmask = ceil(size / 8) + b * nnz
    csr     = (rows + 1) * wp + nnz * (wi + b)

  Args:
    shape: the leaf's shape (``()`` for a scalar, a 1 x 1 matrix).
    nnz: the number of stored entries.
    itemsize: bytes per stored value.

  Returns:
    One `LosslessSize` per encoding, in `LOSSLESS` order.

  Example:
    >>> from sparsify.spz import encodings
    >>> [tuple(s) for s in encodings.lossless_sizes((2, 300), 3, 4)]
    [('dense', 2400, 0), ('bitmask', 87, 75), ('csr', 21, 9)]
  """
  size = math.prod(shape)
  rows, cols = _matrix(tuple(shape))
  values = itemsize * nnz
  mask = bits.mask_bytes(size)
  index = (rows + 1) * bits.uint_bytes(nnz) + nnz * bits.uint_bytes(cols - 1)
  return (LosslessSize("dense", itemsize * size, 0),
          LosslessSize("bitmask", mask + values, mask),
          LosslessSize("csr", index + values, index))


def smallest_lossless(shape: tuple[int, ...], nnz: int,
                      itemsize: int) -> LosslessSize:
  """The smallest of `lossless_sizes`; ties go to dense, then bitmask.

  Args:
    shape: the leaf's shape.
    nnz: the number of stored entries.
    itemsize: bytes per stored value.

  Returns:
    The `LosslessSize` with the fewest bytes (the first in `LOSSLESS` order
    among equals).

  Example:
    >>> from sparsify.spz import encodings
    >>> encodings.smallest_lossless((16,), 0, 4)  # bitmask 2 = csr 2 bytes
    LosslessSize(encoding='bitmask', nbytes=2, index_bytes=2)
  """
  return min(lossless_sizes(shape, nnz, itemsize), key=lambda s: s.nbytes)


def choose_encoding(value: Any) -> str:
  """Returns the smallest lossless encoding of a leaf: dense, bitmask or csr.

  Sizes as in the module docstring (`smallest_lossless` of the leaf's shape,
  stored entries and item size); ties go to dense, then bitmask.

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
  x = _leaf_array(value)
  nnz = int(np.count_nonzero(_stored(x)))
  return smallest_lossless(x.shape, nnz, x.dtype.itemsize).encoding


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
  if encoding not in LOSSLESS:
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
        "mask": bits.pack_mask(keep), "values": values[keep].tobytes()})
  rows, cols = _matrix(shape)
  keep = keep.reshape(rows, cols)
  indptr = np.concatenate([[0], np.cumsum(keep.sum(axis=1))])
  wp, wi = bits.uint_bytes(nnz), bits.uint_bytes(cols - 1)
  return EncodedLeaf("csr", shape, dtype, {
      "nnz": nnz, "indptr_bytes": wp, "index_bytes": wi}, {
          "indptr": indptr.astype(f"<u{wp}").tobytes(),
          "indices": np.nonzero(keep)[1].astype(f"<u{wi}").tobytes(),
          "values": values.reshape(rows, cols)[keep].tobytes()})


def _encode_pq(layer: PQLayer, dtype: str) -> EncodedLeaf:
  s, k, _ = layer.codebooks.shape
  c = bits.code_bits(k)
  buffers = {"codebooks": layer.codebooks.astype("<f4").tobytes(),
             "codes": bits.pack_codes(layer.codes, c).tobytes()}
  if layer.mask is not None:
    buffers["mask"] = bits.pack_mask(layer.mask)
  attrs = {"subspaces": s, "centroids": k, "code_bits": c,
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
    return bits.packed_bytes(skips.size + int(np.sum(skips // (2**g - 1))), g)
  return min(range(1, 17), key=nbytes)


def _encode_shared(layer: SharedLayer, dtype: str) -> EncodedLeaf:
  k = layer.codebook.size
  c = bits.code_bits(k)
  skips = _skips(layer.mask)
  g = _gap_bits(skips)
  entries = _gap_entries(skips, g)
  attrs = {"nnz": int(skips.size), "centroids": k, "code_bits": c,
           "gap_bits": g, "gap_entries": int(entries.size)}
  return EncodedLeaf("shared", layer.shape, dtype, attrs, {
      "codebook": layer.codebook.astype("<f4").tobytes(),
      "gaps": bits.pack_codes(entries, g).tobytes(),
      "codes": bits.pack_codes(layer.codes, c).tobytes()})


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
                         "mask": bits.pack_mask(mask),
                         "sign": bits.pack_mask(negative[mask]),
                         "sigma": sigma.astype("<f4").tobytes()})


def is_int(value: Any) -> bool:
  """True for a Python int that is not a bool, as the format's integers are.

  Args:
    value: an attribute, shape entry or buffer span read from a header.

  Returns:
    Whether ``value`` is an int (JSON's integers are, its booleans are not).

  Example:
    >>> from sparsify.spz import encodings
    >>> encodings.is_int(3), encodings.is_int(True), encodings.is_int(3.0)
    (True, False, False)
  """
  return isinstance(value, int) and not isinstance(value, bool)


def short_repr(value: Any, limit: int = 80) -> str:
  """``repr(value)`` cut to about ``limit`` characters, for error messages.

  Args:
    value: anything, such as a value read from a file's header.
    limit: the most characters to keep of the repr.

  Returns:
    The repr, with ``...`` in place of what is cut.

  Example:
    >>> from sparsify.spz import encodings
    >>> encodings.short_repr([0] * 100, 20)
    '[0, 0, 0, 0, 0, 0, 0...'
  """
  text = repr(value)
  return text if len(text) <= limit else text[:limit] + "..."


# The attributes of each encoding, exactly (see the module docstring).
_ATTRS = {
    "dense": (), "bitmask": ("nnz",), "ternary": ("nnz",),
    "csr": ("nnz", "indptr_bytes", "index_bytes"),
    "pq": ("subspaces", "centroids", "code_bits", "masked"),
    "shared": ("nnz", "centroids", "code_bits", "gap_bits", "gap_entries"),
}
_FLOATS = ("float16", "float32", "float64", "bfloat16")


def _count(attrs: Mapping[str, Any], name: str, low: int, high: int) -> int:
  v = attrs.get(name)
  if not is_int(v) or not low <= v <= high:
    raise ValueError(f"attribute {name}={short_repr(v)} must be an int in "
                     f"[{low}, {high}]")
  return v


def _width(attrs: Mapping[str, Any], name: str) -> int:
  v = attrs.get(name)
  if not is_int(v) or v not in (1, 2, 4, 8):
    raise ValueError(f"attribute {name}={short_repr(v)} must be 1, 2, 4 or "
                     "8 (bytes of an index)")
  return v


def _check_shape(shape: Any) -> int:
  """The number of entries of a leaf's shape, checked; see `check_leaf`."""
  if (not isinstance(shape, (tuple, list)) or len(shape) > MAX_NDIM
      or not all(is_int(n) and n >= 0 for n in shape)):
    raise ValueError(f"shape {short_repr(shape)} must be at most {MAX_NDIM} "
                     "ints >= 0")
  if math.prod(max(n, 1) for n in shape) > MAX_EXTENT:
    raise ValueError(f"shape {short_repr(shape)} spans more than "
                     f"{MAX_EXTENT} entries (its empty dimensions counted as "
                     "1), more than an array can have")
  return math.prod(shape)


def _buffer_bytes(leaf: EncodedLeaf, shape: tuple[int, ...], size: int,
                  itemsize: int) -> dict[str, int]:
  """Checks the attributes; returns the bytes each buffer must have."""
  encoding, attrs = leaf.encoding, leaf.attrs
  if (not isinstance(attrs, Mapping)
      or sorted(attrs, key=str) != sorted(_ATTRS[encoding])):
    got = list(attrs) if isinstance(attrs, Mapping) else attrs
    raise ValueError(f"attributes of a {encoding} leaf must be exactly "
                     f"{sorted(_ATTRS[encoding])}; got {short_repr(got)}")
  if encoding == "dense":
    return {"values": itemsize * size}
  if encoding == "pq":
    if not shape:
      raise ValueError("a pq leaf needs at least one dimension")
    m, n = shape[-1], math.prod(shape[:-1])
    s = _count(attrs, "subspaces", 1, n)
    k = _count(attrs, "centroids", 1, 2**32)
    c = _count(attrs, "code_bits", 0, 32)
    if n % s or c != bits.code_bits(k):
      raise ValueError(f"pq attributes s={s}, k={k}, code_bits={c} do not "
                       f"fit n={n} inputs")
    if not isinstance(attrs["masked"], bool):
      raise ValueError(f"attribute masked={short_repr(attrs['masked'])} "
                       "must be a bool")
    out = {"codebooks": 4 * k * n, "codes": bits.packed_bytes(m * s, c)}
    if attrs["masked"]:
      out["mask"] = bits.mask_bytes(size)
    return out
  nnz = _count(attrs, "nnz", 0, size)
  if encoding == "bitmask":
    return {"mask": bits.mask_bytes(size), "values": itemsize * nnz}
  if encoding == "ternary":
    return {"mask": bits.mask_bytes(size), "sign": bits.mask_bytes(nnz),
            "sigma": 4}
  if encoding == "csr":
    rows, _ = _matrix(shape)
    wp, wi = _width(attrs, "indptr_bytes"), _width(attrs, "index_bytes")
    return {"indptr": (rows + 1) * wp, "indices": nnz * wi,
            "values": itemsize * nnz}
  k = _count(attrs, "centroids", 1, 2**16)
  c = _count(attrs, "code_bits", 0, 16)
  g = _count(attrs, "gap_bits", 1, 16)
  e = _count(attrs, "gap_entries", nnz, size)
  if c != bits.code_bits(k):
    raise ValueError(f"shared attributes k={k}, code_bits={c} disagree: "
                     f"k centroids take {bits.code_bits(k)} bits")
  return {"codebook": 4 * k, "gaps": bits.packed_bytes(e, g),
          "codes": bits.packed_bytes(nnz, c)}


def check_leaf(leaf: EncodedLeaf) -> int:
  """Checks an `EncodedLeaf`'s fields and buffer sizes, not their contents.

  The encoding and dtype must be known (pq, ternary and shared leaves are
  float), the shape at most `MAX_NDIM` ints ``>= 0`` spanning at most
  `MAX_EXTENT` entries (empty dimensions counted as 1), the attributes
  exactly the encoding's, of the types and ranges the module docstring
  gives, and the buffers exactly the encoding's, each of exactly the bytes
  the shape and attributes make it. So a leaf describes no more entries than
  its buffers hold: ``b`` bytes per dense entry, 8 entries per mask byte,
  ``rows + 1`` row pointers per csr, one code per PQ row and subspace.
  Where the data is all zeros (csr, shared) or every code is 0 bits (pq with
  one centroid), a few bytes describe many entries; a file's reader caps
  those with its ``max_elements``.

  Reads only the lengths of the buffers, which may be any objects with a
  length, such as `memoryview` slices.

  Args:
    leaf: an `EncodedLeaf`, from `encode_leaf` or read from a file.

  Returns:
    The number of entries the leaf decodes to, ``prod(shape)``.

  Raises:
    ValueError: on anything that does not fit the encoding, saying what.

  Example:
    >>> import numpy as np
    >>> from sparsify import spz
    >>> leaf = spz.encode_leaf(np.zeros((3, 4), np.float32), 'csr')
    >>> spz.check_leaf(leaf)
    12
    >>> try:
    ...   spz.check_leaf(leaf._replace(shape=(3, 4, 10)))
    ... except ValueError as e:
    ...   print(e)
    buffer 'indptr' of a csr leaf of shape (3, 4, 10) has 4 bytes, expected 13
  """
  encoding, dtype = leaf.encoding, leaf.dtype
  if not isinstance(encoding, str) or encoding not in ENCODINGS:
    raise ValueError(f"unknown encoding {short_repr(encoding)}; this reader "
                     f"knows {ENCODINGS}")
  if not isinstance(dtype, str) or dtype not in DTYPES:
    raise ValueError(f"unknown dtype {short_repr(dtype)}; this reader knows "
                     f"{list(DTYPES)}")
  if encoding in ("pq", "ternary", "shared") and dtype not in _FLOATS:
    raise ValueError(f"a {encoding} leaf must be float; got {dtype}")
  size = _check_shape(leaf.shape)
  shape = tuple(leaf.shape)
  want = _buffer_bytes(leaf, shape, size, DTYPES[dtype].itemsize)
  buffers = leaf.buffers
  if (not isinstance(buffers, Mapping)
      or sorted(buffers, key=str) != sorted(want)):
    got = list(buffers) if isinstance(buffers, Mapping) else buffers
    raise ValueError(f"buffers of this {encoding} leaf must be exactly "
                     f"{sorted(want)}; got {short_repr(got)}")
  for name, nbytes in want.items():
    if len(buffers[name]) != nbytes:
      raise ValueError(f"buffer {name!r} of a {encoding} leaf of shape "
                       f"{shape} has {len(buffers[name])} bytes, expected "
                       f"{nbytes}")
  return size


def _values(buf: Any, dtype: np.dtype) -> np.ndarray:
  if dtype == np.bool_ and np.frombuffer(buf, np.uint8).max(initial=0) > 1:
    raise ValueError("bool values must be bytes 0 or 1")
  return np.frombuffer(buf, _little(dtype)).astype(dtype)


def decode_leaf(leaf: EncodedLeaf) -> np.ndarray:
  """Returns the array an `EncodedLeaf` stores, in the leaf's dtype.

  `check_leaf` checks the leaf first, so nothing is allocated for a shape
  its buffers cannot hold; then the contents are checked as they are read
  (row pointers, column indices, codes, gaps, counts of stored entries).

  Args:
    leaf: an `EncodedLeaf`, from `encode_leaf` or read from a file.

  Returns:
    A numpy array of ``leaf.shape`` and ``leaf.dtype``.

  Raises:
    ValueError: if the buffers or attributes do not fit the encoding.
  """
  size = check_leaf(leaf)
  dtype, shape = DTYPES[leaf.dtype], tuple(leaf.shape)
  buffers = leaf.buffers
  if leaf.encoding == "dense":
    return _values(buffers["values"], dtype).reshape(shape)
  if leaf.encoding == "pq":
    return _decode_pq(leaf, shape, size).astype(dtype)
  if leaf.encoding == "shared":
    return _decode_shared(leaf, shape, size).astype(dtype)
  nnz = leaf.attrs["nnz"]
  if leaf.encoding == "ternary":
    keep = bits.unpack_mask(buffers["mask"], size)
    if np.count_nonzero(keep) != nnz:
      raise ValueError(f"ternary mask has {np.count_nonzero(keep)} nonzeros, "
                       f"nnz says {nnz}")
    negative = bits.unpack_mask(buffers["sign"], nnz)
    sigma = np.frombuffer(buffers["sigma"], "<f4")[0]
    if not np.isfinite(sigma) or sigma < 0:
      raise ValueError(f"ternary sigma {sigma} must be finite and >= 0")
    out = np.zeros(size, dtype)
    out[keep] = np.where(negative, -sigma, sigma).astype(dtype)
    return out.reshape(shape)
  values = _values(buffers["values"], dtype)
  if leaf.encoding == "bitmask":
    keep = bits.unpack_mask(buffers["mask"], size)
    if np.count_nonzero(keep) != nnz:
      raise ValueError(f"bitmask has {np.count_nonzero(keep)} ones, nnz says "
                       f"{nnz}")
    out = np.zeros(size, dtype)
    out[keep] = values
    return out.reshape(shape)
  rows, cols = _matrix(shape)
  wp, wi = leaf.attrs["indptr_bytes"], leaf.attrs["index_bytes"]
  indptr = np.frombuffer(buffers["indptr"], f"<u{wp}").astype(np.int64)
  indices = np.frombuffer(buffers["indices"], f"<u{wi}").astype(np.int64)
  counts = np.diff(indptr)
  # 8-byte values past 2**63 - 1 read as negative int64: refused as well.
  if indptr[0] != 0 or indptr[-1] != nnz or np.any(counts < 0):
    raise ValueError("csr indptr must rise from 0 to nnz")
  if np.any((indices < 0) | (indices >= cols)):
    raise ValueError(f"csr column indices must be below {cols}")
  flat = np.repeat(np.arange(rows, dtype=np.int64), counts) * cols + indices
  if np.any(np.diff(flat) <= 0):
    raise ValueError(f"csr column indices must be increasing within a row "
                     f"and below {cols}")
  out = np.zeros(size, dtype)
  out[flat] = values
  return out.reshape(shape)


def _decode_pq(leaf: EncodedLeaf, shape: tuple[int, ...],
               size: int) -> np.ndarray:
  s, k, c = (leaf.attrs[a] for a in ("subspaces", "centroids", "code_bits"))
  m, n = shape[-1], math.prod(shape[:-1])
  codebooks = np.frombuffer(leaf.buffers["codebooks"], "<f4").astype(
      np.float32).reshape(s, k, n // s)
  codes = bits.unpack_codes(leaf.buffers["codes"], c, m * s,
                            np.int64).reshape(m, s)
  if codes.size and codes.max() >= k:
    raise ValueError(f"pq code {codes.max()} is not below k = {k}")
  mask = None
  if leaf.attrs["masked"]:
    mask = bits.unpack_mask(leaf.buffers["mask"], size).reshape(shape)
  return PQLayer(codebooks, codes, shape, mask).decode()


def _decode_shared(leaf: EncodedLeaf, shape: tuple[int, ...],
                   size: int) -> np.ndarray:
  nnz, k, c, g, e = (leaf.attrs[a] for a in (
      "nnz", "centroids", "code_bits", "gap_bits", "gap_entries"))
  codebook = np.frombuffer(leaf.buffers["codebook"], "<f4").astype(
      np.float32)
  entries = bits.unpack_codes(leaf.buffers["gaps"], g, e, np.int64)
  codes = bits.unpack_codes(leaf.buffers["codes"], c, nnz, np.int64)
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

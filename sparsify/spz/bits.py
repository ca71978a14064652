"""Bit streams and exact byte counts: how codes, masks and indices are stored.

Codes of ``c`` bits (PQ codes, weight-sharing codes, relative-index gaps) and
masks of one bit per entry are packed as `np.packbits` packs: bit ``i`` of
the stream is bit ``7 - i % 8`` (most significant first) of byte ``i // 8``,
the last byte padded with 0 bits, and a code enters the stream most
significant bit first. So ``count`` codes of ``c`` bits take

    packed_bytes(count, c) = ceil(count * c / 8)

bytes, a mask of ``size`` entries ``mask_bytes(size) = ceil(size / 8)``, and
``k`` centroids need ``code_bits(k) = ceil(log2 k)`` bits per code (0 when
``k = 1``). An integer index whose largest possible value is ``v`` is stored
unsigned in ``uint_bytes(v)``, the fewest of 1, 2, 4, 8 bytes whose range
holds ``v``.

Every count here is exact integer arithmetic: the sizes `sparsify.spz`
writes, `sparsify.quantize` reports and `sparsify.report` counts are these.
"""

from typing import Any

import numpy as np


def code_bits(k: int) -> int:
  """Bits per code for ``k`` centroids: ``ceil(log2 k)`` (0 for ``k = 1``).

  Args:
    k: the number of centroids, ``>= 1``.

  Returns:
    The number of bits, a Python int.

  Example:
    >>> from sparsify.spz import bits
    >>> [bits.code_bits(k) for k in (1, 2, 16, 17)]
    [0, 1, 4, 5]
  """
  return (int(k) - 1).bit_length()


def packed_bytes(count: int, bits: int) -> int:
  """Bytes of ``count`` codes of ``bits`` bits packed: ``ceil(count bits / 8)``.

  Args:
    count: the number of codes, ``>= 0``.
    bits: bits per code, ``>= 0``.

  Returns:
    The number of bytes, a Python int.

  Example:
    >>> from sparsify.spz import bits
    >>> [bits.packed_bytes(n, c) for n, c in ((3, 2), (5, 3), (7, 0))]
    [1, 2, 0]
  """
  return -(-int(count) * int(bits) // 8)


def mask_bytes(size: int) -> int:
  """Bytes of a mask of one bit per entry: ``ceil(size / 8)``.

  Args:
    size: the number of entries, ``>= 0``.

  Returns:
    The number of bytes, a Python int.

  Example:
    >>> from sparsify.spz import bits
    >>> bits.mask_bytes(8), bits.mask_bytes(9), bits.mask_bytes(0)
    (1, 2, 0)
  """
  return packed_bytes(size, 1)


def uint_bytes(max_value: int) -> int:
  """The fewest of 1, 2, 4, 8 bytes whose unsigned range holds ``max_value``.

  Args:
    max_value: the largest value to store; a negative one counts as 0.

  Returns:
    1, 2, 4 or 8.

  Example:
    >>> from sparsify.spz import bits
    >>> [bits.uint_bytes(v) for v in (-1, 255, 256, 65536, 2**32)]
    [1, 1, 2, 4, 8]
  """
  return next(w for w in (1, 2, 4, 8) if max(max_value, 0) < 256**w)


def pack_codes(codes: Any, bits: int) -> np.ndarray:
  """Packs codes in row-major order, ``bits`` bits each, high bit first.

  Args:
    codes: non-negative integers below ``2 ** bits``, any shape (a numpy or
      jax array, or a list).
    bits: bits per code (``code_bits(k)``).

  Returns:
    A uint8 array of ``packed_bytes(codes.size, bits)`` bytes; the last byte
    is padded with zero bits.

  Raises:
    ValueError: if a code does not fit in ``bits`` bits.

  Example:
    >>> from sparsify.spz import bits
    >>> bits.pack_codes([1, 2, 3], 2)  # 01 10 11 00
    array([108], dtype=uint8)
  """
  flat = np.asarray(codes).ravel()
  if flat.size and (flat.min() < 0 or flat.max() >= 2 ** bits):
    raise ValueError(f"codes: got values in [{flat.min()}, {flat.max()}]; "
                     f"allowed: [0, {2 ** bits - 1}] for {bits} bits")
  shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
  matrix = (flat.astype(np.uint64)[:, None] >> shifts) & np.uint64(1)
  return np.packbits(matrix.astype(np.uint8).ravel())


def unpack_codes(packed: Any, bits: int, count: int,
                 dtype: Any = np.int32) -> np.ndarray:
  """Inverse of `pack_codes`: the first ``count`` codes, ``(count,)``.

  Args:
    packed: the bytes written by `pack_codes`: a uint8 array or a bytes-like
      object.
    bits: bits per code.
    count: how many codes to read.
    dtype: the integer dtype of the result; codes of more than 31 bits need
      ``np.int64``.

  Returns:
    An array of ``dtype`` and shape ``(count,)``.

  Example:
    >>> import numpy as np
    >>> from sparsify.spz import bits
    >>> bits.unpack_codes(np.array([108], np.uint8), 2, 3)
    array([1, 2, 3], dtype=int32)
    >>> bits.unpack_codes(b'\\x6c', 2, 3, np.int64)
    array([1, 2, 3])
  """
  if bits == 0:
    return np.zeros(count, dtype)
  if isinstance(packed, (bytes, bytearray, memoryview)):
    packed = np.frombuffer(packed, np.uint8)
  matrix = np.unpackbits(np.asarray(packed, np.uint8), count=count * bits)
  weights = 1 << np.arange(bits - 1, -1, -1, dtype=np.int64)
  return (matrix.reshape(count, bits).astype(np.int64) @ weights).astype(
      dtype)


def pack_mask(mask: Any) -> bytes:
  """Packs booleans in row-major order, one bit each, 1 for True.

  Args:
    mask: booleans (or values read as booleans), any shape.

  Returns:
    ``mask_bytes(mask.size)`` bytes; the last byte is padded with zero bits.

  Example:
    >>> from sparsify.spz import bits
    >>> bits.pack_mask([[True, False, True], [False, True, True]])
    b'\\xac'
  """
  return np.packbits(np.ravel(mask).astype(bool)).tobytes()


def unpack_mask(buf: bytes, size: int) -> np.ndarray:
  """Inverse of `pack_mask`: the first ``size`` bits as booleans.

  Args:
    buf: the bytes written by `pack_mask`.
    size: how many entries to read.

  Returns:
    A boolean array of shape ``(size,)``.

  Example:
    >>> from sparsify.spz import bits
    >>> bits.unpack_mask(b'\\xac', 6)
    array([ True, False,  True, False,  True,  True])
  """
  return np.unpackbits(np.frombuffer(buf, np.uint8), count=size).astype(bool)

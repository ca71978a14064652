"""Reads arrays stored in the IDX format of the MNIST distribution.

An IDX file is a big-endian header followed by the raw array:

* two zero bytes;
* one byte for the element type (``0x08`` uint8, ``0x09`` int8, ``0x0B``
  int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64);
* one byte for the number of dimensions ``d``;
* ``d`` unsigned 32-bit sizes, then ``prod(sizes)`` elements, row-major.

MNIST images are ``0x00000803`` (uint8, 3 dimensions: count, rows, columns)
and labels ``0x00000801`` (uint8, 1 dimension). Files may be gzip-compressed;
compression is detected from the content, not the file name.

Reference: Y. LeCun, C. Cortes, C. J. C. Burges, "The MNIST database of
handwritten digits", http://yann.lecun.com/exdb/mnist/.
"""

import gzip
import os
import struct
import zlib

import numpy as np

# IDX type code -> big-endian numpy dtype.
_DTYPES = {
    0x08: np.dtype('>u1'),
    0x09: np.dtype('>i1'),
    0x0B: np.dtype('>i2'),
    0x0C: np.dtype('>i4'),
    0x0D: np.dtype('>f4'),
    0x0E: np.dtype('>f8'),
}
_GZIP_MAGIC = b'\x1f\x8b'


def _read_bytes(path: str | os.PathLike[str]) -> bytes:
  """Returns the file's content, decompressed if it is gzip data."""
  with open(path, 'rb') as f:
    data = f.read()
  if data[:2] != _GZIP_MAGIC:
    return data
  try:
    return gzip.decompress(data)
  except (EOFError, OSError, zlib.error) as e:
    raise ValueError(
        f'{os.fspath(path)}: corrupt or truncated gzip data ({e})') from e


def parse_idx(data: bytes, name: str = '<bytes>') -> np.ndarray:
  """Parses the content of an (uncompressed) IDX file.

  Args:
    data: the bytes of the file, header included.
    name: how error messages name the data (usually its path).

  Returns:
    The array, with the header's shape and a native-endian dtype.

  Raises:
    ValueError: if the header is malformed or the data does not have exactly
      the size the header announces.
  """
  if len(data) < 4:
    raise ValueError(f'{name}: not an IDX file (only {len(data)} bytes)')
  zero, code, ndim = struct.unpack('>HBB', data[:4])
  if zero != 0 or code not in _DTYPES:
    raise ValueError(
        f'{name}: not an IDX file (bad magic number 0x{data[:4].hex()})')
  if ndim == 0:
    raise ValueError(f'{name}: IDX header declares 0 dimensions')
  header_size = 4 + 4 * ndim
  if len(data) < header_size:
    raise ValueError(
        f'{name}: truncated IDX header ({len(data)} of {header_size} bytes)')
  shape = struct.unpack(f'>{ndim}I', data[4:header_size])
  dtype = _DTYPES[code]
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  found = len(data) - header_size
  if found != expected:
    problem = 'truncated' if found < expected else 'trailing bytes'
    raise ValueError(
        f'{name}: {problem}: shape {shape} needs {expected} data bytes, '
        f'found {found}')
  array = np.frombuffer(data, dtype=dtype, offset=header_size)
  return array.reshape(shape).astype(dtype.newbyteorder('='))


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
  """Reads an IDX file, raw or gzip-compressed, into a numpy array.

  Args:
    path: the file, e.g. ``'t10k-images-idx3-ubyte.gz'``.

  Returns:
    A new (writable) array, e.g. uint8 of shape ``(10000, 28, 28)`` for the
    MNIST test images, ``(10000,)`` for its labels.

  Raises:
    FileNotFoundError: if the file does not exist.
    ValueError: if the file is corrupt or truncated; the message names it.

  Example:
    >>> import gzip, os, struct, tempfile
    >>> from sparsify import data
    >>> header = struct.pack('>HBBII', 0, 0x08, 2, 2, 3)  # uint8, 2 x 3
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...   path = os.path.join(tmp, 'images-idx2-ubyte.gz')
    ...   with gzip.open(path, 'wb') as f:
    ...     _ = f.write(header + bytes(range(6)))
    ...   array = data.read_idx(path)
    >>> array
    array([[0, 1, 2],
           [3, 4, 5]], dtype=uint8)
  """
  return parse_idx(_read_bytes(path), name=os.fspath(path))

"""Where the bytes of a compressed model file go, without decoding it.

`file_report` reads and checks a file written by `sparsify.spz.save` and
lists, per leaf, its encoding and the bytes of each of its buffers;
`float32_bytes` is the size the same parameters take stored densely as
float32, the baseline a compression ratio divides.
"""

import dataclasses
import math
import os
from typing import Any

import numpy as np

from sparsify.spz import container


@dataclasses.dataclass(frozen=True)
class LeafBytes:
  """Bytes one leaf takes on disk; a row of `FileReport`.

  Attributes:
    path: the leaf's path name, e.g. ``'fc1/kernel'``.
    encoding: one of `encodings.ENCODINGS`.
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
  """Bytes on disk of a file written by `container.save`; see `file_report`.

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


def file_report(
    path: str | os.PathLike[str],
    *,
    max_elements: int = container.MAX_ELEMENTS,
) -> FileReport:
  """Returns the bytes each leaf of a saved file takes on disk.

  Reads and checks the file (magic, version, size, checksum, header and
  every entry, as `container.read_leaves`) without decoding the leaves.

  Args:
    path: a file written by `container.save`.
    max_elements: the most elements all leaves together may hold, as
      `container.load` takes it.

  Returns:
    A `FileReport`: one `LeafBytes` per leaf, and the file's total size.

  Raises:
    container.CompressedFileError: as `container.read_leaves`: for any
      problem but those only decoding finds (a column index out of range).
    ValueError: if ``max_elements`` is not an int ``>= 0``.

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
  leaves, _, size = container.read_leaves(path,
                                          max_elements=max_elements)
  rows = []
  for name, _, leaf in leaves:
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
  leaves = container.flatten(params)
  return 4 * sum(math.prod(np.shape(leaf)) for _, leaf in leaves)
"""One file for a compressed model: header, checksum, atomic write, load.

`save` writes a parameter pytree (nested dicts of arrays, such as
``variables['params']`` of a Flax Linen model) to one file, each leaf in one
encoding of `sparsify.spz.encodings`, with JSON metadata; `load` reads both
back. `sparsify.spz.inspect.file_report` lists the bytes each leaf takes.

File layout, version 1::

  offset       bytes  field
  0            8      magic b"\\x89SPZ\\r\\n\\x1a\\n"
  8            4      format version, uint32 (1)
  12           8      H: length of the header, uint64
  20           8      D: length of the data section, uint64
  28           H      header, UTF-8 JSON (below)
  28 + H       D      data section: every buffer, back to back, no padding
  28 + H + D   32     SHA-256 of bytes [0, 28 + H + D)

All integers of the layout are little-endian. The header is ``{"leaves":
[entry, ...], "metadata": {...}}`` with one entry per leaf in
`sparsify.core.paths.named_leaves` order (dict keys sorted)::

  {"path": "fc1/kernel", "keys": ["fc1", "kernel"], "encoding": "csr",
   "shape": [784, 300], "dtype": "float32",
   "attrs": {"nnz": 23520, "indptr_bytes": 2, "index_bytes": 2},
   "buffers": {"indptr": [0, 1570], "indices": [1570, 47040],
               "values": [48610, 94080]}}

``keys`` rebuilds the nested dicts; ``encoding``, ``attrs`` and the buffers'
contents are an `encodings.EncodedLeaf`'s (see `sparsify.spz.encodings` for
each encoding's buffers and attributes); ``dtype`` (a numpy dtype name: bool,
int8-64, uint8-64, float16/32/64, bfloat16) is the leaf's, which is also the
type of stored ``values``; ``buffers`` maps each buffer to ``[offset,
length]`` in bytes from the start of the data section.

Saving is atomic: the file is written under a temporary name in the same
directory, then renamed over ``path``, so a failed save leaves a previous
file as it was. Loading checks the magic, version, declared sizes and
checksum before it reads a header, and every buffer span against the data
section before it decodes a leaf.
"""

from collections.abc import Iterator, Mapping
import hashlib
import json
import os
import struct
from typing import Any

from sparsify.spz import encodings as encodings_lib

MAGIC = b"\x89SPZ\r\n\x1a\n"
VERSION = 1
_PREAMBLE = struct.Struct("<8sIQQ")
_DIGEST_BYTES = 32


class CompressedFileError(ValueError):
  """A compressed model file that cannot be read; says which file and why."""

  def __init__(self, path: Any, problem: str):
    self.path = os.fspath(path)
    self.problem = problem
    super().__init__(f"{self.path}: {problem}")


def flatten(params: Any) -> list[tuple[tuple[str, ...], Any]]:
  """The leaves of nested string-keyed mappings, in file order.

  Args:
    params: nested dicts (any `Mapping`) with string keys.

  Returns:
    ``[(keys, leaf), ...]``: the keys from the root to each leaf, with the
    keys of every dict visited in sorted order.

  Raises:
    ValueError: if ``params`` is not a `Mapping`, or a key is no string.

  Example:
    >>> from sparsify.spz import container
    >>> container.flatten({'fc': {'kernel': 1, 'bias': 2}, 'a': 3})
    [(('a',), 3), (('fc', 'bias'), 2), (('fc', 'kernel'), 1)]
  """
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
    encodings: Mapping[str, encodings_lib.LayerEncoding] | None = None,
    *,
    metadata: Mapping[str, Any] | None = None,
) -> None:
  """Writes parameters, each leaf in one encoding, and metadata to one file.

  Args:
    path: the file to write; replaced atomically if it exists.
    params: nested dicts (any `Mapping`) with string keys and array leaves
      (numpy or jax; dtypes bool, int, uint, float16/32/64, bfloat16).
    encodings: ``{leaf path: encoding}`` with paths as
      `sparsify.core.paths.named_leaves` names them (``'fc1/kernel'``) and
      encodings as `encodings.encode_leaf` takes them. Leaves not named get
      the smallest lossless encoding.
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
  leaves = flatten(params)
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
      leaf = encodings_lib.encode_leaf(value, encodings.get(name, "auto"))
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
           data: memoryview,
           ) -> tuple[str, list[str], encodings_lib.EncodedLeaf]:
  """The leaf path, keys and `EncodedLeaf` of one header entry."""
  name = entry.get("path") if isinstance(entry, dict) else None
  try:
    keys, shape = entry["keys"], entry["shape"]
    if (not isinstance(name, str) or not isinstance(keys, list) or not keys
        or not all(isinstance(k, str) for k in keys)):
      raise ValueError("'path' must be a string and 'keys' a list of strings")
    if not isinstance(shape, list) or not all(
        encodings_lib.is_int(d) and d >= 0 for d in shape):
      raise ValueError(f"shape {shape!r} must be a list of ints >= 0")
    if not isinstance(entry["attrs"], dict) or not isinstance(
        entry["buffers"], dict):
      raise ValueError("'attrs' and 'buffers' must be objects")
    if (entry["encoding"] not in encodings_lib.ENCODINGS
        or entry["dtype"] not in encodings_lib.DTYPES):
      raise ValueError(f"encoding {entry['encoding']!r} or dtype "
                       f"{entry['dtype']!r} unknown; this reader knows "
                       f"{encodings_lib.ENCODINGS} and "
                       f"{list(encodings_lib.DTYPES)}")
    buffers = {}
    for buffer_name, span in entry["buffers"].items():
      if not isinstance(span, list) or len(span) != 2 or not all(
          encodings_lib.is_int(v) and v >= 0 for v in span):
        raise ValueError(f"buffer {buffer_name!r} span {span!r} must be "
                         "[offset, length]")
      if span[0] + span[1] > len(data):
        raise ValueError(f"buffer {buffer_name!r} {span} ends past the "
                         f"{len(data)}-byte data section")
      buffers[buffer_name] = bytes(data[span[0]:span[0] + span[1]])
    return name, keys, encodings_lib.EncodedLeaf(
        entry["encoding"], tuple(shape), entry["dtype"], entry["attrs"],
        buffers)
  except (KeyError, TypeError, ValueError) as e:
    raise CompressedFileError(path, f"bad header entry for leaf {name!r}: "
                              f"{e}") from None


def read_leaves(
    path: str | os.PathLike[str],
) -> tuple[Iterator[tuple[str, list[str], encodings_lib.EncodedLeaf]],
           dict[str, Any], int]:
  """Checks a file and returns its leaves, undecoded, its metadata and size.

  The magic, version, declared sizes, checksum and header are checked at
  once; each header entry (its fields, and its buffer spans against the
  data section) when the iterator reaches it.

  Args:
    path: a file written by `save`.

  Returns:
    ``(leaves, metadata, file_bytes)``: an iterator of ``(path name, keys,
    EncodedLeaf)`` in file order, the metadata dict and the file's size.

  Raises:
    CompressedFileError: if the file is truncated, corrupted (checksum), not
      such a file (magic), of another format version, or a header entry is
      malformed (raised by the iterator for that entry).

  Example:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from sparsify import spz
    >>> from sparsify.spz import container
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...   path = os.path.join(tmp, 'model.spz')
    ...   spz.save(path, {'fc': {'kernel': np.ones(3, np.float32)}})
    ...   leaves, metadata, size = container.read_leaves(path)
    ...   [(name, leaf.encoding, leaf.nbytes) for name, _, leaf in leaves]
    [('fc/kernel', 'dense', 12)]
  """
  header, data, size = _read(path)
  leaves = (_entry(path, entry, data) for entry in header["leaves"])
  return leaves, header["metadata"], size


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
  leaves, metadata, _ = read_leaves(path)
  params = {}
  for name, keys, leaf in leaves:
    try:
      value = encodings_lib.decode_leaf(leaf)
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
  return params, metadata


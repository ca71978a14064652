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
file as it was.

Loading trusts nothing in the file; before it decodes any leaf it checks,
in this order:

* the 28-byte preamble, read first: the magic, the version, and the
  declared sizes against the file's size (`os.fstat`; a pipe or device is
  read up to the declared size only once the magic matched); a header of at
  most `MAX_HEADER_BYTES`;
* the checksum;
* the header: UTF-8 JSON nested at most `MAX_DEPTH` deep (counted before it
  is parsed), no key twice in an object, no NaN or infinity; exactly
  ``leaves`` and ``metadata``;
* each entry: exactly the fields above, of their types; ``path`` is
  ``"/".join(keys)``, at most `MAX_DEPTH` keys; buffer spans are pairs of
  ints within the data section; `encodings.check_leaf`: a known encoding and
  dtype, a shape of ints >= 0, the encoding's attributes in their ranges and
  its buffers of exactly the bytes the shape and attributes make them, so
  that no shape claims more elements than its buffers can describe;
* all entries: no path twice, no leaf under another, no two buffers
  overlapping, and at most ``max_elements`` elements in all (`MAX_ELEMENTS`,
  2**30, by default), the cap for the leaves whose few bytes describe many
  elements (all-zero csr and shared leaves, pq leaves of one centroid);
* while decoding: each buffer's contents (indices, codes, gaps, counts).

Anything wrong raises `CompressedFileError`, one line naming the file and
the problem; no other error escapes for what a file holds.
"""

from collections.abc import Iterator, Mapping
import contextlib
import hashlib
import itertools
import json
import math
import os
import re
import stat
import struct
from typing import Any

import numpy as np

from sparsify.spz import encodings as encodings_lib

MAGIC = b"\x89SPZ\r\n\x1a\n"
VERSION = 1
MAX_ELEMENTS = 2**30  # Default cap on the elements a file's leaves decode to.
MAX_HEADER_BYTES = 2**26  # 64 MiB of header JSON at most.
MAX_DEPTH = 64  # Deepest nesting of the header JSON, and of a leaf's keys.
_PREAMBLE = struct.Struct("<8sIQQ")
_DIGEST_BYTES = 32
_CHUNK = 1 << 20
_ENTRY_FIELDS = ("path", "keys", "encoding", "shape", "dtype", "attrs",
                 "buffers")
# A JSON string, or what is left of the text after an unterminated one.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)',
                     re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")


class CompressedFileError(ValueError):
  """A compressed model file that cannot be read; says which file and why."""

  def __init__(self, path: Any, problem: str):
    self.path = os.fspath(path)
    self.problem = " ".join(str(problem).splitlines())  # One line.
    super().__init__(f"{self.path}: {self.problem}")


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
      that is no leaf, metadata that is not JSON, a header that `load` would
      refuse (nested too deep, too large), or a directory as ``path``.
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
    if len(keys) > MAX_DEPTH:
      raise ValueError(f"leaf {name!r} lies {len(keys)} dicts deep; a file "
                       f"holds leaves at most {MAX_DEPTH} deep")
    try:
      leaf = encodings_lib.encode_leaf(value, encodings.get(name, "auto"))
      encodings_lib.check_leaf(leaf)  # What `load` checks, such as ndim.
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
  except (TypeError, ValueError, RecursionError) as e:
    raise ValueError(f"metadata must be JSON (finite numbers, strings, "
                     f"lists, dicts): {e}") from None
  try:
    _parse_header(header)  # As `load` will, so that it reads the file back.
  except ValueError as e:
    raise ValueError(f"metadata that `load` could not read back: {e}"
                     ) from None
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


def _read_stream(f: Any, n: int) -> bytes:
  """Up to ``n`` bytes of an unbuffered file; fewer only at its end."""
  chunks, left = [], n
  while left > 0:
    chunk = f.read(min(left, _CHUNK))
    if not chunk:
      break
    chunks.append(chunk)
    left -= len(chunk)
  return b"".join(chunks)


def _read_regular(f: Any, n: int) -> bytearray:
  """``n`` bytes of an unbuffered regular file, or fewer if it shrank."""
  buf = bytearray(n)
  view, got = memoryview(buf), 0
  while got < n:
    k = f.readinto(view[got:])
    if not k:
      break
    got += k
  view.release()
  return buf if got == n else buf[:got]


def _json_depth(text: bytes) -> int:
  """How deep the arrays and objects of JSON text nest, without parsing it.

  Strings are cut out first (each from its opening quote to the next quote
  not escaped by a backslash, or to the end), so brackets inside them do not
  count. For text that is not valid JSON the count is right up to its first
  error, which is as far as a parser goes; so a parser never nests deeper
  than this says. Time and memory are linear in the text's length.

  Args:
    text: UTF-8 JSON text.

  Returns:
    The deepest nesting of ``[`` and ``{``: 0 for a number or string, 1 for
    ``[1, 2]``, 2 for ``{"a": [1]}``.

  Example:
    >>> from sparsify.spz import container
    >>> container._json_depth(b'{"a": [1, {"b": "[[["}]}')
    3
  """
  brackets = _NOT_BRACKET.sub(b"", _STRING.sub(b"", text))
  steps = np.frombuffer(brackets, np.uint8)
  depth = level = 0
  for start in range(0, steps.size, _CHUNK):
    chunk = steps[start:start + _CHUNK]
    opens = (chunk == ord("[")) | (chunk == ord("{"))
    levels = np.cumsum(np.where(opens, 1, -1), dtype=np.int64) + level
    depth, level = max(depth, int(levels.max())), int(levels[-1])
  return depth


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
  seen = set()
  for key, _ in pairs:
    if key in seen:
      raise ValueError(f"key {encodings_lib.short_repr(key)} appears twice "
                       "in one object")
    seen.add(key)
  return dict(pairs)


def _json_constant(name: str) -> Any:
  raise ValueError(f"{name} is not a JSON number")


def _json_float(text: str) -> float:
  value = float(text)
  if not math.isfinite(value):
    raise ValueError(f"number {encodings_lib.short_repr(text)} is out of "
                     "range")
  return value


def _parse_header(raw: bytes) -> Any:
  """The header's JSON, parsed within the reader's limits (ValueError if not).

  Args:
    raw: the header's bytes.

  Returns:
    The parsed JSON value.
  """
  if len(raw) > MAX_HEADER_BYTES:
    raise ValueError(f"its header of {len(raw)} bytes is larger than the "
                     f"{MAX_HEADER_BYTES} bytes this reader takes")
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"header is not UTF-8: {e}") from None
  depth = _json_depth(raw)
  if depth > MAX_DEPTH:
    raise ValueError(f"header nests arrays and objects {depth} deep; this "
                     f"reader takes at most {MAX_DEPTH}")
  try:
    return json.loads(text, object_pairs_hook=_json_object,
                      parse_constant=_json_constant, parse_float=_json_float)
  except ValueError as e:
    raise ValueError(f"header is not valid JSON: {e}") from None


def _read(path: Any, f: Any) -> tuple[Any, memoryview, int]:
  """Checks the layout, checksum and JSON; returns header, data and size.

  Args:
    path: the file's name, for errors.
    f: the file, opened unbuffered (so that only the bytes asked for are
      read).
  """
  stat_result = os.fstat(f.fileno())
  regular = stat.S_ISREG(stat_result.st_mode)
  preamble = _read_stream(f, _PREAMBLE.size)
  n = stat_result.st_size if regular else len(preamble)
  if preamble[:8] != MAGIC:
    if n < 8 and MAGIC.startswith(preamble):
      raise CompressedFileError(path, f"truncated: {n} bytes, not even the "
                                "8-byte magic")
    raise CompressedFileError(
        path, f"not a sparsify compressed model: starts with "
        f"{preamble[:8]!r}, expected the magic {MAGIC!r}")
  if len(preamble) < _PREAMBLE.size:
    raise CompressedFileError(path, f"truncated: {len(preamble)} bytes, "
                              f"shorter than the {_PREAMBLE.size}-byte "
                              "preamble")
  _, version, header_len, data_len = _PREAMBLE.unpack(preamble)
  if version != VERSION:
    raise CompressedFileError(path, f"unsupported format version "
                              f"{version}; this reader reads version "
                              f"{VERSION}")
  total = _PREAMBLE.size + header_len + data_len + _DIGEST_BYTES
  if regular and n != total:
    problem = "truncated" if n < total else "too long"
    raise CompressedFileError(
        path, f"{problem}: {n} bytes, but its preamble declares {total} "
        "(or the preamble is corrupted)")
  if header_len > MAX_HEADER_BYTES:
    raise CompressedFileError(
        path, f"its header of {header_len} bytes is larger than the "
        f"{MAX_HEADER_BYTES} bytes this reader takes (or the preamble is "
        "corrupted)")
  if regular:
    rest = _read_regular(f, total - _PREAMBLE.size)
  else:  # A pipe or device: read what it holds, one byte more at most.
    rest = _read_stream(f, total - _PREAMBLE.size + 1)
  if len(rest) != total - _PREAMBLE.size:
    n = _PREAMBLE.size + len(rest)
    problem = "truncated" if n < total else "too long"
    raise CompressedFileError(path, f"{problem}: {n} bytes read, but its "
                              f"preamble declares {total}")
  end = header_len + data_len
  view = memoryview(rest)
  digest = hashlib.sha256(preamble)
  digest.update(view[:end])
  if digest.digest() != view[end:]:
    raise CompressedFileError(path, "corrupted: the SHA-256 checksum of its "
                              "contents does not match the stored one")
  try:
    header = _parse_header(bytes(view[:header_len]))
  except ValueError as e:
    raise CompressedFileError(path, str(e)) from None
  return header, view[header_len:end], total


def _span(buffer_name: str, span: Any, data_len: int) -> range:
  """The byte range of one buffer span ``[offset, length]``, checked."""
  if (not isinstance(span, list) or len(span) != 2
      or not all(encodings_lib.is_int(v) and v >= 0 for v in span)):
    raise ValueError(f"buffer {encodings_lib.short_repr(buffer_name)} span "
                     f"{encodings_lib.short_repr(span)} must be [offset, "
                     "length], two ints >= 0")
  if span[0] + span[1] > data_len:
    raise ValueError(f"buffer {encodings_lib.short_repr(buffer_name)} "
                     f"{encodings_lib.short_repr(span)} ends past the "
                     f"{data_len}-byte data section")
  return range(span[0], span[0] + span[1])


def _entry(path: Any, index: int, entry: Any, data: memoryview,
           ) -> tuple[str, list[str], encodings_lib.EncodedLeaf, int]:
  """Path, keys, `EncodedLeaf` (its buffers views of ``data``) and size."""
  if not isinstance(entry, dict):
    raise CompressedFileError(path, f"header entry {index} must be an "
                              f"object; got {type(entry).__name__}")
  name = entry.get("path")
  where = (f"leaf {encodings_lib.short_repr(name)}" if isinstance(name, str)
           else f"header entry {index}")
  try:
    if sorted(entry) != sorted(_ENTRY_FIELDS):
      raise ValueError(f"fields must be exactly {list(_ENTRY_FIELDS)}; got "
                       f"{encodings_lib.short_repr(list(entry))}")
    keys, shape, buffers = entry["keys"], entry["shape"], entry["buffers"]
    if not isinstance(name, str):
      raise ValueError(f"'path' {encodings_lib.short_repr(name)} must be a "
                       "string")
    if (not isinstance(keys, list) or not 1 <= len(keys) <= MAX_DEPTH
        or not all(isinstance(k, str) for k in keys)):
      raise ValueError(f"'keys' {encodings_lib.short_repr(keys)} must be a "
                       f"list of 1 to {MAX_DEPTH} strings")
    if "/".join(keys) != name:
      raise ValueError(f"'keys' {encodings_lib.short_repr(keys)} do not "
                       "join to its path")
    if not isinstance(shape, list):
      raise ValueError(f"shape {encodings_lib.short_repr(shape)} must be a "
                       "list of ints")
    if not isinstance(buffers, dict):
      raise ValueError("'buffers' must be an object")
    views = {}
    for buffer_name, span in buffers.items():
      span = _span(buffer_name, span, len(data))
      views[buffer_name] = data[span.start:span.stop]
    leaf = encodings_lib.EncodedLeaf(entry["encoding"], tuple(shape),
                                     entry["dtype"], entry["attrs"], views)
    size = encodings_lib.check_leaf(leaf)
  except ValueError as e:
    raise CompressedFileError(path, f"{where}: {e}") from None
  return name, keys, leaf, size


_LEAF = object()  # Marks a leaf in the tree `_check_header` builds.


def _check_header(
    path: Any, header: Any, data: memoryview, max_elements: int,
) -> list[tuple[str, list[str], encodings_lib.EncodedLeaf]]:
  """Checks every entry, and all of them together; returns the leaves."""
  if (not isinstance(header, dict)
      or sorted(header) != ["leaves", "metadata"]
      or not isinstance(header["leaves"], list)
      or not isinstance(header["metadata"], dict)):
    raise CompressedFileError(path, "header must be a JSON object with "
                              "exactly 'leaves' (a list) and 'metadata' (an "
                              "object)")
  leaves, names, tree, spans, total = [], set(), {}, [], 0
  for index, entry in enumerate(header["leaves"]):
    name, keys, leaf, size = _entry(path, index, entry, data)
    where = f"leaf {encodings_lib.short_repr(name)}"
    if name in names:
      raise CompressedFileError(path, f"{where} is stored twice")
    names.add(name)
    node = tree
    for key in keys[:-1]:
      node = node.setdefault(key, {})
      if node is _LEAF:
        raise CompressedFileError(path, f"{where} lies under another leaf")
    if keys[-1] in node:
      raise CompressedFileError(path, f"{where} is stored twice or has "
                                "leaves under it")
    node[keys[-1]] = _LEAF
    for buffer_name, span in entry["buffers"].items():
      if span[1]:
        spans.append((span[0], span[0] + span[1], where, buffer_name))
    total += size
    leaves.append((name, keys, leaf))
  spans.sort()
  for (_, end, where, buffer_name), (start, _, other, other_name) in (
      itertools.pairwise(spans)):
    if start < end:
      raise CompressedFileError(
          path, f"buffer {encodings_lib.short_repr(other_name)} of {other} "
          f"overlaps buffer {encodings_lib.short_repr(buffer_name)} of "
          f"{where} in the data section")
  if total > max_elements:
    raise CompressedFileError(
        path, f"its leaves hold {total} elements in all, more than "
        f"max_elements={max_elements}; to read it anyway, pass "
        f"max_elements={total} (or more)")
  return leaves


def _check_cap(max_elements: Any) -> None:
  if not encodings_lib.is_int(max_elements) or max_elements < 0:
    raise ValueError(f"max_elements must be an int >= 0; got "
                     f"{max_elements!r}")


@contextlib.contextmanager
def _guard(path: Any, where: str | None = None) -> Iterator[None]:
  """Raises what goes wrong inside as a `CompressedFileError`: a last guard.

  The checks before decoding are meant to catch every malformed file; this
  turns what they might miss (an error of numpy, an allocation that fails)
  into the one error a reader of files is promised.
  """
  prefix = f"{where}: " if where else ""
  try:
    yield
  except CompressedFileError:
    raise
  except ValueError as e:  # A decoder's own message says what is wrong.
    raise CompressedFileError(path, f"{prefix}{e}") from None
  except MemoryError:
    raise CompressedFileError(path, f"{prefix}not enough memory to read "
                              "it") from None
  except (TypeError, KeyError, IndexError, OverflowError, RecursionError,
          struct.error) as e:
    raise CompressedFileError(path, f"{prefix}unreadable: "
                              f"{type(e).__name__}: {e}") from None


def _copies(path: Any,
            leaves: list[tuple[str, list[str], encodings_lib.EncodedLeaf]],
            ) -> Iterator[tuple[str, list[str], encodings_lib.EncodedLeaf]]:
  """The leaves with their buffers copied out of the file, one at a time."""
  for name, keys, leaf in leaves:
    with _guard(path, f"leaf {encodings_lib.short_repr(name)}"):
      buffers = {k: bytes(v) for k, v in leaf.buffers.items()}
    yield name, list(keys), leaf._replace(buffers=buffers)


def read_leaves(
    path: str | os.PathLike[str],
    *,
    max_elements: int = MAX_ELEMENTS,
) -> tuple[Iterator[tuple[str, list[str], encodings_lib.EncodedLeaf]],
           dict[str, Any], int]:
  """Checks a file and returns its leaves, undecoded, its metadata and size.

  Everything but the buffers' contents is checked at once (see the module
  docstring): the preamble against the file's size, the checksum, the
  header and every entry, all before this returns. The iterator then copies
  each leaf's buffers out of the file as it reaches it.

  Args:
    path: a file written by `save`.
    max_elements: the most elements all leaves together may decode to; raise
      it to read a file of more (a file claiming more is refused, so a small
      hostile file cannot make a reader allocate without bound).

  Returns:
    ``(leaves, metadata, file_bytes)``: an iterator of ``(path name, keys,
    EncodedLeaf)`` in file order, the metadata dict and the file's size.

  Raises:
    CompressedFileError: if the file is truncated, corrupted (checksum), not
      such a file (magic), of another format version, its header is
      malformed, or its leaves hold more than ``max_elements`` elements.
    OSError: if the file cannot be opened or read.
    ValueError: if ``max_elements`` is not an int ``>= 0``.

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
  _check_cap(max_elements)
  with open(path, "rb", buffering=0) as f, _guard(path):
    header, data, size = _read(path, f)
    leaves = _check_header(path, header, data, max_elements)
  return _copies(path, leaves), header["metadata"], size


def load(
    path: str | os.PathLike[str],
    *,
    max_elements: int = MAX_ELEMENTS,
) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads a file written by `save`.

  Args:
    path: the file.
    max_elements: the most elements all leaves together may decode to
      (`MAX_ELEMENTS`, 2**30, unless raised); see `read_leaves`.

  Returns:
    ``(params, metadata)``: nested dicts of numpy arrays (of the saved shapes
    and dtypes; PQ, ternary and shared leaves decoded) and the metadata dict.

  Raises:
    CompressedFileError: if the file is truncated, corrupted (checksum), not
      such a file (magic), of another format version, or inconsistent, or
      its leaves hold more than ``max_elements`` elements; never another
      error for what a file holds.
    OSError: if the file cannot be opened or read.
    ValueError: if ``max_elements`` is not an int ``>= 0``.

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
  leaves, metadata, _ = read_leaves(path, max_elements=max_elements)
  params = {}
  for name, keys, leaf in leaves:  # `read_leaves` checked keys and paths.
    with _guard(path, f"leaf {encodings_lib.short_repr(name)}"):
      value = encodings_lib.decode_leaf(leaf)
    node = params
    for key in keys[:-1]:
      node = node.setdefault(key, {})
    node[keys[-1]] = value
  return params, metadata

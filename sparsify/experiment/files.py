"""The files a run writes: strict JSON, written atomically; JSON lines.

Every JSON file of a workdir is written by `write_json`: to a temporary file
in the same directory, flushed to disk, then renamed over the old one, so a
kill or a full disk leaves the previous file whole instead of a torn one.
The JSON is strict (RFC 8259): a non-finite float is written as ``null``,
never as the bare ``NaN`` or ``Infinity`` that Python's `json` emits by
default and other parsers reject.

``metrics.jsonl`` grows by one line per logging step (`append_jsonl`); a run
killed while writing leaves a torn last line, which `read_jsonl` drops as
the kill it was (and `append_jsonl` first cuts off, so the next line starts
clean).
"""

from collections.abc import Callable, Iterator
import json
import math
import os
import tempfile
from typing import Any


def strict(obj: Any, default: Callable[[Any], Any] | None = None) -> Any:
  """``obj`` with every non-finite float replaced by ``None``.

  Args:
    obj: nested dicts, lists and tuples of JSON values (and of anything
      ``default`` converts).
    default: converts an object JSON cannot hold (as `json.dump`'s
      ``default``); ``None`` to leave it for `json.dumps` to refuse.

  Returns:
    The same structure with ``nan``, ``inf`` and ``-inf`` as ``None``
    (tuples become lists).
  """
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  if isinstance(obj, dict):
    return {k: strict(v, default) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [strict(v, default) for v in obj]
  if obj is None or isinstance(obj, (str, int, bool)):
    return obj
  if default is not None:
    return strict(default(obj), None)
  return obj


def dumps(obj: Any, *, default: Callable[[Any], Any] | None = None,
          indent: int | None = None) -> str:
  """Strict JSON text of ``obj`` (non-finite floats as ``null``).

  Args:
    obj: the value.
    default: converts objects JSON cannot hold, as in `json.dumps`.
    indent: as in `json.dumps`.

  Returns:
    The JSON text; parsers that refuse ``NaN`` read it.
  """
  return json.dumps(strict(obj, default), indent=indent, allow_nan=False)


def write_text(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` atomically: temporary file, fsync, rename.

  Args:
    path: the file to (re)place; its directory must exist.
    text: the whole new content.

  Raises:
    OSError: the file could not be written (e.g. the disk is full); the old
      file, if any, is left as it was and no temporary file remains.
  """
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path),
                             suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_json(path: str, obj: Any, *,
               default: Callable[[Any], Any] | None = None) -> None:
  """Writes ``obj`` as strict, indented JSON to ``path``, atomically.

  Args:
    path: the file to (re)place.
    obj: the value; non-finite floats are written as ``null``.
    default: converts objects JSON cannot hold, as in `json.dump`.

  Raises:
    OSError: as `write_text`; nothing is lost.
  """
  write_text(path, dumps(obj, default=default, indent=2) + "\n")


def cut_torn_line(path: str) -> None:
  """Truncates ``path`` after its last newline (a torn line is a kill's).

  Args:
    path: an existing JSON-lines file.
  """
  with open(path, "rb+") as f:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    if not size:
      return
    f.seek(size - 1)
    if f.read(1) == b"\n":
      return
    end = 0
    chunk = 1 << 16
    for start in range(max(size - chunk, 0), -1, -chunk):
      f.seek(start)
      block = f.read(min(chunk, size - start))
      i = block.rfind(b"\n")
      if i >= 0:
        end = start + i + 1
        break
    f.truncate(end)


def append_jsonl(path: str, obj: Any) -> None:
  """Appends ``obj`` as one strict JSON line to ``path``, flushed.

  A torn last line (left by a kill) is cut off first.

  Args:
    path: the JSON-lines file; created if missing.
    obj: the record.
  """
  if os.path.exists(path):
    cut_torn_line(path)
  line = dumps(obj) + "\n"
  with open(path, "a") as f:
    f.write(line)
    f.flush()


def read_jsonl(path: str) -> Iterator[dict[str, Any]]:
  """The records of a JSON-lines file; a torn last line is skipped.

  Args:
    path: the file.

  Yields:
    Each complete line's object.

  Raises:
    ValueError: a line other than the last one is not JSON (the file is
      damaged, not just cut short), naming the file and line.
  """
  with open(path) as f:
    lines = f.read().split("\n")
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      yield json.loads(line)
    except json.JSONDecodeError:
      if i == len(lines) - 1:  # no newline after it: the write was cut
        return
      raise ValueError(f"{path}: line {i + 1} is not JSON") from None

"""Errors that stop a run before or while it trains, each one line.

`ConfigError` names a config field, the bad value and what is allowed; it is
what validation, the trainer and the stages raise for bad input, and what
the command line prints as its one ``error:`` line (exit status 2).
`RunError` is a run that started and stopped (training diverged, the disk is
full, the compressed file does not decode to the model): one line too, exit
status 1.
"""

import re
from typing import Any


class ConfigError(ValueError):
  """A config field holds a value that is not allowed."""

  def __init__(self, field: str, value: Any = None, allowed: Any = None):
    # With one argument (as when re-raised by a library), it is the message.
    # An ``allowed`` that is itself an error ("name: got v; allowed: a", as
    # a factory raises it) is that error under ``field``, not a second
    # "got" wrapped around the first.
    if allowed is not None and _FIELD_OF.match(one_line(allowed)):
      field, value, allowed = _nested(field, one_line(allowed)), None, None
    message = field if allowed is None else (
        f"{field}: got {value!r}; allowed: {allowed}")
    super().__init__(one_line(message))
    self.field = field
    self.value = value
    self.allowed = allowed


_FIELD_OF = re.compile(r"^([\w.\[\]]+): got .*; allowed: ")


def one_line(message: Any) -> str:
  """A message as one line: its lines joined with ``'; '``, blanks dropped.

  Args:
    message: an error message (anything `str` takes).

  Returns:
    The message without line breaks.

  Example:
    >>> from sparsify.experiment.errors import one_line
    >>> one_line("data.name: got 'x'\\n  allowed: mnist")
    "data.name: got 'x'; allowed: mnist"
  """
  lines = [line.strip() for line in str(message).splitlines()]
  return "; ".join(line for line in lines if line)


def _nested(field: str, message: str) -> str:
  """An inner error's one-line ``message`` under ``field``.

  An inner ``"name: got v; allowed: a"`` whose field is relative
  (``allocation`` under ``compression[0].kwargs``) reads with the full path,
  ``"compression[0].kwargs.allocation: got v; allowed: a"``; one that
  already names a path under ``field``'s section is kept as it is.
  """
  inner = _FIELD_OF.match(message).group(1)
  section = field.split(".")[0].split("[")[0]
  if inner.split(".")[0].split("[")[0] == section:
    return message
  return f"{field}.{message}"


class RunError(RuntimeError):
  """A run stopped for a reason its one-line message names."""

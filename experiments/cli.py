"""What the command-line entry points share: flags, bad input, exits.

A command is two functions: ``define(flag_values, argv)`` defines its flags
and ``body(flag_values)`` does the work. `main` runs one from the command
line; `call` runs one in this process and returns its exit status, which is
how the tests drive them. Bad input stops a command with one line on stderr,
naming what is wrong and what is allowed, and exit status 2, before any
training starts.
"""

from collections.abc import Callable
import logging
import os
import sys
from typing import Any

from absl import app
from absl import flags

from sparsify.data import MissingDataError
from sparsify.experiment.config import ConfigError

Define = Callable[[flags.FlagValues, list[str]], None]
Body = Callable[[flags.FlagValues], None]


class UsageError(Exception):
  """A bad command line; the message says what is wrong and what is allowed."""


def parse_flags(argv: list[str],
                flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """Parses absl flags; a missing config file or bad override is one line.

  Args:
    argv: the command line, program name first.
    flag_values: where the command's flags are defined.

  Returns:
    The arguments left after the flags.

  Raises:
    UsageError: for a missing config file, an unknown preset or an override
      of a field the config does not have.
  """
  for i, arg in enumerate(argv):
    path = (arg.split("=", 1)[1] if arg.startswith("--config=") else
            argv[i + 1] if arg == "--config" and i + 1 < len(argv) else None)
    if path is not None and not os.path.isfile(path.split(":")[0]):
      configs = sorted(f for f in os.listdir("configs") if f.endswith(".py")
                       ) if os.path.isdir("configs") else []
      raise UsageError(
          f"--config: got {path!r}, no such file; allowed: "
          f"{', '.join('configs/' + f for f in configs) or 'a config file'}")
  try:
    return flag_values(argv)
  except flags.Error as e:  # e.g. an unknown config preset
    last = str(e).strip().splitlines()[-1]  # the cause, after any traceback
    raise UsageError(last.split("Error: ", 1)[-1]) from None
  except (AttributeError, KeyError) as e:
    key = str(e).strip("\"'")
    bad = [a.split("=")[0] for a in argv
           if a.startswith("--config.") and key in a.split("=")[0].split(".")]
    raise UsageError(
        f"{bad[0] if bad else key}: got a field the config does not have; "
        "allowed: the fields its config file defines (see "
        "`sparsify.default_config()`)") from None


def quiet_logging() -> None:
  """Progress lines from sparsify; only warnings from the libraries."""
  logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
  for noisy in ("absl", "jax", "orbax", "tensorflow_datasets"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


def _error(e: Exception) -> int:
  print(f"error: {e}", file=sys.stderr, flush=True)
  return 2


def _guarded(fn: Callable[..., Any], *args: Any) -> int:
  """Calls ``fn(*args)``: 0, or status 2 after one ``error:`` line."""
  try:
    fn(*args)
  except (UsageError, ConfigError, MissingDataError) as e:
    return _error(e)
  return 0


def _run_body(body: Body, flag_values: flags.FlagValues) -> int:
  quiet_logging()
  return _guarded(body, flag_values)


def call(define: Define, body: Body, argv: list[str]) -> int:
  """Runs a command in this process, on fresh flags.

  Args:
    define: defines the command's flags.
    body: the command's work.
    argv: its command line, program name first.

  Returns:
    The exit status `main` would give: 0, or 2 after one ``error:`` line on
    stderr.
  """
  flag_values = flags.FlagValues()
  define(flag_values, argv)
  return (_guarded(parse_flags, argv, flag_values)
          or _run_body(body, flag_values))


def main(define: Define, body: Body) -> None:
  """Runs a command from ``sys.argv`` under absl (``--help`` included)."""
  define(flags.FLAGS, sys.argv)

  def parse(argv):
    try:
      return parse_flags(argv)
    except UsageError as e:
      sys.exit(_error(e))

  def run(argv):
    del argv
    status = _run_body(body, flags.FLAGS)
    if status:
      # Background checkpoint threads may still hold callbacks for a closed
      # event loop and would print tracebacks at the interpreter's teardown.
      sys.stdout.flush()
      os._exit(status)  # pylint: disable=protected-access

  app.run(run, flags_parser=parse)

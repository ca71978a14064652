"""What the command-line entry points share: flag errors, logging, exits.

Bad input stops a command with one line on stderr, naming what is wrong and
what is allowed, and exit status 2, before any training starts.
"""

import logging
import os
import sys

from absl import flags


def parse_flags(argv: list[str]) -> list[str]:
  """Parses absl flags; a missing config file or bad override is one line.

  Args:
    argv: the command line, program name first.

  Returns:
    The arguments left after the flags, as `absl.flags.FLAGS` returns them.
  """
  for i, arg in enumerate(argv):
    path = (arg.split("=", 1)[1] if arg.startswith("--config=") else
            argv[i + 1] if arg == "--config" and i + 1 < len(argv) else None)
    if path is not None and not os.path.isfile(path.split(":")[0]):
      configs = sorted(f for f in os.listdir("configs") if f.endswith(".py")
                       ) if os.path.isdir("configs") else []
      fail(f"--config: got {path!r}, no such file; allowed: "
           f"{', '.join('configs/' + f for f in configs) or 'a config file'}")
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:  # e.g. an unknown config preset
    last = str(e).strip().splitlines()[-1]  # the cause, after any traceback
    fail(last.split("Error: ", 1)[-1])
  except (AttributeError, KeyError) as e:
    key = str(e).strip("\"'")
    bad = [a.split("=")[0] for a in argv
           if a.startswith("--config.") and key in a.split("=")[0].split(".")]
    fail(f"{bad[0] if bad else key}: got a field the config does not have; "
         "allowed: the fields its config file defines (see "
         "`sparsify.default_config()`)")


def quiet_logging() -> None:
  """Progress lines from sparsify; only warnings from the libraries."""
  logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
  for noisy in ("absl", "jax", "orbax", "tensorflow_datasets"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(message: str, *, teardown: bool = True) -> None:
  """Prints ``error: message`` on stderr and exits with status 2.

  Args:
    message: what is wrong and what is allowed.
    teardown: False once training machinery has started: the interpreter's
      teardown is skipped, since background checkpoint threads may still
      hold callbacks for a closed event loop and would print tracebacks.
  """
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.stdout.flush()
  if teardown:
    sys.exit(2)
  os._exit(2)  # pylint: disable=protected-access

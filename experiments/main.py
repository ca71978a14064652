r"""Trains one config and prints its compression report.

  python -m experiments.main --config configs/lenet_300_100.py --workdir /tmp/run
  python -m experiments.main --config configs/quickstart.py --workdir /tmp/qs \
      --config.train.epochs=3 --config.compression.sparsity=0.9

A run resumes from the latest checkpoint in ``--workdir``. A bad config value
or missing data stops the run with one line on stderr (exit status 2) before
any training starts.
"""

import logging
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from sparsify import train
from sparsify.config import ConfigError
from sparsify.data import MissingDataError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, "
                               "metrics and the report.")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv):
  """Parses flags; an override of a field the config lacks is one line."""
  for i, arg in enumerate(argv):
    path = (arg.split("=", 1)[1] if arg.startswith("--config=") else
            argv[i + 1] if arg == "--config" and i + 1 < len(argv) else None)
    if path is not None and not os.path.isfile(path.split(":")[0]):
      configs = sorted(f for f in os.listdir("configs") if f.endswith(".py")
                       ) if os.path.isdir("configs") else []
      print(f"error: --config: got {path!r}, no such file; allowed: "
            f"{', '.join('configs/' + f for f in configs) or 'a config file'}",
            file=sys.stderr)
      sys.exit(2)
  try:
    return flags.FLAGS(argv)
  except flags.IllegalFlagValueError as e:  # e.g. an unknown config preset
    last = str(e).strip().splitlines()[-1]  # the cause, after any traceback
    print(f"error: {last.split('Error: ', 1)[-1]}", file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError) as e:
    key = str(e).strip("\"'")
    bad = [a.split("=")[0] for a in argv
           if a.startswith("--config.") and key in a.split("=")[0].split(".")]
    print(f"error: {bad[0] if bad else key}: got a field the config does not "
          "have; allowed: the fields its config file defines (see "
          "`sparsify.default_config()`)", file=sys.stderr)
    sys.exit(2)


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
  for noisy in ("absl", "jax", "orbax", "tensorflow_datasets"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ConfigError, MissingDataError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    # Skip interpreter teardown: background checkpoint threads may still hold
    # callbacks for a closed event loop, which would print tracebacks.
    sys.stdout.flush()
    os._exit(2)  # pylint: disable=protected-access


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)

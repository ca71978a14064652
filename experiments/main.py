r"""Trains one config and prints its compression report.

  python -m experiments.main --config configs/lenet_300_100.py --workdir /tmp/run
  python -m experiments.main --config configs/quickstart.py --workdir /tmp/qs \
      --config.train.epochs=3 --config.compression[0].kwargs.sparsity=0.9

A run resumes from the latest checkpoint in ``--workdir``. A bad config value
or missing data stops the run with one line on stderr (exit status 2) before
any training starts.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import cli
from sparsify.experiment import run as run_lib
from sparsify.experiment.config import ConfigError
from sparsify.data import MissingDataError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, "
                               "metrics and the report.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  cli.quiet_logging()
  try:
    run_lib.run(_CONFIG.value, _WORKDIR.value)
  except (ConfigError, MissingDataError) as e:
    cli.fail(str(e), teardown=False)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)

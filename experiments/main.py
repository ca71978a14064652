r"""Trains one config and prints its compression report.

  python -m experiments.main --config configs/lenet_300_100.py --workdir /tmp/run
  python -m experiments.main --config configs/quickstart.py --workdir /tmp/qs \
      --config.train.epochs=3 --config.compression[0].kwargs.sparsity=0.9

A run resumes from the latest checkpoint in ``--workdir``. A bad config value,
a config file that does not load, a workdir that cannot be written or
missing data stops the run with one line on stderr (exit status 2) before
any training starts; the workdir and the config file are checked before the
config file runs (`cli.parse_flags`).
"""

from absl import flags
from ml_collections import config_flags

from experiments import cli
from sparsify.experiment import run as run_lib


def define_flags(flag_values: flags.FlagValues, argv: list[str]) -> None:
  config_flags.DEFINE_config_file(
      "config", None, "Path to a config file (configs/*.py[:PRESET]).",
      flag_values=flag_values, lock_config=True, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics "
                      "and the report.", flag_values=flag_values)
  flags.mark_flags_as_required(["config", "workdir"], flag_values=flag_values)


def train(flag_values: flags.FlagValues) -> None:
  run_lib.run(flag_values.config, flag_values.workdir)


if __name__ == "__main__":
  cli.main(define_flags, train)

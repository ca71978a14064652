r"""Dense LeNet-300-100 and LeNet-5 on full Fashion-MNIST.

Trains each model with its config under ``configs/`` on the 60,000 training
images (local IDX files from the Debian package dataset-fashion-mnist) and
evaluates on the 10,000 test images. Writes accuracy, epoch time and
training steps per second to ``results/dense_fashion_mnist.{json,md}``.

  python -m experiments.benchmarks.dense_baselines --epochs 10
"""

import argparse
import logging
import os
import tempfile

from experiments.benchmarks import common
import sparsify


def run(model: str, epochs: float, dataset: str, workdir: str) -> dict:
  config = common.load_config(model)
  config.data.name = dataset
  config.train.epochs = epochs
  config.train.log_every = 100
  config.train.checkpoint_every = 10**9  # final checkpoint only
  results = sparsify.run(config, workdir)
  return {
      "model": model, "dataset": dataset, "epochs": epochs,
      "test_accuracy": results["eval_accuracy"],
      "params": results["report"]["total"]["params"],
      "epoch_seconds": results["train_seconds"] / epochs,
      "steps_per_second": common.steady_steps_per_second(workdir),
      "batch_size": config.data.batch_size,
      "optimizer": config.optimizer.to_dict(),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--epochs", type=float, default=10)
  parser.add_argument("--dataset", default="fashion_mnist")
  parser.add_argument("--models", nargs="+",
                      default=["lenet_300_100", "lenet5"])
  parser.add_argument("--out", default=os.path.join(
      common.RESULTS, "dense_fashion_mnist"))
  args = parser.parse_args()
  logging.basicConfig(level=logging.WARNING)
  rows = []
  for model in args.models:
    with tempfile.TemporaryDirectory() as workdir:
      rows.append(run(model, args.epochs, args.dataset, workdir))
  common.write_results(args.out, rows, [
      ("model", "model", "s"), ("dataset", "data", "s"),
      ("epochs", "epochs", "g"), ("params", "params", ","),
      ("test_accuracy", "test accuracy", ".4f"),
      ("epoch_seconds", "s / epoch", ".1f"),
      ("steps_per_second", "steps / s", ".0f")])


if __name__ == "__main__":
  main()

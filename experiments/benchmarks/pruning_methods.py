r"""Dense vs gradual magnitude, static random and DAT pruning: accuracy and cost.

Accuracy: every method trains the same model with the same optimizer and
epochs (``configs/<model>.py:<method>``) at matched final sparsities, and is
evaluated on the test split; sparsity and bytes come from the compression
report of the final parameters.

Step time: in one process, LeNet-300-100 at batch 128, the jitted training
step of each method (the trainer's own step, the same optax chain as dense
plus the pruning transform) runs over one whole pruning schedule of
``--timing-steps`` steps, dispatched as the trainer dispatches them; methods
take turns chunk by chunk so that machine noise hits all of them alike.
Reported, each as a median over rounds of the ratio to dense in the same
round: the time over the schedule (the steps that recompute masks included)
and the time of steps that do not recompute masks (after the schedule).

  python -m experiments.benchmarks.pruning_methods --epochs 10
  python -m experiments.benchmarks.pruning_methods --dataset embedded_mnist --epochs 20
"""

import argparse
import logging
import os
import tempfile
import time

import jax
import numpy as np

from experiments.benchmarks import common
import sparsify
from sparsify import data as data_lib
from sparsify.experiment import trainer as trainer_lib

METHODS = ("gmp", "random", "dat")


def accuracy_run(model, preset, sparsity, dataset, epochs):
  config = common.load_config(model, preset)
  config.data.name = dataset
  config.train.epochs = epochs
  config.train.checkpoint_every = 10**9
  config.train.log_every = 200
  if sparsity is not None:
    common.set_sparsity(config, sparsity)
  with tempfile.TemporaryDirectory() as workdir:
    results = sparsify.run(config, workdir)
  layers = results["report"]["layers"]
  total = results["report"]["total"]
  kernels = [l for l in layers if l["name"].endswith("kernel")]
  kernel_params = sum(l["params"] for l in kernels)
  kernel_nnz = sum(l["nonzeros"] for l in kernels)
  return {
      "model": model, "dataset": dataset, "method": preset,
      "target_sparsity": sparsity or 0.0, "epochs": epochs,
      "test_accuracy": results["eval_accuracy"],
      "kernel_sparsity": 1 - kernel_nnz / kernel_params,
      "fewer_nonzeros": total["params"] / max(total["nonzeros"], 1),
      "bytes_ratio": total["compression_ratio"],
      "bytes_sparse": total["bytes_sparse"],
  }


def timing(steps, rounds, dataset, extra_rounds, extra_chunk):
  """Step times of each method over one pruning schedule, interleaved.

  Steps are dispatched as the trainer dispatches them (asynchronously) and
  timed in chunks of ``steps // rounds``, blocking only at chunk ends; the
  methods take turns chunk by chunk, and every ratio is the median over
  chunks of (method chunk time) / (dense chunk time in the same round), so
  that drifts of a shared machine cancel. After the schedule, masks no
  longer change: ``extra_rounds`` more chunks of ``extra_chunk`` steps
  measure the steps that do not recompute masks. The extra cost of one
  recomputing step is derived from the two.
  """
  variants = [("dense", "dense", None)]
  for every in (100, 10):
    variants += [(f"gmp/{every}", "gmp", every), (f"dat/{every}", "dat", every)]
  variants.append(("random", "random", None))
  runs = {}
  train_split = data_lib.load_dataset(dataset).train
  # Epochs such that the schedule spans exactly `steps` steps.
  epochs = steps / data_lib.steps_per_epoch(train_split, 128)
  for name, preset, every in variants:
    config = common.load_config("lenet_300_100", preset)
    config.data.name = dataset
    config.data.batch_size = 128
    config.train.epochs = epochs
    for entry in config.compression:  # dense has none
      entry.begin, entry.end = 0.0, 1.0
      if every:
        entry.kwargs.update_every = every
    with tempfile.TemporaryDirectory() as workdir:
      trainer = trainer_lib.Trainer(config, workdir)
    assert trainer.total_steps == steps, (trainer.total_steps, steps)
    runs[name] = {"trainer": trainer, "state": trainer.init_state(),
                  "every": every, "schedule": [], "after": []}
  ds = runs["dense"]["trainer"].dataset
  it = data_lib.batches(ds.train, batch_size=128, seed=0, mean=ds.mean,
                        std=ds.std)
  batches = [jax.device_put(next(it), runs["dense"]["trainer"].sharded)
             for _ in range(16)]
  for run in runs.values():  # compile and warm up on a copy of the state
    state = run["trainer"].init_state()
    for b in batches[:3]:
      state, _ = run["trainer"].train_step(state, b)
    jax.block_until_ready(state)
  chunk = steps // rounds
  for r in range(rounds + extra_rounds):
    first = r * chunk if r < rounds else steps + (r - rounds) * extra_chunk
    size = chunk if r < rounds else extra_chunk
    for run in runs.values():
      step_fn, state = run["trainer"].train_step, run["state"]
      jax.block_until_ready(state)
      t = time.perf_counter()
      for i in range(first, first + size):
        state, _ = step_fn(state, batches[i % len(batches)])
      jax.block_until_ready(state)
      run["schedule" if r < rounds else "after"].append(
          time.perf_counter() - t)
      run["state"] = state
  dense = runs["dense"]
  rows = []
  for name, run in runs.items():
    schedule, after = np.array(run["schedule"]), np.array(run["after"])
    mean_ratio = np.median(schedule / np.array(dense["schedule"]))
    other_ratio = np.median(after / np.array(dense["after"]))
    updates = (steps - 1) // run["every"] + 1 if run["every"] else 0
    other = np.median(after) / extra_chunk
    extra = (schedule.sum() - steps * other) / updates if updates else None
    rows.append({
        "method": name, "update_every": run["every"],
        "mean_ms": 1e3 * schedule.sum() / steps,
        "mean_ratio": float(mean_ratio),
        "other_ms": 1e3 * float(other),
        "other_ratio": float(other_ratio),
        "update_extra_ms": 1e3 * extra if extra is not None else None,
    })
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", default="fashion_mnist")
  parser.add_argument("--models", nargs="+",
                      default=["lenet_300_100", "lenet5"])
  parser.add_argument("--epochs", type=float, nargs="+", default=[10],
                      help="one value, or one per model")
  parser.add_argument("--sparsities", type=float, nargs="+",
                      default=[0.9, 0.95, 0.98])
  parser.add_argument("--timing-steps", type=int, default=4000)
  parser.add_argument("--rounds", type=int, default=40)
  parser.add_argument("--extra-rounds", type=int, default=160,
                      help="chunks timed after the schedule (no updates)")
  parser.add_argument("--extra-chunk", type=int, default=25,
                      help="steps per chunk after the schedule")
  parser.add_argument("--skip-accuracy", action="store_true")
  parser.add_argument("--skip-timing", action="store_true")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  logging.basicConfig(level=logging.WARNING)
  out = args.out or os.path.join(common.RESULTS, f"pruning_{args.dataset}")
  epochs = dict(zip(args.models, args.epochs * len(args.models)
                    if len(args.epochs) == 1 else args.epochs))

  if not args.skip_timing:
    rows = timing(args.timing_steps, args.rounds, args.dataset,
                  args.extra_rounds, args.extra_chunk)
    common.write_results(out + "_step_time", rows, [
        ("method", "method / update every", "s"),
        ("mean_ms", "mean step (ms)", ".3f"),
        ("mean_ratio", "schedule / dense", ".3f"),
        ("other_ms", "non-update step (ms)", ".3f"),
        ("other_ratio", "non-update / dense", ".3f"),
        ("update_extra_ms", "extra per update step (ms)", ".2f")],
        steps=args.timing_steps, rounds=args.rounds,
        extra_rounds=args.extra_rounds, extra_chunk=args.extra_chunk,
        batch_size=128,
        model="lenet_300_100")
  if not args.skip_accuracy:
    rows = []
    for model in args.models:
      rows.append(accuracy_run(model, "dense", None, args.dataset,
                               epochs[model]))
      for sparsity in args.sparsities:
        for method in METHODS:
          rows.append(accuracy_run(model, method, sparsity, args.dataset,
                                   epochs[model]))
          print(rows[-1], flush=True)
    common.write_results(out, rows, [
        ("model", "model", "s"), ("method", "method", "s"),
        ("target_sparsity", "target", ".2f"), ("epochs", "epochs", "g"),
        ("test_accuracy", "test accuracy", ".4f"),
        ("kernel_sparsity", "kernel sparsity", ".4f"),
        ("fewer_nonzeros", "fewer nonzeros", ".1f"),
        ("bytes_ratio", "bytes ratio", ".1f")],
        dataset=args.dataset)


if __name__ == "__main__":
  main()

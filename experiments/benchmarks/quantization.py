r"""Product quantization into one compressed file: accuracy and bytes on disk.

Each method trains its model once (``configs/<model>.py:<preset>``, the same
optimizer and epochs); the trained variables are then product-quantized for
every (d, k) of the grid with `sparsify.experiment.stages.pq_stage`, written with
`sparsify.spz.save` and read back with `sparsify.experiment.stages.
evaluate_file`, which rebuilds the model from the file alone and evaluates it
on the test split.

* dense: no compression; the file stores float32 leaves.
* pq: PQ of the trained dense model (preset ``pq``).
* binary / kcentre + pq: trained with an attractor penalty (a ``binary`` or
  ``kcentre`` entry of ``config.compression`` with its ``strength``) that
  pulls each fully-connected kernel toward plus or minus its mean magnitude
  (binary) or toward ``centres`` values (kcentre), then PQ.
* dat + pq: DAT pruning to its ``target_sparsity`` during training (preset
  ``dat_pq``), then PQ fitted on the surviving weights; the file keeps the
  mask (1 bit per weight) and decodes pruned weights to zero.

PQ splits each output neuron's weight row (``kernel.T``) into sub-vectors of
d consecutive inputs, with k centroids per sub-space (``post.pq.dim``,
``post.pq.centroids``); every 2-D Dense kernel is quantized. A layer whose
input count d does not divide gets the largest divisor below d (LeNet-300-
100: d = 8 gives fc2 6 and head 5, d = 16 gives 15 and 10); the head has 10
outputs, so at most 10 centroids. Biases are stored losslessly. A row
without d and k is the trained model stored losslessly (the smallest of
dense, bitmask and CSR per leaf).

  python -m experiments.benchmarks.quantization --epochs 10
  python -m experiments.benchmarks.quantization --dataset embedded_mnist \
      --epochs 30
"""

import argparse
import logging
import math
import os
import re
import tempfile
import time

import jax
import ml_collections
import numpy as np

from experiments.benchmarks import common
from sparsify import quantize
from sparsify import spz
from sparsify.core import masking
from sparsify.core import paths
from sparsify.experiment import config as config_lib
from sparsify.experiment import stages
from sparsify.experiment import trainer as trainer_lib


def train_model(config, workdir):
  """Trains with the trainer's loop (no checkpoints or logs).

  Returns the trainer (whose workdir is ``workdir``), the trained variables
  and masks, the test accuracy and the training time.
  """
  trainer = trainer_lib.Trainer(config, workdir)
  state = trainer.init_state()
  t = time.perf_counter()
  state = trainer.fit(state, trainer.total_steps)
  jax.block_until_ready(state)
  seconds = time.perf_counter() - t
  return {"trainer": trainer,
          "variables": jax.device_get(trainer_lib.variables_of(state)),
          "masks": jax.device_get(masking.find_masks(state.opt_state)),
          "accuracy": trainer.evaluate(state)["eval/accuracy"],
          "train_seconds": seconds}


def layer_dims(params, d):
  """Per Dense kernel, the largest divisor of its input count that is <= d."""
  dims = {}
  for path, leaf in paths.named_leaves(params):
    if quantize.dense_kernel(path, leaf):
      n = math.prod(np.shape(leaf)[:-1])
      dims[path] = max(x for x in range(1, d + 1) if n % x == 0)
  return dims


def save_and_check(ctx, model, accuracy, workdir, done):
  """Writes the compressed file as `stages.run_stages` does; reads it back.

  ``done``: the stages the model went through, for the file's metadata.
  """
  path = os.path.join(workdir, "model.spz")
  variables = jax.tree.map(np.asarray, model.variables)
  if model.masks is not None:
    variables["params"] = masking.apply_masks(variables["params"],
                                              model.masks)
  spz.save(path, variables, model.encodings, metadata={
      "model": {"name": model.name, "kwargs": model.kwargs},
      "dataset": ctx.config.data.name, "test_accuracy": accuracy,
      "stages": done})
  info = stages.evaluate_file(ctx.trainer, path)
  report = spz.file_report(path)
  info["encodings"] = {leaf.path: leaf.encoding for leaf in report.leaves}
  info["header_bytes"] = report.header_bytes
  return info


def method_rows(names, config, grid, workdir):
  """Trains one method once, then one row per (d, k) of ``grid``.

  ``names``: the method names of the trained model's own row and of its PQ
  rows.
  """
  trained = train_model(config, workdir)
  ctx = stages.Context(trained["trainer"])
  model = stages.Model(config.model.name, config.model.kwargs.to_dict(),
                       jax.tree.map(np.asarray, trained["variables"]),
                       trained["masks"])
  entries = {e.name: e.kwargs for e in config.compression}
  penalty = next((name for name in ("binary", "kcentre") if name in entries),
                 None)
  base_row = {"model": config.model.name, "dataset": config.data.name,
              "epochs": config.train.epochs,
              "regularizer": penalty,
              "strength": entries[penalty].strength if penalty else None,
              "centres": entries[penalty].get("centres") if penalty else None,
              "sparsity_target": (entries["dat"].target_sparsity
                                  if "dat" in entries else None),
              "trained_accuracy": trained["accuracy"],
              "train_seconds": trained["train_seconds"]}
  rows = []

  def add(d, k, qmodel, accuracy, dims, done):
    info = save_and_check(ctx, qmodel, accuracy, workdir, done)
    rows.append({**base_row, "method": names[d is not None], "d": d, "k": k,
                 "layer_dims": dims,
                 "test_accuracy": accuracy,
                 "bytes_on_disk": info["bytes_on_disk"],
                 "float32_bytes": info["float32_bytes"],
                 "ratio": info["float32_bytes"] / info["bytes_on_disk"],
                 "recorded_accuracy": info["recorded_accuracy"],
                 "decoded_accuracy": info["decoded_accuracy"],
                 "decoded_ok": info["decoded_accuracy"] ==
                               info["recorded_accuracy"],
                 "header_bytes": info["header_bytes"],
                 "encodings": info["encodings"]})
    print({k: v for k, v in rows[-1].items() if k != "encodings"},
          flush=True)

  add(None, None, model, ctx.accuracy(model), None, ["trained"])
  for d, k in grid:
    dims = layer_dims(model.variables["params"], d)
    qmodel = model
    t = time.perf_counter()
    for path, dim in dims.items():
      cfg = ml_collections.ConfigDict({"dim": dim, "centroids": k,
                                       "where": f"^{re.escape(path)}$"})
      qmodel, _ = stages.pq_stage(ctx, qmodel, cfg)
    accuracy = ctx.accuracy(qmodel)
    add(d, k, qmodel, accuracy, dims, ["trained", "pq"])
    rows[-1]["pq_seconds"] = time.perf_counter() - t
  return rows


def method_configs(args):
  """``[(row name, config)]`` of the methods to train."""
  out = []

  def make(preset, *entries):
    config = common.load_config(args.model, preset)
    config.data.name = args.dataset
    config.train.epochs = args.epochs
    config.compression = [*config.compression, *entries]
    return config

  # PQ after training quantizes the dense model: one training for both.
  out.append((("dense", "pq"), make("pq")))
  for spec in args.regularizers:
    # NAME:STRENGTH[:CENTRES], e.g. kcentre:0.01:4 or binary:10
    parts = spec.split(":")
    kwargs = {"strength": float(parts[1])}
    label = f"{parts[0]} {parts[1]}"
    if len(parts) > 2:
      kwargs["centres"] = int(parts[2])
      label += f" (c={parts[2]})"
    out.append(((label, f"{label} + pq"),
                make("pq", config_lib.method(parts[0], **kwargs))))
  for sparsity in args.sparsities:
    config = make("dat_pq")
    common.set_sparsity(config, sparsity)
    out.append(((f"dat {sparsity:g}", f"dat {sparsity:g} + pq"), config))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", default="fashion_mnist")
  parser.add_argument("--model", default="lenet_300_100")
  parser.add_argument("--epochs", type=float, default=10)
  parser.add_argument("--dims", type=int, nargs="+", default=[4, 8, 16])
  parser.add_argument("--centroids", type=int, nargs="+", default=[4, 16, 64])
  parser.add_argument("--regularizers", nargs="*",
                      default=["binary:10", "binary:30", "kcentre:0.001:4"],
                      help="NAME:STRENGTH[:CENTRES] for each regularized run")
  parser.add_argument("--sparsities", type=float, nargs="*", default=[0.9])
  parser.add_argument("--methods", nargs="*", default=None,
                      help="train only these (dense, 'kcentre 0.01 (c=4)',"
                      " 'dat 0.9', ...; default: all)")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  logging.basicConfig(level=logging.WARNING)
  out = args.out or os.path.join(common.RESULTS, f"pq_{args.dataset}")
  grid = [(d, k) for d in args.dims for k in args.centroids]
  rows = []
  with tempfile.TemporaryDirectory() as root:
    for i, (names, config) in enumerate(method_configs(args)):
      if args.methods and names[0] not in args.methods:
        continue  # one workdir per method: each records its own run
      rows += method_rows(names, config, grid, os.path.join(root, str(i)))
  dense = next((r["test_accuracy"] for r in rows if r["method"] == "dense"),
               None)
  for r in rows:
    r["drop_vs_dense"] = None if dense is None else (
        100 * (dense - r["test_accuracy"]))
  common.write_results(out, rows, [
      ("method", "method", "s"), ("d", "d", "d"), ("k", "k", "d"),
      ("test_accuracy", "test accuracy", ".4f"),
      ("drop_vs_dense", "points lost vs dense", "+.2f"),
      ("bytes_on_disk", "bytes on disk", ","),
      ("ratio", "float32 / disk", ".1f"),
      ("decoded_ok", "decoded == recorded", "")],
      model=args.model, epochs=args.epochs, grid=grid)


if __name__ == "__main__":
  main()

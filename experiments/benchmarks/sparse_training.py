r"""Sparse training methods side by side: accuracy, sparsity, bytes, step time.

Accuracy: every row trains the same model with the same optimizer and
epochs through `sparsify.run` (``configs/<model>.py:<preset>``, the presets
of `sparsify.experiment.config.METHOD_PRESETS` with only their target
sparsity changed) on the full training split, and is evaluated on the test
split. Methods: dense, one-shot magnitude at 50 % of training then
fine-tuning (``magnitude``), gradual magnitude pruning (``gmp``), static
random ERK masks (``random_erk``), SET, RigL, magnitude pruning with a
straight-through dense copy (``magnitude_ste``), SNIP, DAT, gradual
saliency :math:`|g w|` (``saliency``), GMP in 4x4 blocks (``gmp_blocks``)
at every target, and GMP in the 2:4 pattern (``gmp_2_4``) at 50 % only.
``magnitude_ste_every1`` is the ``magnitude_ste`` preset with masks
recomputed at every step instead of every 100 (`VARIANTS`): with the
preset's 100, the dense copies of pruned weights drift for 100 steps under
gradients they do not feel, and the loss jumps at each mask update; such a
run is kept as a row whose note says where it diverged.
Kernel sparsity is that of the Dense and Conv kernels of the final
parameters, bytes the ``bytes_sparse`` of the compression report's total
(every parameter, in its smallest encoding).

2:4 groups run along a kernel's input axis, so a layer whose input depth is
not a multiple of 4 cannot hold the pattern: the first conv of both models
sees one channel and is left dense in the ``gmp_2_4`` rows (``where``
excludes it; `FIRST_LAYER`), which is why their kernel sparsity is a little
under 50 %.

Step time: the mean of the run's own ``time/step_ms`` (``metrics.jsonl``,
wall time per step of each logging interval, evaluation excluded),
weighted by the steps of each interval, over the whole run (mask updates
included) except the first interval, which holds compilation; the ratio
divides it by that of the dense run of the same model. The runs are
measured sequentially in one process on a shared machine, one after the
other, so the ratio includes whatever drift the machine had between them.

Mask cost (`mask_cost`, its own results file ``<out>_mask_cost``): one mask
recomputation on a tree of four square Dense kernels of 1 M, 4 M and 16 M
parameters in all (M = 2**20), timed by calling the selection functions
directly, jitted, as the median of several calls after warm-up: ``gmp`` is
the score and selection of `magnitude.gradual_magnitude_pruning`'s update
(:math:`|w \odot m|` and `topk.select_by_score`, the radix selection), and
``rigl`` is `dynamic.drop_and_grow` with :math:`|g|` as growth scores and
RigL's initial drop fraction 0.3. Reported per million parameters: a
constant across sizes means linear cost (no sort). One elementwise pass
over the same tree (:math:`\sum |w|`) is timed alongside for scale.

  python -m experiments.benchmarks.sparse_training --models lenet5,vgg \
      --epochs 2,0.6 --skip-mask-cost
  python -m experiments.benchmarks.sparse_training --models lenet5 \
      --epochs 2 --methods dense,random_ste,gmp_global,saliency_global \
      --skip-mask-cost \
      --out experiments/benchmarks/results/sparse_training_fashion_mnist_more
  python -m experiments.benchmarks.sparse_training --mask-cost-only \
      --out experiments/benchmarks/results/sparse_training
"""

import argparse
import json
import logging
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmarks import common
import sparsify
from sparsify.core import topk
from sparsify.experiment import trainer as trainer_lib
from sparsify.transforms import dynamic

# The methods, in table order; gmp_2_4 runs once, at 50 %.
METHODS = ("dense", "magnitude", "gmp", "random_erk", "set", "rigl",
           "magnitude_ste", "magnitude_ste_every1", "snip", "dat", "saliency",
           "gmp_2_4", "gmp_blocks")
# The rest of jaxpruner's list, run on request (``--methods``): random STE
# and the global variants of magnitude and saliency pruning.
MORE = ("random_ste", "gmp_global", "saliency_global")
# Rows that are a preset with some arguments changed: name -> (preset, kwargs).
VARIANTS = {"magnitude_ste_every1": ("magnitude_ste", {"update_every": 1})}
NM_SPARSITY = 0.5
MODELS = ("lenet5", "vgg")
VGG_WIDTH = 0.25
# The first layer of each model: one input channel, no room for 2:4 groups.
FIRST_LAYER = {"lenet5": "conv1", "vgg": "block1_0"}

COLUMNS = [
    ("model", "model", "s"), ("method", "method", "s"),
    ("target_sparsity", "target", ".2f"), ("epochs", "epochs", "g"),
    ("test_accuracy", "test accuracy", ".4f"),
    ("kernel_sparsity", "kernel sparsity", ".4f"),
    ("bytes_sparse", "bytes", ",d"),
    ("step_ratio", "step time / dense", ".2f"), ("note", "note", "s"),
]
MASK_COLUMNS = [
    ("method", "method", "s"), ("params", "params", ",d"),
    ("ms", "ms per update", ".2f"),
    ("ms_per_million", "ms per M params", ".3f"),
    ("pass_ms_per_million", "one pass, ms per M", ".3f"),
    ("ratio_to_pass", "update / pass", ".1f"),
]


def runs(models, methods, sparsities):
  """``(model, method, sparsity)`` of every row, dense first per model."""
  out = []
  for model in models:
    if "dense" in methods:
      out.append((model, "dense", 0.0))
    for sparsity in sparsities:
      for method in methods:
        if method not in ("dense", "gmp_2_4"):
          out.append((model, method, sparsity))
    if "gmp_2_4" in methods:
      out.append((model, "gmp_2_4", NM_SPARSITY))
  return out


def make_config(model, method, sparsity, dataset, epochs):
  preset, changes = VARIANTS.get(method, (method, {}))
  config = common.load_config(model, preset)
  if model == "vgg":
    config.model.kwargs.width = VGG_WIDTH
  config.data.name = dataset
  config.train.epochs = epochs
  config.train.log_every = 50
  config.train.checkpoint_every = 10**9
  config.train.checkpoint_seconds = 1e9  # no saves inside the timed steps
  config.train.plots = False
  if method != "dense":
    entry = config.compression[0]
    key = "target_sparsity" if "target_sparsity" in entry.kwargs else (
        "sparsity")
    entry.kwargs[key] = sparsity
    if method == "gmp_2_4":
      entry.kwargs.where = rf"^(?!{FIRST_LAYER[model]}/).*kernel$"
    entry.kwargs.update(changes)
  return config


def mean_step_ms(workdir):
  """Steps-weighted mean ``time/step_ms``, the first interval excluded."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [r for r in map(json.loads, f) if "time/step_ms" in r]
  last, total, steps = 0, 0.0, 0
  for i, r in enumerate(records):
    n = r["step"] - last
    last = r["step"]
    if i == 0 and len(records) > 1:
      continue
    total += n * r["time/step_ms"]
    steps += n
  return total / steps


def accuracy_run(model, method, sparsity, dataset, epochs):
  config = make_config(model, method, sparsity, dataset, epochs)
  start = time.perf_counter()
  row = {"model": model, "dataset": dataset, "method": method,
         "target_sparsity": sparsity, "epochs": epochs}
  with tempfile.TemporaryDirectory() as workdir:
    try:
      results = sparsify.run(config, workdir)
    except trainer_lib.NonFiniteError as e:
      # Kept as a row: the table says which method diverged, and where.
      return {**row, "steps": None, "test_accuracy": None,
              "kernel_sparsity": None, "bytes_sparse": None,
              "mean_step_ms": None, "note": f"diverged at step {e.step}",
              "wall_seconds": time.perf_counter() - start,
              "pid": os.getpid()}
    step_ms = mean_step_ms(workdir)
  kernels = [l for l in results["report"]["layers"]
             if l["name"].endswith("kernel")]
  params = sum(l["params"] for l in kernels)
  nonzeros = sum(l["nonzeros"] for l in kernels)
  total = results["report"]["total"]
  return {
      **row, "steps": results["steps"],
      "test_accuracy": results["eval_accuracy"],
      "kernel_sparsity": 1 - nonzeros / params,
      "params": total["params"], "nonzeros": total["nonzeros"],
      "bytes_dense": total["bytes_dense"],
      "bytes_sparse": total["bytes_sparse"],
      "mean_step_ms": step_ms, "note": "",
      "wall_seconds": time.perf_counter() - start,
      "pid": os.getpid(),
  }


def with_ratios(rows):
  """Adds ``step_ratio``: mean step time over the same model's dense run."""
  dense = {r["model"]: r["mean_step_ms"] for r in rows
           if r["method"] == "dense"}
  for r in rows:
    base = dense.get(r["model"])
    r["step_ratio"] = (r["mean_step_ms"] / base
                       if base and r["mean_step_ms"] else None)
  return rows


def _tree(total, leaves=4, seed=0):
  side = int(round((total / leaves) ** 0.5))
  keys = jax.random.split(jax.random.key(seed), leaves)
  return {f"fc{i}": {"kernel": jax.random.normal(k, (side, side))}
          for i, k in enumerate(keys)}


def _median_ms(fn, *args, warmup=2, calls=7):
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(calls):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return 1e3 * statistics.median(times)


def mask_cost(sizes=(2**20, 2**22, 2**24), sparsity=0.9, calls=7):
  """ms of one jitted mask recomputation of gmp and rigl, per tree size."""

  @jax.jit
  def gmp_update(weights, masks):
    scores = jax.tree.map(lambda w, m: jnp.abs(jnp.where(m, w, 0)), weights,
                          masks)
    return topk.select_by_score(scores, sparsity)

  @jax.jit
  def rigl_update(weights, masks, grads):
    grow = jax.tree.map(lambda g: jnp.abs(g.astype(jnp.float32)), grads)
    return dynamic.drop_and_grow(weights, masks, grow, 0.3)

  @jax.jit
  def one_pass(weights):
    return sum(jnp.sum(jnp.abs(w)) for w in jax.tree.leaves(weights))

  rows = []
  for size in sizes:
    weights, grads = _tree(size, seed=0), _tree(size, seed=1)
    # A mask at the target, as both methods hold between updates.
    masks = jax.block_until_ready(gmp_update(weights, jax.tree.map(
        lambda w: jnp.ones(w.shape, bool), weights)))
    params = sum(w.size for w in jax.tree.leaves(weights))
    pass_ms = _median_ms(one_pass, weights, calls=calls)
    for method, fn, args in (("gmp", gmp_update, (weights, masks)),
                             ("rigl", rigl_update, (weights, masks, grads))):
      ms = _median_ms(fn, *args, calls=calls)
      rows.append({"method": method, "params": params, "ms": ms,
                   "ms_per_million": ms / (params / 1e6),
                   "pass_ms_per_million": pass_ms / (params / 1e6),
                   "ratio_to_pass": ms / pass_ms, "calls": calls,
                   "sparsity": sparsity})
      print(rows[-1], flush=True)
    del weights, grads, masks
  rows.sort(key=lambda r: (r["method"], r["params"]))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", default="fashion_mnist")
  parser.add_argument("--models", default=",".join(MODELS),
                      help="comma-separated, of " + ", ".join(MODELS))
  parser.add_argument("--methods", default=",".join(METHODS),
                      help="comma-separated presets")
  parser.add_argument("--sparsities", default="0.8,0.9,0.95",
                      help="comma-separated (gmp_2_4 always at 0.5)")
  parser.add_argument("--epochs", default="2",
                      help="one value, or comma-separated, one per model")
  parser.add_argument("--out", default=None)
  parser.add_argument("--mask-cost-only", action="store_true")
  parser.add_argument("--skip-mask-cost", action="store_true")
  parser.add_argument("--resume", action="store_true",
                      help="keep the rows of <out>.partial.jsonl, run the rest")
  args = parser.parse_args()
  logging.basicConfig(level=logging.WARNING)
  out = args.out or os.path.join(common.RESULTS,
                                 f"sparse_training_{args.dataset}")
  models = args.models.split(",")
  methods = args.methods.split(",")
  unknown = sorted(set(methods) - set(METHODS) - set(MORE)) + sorted(
      set(models) - set(MODELS))
  if unknown:
    parser.error(f"unknown model or method: {', '.join(unknown)}")
  sparsities = [float(s) for s in args.sparsities.split(",")]
  epochs = [float(e) for e in args.epochs.split(",")]
  epochs = dict(zip(models, epochs * len(models) if len(epochs) == 1
                    else epochs))

  if not args.mask_cost_only:
    rows = []
    partial = out + ".partial.jsonl"  # each finished row, as it finishes
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if os.path.exists(partial):
      if args.resume:
        with open(partial) as f:
          rows = [json.loads(line) for line in f]
      else:
        os.remove(partial)
    done = {(r["model"], r["method"], r["target_sparsity"]) for r in rows}
    for model, method, sparsity in runs(models, methods, sparsities):
      if (model, method, sparsity) in done:
        continue
      rows.append(accuracy_run(model, method, sparsity, args.dataset,
                               epochs[model]))
      print(rows[-1], flush=True)
      with open(partial, "a") as f:
        f.write(json.dumps(rows[-1]) + "\n")
    order = {key: i for i, key in enumerate(runs(models, methods,
                                                   sparsities))}
    rows.sort(key=lambda r: order.get(
        (r["model"], r["method"], r["target_sparsity"]), len(order)))
    common.write_results(out, with_ratios(rows), COLUMNS,
                         dataset=args.dataset, vgg_width=VGG_WIDTH,
                         step_time="sequential runs in one process; mean "
                         "time/step_ms without the first log interval")
    os.remove(partial)
  if not args.skip_mask_cost:
    rows = mask_cost()
    common.write_results(out + "_mask_cost", rows, MASK_COLUMNS,
                         timing="selection functions called directly, "
                         "jitted, median after warm-up")


if __name__ == "__main__":
  main()

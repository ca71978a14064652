r"""SSS and Network Slimming on Fashion-MNIST: accuracy, FLOPs, latency, cost.

Every model is trained once per setting (the run's checkpoint is kept, in
``--workdir`` if given); each selection rule is then applied to that trained
model by running its post-training stages (``slim,finetune``) on the
finished run, so rows of one trained model differ only in what was removed.

* LeNet-300-100 with per-neuron gates (SSS, the optimizer ``sss``: APG with
  L1 strength ``gamma`` = ``optimizer.kwargs.strength`` on the gates,
  Nesterov SGD on the weights), neurons with a zero gate removed (gate <=
  ``post.slim.threshold = 1e-4``), surviving gates folded into the next
  layer; next to the dense network.
* The VGG-style CNN (``configs/vgg.py`` at ``--vgg-width``) with per-channel
  gates. A gate whose channel feeds a convolution and its BatchNorm only
  matters relative to the other gates of its layer (the BatchNorm cancels a
  common scale), so L1 shrinks a layer's gates together; a channel is
  removed when its gate is below ``--vgg-relative`` times the largest gate
  of its layer (``post.slim.relative``). Surviving gates fold into the
  channel's BatchNorm. Network Slimming (L1 on BatchNorm scales, trained
  once) removes the same fraction of channels as each SSS row
  (``post.slim.fraction``), the lowest scales first. Kept widths are
  rounded up to a multiple of ``--vgg-multiple``.
* A CIFAR ResNet (``--resnet-depth``, ``--resnet-width``) with one gate per
  residual branch (``block_gates``): branches whose gate APG drove to zero
  are removed, the shortcut kept (projection shortcuts included). Network
  Slimming has no block-level counterpart; the row next to it is dense.

Every slimmed model is fine-tuned for ``post.finetune.epochs`` (1). Rows
give accuracy after training, after removal and after fine-tuning,
parameters and FLOPs (``2 * MACs`` per example) before and after. In the
JSON, ``train_seconds`` is the time of the training a row triggered: 0 for
the rows that reuse a model trained for an earlier row (or an earlier run
in ``--workdir``).

Latency: each slimmed model (variables and constructor arguments read back
from the run's ``model.spz``) against the dense-trained model of the same
original architecture, jitted CPU inference at ``--batch`` images, timed in
one process with the models taking turns round by round; medians over
rounds. Speedup is compared with the FLOPs ratio of the two models.

APG overhead: the jitted training step of the gated LeNet-300-100 at batch
128 with `sparsify.sparse_structure_selection` (APG on the gates) and with
the same chain where the gates get plain Nesterov SGD instead
(`sparsify.transforms.sss.sss_optimizer`), interleaved chunk by chunk; the overhead is
the median over rounds of the ratio of chunk times.

  python -m experiments.benchmarks.sss --workdir /tmp/sss_runs
"""

import argparse
import contextlib
import functools
import logging
import os
import tempfile
import time

import jax
import numpy as np
import optax

from experiments.benchmarks import common
import sparsify
from sparsify import data as data_lib
from sparsify import models
from sparsify import spz
from sparsify.experiment import checkpoint
from sparsify.experiment import optim
from sparsify.experiment import registry
from sparsify.experiment import trainer as trainer_lib
from sparsify.transforms import sss

DATASET = "fashion_mnist"


def _make_config(model, preset, epochs, finetune_epochs=1.0, **kwargs):
  """The config of one training run; ``kwargs`` set ``model.kwargs``."""
  config = common.load_config(model, preset)
  config.post.finetune.epochs = finetune_epochs
  config.data.name = DATASET
  config.train.epochs = epochs
  config.train.checkpoint_every = 10**9
  config.train.log_every = 200
  config.post.stages = ""  # trained once; selections run afterwards
  for key, value in kwargs.items():
    config.model.kwargs[key] = value
  return config


def scale_stats(params, threshold):
  """Gates and BatchNorm scales of trained params: count, zeros, range.

  ``zeros`` counts the magnitudes at most ``threshold`` (the slim stage's).
  """
  flat = dict(sparsify.named_leaves(params))
  out = {}
  for kind, suffix in (("gates", "gate"), ("bn_scales", "bn/scale")):
    values = [np.abs(np.asarray(v)).ravel() for k, v in flat.items()
              if k.endswith(suffix)]
    if values:
      v = np.concatenate(values)
      out[kind] = {"count": int(v.size),
                   "zeros": int(np.sum(v <= threshold)),
                   "min": float(v.min()), "median": float(np.median(v)),
                   "max": float(v.max())}
  return out


class Runs:
  """Trained runs, one workdir each, under ``root`` (kept and reused)."""

  def __init__(self, root):
    self.root = root

  def train(self, name, config):
    """Trains ``config`` in ``root/name`` (resumed or reused if there)."""
    workdir = os.path.join(self.root, name)
    results = sparsify.run(config, workdir)
    return workdir, results

  def select(self, workdir, config, **slim):
    """Runs ``slim,finetune`` on the finished run of ``workdir``."""
    config = config.copy_and_resolve_references()
    config.post.stages = "slim,finetune"
    config.post.slim.update(slim)
    return sparsify.run(config, workdir)


def dense_row(model, config, workdir, results):
  saved = checkpoint.load(workdir)
  variables = {"params": saved["params"]}
  if saved["batch_stats"]:
    variables["batch_stats"] = saved["batch_stats"]
  total = results["report"]["total"]
  row = {"model": model, "method": "dense", "setting": "-",
         "epochs": config.train.epochs,
         "train_seconds": results["train_seconds"],
         "acc_trained": results["eval_accuracy"], "acc_slim": None,
         "acc_finetune": None, "acc_final": results["eval_accuracy"],
         "params_before": total["params"], "params_after": total["params"],
         "flops_before": total["flops_dense"],
         "flops_after": total["flops_dense"], "units_removed": 0.0,
         "flops_removed": 0.0}
  print(row, flush=True)
  return row, {"name": config.model.name,
               "kwargs": config.model.kwargs.to_dict(),
               "variables": variables, "model": model,
               "flops": row["flops_after"]}


def slim_row(model, method, setting, config, workdir, trained, results):
  """The row of one selection on a trained run, and its slim model."""
  post = results["post"]
  stages = {r["stage"]: r for r in post["stages"]}
  first, slim, last = post["stages"][0], stages["slim"], post["stages"][-1]
  if "block_plan" in slim:  # residual blocks are the units
    before = len(slim["block_plan"])
    after = sum(p == "full" for p in slim["block_plan"])
  else:
    before = sum(slim["units_before"].values())
    after = sum(slim["units_after"].values())
  row = {"model": model, "method": method, "setting": setting,
         "epochs": config.train.epochs,
         "train_seconds": trained["train_seconds"],
         "acc_trained": trained["eval_accuracy"],
         "acc_slim": slim["test_accuracy"],
         "acc_finetune": last["test_accuracy"],
         "acc_final": last["test_accuracy"],
         "params_before": first["params"], "params_after": last["params"],
         "flops_before": first["flops"], "flops_after": last["flops"],
         "units_before": before, "units_after": after,
         "units_removed": 1 - after / before if before else 0.0,
         "units_per_layer": slim.get("units_after"),
         "block_plan": slim.get("block_plan"),
         "slim": dict(config.post.slim.to_dict()),
         "finetune_epochs": config.post.finetune.epochs,
         "decoded_accuracy": post["file"]["decoded_accuracy"],
         "trained_scales": scale_stats(checkpoint.load(workdir)["params"],
                                       config.post.slim.threshold)}
  row["flops_removed"] = 1 - row["flops_after"] / row["flops_before"]
  print({k: v for k, v in row.items() if k != "units_per_layer"}, flush=True)
  variables, meta = spz.load(os.path.join(workdir, "model.spz"))
  return row, {"name": meta["model"]["name"],
               "kwargs": meta["model"]["kwargs"], "variables": variables,
               "model": model, "flops": row["flops_after"]}


def latency(pairs, batch, rounds, seconds_per_chunk=0.1):
  """Median per-batch inference time of each model, models interleaved.

  ``pairs``: ``{label: (slim model, original model)}``, each model a dict
  with ``name``, ``kwargs`` and ``variables``. Returns ``{label: (slim
  seconds, original seconds)}``.
  """
  rng = np.random.default_rng(0)
  x = jax.device_put(rng.standard_normal((batch, 28, 28, 1), np.float32))
  fns = {}
  for label, (slim, original) in pairs.items():
    for role, m in (("slim", slim), ("original", original)):
      module = models.get_model(m["name"], **m["kwargs"])
      fn = jax.jit(lambda v, x, module=module: module.apply(v, x,
                                                            train=False))
      v = jax.device_put(m["variables"])
      for _ in range(3):
        jax.block_until_ready(fn(v, x))
      t = time.perf_counter()
      jax.block_until_ready(fn(v, x))
      reps = max(1, int(seconds_per_chunk / (time.perf_counter() - t)))
      fns[(label, role)] = (fn, v, reps, [])
  keys = list(fns)
  for r in range(rounds):
    for key in (keys if r % 2 == 0 else keys[::-1]):
      fn, v, reps, times = fns[key]
      t = time.perf_counter()
      for _ in range(reps):
        jax.block_until_ready(fn(v, x))
      times.append((time.perf_counter() - t) / reps)
  return {label: (float(np.median(fns[(label, "slim")][3])),
                  float(np.median(fns[(label, "original")][3])))
          for label in pairs}


def apg_overhead(rounds, chunk, gamma):
  """Step time of SSS (APG on the gates) vs Nesterov SGD on the gates."""
  config = _make_config("lenet_300_100", "sss", 10.0)
  config.optimizer.kwargs.strength = gamma
  dataset = data_lib.load_dataset(DATASET)
  total_steps = 10 * data_lib.steps_per_epoch(dataset.train, 128)
  opt = config.optimizer
  lr = optim.make_schedule(opt.learning_rate, opt.schedule, opt.warmup_steps,
                           total_steps)
  weights_tx = optax.chain(
      optax.add_decayed_weights(opt.weight_decay),
      optax.sgd(lr, momentum=opt.momentum, nesterov=True))
  variants = {
      "sss (APG on gates)": registry.make_chain(
          config.compression, registry.make_optimizer(opt, total_steps),
          total_steps),
      "Nesterov SGD on gates": sss.sss_optimizer(
          weights_tx, optax.sgd(lr, momentum=opt.momentum, nesterov=True)),
  }
  model = models.get_model(config.model.name,
                           **config.model.kwargs.to_dict())
  dense_config = _make_config("lenet_300_100", "dense", 10.0)
  dense_model = models.get_model(dense_config.model.name,
                                 **dense_config.model.kwargs.to_dict())
  it = data_lib.batches(dataset.train, batch_size=128, seed=0,
                        mean=dataset.mean, std=dataset.std)
  batches = [jax.device_put(next(it)) for _ in range(16)]
  step_fn = jax.jit(trainer_lib.train_step, donate_argnums=0)
  dense_step_fn = jax.jit(trainer_lib.train_step, donate_argnums=0)

  def state_of(module, tx):
    params = module.init(jax.random.key(0), batches[0]["image"][:1])["params"]
    return trainer_lib.TrainState.create(
        apply_fn=module.apply, params=params, tx=tx, batch_stats={},
        rng=jax.random.key_data(jax.random.key(1)))

  runs = {name: [state_of(model, tx), step_fn, []]
          for name, tx in variants.items()}
  runs["dense, no gates (momentum SGD)"] = [
      state_of(dense_model, registry.make_chain(
          dense_config.compression,
          registry.make_optimizer(dense_config.optimizer, total_steps),
          total_steps)),
      dense_step_fn, []]
  for run in runs.values():
    state = run[0]
    for b in batches[:3]:
      state, _ = run[1](state, b)
    run[0] = jax.block_until_ready(state)
  names = list(runs)
  step = 0
  for r in range(rounds):
    for name in (names if r % 2 == 0 else names[::-1]):
      state, fn, times = runs[name]
      jax.block_until_ready(state)
      t = time.perf_counter()
      for i in range(step, step + chunk):
        state, _ = fn(state, batches[i % len(batches)])
      jax.block_until_ready(state)
      times.append(time.perf_counter() - t)
      runs[name][0] = state
    step += chunk
  base = np.array(runs["Nesterov SGD on gates"][2])
  return [{"variant": name, "step_ms": 1e3 * float(np.median(times)) / chunk,
           "ratio": float(np.median(np.array(times) / base))}
          for name, (_, _, times) in runs.items()]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--lenet-epochs", type=float, default=10)
  parser.add_argument("--lenet-gammas", type=float, nargs="+",
                      default=[0.001, 0.003, 0.01])
  parser.add_argument("--vgg-epochs", type=float, default=3)
  parser.add_argument("--vgg-width", type=float, default=0.25)
  parser.add_argument("--vgg-gammas", type=float, nargs="+",
                      default=[0.003, 0.01, 0.03])
  parser.add_argument("--vgg-relative", type=float, nargs="+",
                      default=[0.3, 0.4, 0.5],
                      help="post.slim.threshold (relative) of the VGG rows")
  parser.add_argument("--slimming-gamma", type=float, default=0.01,
                      help="the SSS gamma whose rows Network Slimming "
                      "matches, channel count for channel count")
  parser.add_argument("--vgg-multiple", type=int, default=8,
                      help="post.slim.multiple of the slimmed VGGs")
  parser.add_argument("--resnet-depth", type=int, default=14)
  parser.add_argument("--resnet-width", type=int, default=8)
  parser.add_argument("--resnet-epochs", type=float, default=2)
  parser.add_argument("--resnet-gammas", type=float, nargs="+",
                      default=[0.03, 0.1])
  parser.add_argument("--finetune-epochs", type=float, default=1.0,
                      help="post.finetune.epochs of every slimmed model")
  parser.add_argument("--batch", type=int, default=256,
                      help="inference batch of the latency measurement")
  parser.add_argument("--latency-rounds", type=int, default=30)
  parser.add_argument("--apg-rounds", type=int, default=30)
  parser.add_argument("--apg-chunk", type=int, default=100)
  parser.add_argument("--skip-apg", action="store_true")
  parser.add_argument("--workdir", default=None,
                      help="keep the trained runs here (reused when run "
                      "again); default: a temporary directory")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  logging.basicConfig(level=logging.WARNING)
  out = args.out or common.RESULTS
  with contextlib.ExitStack() as stack:
    root = args.workdir or stack.enter_context(tempfile.TemporaryDirectory())
    rows, final_models, originals = accuracy_rows(args, Runs(root))
    latency_and_overhead(args, out, rows, final_models, originals)


def accuracy_rows(args, runs):
  """Trains every model, applies every selection; writes the table."""
  rows, final_models, originals = [], {}, {}
  make_config = functools.partial(_make_config,
                                  finetune_epochs=args.finetune_epochs)

  def add(row_and_model, label=None):
    row, final = row_and_model
    rows.append(row)
    if label:
      final_models[label] = final
    return row

  def dense(model, name, config):
    workdir, results = runs.train(name, config)
    row, originals[model] = dense_row(model, config, workdir, results)
    rows.append(row)

  def sss_run(model, name, config, label, method="sss", **slim):
    workdir, trained = runs.train(name, config)
    results = runs.select(workdir, config, **slim)
    return add(slim_row(model, method, label.split(" ", 2)[-1], config,
                        workdir, trained, results), label)

  # LeNet-300-100: neurons.
  dense("lenet_300_100", "lenet_dense",
        make_config("lenet_300_100", "dense", args.lenet_epochs))
  for gamma in args.lenet_gammas:
    config = make_config("lenet_300_100", "sss", args.lenet_epochs)
    config.optimizer.kwargs.strength = gamma
    sss_run("lenet_300_100", f"lenet_sss_{gamma:g}", config,
            f"lenet_300_100 sss strength={gamma:g}")

  # VGG: channels, relative selection; Network Slimming at the same counts.
  width = {"width": args.vgg_width}
  dense("vgg", "vgg_dense", make_config("vgg", "dense", args.vgg_epochs,
                                        **width))
  fractions = []
  for gamma in args.vgg_gammas:
    config = make_config("vgg", "sss", args.vgg_epochs, **width)
    config.optimizer.kwargs.strength = gamma
    config.post.slim.multiple = args.vgg_multiple
    for rel in args.vgg_relative:
      row = sss_run("vgg", f"vgg_sss_{gamma:g}", config,
                    f"vgg sss strength={gamma:g}, gate < {rel:g} max",
                    relative=True, threshold=rel)
      if gamma == args.slimming_gamma:
        fractions.append(row["units_removed"])
  slimming = make_config("vgg", "slimming", args.vgg_epochs, **width)
  slimming.post.slim.multiple = args.vgg_multiple
  for fraction in fractions:
    sss_run("vgg", "vgg_slimming", slimming,
            f"vgg slimming fraction={fraction:.3f}", method="slimming",
            fraction=fraction)

  # ResNet: residual blocks.
  resnet = {"depth": args.resnet_depth, "width": args.resnet_width}
  dense("resnet", "resnet_dense",
        make_config("resnet", "dense", args.resnet_epochs, **resnet))
  for gamma in args.resnet_gammas:
    config = make_config("resnet", "sss", args.resnet_epochs, **resnet,
                         block_gates=True, channel_gates=False)
    config.optimizer.kwargs.strength = gamma
    sss_run("resnet", f"resnet_blocks_{gamma:g}", config,
            f"resnet sss blocks, strength={gamma:g}")

  dense_acc = {r["model"]: r["acc_trained"] for r in rows
               if r["method"] == "dense"}
  for r in rows:
    r["acc_vs_dense"] = r["acc_final"] - dense_acc[r["model"]]
  epochs = {"lenet_300_100": args.lenet_epochs, "vgg": args.vgg_epochs,
            "resnet": args.resnet_epochs}
  common.write_results(os.path.join(args.out or common.RESULTS,
                                    "sss_fashion_mnist"), rows, [
      ("model", "model", "s"), ("method", "method", "s"),
      ("setting", "setting", "s"), ("epochs", "epochs", "g"),
      ("acc_trained", "acc trained", ".4f"), ("acc_slim", "acc slim", ".4f"),
      ("acc_finetune", "acc fine-tuned", ".4f"),
      ("acc_vs_dense", "final - dense", "+.4f"),
      ("units_removed", "units removed", ".1%"),
      ("params_before", "params before", ","),
      ("params_after", "params after", ","),
      ("flops_before", "FLOPs before", ","),
      ("flops_after", "FLOPs after", ","),
      ("flops_removed", "FLOPs removed", ".1%")],
      dataset=DATASET, epochs=epochs, vgg_width=args.vgg_width,
      vgg_multiple=args.vgg_multiple,
      resnet={"depth": args.resnet_depth, "width": args.resnet_width},
      finetune_epochs=args.finetune_epochs)
  return rows, final_models, originals


def latency_and_overhead(args, out, rows, final_models, originals):
  """Latency of every slimmed model, and APG's step-time overhead."""
  original_flops = {r["model"]: r["flops_before"] for r in rows
                    if r["method"] == "dense"}
  pairs = {label: (m, originals[m["model"]])
           for label, m in final_models.items()}
  times = latency(pairs, args.batch, args.latency_rounds)
  lat_rows = []
  for label, (slim_s, orig_s) in times.items():
    m = final_models[label]
    ratio = original_flops[m["model"]] / m["flops"]
    speedup = orig_s / slim_s
    lat_rows.append({
        "model": label, "original_ms": 1e3 * orig_s, "slim_ms": 1e3 * slim_s,
        "speedup": speedup, "flops_ratio": ratio,
        "speedup_over_flops_ratio": speedup / ratio})
  apg_rows = [] if args.skip_apg else apg_overhead(
      args.apg_rounds, args.apg_chunk, args.lenet_gammas[0])
  latency_out = os.path.join(out, "sss_latency")
  common.write_results(latency_out, lat_rows, [
      ("model", "slimmed model", "s"),
      ("original_ms", "original (ms)", ".3f"),
      ("slim_ms", "slim (ms)", ".3f"), ("speedup", "speedup", ".2f"),
      ("flops_ratio", "FLOPs ratio", ".2f"),
      ("speedup_over_flops_ratio", "speedup / FLOPs ratio", ".2f")],
      batch_size=args.batch, rounds=args.latency_rounds,
      apg_overhead={"rounds": args.apg_rounds, "chunk": args.apg_chunk,
                    "batch_size": 128, "rows": apg_rows})
  if apg_rows:
    table = common.markdown_table(apg_rows, [
        ("variant", "training step, gated LeNet-300-100, batch 128", "s"),
        ("step_ms", "step (ms)", ".3f"),
        ("ratio", "/ Nesterov SGD on gates", ".3f")])
    with open(latency_out + ".md", "a") as f:
      f.write(f"\n{table}\n")
    print(table)


if __name__ == "__main__":
  main()

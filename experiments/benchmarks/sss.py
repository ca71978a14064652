r"""SSS and Network Slimming on Fashion-MNIST: accuracy, FLOPs, latency, cost.

Accuracy: LeNet-300-100 with per-neuron gates trained by SSS (APG with L1
strength ``gamma`` on the gates, Nesterov SGD on the weights), then slimmed
(neurons whose gate is below ``post.slim.threshold = 1e-4`` removed,
surviving gates folded into the neurons' own kernel and bias) and
fine-tuned; next to it the dense network. The VGG-style CNN
(``configs/vgg.py`` at ``--vgg-width``) dense, with SSS channel gates (folded
into each channel's BatchNorm scale and shift), and with Network Slimming
(L1 on BatchNorm scales, then the channels of the lowest scales removed,
``post.slim.fraction`` set to the fraction of gates that the SSS run of the
same ``gamma`` drove below the threshold). Both slimmed VGGs round their kept
widths up to a multiple of ``--vgg-multiple`` (``post.slim.multiple``).
Every run of a model trains for the same epochs; slimmed models are
fine-tuned for ``post.finetune.epochs`` (1 by default). Accuracy, parameters
and FLOPs (``2 * MACs`` per example) are the rows of the post-training
stages.

Latency: each slimmed model (variables and constructor arguments read back
from the run's ``model.spz``) against the dense-trained model of the same
original architecture, jitted CPU inference at ``--batch`` images, timed in
one process with the models taking turns round by round; medians over
rounds. Speedup is compared with the FLOPs ratio of the two models.

APG overhead: the jitted training step of the gated LeNet-300-100 at batch
128 with `sparsify.sparse_structure_selection` (APG on the gates) and with
the same chain where the gates get plain Nesterov SGD instead
(`sparsify.sss.sss_optimizer`), interleaved chunk by chunk; the overhead is
the median over rounds of the ratio of chunk times.

  python -m experiments.benchmarks.sss --lenet-gammas 0.001 0.003 0.01 \
      --apg-rounds 30 --apg-chunk 100
"""

import argparse
import logging
import os
import tempfile
import time

import jax
import numpy as np
import optax

from experiments.benchmarks import common
from sparsify import base
from sparsify import checkpoint
from sparsify import compressed
from sparsify import data as data_lib
from sparsify import models
from sparsify import optim
from sparsify import sss
from sparsify import train

DATASET = "fashion_mnist"


def make_config(model, preset, epochs, width=None, gamma=None, fraction=None,
                multiple=1):
  config = common.load_config(model, preset)
  config.data.name = DATASET
  config.train.epochs = epochs
  config.train.checkpoint_every = 10**9
  config.train.log_every = 200
  config.post.slim.multiple = multiple
  if width is not None:
    config.model.kwargs.width = width
  if gamma is not None:
    config.compression.gamma = gamma
  if fraction is not None:
    config.post.slim.fraction = fraction
  return config


def scale_stats(params, threshold):
  """Gates and BatchNorm scales of trained params: count, zeros, range.

  ``zeros`` counts the magnitudes at most ``threshold`` (the slim stage's).
  """
  flat = dict(base.named_leaves(params))
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


def accuracy_run(model, preset, epochs, width=None, gamma=None,
                 fraction=None, multiple=1):
  """Trains one config; returns its row and its final model for latency."""
  config = make_config(model, preset, epochs, width, gamma, fraction,
                       multiple)
  with tempfile.TemporaryDirectory() as workdir:
    results = train.train_and_evaluate(config, workdir)
    scales = scale_stats(checkpoint.load(workdir)["params"],
                         config.post.slim.threshold)
    if "post" in results:
      variables, meta = compressed.load(os.path.join(workdir, "model.spz"))
      name, kwargs = meta["model"]["name"], meta["model"]["kwargs"]
    else:
      saved = checkpoint.load(workdir)
      variables = {"params": saved["params"]}
      if saved["batch_stats"]:
        variables["batch_stats"] = saved["batch_stats"]
      name, kwargs = config.model.name, config.model.kwargs.to_dict()
  row = {"model": model, "method": "dense" if preset == "dense" else preset,
         "gamma": gamma if preset == "sss" else None,
         "fraction": fraction if preset == "slimming" else None,
         "epochs": epochs, "width": width,
         "multiple": config.post.slim.multiple if "post" in results else None,
         "train_seconds": results["train_seconds"],
         "acc_trained": results["eval_accuracy"]}
  if "post" in results:
    stages = {r["stage"]: r for r in results["post"]["stages"]}
    trained, slim, last = (stages["trained"], stages["slim"],
                           results["post"]["stages"][-1])
    before = sum(slim["units_before"].values())
    after = sum(slim["units_after"].values())
    row.update(
        acc_slim=slim["test_accuracy"], acc_finetune=last["test_accuracy"],
        params_before=trained["params"], params_after=last["params"],
        flops_before=trained["flops"], flops_after=last["flops"],
        units_before=before, units_after=after,
        units_removed=1 - after / before,
        units_per_layer=slim["units_after"],
        finetune_epochs=config.post.finetune.epochs,
        decoded_accuracy=results["post"]["file"]["decoded_accuracy"])
  else:
    total = results["report"]["total"]
    row.update(acc_slim=None, acc_finetune=None,
               params_before=total["params"], params_after=total["params"],
               flops_before=total["flops_dense"],
               flops_after=total["flops_dense"], units_removed=0.0)
  row["trained_scales"] = scales
  row["flops_removed"] = 1 - row["flops_after"] / row["flops_before"]
  row["acc_final"] = row["acc_finetune"] or row["acc_trained"]
  row["setting"] = (f"gamma={gamma:g}" if row["gamma"] is not None else
                    f"fraction={fraction:.3f}" if row["fraction"] is not None
                    else "-")
  print({k: v for k, v in row.items() if k != "units_per_layer"}, flush=True)
  return row, {"name": name, "kwargs": kwargs, "variables": variables,
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
  config = make_config("lenet_300_100", "sss", 10.0, gamma=gamma)
  dataset = data_lib.load_dataset(DATASET)
  total_steps = 10 * data_lib.steps_per_epoch(dataset.train, 128)
  opt = config.optimizer
  lr = optim.make_schedule(opt, total_steps)
  weights_tx = optax.chain(
      optax.add_decayed_weights(opt.weight_decay),
      optax.sgd(lr, momentum=opt.momentum, nesterov=True))
  variants = {
      "sss (APG on gates)": optim.make_optimizer(config, total_steps),
      "Nesterov SGD on gates": sss.sss_optimizer(
          weights_tx, optax.sgd(lr, momentum=opt.momentum, nesterov=True)),
  }
  model = models.get_model(config.model.name,
                           **config.model.kwargs.to_dict())
  dense_config = make_config("lenet_300_100", "dense", 10.0)
  dense_model = models.get_model(dense_config.model.name,
                                 **dense_config.model.kwargs.to_dict())
  it = data_lib.batches(dataset.train, batch_size=128, seed=0,
                        mean=dataset.mean, std=dataset.std)
  batches = [jax.device_put(next(it)) for _ in range(16)]
  step_fn = jax.jit(train.train_step, donate_argnums=0)
  dense_step_fn = jax.jit(train.train_step, donate_argnums=0)

  def state_of(module, tx):
    params = module.init(jax.random.key(0), batches[0]["image"][:1])["params"]
    return train.TrainState.create(
        apply_fn=module.apply, params=params, tx=tx, batch_stats={},
        rng=jax.random.key_data(jax.random.key(1)))

  runs = {name: [state_of(model, tx), step_fn, []]
          for name, tx in variants.items()}
  runs["dense, no gates (momentum SGD)"] = [
      state_of(dense_model, optim.make_optimizer(dense_config, total_steps)),
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
  parser.add_argument("--vgg-gammas", type=float, nargs="+", default=[0.01])
  parser.add_argument("--vgg-multiple", type=int, default=8,
                      help="post.slim.multiple of the slimmed VGGs")
  parser.add_argument("--batch", type=int, default=256,
                      help="inference batch of the latency measurement")
  parser.add_argument("--latency-rounds", type=int, default=30)
  parser.add_argument("--apg-rounds", type=int, default=30)
  parser.add_argument("--apg-chunk", type=int, default=100)
  parser.add_argument("--skip-apg", action="store_true")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  logging.basicConfig(level=logging.WARNING)
  out = args.out or common.RESULTS

  rows, final_models, originals = [], {}, {}
  row, originals["lenet_300_100"] = accuracy_run(
      "lenet_300_100", "dense", args.lenet_epochs)
  rows.append(row)
  for gamma in args.lenet_gammas:
    row, final_models[f"lenet_300_100 sss gamma={gamma:g}"] = accuracy_run(
        "lenet_300_100", "sss", args.lenet_epochs, gamma=gamma)
    rows.append(row)
  row, originals["vgg"] = accuracy_run("vgg", "dense", args.vgg_epochs,
                                       width=args.vgg_width)
  rows.append(row)
  for gamma in args.vgg_gammas:
    row, final_models[f"vgg sss gamma={gamma:g}"] = accuracy_run(
        "vgg", "sss", args.vgg_epochs, width=args.vgg_width, gamma=gamma,
        multiple=args.vgg_multiple)
    rows.append(row)
    gates = row["trained_scales"]["gates"]
    fraction = gates["zeros"] / gates["count"]
    row, final_models[f"vgg slimming fraction={fraction:.3f}"] = (
        accuracy_run("vgg", "slimming", args.vgg_epochs, width=args.vgg_width,
                     fraction=fraction, multiple=args.vgg_multiple))
    rows.append(row)
  dense_acc = {r["model"]: r["acc_trained"] for r in rows
               if r["method"] == "dense"}
  for r in rows:
    r["acc_vs_dense"] = r["acc_final"] - dense_acc[r["model"]]
  epochs = {"lenet_300_100": args.lenet_epochs, "vgg": args.vgg_epochs}
  common.write_results(os.path.join(out, "sss_fashion_mnist"), rows, [
      ("model", "model", "s"), ("method", "method", "s"),
      ("setting", "gamma / fraction", "s"), ("epochs", "epochs", "g"),
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
      vgg_multiple=args.vgg_multiple, finetune_epochs=1.0)

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

r"""Structure, slimming and FLOPs on models sparsify did not define.

The models are those of ``tests/zoo.py`` (written as flax's examples, big
model libraries and the NNX tutorials write them: torchvision-style
ResNet-18/50 with BatchNorm and residual adds, MobileNet's depthwise convs,
RegNet's grouped convs with squeeze-excitation, DenseNet's concatenations, a
ViT and a BERT encoder, ``nn.scan``-stacked layers, an NNX CNN), built here
at realistic widths. For each model, on random weights:

* ``structure_of``: its time, and the units it finds by kind;
* half the elements of every exact unit removed at random: the slim model
  (`sparsify.slim_model`) against the masked one (max abs difference of the
  outputs), the parameters kept, the exact FLOPs (`sparsify.flops`) before
  and after against XLA's own count of the compiled forward passes, and the
  forward time of the slim model relative to the full one, both jitted and
  timed alternately in one process;
* the bytes of the slim forward pass exported with `jax.export`.

Then SSS on the image models, through the config system as a user runs
it: ``model.name=zoo:<builder>`` (the zoo's module on the path),
``model.gates='.*'`` (gates inserted into every unit, the model unedited),
the ``sss`` preset on the embedded MNIST digits for ``--epochs``, and the
``slim`` stage: accuracy, parameters and FLOPs before and after, XLA's
FLOPs of both compiled forward passes, and their times side by side.

  python -m experiments.benchmarks.any_model --repeats 20
  python -m experiments.benchmarks.any_model --models --trained resnet18 \
      regnet vit --epochs 2 --strength 0.01 --relative-threshold 0.1
"""

import argparse
import functools
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmarks import common
import sparsify
from sparsify import flops as flops_lib
from sparsify.experiment import checkpoint
from sparsify.experiment import config as config_lib
from sparsify.experiment import run as run_lib
from sparsify.experiment import stages

sys.path.insert(0, os.path.join(common.ROOT, "tests"))
import zoo  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

# (zoo case, widths at which it is measured, batch size)
MODELS = (
    ("resnet18", dict(widths=(64, 128), inner=(64, 128)), 32),
    ("resnet50", dict(stem=32, widths=(128, 256),
                      inner=((32, 32), (64, 64), (64, 64))), 32),
    ("mobilenet", dict(stem=32, separable=64, hidden=(192, 192), out=96,
                       head=256), 32),
    ("regnet", dict(widths=(64, 128), bottleneck=(64, 128), se=(16, 32)), 32),
    ("densenet", dict(stem=32, growth=(16, 16, 16),
                      bottleneck=(64, 64, 64)), 32),
    ("vit", dict(hidden=192, heads=6, head_dim=32, mlp=768), 32),
    ("bert", dict(hidden=192, heads=6, head_dim=32, mlp=768), 32),
    ("scanned_mlp", dict(features=256, hidden=1024), 256),
    ("nnx_cnn", dict(conv=(64, 128), hidden=512), 32),
)


def _batch(case, batch):
  x = np.asarray(case.example())
  reps = -(-batch // x.shape[0])
  return jnp.asarray(np.concatenate([x] * reps)[:batch])


def _xla_flops(fn, *args):
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))


def _time(fns, args, repeats):
  """Median seconds per call of each jitted fn, calls alternating."""
  jitted = [jax.jit(f) for f in fns]
  for f, a in zip(jitted, args):
    jax.block_until_ready(f(*a))
  times = [[] for _ in fns]
  for _ in range(repeats):
    for t, f, a in zip(times, jitted, args):
      start = time.perf_counter()
      jax.block_until_ready(f(*a))
      t.append(time.perf_counter() - start)
  return [float(np.median(t)) for t in times]


def measure(name, widths, batch, repeats, seed=0):
  case, apply_fn, variables, _ = zoo.functional(name, **widths)
  variables = jax.tree.map(np.asarray, variables)
  x = _batch(case, batch)
  start = time.perf_counter()
  structure = sparsify.structure_of(apply_fn, variables, x)
  trace_seconds = time.perf_counter() - start
  kinds = {}
  for u in structure:
    kinds[u.kind] = kinds.get(u.kind, 0) + 1
  keep = zoo.random_keep(structure, seed)
  slim_apply, small = sparsify.slim_model(apply_fn, variables, keep, x)
  masked = sparsify.mask(variables, structure, keep)
  diff = float(jnp.abs(jax.jit(slim_apply)(small, x)
                       - jax.jit(apply_fn)(masked, x)).max())
  count = lambda v: sum(np.size(leaf) for leaf in jax.tree.leaves(v))
  full_flops = flops_lib.param_flops(apply_fn, variables, x)
  slim_flops = flops_lib.param_flops(slim_apply, small, x)
  total = lambda f: sum(leaf.flops for leaf in f.values())
  full_s, slim_s = _time([apply_fn, slim_apply], [(variables, x), (small, x)],
                         repeats)
  return {
      "model": name, "batch": batch,
      "units": len(structure), "kinds": kinds,
      "structure_seconds": trace_seconds,
      "max_abs_diff": diff,
      "params": count(variables), "params_slim": count(small),
      "flops": total(full_flops),  # per example, as param_flops counts
      "flops_slim": total(slim_flops),
      "xla_flops": _xla_flops(apply_fn, variables, x) / batch,
      "xla_flops_slim": _xla_flops(slim_apply, small, x) / batch,
      "ms": 1e3 * full_s, "ms_slim": 1e3 * slim_s,
      "speedup": full_s / slim_s,
      "export_bytes": len(sparsify.export_slim(slim_apply, small, x)),
  }


# (zoo builder, widths, training keyword) trained with inserted SSS gates.
TRAINED = (
    ("resnet18", dict(widths=(32, 64), inner=(32, 64)), "train"),
    ("mobilenet", dict(stem=16, separable=32, hidden=(96, 96), out=48,
                       head=128), "train"),
    ("regnet", dict(widths=(32, 64), bottleneck=(32, 64), se=(8, 16)),
     "train"),
    ("vit", dict(hidden=64, heads=4, head_dim=16, mlp=128), ""),
)


def train_and_slim(name, widths, train_arg, epochs, strength, threshold,
                   repeats, workdir):
  """SSS with inserted gates on the embedded digits, then the slim stage."""
  config = config_lib.with_method(config_lib.default_config(), "sss")
  config.model.name = f"zoo:{name}"
  config.model.kwargs = dict(widths)
  config.model.train_arg = train_arg
  config.model.gates = ".*"
  config.optimizer.kwargs.strength = strength
  config.data.name = "embedded_mnist"
  config.train.epochs = epochs
  config.train.plots = False
  config.post.stages = "slim"
  if threshold:  # gates below this fraction of their layer's largest go
    config.post.slim.threshold, config.post.slim.relative = threshold, True
  results = run_lib.run(config, workdir)
  trained, slim = results["post"]["stages"]
  # Both models rebuilt as the file and the checkpoint hold them.
  state = checkpoint.load(workdir)
  variables = {"params": state["params"]}
  if state.get("batch_stats"):
    variables["batch_stats"] = state["batch_stats"]
  full = stages.Model(config.model.name, dict(widths), variables,
                      input_shape=(28, 28, 1), train_arg=train_arg,
                      gates=".*")
  small, _ = stages.load_model(f"{workdir}/model.spz")
  x = jnp.zeros((64, 28, 28, 1))
  run_full = functools.partial(full.apply_fn, train=False)
  run_slim = functools.partial(small.apply_fn, train=False)
  full_s, slim_s = _time([run_full, run_slim],
                         [(full.variables, x), (small.variables, x)], repeats)
  xla, xla_slim = (_xla_flops(f, v, x) / 64 for f, v in (
      (run_full, full.variables), (run_slim, small.variables)))
  return {
      "model": name, "epochs": epochs, "strength": strength,
      "relative_threshold": threshold,
      "accuracy": trained["test_accuracy"],
      "accuracy_slim": slim["test_accuracy"],
      "decoded_accuracy": results["post"]["file"]["decoded_accuracy"],
      "params": trained["params"], "params_slim": slim["params"],
      "flops": trained["flops"], "flops_slim": slim["flops"],
      "xla_flops": xla, "xla_flops_slim": xla_slim,
      "units_before": slim["units_before"], "units_after": slim["units_after"],
      "ms": 1e3 * full_s, "ms_slim": 1e3 * slim_s,
      "speedup": full_s / slim_s, "xla_flops_ratio": xla / xla_slim,
  }


TRAINED_COLUMNS = [
    ("model", "model", ""), ("accuracy", "test acc", ".4f"),
    ("accuracy_slim", "slim test acc", ".4f"),
    ("params", "params", ",d"), ("params_slim", "slim params", ",d"),
    ("xla_flops", "XLA FLOPs", ",.0f"), ("xla_flops_slim", "slim XLA FLOPs",
                                        ",.0f"),
    ("xla_flops_ratio", "FLOPs ratio", ".2f"), ("speedup", "speedup", ".2f"),
]


COLUMNS = [
    ("model", "model", ""), ("units", "units", "d"),
    ("kind_list", "kinds", ""), ("structure_seconds", "structure_of (s)",
                                 ".2f"),
    ("max_abs_diff", "max abs slim - masked", ".1e"),
    ("params_ratio", "params kept", ".3f"),
    ("flops_ratio", "FLOPs kept", ".3f"),
    ("xla_ratio", "XLA FLOPs kept", ".3f"),
    ("counted_vs_xla", "counted / XLA FLOPs", ".3f"),
    ("ms", "forward (ms)", ".2f"), ("ms_slim", "slim (ms)", ".2f"),
    ("speedup", "speedup", ".2f"), ("export_kib", "export (KiB)", ".0f"),
]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--models", nargs="*", default=[m for m, _, _ in MODELS])
  parser.add_argument("--out", default=os.path.join(common.RESULTS,
                                                    "any_model"))
  parser.add_argument("--epochs", type=float, default=3.0)
  parser.add_argument("--strength", type=float, default=0.01)
  parser.add_argument("--relative-threshold", type=float, default=0.0,
                      help="remove gates below this fraction of their "
                      "layer's largest (0: the preset's absolute 1e-4)")
  parser.add_argument("--trained", nargs="*", default=[],
                      choices=[m for m, _, _ in TRAINED],
                      help="models to train with SSS (none by default)")
  args = parser.parse_args(argv)
  rows = []
  for name, widths, batch in MODELS:
    if name not in args.models:
      continue
    row = measure(name, widths, batch, args.repeats)
    row.update(
        kind_list=", ".join(f"{n} {k}" for k, n in sorted(
            row["kinds"].items())),
        params_ratio=row["params_slim"] / row["params"],
        flops_ratio=row["flops_slim"] / row["flops"],
        xla_ratio=row["xla_flops_slim"] / row["xla_flops"],
        counted_vs_xla=row["flops"] / row["xla_flops"],
        export_kib=row["export_bytes"] / 1024)
    print(row, flush=True)
    rows.append(row)
  if rows:
    common.write_results(args.out, rows, COLUMNS, repeats=args.repeats)
  trained = []
  for name, widths, train_arg in TRAINED:
    if name not in args.trained:
      continue
    with tempfile.TemporaryDirectory() as workdir:
      row = train_and_slim(name, widths, train_arg, args.epochs,
                           args.strength, args.relative_threshold,
                           args.repeats, workdir)
    print(row, flush=True)
    trained.append(row)
  if trained:
    common.write_results(args.out + "_sss", trained, TRAINED_COLUMNS,
                         repeats=args.repeats, epochs=args.epochs,
                         strength=args.strength,
                         relative_threshold=args.relative_threshold)


if __name__ == "__main__":
  main()

r"""LCT (layer-wise compressive training) vs gradual magnitude pruning: bytes on disk.

For each model, one dense run (``configs/<model>.py:lct``) is trained once;
each LCT setting then runs the ``lct`` stage on that trained model (the run
is resumed from its final checkpoint, so the dense weights are shared): a
global magnitude prune to ``post.lct.sparsity``, ``prune_steps`` steps of
masked fine-tuning, then from the least to the most significant layer the
layer is ternarized ({-sigma, 0, +sigma} on its mask, ``steps`` steps of
sigma-constrained SGD) and kept if validation accuracy (5,000 training
examples the run holds out of training) stays within ``budget`` of the pruned model's, else
reverted and the loop stops. The run writes ``model.spz`` (each ternary
layer as a bitmask or relative indices, whichever is smaller, plus a sign
bit per nonzero and sigma; the other leaves in the smallest lossless
encoding) and the reported accuracy after LCT is that of the model decoded
from the file, on the test split.

The baseline is gradual magnitude pruning (``configs/<model>.py:gmp``) at the
same sparsity and epochs, written with the same file format
(``post.stages='finetune'`` with 0 epochs).

  python -m experiments.benchmarks.lct --models lenet5 --epochs 2 \
      --settings sparsity=0.95 sparsity=0.9

``--append`` adds the rows of a run to an existing result file (rows of the
same model, method and sparsity are replaced), e.g. a further setting:

  python -m experiments.benchmarks.lct --models lenet5 --epochs 2 --append \
      --skip-gmp --settings sparsity=0.9,prune_steps=1500
"""

import argparse
import contextlib
import json
import logging
import os
import tempfile
import time

from experiments.benchmarks import common
import sparsify
from sparsify import spz

LCT_FIELDS = {"sparsity": float, "budget": float, "steps": int,
              "prune_steps": int, "learning_rate": float, "sigma": str,
              "by": str}


def parse_setting(text):
  """``'sparsity=0.95,budget=0.01'`` -> ``{'sparsity': 0.95, ...}``."""
  out = {}
  for item in filter(None, text.split(",")):
    key, value = item.split("=")
    if key not in LCT_FIELDS:
      raise SystemExit(f"--settings: unknown field {key!r}; allowed: "
                       f"{', '.join(LCT_FIELDS)}")
    out[key] = LCT_FIELDS[key](value)
  return out


def base_config(model, preset, dataset, epochs, width):
  config = common.load_config(model, preset)
  config.data.name = dataset
  config.train.epochs = epochs
  config.train.log_every = 200
  config.train.eval_every_epochs = 10**6
  config.train.checkpoint_every = 10**9
  if width is not None and "width" in config.model.kwargs:
    config.model.kwargs.width = width
  return config


def file_breakdown(path, ternary_layers=()):
  """Bytes on disk split into ternary layers, other leaves and header."""
  report = spz.file_report(path)
  is_ternary = lambda leaf: leaf.path.removeprefix("params/") in ternary_layers
  ternary = sum(l.nbytes for l in report.leaves if is_ternary(l))
  kernels = sum(l.nbytes for l in report.leaves
                if not is_ternary(l) and len(l.shape) >= 2)
  small = sum(l.nbytes for l in report.leaves if len(l.shape) < 2)
  return {"bytes_ternary": ternary, "bytes_other_kernels": kernels,
          "bytes_biases": small, "bytes_header": report.header_bytes,
          "leaves": [{"path": l.path, "encoding": l.encoding,
                      "shape": list(l.shape), "bytes": l.nbytes}
                     for l in report.leaves]}


def file_row(results, ternary_layers=()):
  info = results["post"]["file"]
  return {"bytes_on_disk": info["bytes_on_disk"],
          "float32_bytes": info["float32_bytes"],
          "ratio": info["float32_bytes"] / info["bytes_on_disk"],
          "decoded_accuracy": info["decoded_accuracy"],
          "decoded_matches": abs(info["decoded_accuracy"]
                                 - info["recorded_accuracy"]) < 1e-9,
          **file_breakdown(info["path"], ternary_layers)}


def lct_run(config, workdir, setting):
  config = config.copy_and_resolve_references()
  config.post.lct.update(setting)
  t = time.perf_counter()
  results = sparsify.run(config, workdir)
  stage = results["post"]["stages"][-1]
  decisions = " ".join(
      f"{d['layer'].removesuffix('/kernel')}:"
      f"{'kept' if d['accepted'] else 'reverted'}"
      f"({d['validation_accuracy']:.4f})" for d in stage["decisions"])
  return {
      "dense_accuracy": results["eval_accuracy"],
      "pruned_accuracy": stage["pruned_test_accuracy"],
      "accuracy": results["post"]["file"]["decoded_accuracy"],
      "ternary_layers": [l.removesuffix("/kernel")
                         for l in stage["ternary_layers"]],
      "order": stage["order"], "significance": stage["significance"],
      "validation_reference": stage["validation_reference"],
      "decisions": decisions, "decision_records": stage["decisions"],
      "nonzeros": stage["nonzeros"], "params": stage["params"],
      "lct": dict(config.post.lct.to_dict()),
      "stage_seconds": stage["seconds"],
      "seconds": time.perf_counter() - t,
      **file_row(results, stage["ternary_layers"]),
  }


def gmp_run(config, sparsity):
  config = config.copy_and_resolve_references()
  common.set_sparsity(config, sparsity)
  config.post.stages = "finetune"
  config.post.finetune.epochs = 0.0
  t = time.perf_counter()
  with tempfile.TemporaryDirectory() as workdir:
    results = sparsify.run(config, workdir)
    row = file_row(results)
  total = results["report"]["total"]
  return {"accuracy": results["eval_accuracy"],
          "nonzeros": total["nonzeros"], "params": total["params"],
          "seconds": time.perf_counter() - t, **row}


def setting_name(setting, defaults):
  changed = {k: v for k, v in setting.items() if k != "sparsity"}
  extras = ", ".join(f"{k}={v}" for k, v in changed.items()
                     if defaults.get(k) != v)
  return "lct" + (f" ({extras})" if extras else "")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", default="fashion_mnist")
  parser.add_argument("--models", nargs="+", default=["lenet5"])
  parser.add_argument("--epochs", type=float, nargs="+", default=[2],
                      help="one value, or one per model")
  parser.add_argument("--width", type=float, default=0.125,
                      help="model.kwargs.width of models that have one")
  parser.add_argument("--settings", nargs="+", default=["sparsity=0.95"],
                      help="LCT settings, each 'field=value,...' over "
                      + ", ".join(LCT_FIELDS) + " (post.lct.*)")
  parser.add_argument("--budget", type=float, default=0.01,
                      help="post.lct.budget unless a setting gives one")
  parser.add_argument("--skip-gmp", action="store_true")
  parser.add_argument("--append", action="store_true",
                      help="keep the rows already in the result file")
  parser.add_argument("--workdir", default=None,
                      help="keep each model's dense run in WORKDIR/<model> "
                      "(reused when it holds a finished run of the same "
                      "config)")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  logging.basicConfig(level=logging.WARNING)
  out = args.out or os.path.join(common.RESULTS, f"lct_{args.dataset}")
  epochs = dict(zip(args.models, args.epochs * len(args.models)
                    if len(args.epochs) == 1 else args.epochs))
  settings = [{"budget": args.budget, **parse_setting(s)}
              for s in args.settings]

  rows = []
  for model in args.models:
    config = base_config(model, "lct", args.dataset, epochs[model],
                         args.width)
    defaults = config.post.lct.to_dict()
    with contextlib.ExitStack() as stack:
      if args.workdir:
        workdir = os.path.join(args.workdir, f"{model}_{epochs[model]:g}")
        os.makedirs(workdir, exist_ok=True)
      else:
        workdir = stack.enter_context(tempfile.TemporaryDirectory())
      dense = None
      for setting in settings:
        result = lct_run(config, workdir, setting)
        dense = result["dense_accuracy"]
        rows.append({"model": model, "method": setting_name(setting, defaults),
                     "epochs": epochs[model],
                     "sparsity": result["lct"]["sparsity"],
                     "loss_points": 100 * (dense - result["accuracy"]),
                     **result})
        print({k: v for k, v in rows[-1].items() if k not in (
            "leaves", "decision_records", "significance", "order")},
              flush=True)
    if args.skip_gmp:
      continue
    for sparsity in sorted({s["sparsity"] for s in settings}):
      gmp_config = base_config(model, "gmp", args.dataset, epochs[model],
                               args.width)
      result = gmp_run(gmp_config, sparsity)
      rows.append({"model": model, "method": "gmp", "epochs": epochs[model],
                   "sparsity": sparsity, "dense_accuracy": dense,
                   "pruned_accuracy": result["accuracy"],
                   "ternary_layers": [], "decisions": "",
                   "loss_points": 100 * (dense - result["accuracy"]),
                   **result})
      print({k: v for k, v in rows[-1].items() if k != "leaves"}, flush=True)

  commands = []
  if args.append and os.path.exists(out + ".json"):
    with open(out + ".json") as f:
      previous = json.load(f)
    new = {(r["model"], r["method"], r["sparsity"]) for r in rows}
    rows = [r for r in previous["rows"]
            if (r["model"], r["method"], r["sparsity"]) not in new] + rows
    commands = previous.get("previous_commands", []) + [previous["command"]]
  for row in rows:
    row["ternary"] = ", ".join(row["ternary_layers"]) or "none"
  common.write_results(out, rows, [
      ("model", "model", "s"), ("method", "method", "s"),
      ("sparsity", "sparsity", ".2f"),
      ("dense_accuracy", "dense acc", ".4f"),
      ("pruned_accuracy", "pruned acc", ".4f"),
      ("accuracy", "final acc (decoded file)", ".4f"),
      ("loss_points", "points lost", "+.2f"),
      ("ternary", "ternary layers", "s"),
      ("decisions", "decisions (validation acc)", "s"),
      ("bytes_on_disk", "bytes on disk", ",d"),
      ("float32_bytes", "float32 bytes", ",d"),
      ("ratio", "float32 / disk", ".1f"),
      ("bytes_ternary", "ternary bytes", ",d"),
      ("bytes_other_kernels", "other kernel bytes", ",d"),
      ("bytes_biases", "bias bytes", ",d"),
      ("bytes_header", "header bytes", ",d")],
      dataset=args.dataset, width=args.width, previous_commands=commands,
      note=("pruned acc: test accuracy after the global magnitude prune and "
            "its masked fine-tuning (LCT), or of the GMP model; final acc: "
            "the model decoded from the compressed file; points lost vs the "
            "dense model of the same model and epochs."))


if __name__ == "__main__":
  main()

r"""Binary-search neuron pruning against random removal of as many neurons.

Each model is trained dense once (``configs/<model>.py:search``); then, on
the same trained parameters, `sparsify.experiment.stages.run_stages` runs
the ``search,finetune`` stages once per search setting. In every hidden layer
(LeNet-300-100: fc1, fc2; LeNet-5: conv1 and conv2 filters, fc1 neurons),
in ``post.search.order``, a binary search finds how many of the
lowest-L1-norm neurons can be removed while the accuracy on the validation
examples (the last ``post.validation_examples`` training examples, held out
of training and fine-tuning as the preset's runs hold them out) stays
within ``post.search.tolerance`` of the unpruned model's; with
``post.search.finetune_steps`` the network is fine-tuned for that many steps
after each layer. The network is cut into a smaller dense one and fine-tuned
for ``post.finetune.epochs``.

Baseline: on the same trained parameters, the same number of neurons per
layer is removed uniformly at random (one draw per seed), the smaller network
is evaluated, then fine-tuned with the same optimizer and learning rate for
as many steps as the searched one got in all (final fine-tuning plus the
steps between layers).

Evaluations (the unpruned baseline included) are compared with the bound
:math:`1 + \sum_l \lceil \log_2 N_l \rceil` over the searched layers.

A setting is ``TOLERANCE[:FINETUNE_STEPS[:ORDER]]``:

  python -m experiments.benchmarks.neuron_search --epochs 10 3 --search \
      0.05,0.1,0.15,0.2,0.05:0:backward,0.1:0:backward,0.02:200,0.05:200,0.1:200,0.1:200:backward \
      0.05
"""

import argparse
import dataclasses
import functools
import math
import os
import tempfile
import time
import types

import jax
import numpy as np

from experiments.benchmarks import common
import sparsify
from sparsify.experiment import stages
from sparsify.experiment import trainer as trainer_lib


def make_config(model, dataset, epochs):
  config = common.load_config(model, "search")
  config.data.name = dataset
  config.train.epochs = epochs
  config.train.checkpoint_every = 10**9
  config.train.log_every = 200
  return config


def parse_setting(text):
  parts = text.split(":")
  tolerance, steps, order = parts + ["0", "forward"][len(parts) - 1:]
  return {"tolerance": float(tolerance), "finetune_steps": int(steps),
          "order": order}


def random_baseline(ctx, trained, search, steps, seeds):
  """Removes as many random neurons per layer as the search did.

  The units are those `sparsify.structure_of` finds in the trained model;
  `sparsify.slim_model` cuts them out. The smaller network is evaluated
  with the function `slim_model` returns, then fine-tuned as the search
  stage's is: the trained model with the kept elements in its plan.

  Returns per seed the test accuracy of the smaller network before and
  after fine-tuning for ``steps`` steps.
  """
  apply_fn = functools.partial(trained.apply_fn, train=False)
  example = trained.example()
  structure = sparsify.structure_of(apply_fn, trained.variables, example)
  before, after = search["units_before"], search["units_after"]
  out = []
  for seed in seeds:
    rng = np.random.default_rng(seed)
    keep = {u.name: rng.permutation(before[u.name]) < after[u.name]
            for u in structure if u.name in before}
    slim_apply, slim_variables = sparsify.slim_model(
        apply_fn, trained.variables, keep, example)
    accuracy = ctx.trainer.evaluate(
        types.SimpleNamespace(apply_fn=slim_apply), None,
        slim_variables)["eval/accuracy"]
    small = dataclasses.replace(trained, variables=slim_variables,
                                masks=None, plan=(*trained.plan, keep))
    tuned = ctx.finetune(small, steps, ctx.config.post.finetune.learning_rate)
    out.append({"seed": seed, "before_finetune": accuracy,
                "after_finetune": ctx.accuracy(
                    dataclasses.replace(small, variables=tuned))})
  return out


def summarize(model, epochs, setting, post, baseline):
  trained, search, tuned = post["stages"]
  before, after = search["units_before"], search["units_after"]
  bound = 1 + sum(math.ceil(math.log2(n)) for n in before.values())
  ra = [b["after_finetune"] for b in baseline]
  return {
      "model": model, "epochs": epochs, **setting,
      "units_before": before, "units_after": after,
      "neurons": "-".join(map(str, before.values())) + " → " + "-".join(
          map(str, after.values())),
      "removed_fraction": 1 - sum(after.values()) / sum(before.values()),
      "trained_accuracy": trained["test_accuracy"],
      "search_accuracy": search["test_accuracy"],
      "finetune_accuracy": tuned["test_accuracy"],
      "accuracy_change": 100 * (tuned["test_accuracy"] -
                                trained["test_accuracy"]),
      "validation_baseline": search["validation_baseline"],
      "params_before": trained["params"], "params_after": tuned["params"],
      "flops_before": trained["flops"], "flops_after": tuned["flops"],
      "params": f"{trained['params']:,} → {tuned['params']:,}",
      "mflops": f"{trained['flops'] / 1e6:.3f} → {tuned['flops'] / 1e6:.3f}",
      "evaluations": search["evaluations"], "evaluation_bound": bound,
      "evals": f"{search['evaluations']} / {bound}",
      "search_seconds": search["search_seconds"],
      "finetune_steps_final": tuned["steps"],
      "random_before_finetune": float(np.mean(
          [b["before_finetune"] for b in baseline])),
      "random_after_finetune": float(np.mean(ra)),
      "random_after_finetune_std": float(np.std(ra)),
      "random_seeds": baseline,
      "search_log": search["log"],
  }


def run_model(model, epochs, settings, dataset_name, seeds):
  rows = []
  with tempfile.TemporaryDirectory() as root:
    # The stages run below, once per setting; with them in the config, the
    # trainer holds the validation examples out of training.
    config = make_config(model, dataset_name, epochs)
    trainer = trainer_lib.Trainer(config, os.path.join(root, "train"))
    t = time.perf_counter()
    state = trainer.fit(trainer.init_state(), trainer.total_steps)
    variables = jax.device_get(trainer_lib.variables_of(state))
    train_seconds = time.perf_counter() - t
    trained = stages.Model(config.model.name, config.model.kwargs.to_dict(),
                           jax.tree.map(np.asarray, variables),
                           input_shape=tuple(trainer.dataset.input_shape),
                           train_arg=config.model.train_arg)
    for i, setting in enumerate(settings):
      config = config.copy_and_resolve_references()
      config.post.search.update(setting)
      # Each setting writes its post.json and model.spz in its own workdir.
      trainer = trainer_lib.Trainer(config, os.path.join(root, str(i)))
      post = stages.run_stages(trainer, variables, None)
      search, tuned = post["stages"][1:]
      steps = tuned["steps"] + setting["finetune_steps"] * len(
          search["units_before"])
      rows.append(summarize(model, epochs, setting, post, random_baseline(
          stages.Context(trainer), trained, search, steps, seeds)))
      rows[-1]["train_seconds"] = train_seconds
      print({k: v for k, v in rows[-1].items()
             if k not in ("search_log", "random_seeds")}, flush=True)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", default="fashion_mnist")
  parser.add_argument("--models", nargs="+",
                      default=["lenet_300_100", "lenet5"])
  parser.add_argument("--epochs", type=float, nargs="+", default=[10, 3],
                      help="one value, or one per model")
  parser.add_argument("--search", nargs="+", default=["0.05,0.02:200", "0.05"],
                      help="comma-separated TOLERANCE[:FINETUNE_STEPS[:ORDER]]"
                      " settings, one list per model (or one for all)")
  parser.add_argument("--seeds", type=int, default=3,
                      help="random-removal draws per setting")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  out = args.out or os.path.join(common.RESULTS,
                                 f"neuron_search_{args.dataset}")

  def per_model(values):
    return dict(zip(args.models, values * len(args.models)
                    if len(values) == 1 else values))

  epochs = per_model(args.epochs)
  settings = per_model([[parse_setting(s) for s in text.split(",")]
                        for text in args.search])
  rows = []
  for model in args.models:
    rows += run_model(model, epochs[model], settings[model], args.dataset,
                      list(range(args.seeds)))
  config = common.load_config("lenet_300_100", "search")
  common.write_results(out, rows, [
      ("model", "model", "s"), ("epochs", "epochs", "g"),
      ("tolerance", "tolerance", "g"),
      ("finetune_steps", "steps / layer", "d"), ("order", "order", "s"),
      ("neurons", "neurons per layer", "s"),
      ("removed_fraction", "removed", ".1%"),
      ("trained_accuracy", "acc trained", ".4f"),
      ("search_accuracy", "acc after search", ".4f"),
      ("finetune_accuracy", "acc fine-tuned", ".4f"),
      ("accuracy_change", "change (points)", "+.2f"),
      ("random_before_finetune", "random: acc after removal", ".4f"),
      ("random_after_finetune", "random: acc fine-tuned", ".4f"),
      ("params", "params", "s"), ("mflops", "MFLOPs", "s"),
      ("evals", "evals / bound", "s"),
      ("search_seconds", "search (s)", ".1f")],
      dataset=args.dataset, random_seeds=args.seeds,
      validation_examples=config.post.validation_examples,
      norm=config.post.search.norm, finetune=config.post.finetune.to_dict())


if __name__ == "__main__":
  main()

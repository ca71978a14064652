r"""What the divergence check costs: the training step with and without it.

The trainer's jitted step also computes whether the loss and every parameter
are finite (`trainer.all_finite`), a flag the loop reads at logging and
checkpoint steps. Here the same step is compiled twice in one process, with
the flag and without it (the flag replaced by a constant), and both are
timed in alternating chunks of steps on one fixed batch, dispatched
asynchronously as the trainer dispatches them; the ratio is the median over
chunks of (with) / (without) in the same round.

  python -m experiments.benchmarks.finite_check --out experiments/benchmarks/results/finite_check
"""

import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp

from experiments.benchmarks import common
from sparsify import data as data_lib
from sparsify.experiment import trainer as trainer_lib

MODELS = {"lenet_300_100": {}, "lenet5": {},
          "vgg": {"width": 0.5}}


def _without_flag(state, batch):
  state, metrics = trainer_lib.train_step(state, batch)
  return state, {**metrics, trainer_lib.FINITE: jnp.array(True)}


def measure(model, kwargs, chunk, rounds, preset):
  config = common.load_config(model, preset)
  config.model.kwargs.update(kwargs)
  config.train.epochs = 1
  with tempfile.TemporaryDirectory() as workdir:
    trainer = trainer_lib.Trainer(config, workdir)
  batch = next(data_lib.batches(
      trainer.dataset.train, batch_size=config.data.batch_size, seed=0,
      mean=trainer.dataset.mean, std=trainer.dataset.std))
  batch = jax.device_put(batch, trainer.sharded)
  steps = {
      "with": trainer.train_step,
      "without": jax.jit(_without_flag,
                         in_shardings=(trainer.replicated, trainer.sharded),
                         out_shardings=(trainer.replicated,
                                        trainer.replicated),
                         donate_argnums=0)}
  states = {k: trainer.init_state() for k in steps}
  times = {k: [] for k in steps}
  for i in range(rounds + 1):  # the first round compiles and warms up
    for name in (("with", "without") if i % 2 else ("without", "with")):
      state = states[name]
      t = time.perf_counter()
      for _ in range(chunk):
        state, metrics = steps[name](state, batch)
      jax.block_until_ready((state, metrics))
      states[name] = state
      if i:
        times[name].append((time.perf_counter() - t) / chunk)
  ratios = [a / b for a, b in zip(times["with"], times["without"])]
  params = sum(x.size for x in jax.tree.leaves(states["with"].params))
  return {"model": model, "kwargs": kwargs, "method": preset,
          "params": params, "batch_size": config.data.batch_size,
          "step_ms_without": 1e3 * statistics.median(times["without"]),
          "step_ms_with": 1e3 * statistics.median(times["with"]),
          "ratio": statistics.median(ratios),
          "ratio_min": min(ratios), "ratio_max": max(ratios)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=list(MODELS))
  parser.add_argument("--method", default="gmp")
  parser.add_argument("--chunk", type=int, default=50)
  parser.add_argument("--rounds", type=int, default=10)
  parser.add_argument("--out", default="experiments/benchmarks/results/"
                      "finite_check")
  args = parser.parse_args()
  rows = [measure(m, MODELS[m], args.chunk, args.rounds, args.method)
          for m in args.models]
  common.write_results(args.out, rows, [
      ("model", "model", "s"), ("params", "params", ","),
      ("method", "method", "s"), ("batch_size", "batch", "d"),
      ("step_ms_without", "step ms, no check", ".2f"),
      ("step_ms_with", "step ms, with check", ".2f"),
      ("ratio", "ratio (median)", ".3f"), ("ratio_min", "min", ".3f"),
      ("ratio_max", "max", ".3f")])


if __name__ == "__main__":
  main()

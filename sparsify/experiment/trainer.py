"""Training and evaluation of a Flax model with a compression transform.

`train_and_evaluate(config, workdir)` is the library entry point that the
command line, notebooks and benchmarks call. The step functions are pure and
jitted once; logging, evaluation and checkpoints live in the outer loop.

Data parallelism: a one-axis `jax.sharding.Mesh` over all local devices;
batches are sharded along ``'data'``, parameters, optimizer state (masks
included) and BatchNorm statistics are replicated, and one jitted step
computes the global-batch gradient (XLA inserts the all-reduce).
"""

import functools
import importlib.util
import json
import logging
import os
import time
from typing import Any

from flax.training import train_state
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import optax
import tqdm

from sparsify import data as data_lib
from sparsify import models
from sparsify import report as report_lib
from sparsify.core import masking
from sparsify.core import paths
from sparsify.core import types
from sparsify.experiment import checkpoint
from sparsify.experiment import config as config_lib
from sparsify.experiment import metrics as metrics_lib
from sparsify.experiment import optim
from sparsify.experiment import plots
from sparsify.experiment import stages
from sparsify.transforms import sss

log = logging.getLogger("sparsify")


class TrainState(train_state.TrainState):
  """Flax `TrainState` plus BatchNorm statistics and an RNG key.

  Attributes:
    batch_stats: the ``batch_stats`` collection of the model (``{}`` for a
      model without BatchNorm).
    rng: the raw key data of a `jax.random.key`; each step folds in its step
      number for dropout.
  """
  batch_stats: Any
  rng: jax.Array  # raw uint32 key data, so that orbax can save it


def _variables(params, batch_stats):
  return {"params": params, **({"batch_stats": batch_stats}
                               if batch_stats else {})}


def train_step(state: TrainState, batch: dict[str, jax.Array]):
  """One optimizer step on ``batch``; returns ``(state, metrics)``.

  The loss is the mean softmax cross-entropy of the batch; BatchNorm uses
  the batch's statistics and updates the running ones.

  Args:
    state: the current state.
    batch: ``{'image': (B, H, W, C), 'label': (B,)}``.

  Returns:
    ``(state, metrics)``: the state after the optimizer's update, and
    ``{'loss', 'accuracy'}`` of the batch before it.
  """
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

  def loss_fn(params):
    logits, updated = state.apply_fn(
        _variables(params, state.batch_stats), batch["image"], train=True,
        mutable=["batch_stats"], rngs={"dropout": rng})
    loss = optax.softmax_cross_entropy_with_integer_labels(
        logits, batch["label"]).mean()
    return loss, (logits, updated.get("batch_stats", state.batch_stats))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  accuracy = (logits.argmax(-1) == batch["label"]).mean()
  return state, {"loss": loss, "accuracy": accuracy}


def eval_step(state: TrainState, batch: dict[str, jax.Array]):
  """Sums of loss and correct predictions over the real examples of a batch.

  Args:
    state: the state to evaluate (BatchNorm uses its running statistics).
    batch: ``{'image': (B, H, W, C), 'label': (B,), 'mask': (B,)}`` as
      `data.eval_batches` gives it; ``mask`` is 0 for padding.

  Returns:
    ``{'loss', 'correct', 'count'}``: the summed cross-entropy, the number
    of correct predictions and the number of real examples, each a scalar.
  """
  logits = state.apply_fn(_variables(state.params, state.batch_stats),
                          batch["image"], train=False)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits,
                                                         batch["label"])
  correct = logits.argmax(-1) == batch["label"]
  mask = batch["mask"]
  return {"loss": (loss * mask).sum(), "correct": (correct * mask).sum(),
          "count": mask.sum()}


def scales_per_layer(params: types.Params) -> dict[str, float]:
  """Mean magnitude of each gate and BatchNorm scale vector, by path.

  Args:
    params: the model's parameters.

  Returns:
    ``{'scale/<path>': mean(|leaf|)}`` for every leaf that `sss.SSS_SCALES`
    selects; empty for a model without gates or BatchNorm.
  """
  chosen = paths.path_predicate(sss.SSS_SCALES)
  return {f"scale/{name}": float(np.mean(np.abs(np.asarray(leaf))))
          for name, leaf in paths.named_leaves(params) if chosen(name, leaf)}


def sparsity_per_layer(params: types.Params, where=None) -> dict[str, float]:
  """Fraction of exact zeros of each prunable parameter, by path.

  Args:
    params: the model's parameters.
    where: which leaves, as `paths.path_predicate` takes it; ``None`` for
      Dense and Conv kernels.

  Returns:
    ``{'sparsity/<path>': fraction of zeros}``, each in [0, 1].
  """
  chosen = paths.path_predicate(where)
  return {f"sparsity/{name}": float(np.mean(np.asarray(leaf) == 0))
          for name, leaf in paths.named_leaves(params) if chosen(name, leaf)}


class Trainer:
  """Holds what one run needs: data, model, optimizer, jitted steps, mesh.

  Building it validates the config and loads the data, so every bad input is
  reported before any training starts.

  Args:
    config: the experiment config.
    workdir: the run's directory (checked with `checkpoint.check_workdir`).

  Raises:
    ConfigError: a field of the config is invalid, or ``workdir`` holds a
      run of another model.
    MissingDataError: the dataset is not on this machine.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    config_lib.validate(config)
    self.config = config
    self.workdir = workdir
    try:
      self.dataset = data_lib.load_dataset(
          config.data.name, source=config.data.source,
          data_dir=config.data.data_dir)
    except data_lib.MissingDataError:
      raise
    except ValueError as e:  # e.g. a source that does not hold the dataset
      raise config_lib.ConfigError(str(e)) from e
    self.validation = None
    if stages.holds_out(config):  # selection must not see its own data
      self.dataset, self.validation = stages.split_validation(
          self.dataset, config.post.validation_examples)
    self.mesh = jax.make_mesh((jax.device_count(),), ("data",),
                              axis_types=(jax.sharding.AxisType.Auto,))
    self.replicated = NamedSharding(self.mesh, P())
    self.sharded = NamedSharding(self.mesh, P("data"))
    for field in ("batch_size", "eval_batch_size"):
      if config.data[field] % jax.device_count():
        raise config_lib.ConfigError(
            f"data.{field}", config.data[field],
            f"a multiple of the number of devices ({jax.device_count()})")
    self.steps_per_epoch = data_lib.steps_per_epoch(
        self.dataset.train, config.data.batch_size)
    if self.steps_per_epoch < 1:
      raise config_lib.ConfigError(
          "data.batch_size", config.data.batch_size,
          f"at most the training set size ({len(self.dataset.train.labels)})")
    self.total_steps = max(int(round(config.train.epochs *
                                     self.steps_per_epoch)), 1)
    try:
      self.model = models.get_model(
          config.model.name, num_classes=self.dataset.num_classes,
          **config.model.kwargs.to_dict())
    except (ValueError, TypeError) as e:
      message = str(e).removeprefix("model: ")
      raise config_lib.ConfigError(f"model.kwargs: {message}") from e
    try:
      self.tx = optim.make_optimizer(config, self.total_steps)
    except ValueError as e:
      raise config_lib.ConfigError("compression", config.compression.method,
                                   str(e)) from e
    checkpoint.check_workdir(config, workdir)
    self.train_step = jax.jit(
        train_step, in_shardings=(self.replicated, self.sharded),
        out_shardings=(self.replicated, self.replicated), donate_argnums=0)
    self.eval_step = jax.jit(
        eval_step, in_shardings=(self.replicated, self.sharded),
        out_shardings=self.replicated)

  def init_state(self) -> TrainState:
    """Fresh parameters, optimizer state and RNG from ``config.seed``.

    Returns:
      A `TrainState` at step 0, replicated over the mesh.
    """
    rng = jax.random.key(self.config.seed)
    init_rng, state_rng = jax.random.split(rng)
    dummy = np.zeros((1, *self.dataset.input_shape), np.float32)
    variables = jax.jit(functools.partial(self.model.init, train=False))(
        init_rng, dummy)
    state = TrainState.create(
        apply_fn=self.model.apply, params=variables["params"], tx=self.tx,
        batch_stats=variables.get("batch_stats", {}),
        rng=jax.random.key_data(state_rng))
    return jax.device_put(state, self.replicated)

  def evaluate(self, state: TrainState) -> dict[str, float]:
    """Loss and accuracy on the whole eval split.

    Args:
      state: the state to evaluate.

    Returns:
      ``{'eval/loss': mean cross-entropy, 'eval/accuracy': fraction
      correct}`` over every example of the eval split.
    """
    sums = None
    for batch in data_lib.eval_batches(
        self.dataset.eval, batch_size=self.config.data.eval_batch_size,
        mean=self.dataset.mean, std=self.dataset.std):
      out = self.eval_step(state, jax.device_put(batch, self.sharded))
      sums = out if sums is None else jax.tree.map(np.add, sums, out)
    sums = jax.device_get(sums)
    return {"eval/loss": float(sums["loss"] / sums["count"]),
            "eval/accuracy": float(sums["correct"] / sums["count"])}

  def report(self, state: TrainState) -> report_lib.CompressionReport:
    """The compression report of the current parameters and masks.

    Args:
      state: the state whose parameters, and the masks in whose optimizer
        state, to count.

    Returns:
      A `CompressionReport`, with convolution FLOPs from the model's output
      shapes.
    """
    variables = _variables(state.params, state.batch_stats)
    shapes = report_lib.layer_output_shapes(
        self.model, variables, (1, *self.dataset.input_shape))
    return report_lib.compression_report(
        jax.device_get(state.params), masking.find_masks(state.opt_state),
        output_shapes=shapes)


def _checkpointable(state: TrainState) -> dict[str, Any]:
  return {"params": state.params, "opt_state": state.opt_state,
          "batch_stats": state.batch_stats, "step": state.step,
          "rng": state.rng, "data_step": state.step}


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, Any]:
  """Trains, evaluates and reports one run; resumes from ``workdir``.

  Args:
    config: an experiment config (see `sparsify.experiment.config.default_config`).
    workdir: where checkpoints, TensorBoard events, ``metrics.jsonl``,
      ``report.json`` and ``results.json`` are written.

  Returns:
    The final results: eval accuracy and loss, steps, timings, and the
    compression report as a dict.

  Raises:
    ConfigError: a field of the config is invalid, ``workdir`` holds a run of
      another model, or its checkpoint cannot be restored.
    MissingDataError: the dataset is not on this machine.

  Example:
    A smoke test, one step of 128 images; the report table and a summary
    line are printed:

    >>> import tempfile
    >>> import sparsify
    >>> config = sparsify.default_config()
    >>> config.model.name = 'mlp'
    >>> config.model.kwargs.hidden = (32,)
    >>> config.train.epochs = 0.02
    >>> with tempfile.TemporaryDirectory() as workdir:
    ...   results = sparsify.train_and_evaluate(config, workdir)
    layer ...
    mlp on embedded_mnist, none: eval accuracy ...
    >>> results['steps'], results['report']['total']['params']
    (1, 25450)
  """
  trainer = Trainer(config, workdir)
  cfg = config.train
  state = trainer.init_state()
  mngr = checkpoint.manager(workdir, keep=cfg.keep_checkpoints)
  try:
    restored = checkpoint.restore_or_init(mngr, _checkpointable(state))
  except config_lib.ConfigError:
    mngr.close()
    raise
  state = state.replace(
      params=restored["params"], opt_state=restored["opt_state"],
      batch_stats=restored["batch_stats"], step=restored["step"],
      rng=restored["rng"])
  state = jax.device_put(state, trainer.replicated)
  start = int(restored["data_step"])
  if start:
    log.info("resumed from step %d in %s", start, workdir)
  else:  # for the weight histograms of `sparsify.plots`
    plots.save_weights(workdir, jax.device_get(state.params), "before")
  writer = metrics_lib.MetricWriter(workdir,
                                    quiet_prefixes=("sparsity/", "scale/"))
  batches = data_lib.prefetch(data_lib.batches(
      trainer.dataset.train, batch_size=config.data.batch_size,
      seed=config.seed, start_step=start, mean=trainer.dataset.mean,
      std=trainer.dataset.std),
      put=lambda b: jax.device_put(b, trainer.sharded))

  loop_start = time.perf_counter()
  # Wall time per step over each logging interval, minus time spent in
  # evaluation; input time is the part spent fetching and placing batches.
  input_time, paused, last_log, last_step = 0.0, 0.0, loop_start, start
  train_metrics = []
  for step in tqdm.trange(start, trainer.total_steps, initial=0,
                          desc="train", unit="step", leave=False,
                          disable=None):
    t = time.perf_counter()
    batch = next(batches)
    input_time += time.perf_counter() - t
    state, metrics = trainer.train_step(state, batch)
    train_metrics.append(metrics)
    done = step + 1
    if done % cfg.log_every == 0 or done == trainer.total_steps:
      jax.block_until_ready(state)
      means = jax.tree.map(lambda *x: float(np.mean(x)),
                           *jax.device_get(train_metrics))
      elapsed = time.perf_counter() - last_log - paused
      n = done - last_step
      scalars = {f"train/{k}": v for k, v in means.items()}
      scalars["time/step_ms"] = 1e3 * elapsed / n
      scalars["time/input_ms"] = 1e3 * input_time / n
      scalars.update(sparsity_per_layer(state.params))
      scalars.update(scales_per_layer(state.params))
      writer.write(done, scalars)
      train_metrics, input_time, paused = [], 0.0, 0.0
      last_log, last_step = time.perf_counter(), done
    epoch_end = done % trainer.steps_per_epoch == 0
    epoch = done // trainer.steps_per_epoch
    if (epoch_end and epoch % cfg.eval_every_epochs == 0
        and done != trainer.total_steps):
      t = time.perf_counter()
      writer.write(done, trainer.evaluate(state))
      paused += time.perf_counter() - t
    if done % cfg.checkpoint_every == 0 or done == trainer.total_steps:
      checkpoint.save(mngr, done, _checkpointable(state))
  batches.close()
  mngr.wait_until_finished()
  train_seconds = time.perf_counter() - loop_start

  final = trainer.evaluate(state)
  writer.write(int(state.step), final)
  writer.close()
  report = trainer.report(state)
  print(report.table())
  total = report.total
  print(f"\n{config.model.name} on {config.data.name}, "
        f"{config.compression.method}: eval accuracy "
        f"{100 * final['eval/accuracy']:.2f} %, {total.nonzeros:,} of "
        f"{total.params:,} weights nonzero ({total.sparsity:.1%} sparse), "
        f"{total.bytes_sparse / 1024:.1f} KiB vs {total.bytes_dense / 1024:.1f}"
        f" KiB dense ({total.compression_ratio:.1f}x smaller)")
  report.to_json(os.path.join(workdir, "report.json"))
  results = {"eval_accuracy": final["eval/accuracy"],
             "eval_loss": final["eval/loss"], "steps": int(state.step),
             "train_seconds": train_seconds,
             "steps_per_epoch": trainer.steps_per_epoch,
             "model": config.model.name, "dataset": config.data.name,
             "method": config.compression.method,
             "report": report.to_dict()}
  if config.post.stages:
    post = stages.run(
        config, trainer.dataset, workdir,
        jax.device_get(_variables(state.params, state.batch_stats)),
        jax.device_get(masking.find_masks(state.opt_state)),
        trainer.validation)
    print("\n" + stages.table(post))
    results["post"] = post
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2, default=str)
  mngr.close()
  plots.save_weights(workdir, jax.device_get(state.params), "after")
  if importlib.util.find_spec("matplotlib"):  # an optional dependency
    plots.plot_run(workdir)
  return results

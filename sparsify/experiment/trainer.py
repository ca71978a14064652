"""The trainer: a Flax model, its optax chain, the jitted steps and the fit loop.

`Trainer` holds what one run needs (data, model, optimizer, mesh, jitted
steps) and offers the pieces every phase of a run is made of: `init_state`,
`fit` (the one training loop: training, and fine-tuning in the
post-training stages), `evaluate` and `report`. `sparsify.experiment.run`
puts them together. The step functions are pure and jitted once; logging,
evaluation and checkpoints live in the caller's callback.

Data parallelism: a one-axis `jax.sharding.Mesh` over all local devices;
batches are sharded along ``'data'``, parameters, optimizer state (masks
included) and BatchNorm statistics are replicated, and one jitted step
computes the global-batch gradient (XLA inserts the all-reduce).
"""

from collections.abc import Callable
import dataclasses
import functools
import logging
import time
from typing import Any

from flax.training import train_state
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import optax
import tqdm

from sparsify import data as data_lib
from sparsify import flops as flops_lib
from sparsify import models
from sparsify import report as report_lib
from sparsify.core import masking
from sparsify.core import paths
from sparsify.core import types
from sparsify.experiment import config as config_lib
from sparsify.experiment import errors
from sparsify.experiment import registry
from sparsify.experiment import stages
from sparsify.experiment import workdir as workdir_lib
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


def variables_of(state: TrainState) -> dict[str, Any]:
  """``{'params': ..., 'batch_stats': ...}`` of a state (no empty stats).

  Args:
    state: a `TrainState`.

  Returns:
    The variables ``state.apply_fn`` takes.
  """
  return _variables(state.params, state.batch_stats)


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
  return state, {"loss": loss, "accuracy": accuracy,
                 FINITE: all_finite((loss, state.params))}


FINITE = "finite"  # the key of the step's finiteness flag in its metrics


def all_finite(tree: Any) -> jax.Array:
  """Whether every element of every floating leaf of ``tree`` is finite.

  One fused reduction inside the jitted step: it reads the parameters once,
  far less than the step's own passes over them.

  Args:
    tree: a pytree of arrays.

  Returns:
    A scalar boolean array.
  """
  flags = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
           if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.stack(flags).all() if flags else jnp.array(True)


RunError = errors.RunError  # where the command line and the tests find it


class NonFiniteError(RunError):
  """Training produced a non-finite loss or parameter; the run stopped.

  Attributes:
    step: the first step (counting steps done) whose loss or parameters
      were not finite.
  """

  def __init__(self, step: int, message: str | None = None):
    super().__init__(message or (
        f"training diverged: the loss or the parameters are not finite "
        f"after step {step}"))
    self.step = step


def eval_step(apply_fn: Callable[..., jax.Array], variables: dict[str, Any],
              batch: dict[str, jax.Array]):
  """Sums of loss and correct predictions over the real examples of a batch.

  Args:
    apply_fn: the model's ``apply``.
    variables: its variables (BatchNorm uses the running statistics).
    batch: ``{'image': (B, H, W, C), 'label': (B,), 'mask': (B,)}`` as
      `data.eval_batches` gives it; ``mask`` is 0 for padding.

  Returns:
    ``{'loss', 'correct', 'count'}``: the summed cross-entropy, the number
    of correct predictions and the number of real examples, each a scalar.
  """
  logits = apply_fn(variables, batch["image"], train=False)
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


def split_validation(dataset: data_lib.Dataset, n: int) -> tuple[
    data_lib.Dataset, data_lib.Split]:
  """The dataset without its last ``n`` training examples, and those.

  Args:
    dataset: the dataset to split.
    n: how many training examples to hold out; at most all but one.

  Returns:
    ``(dataset, held)``: ``dataset`` with the shortened training split (its
    mean and std unchanged), and the held-out examples as a `Split`.
  """
  n = min(n, len(dataset.train.labels) - 1)
  train = data_lib.Split(dataset.train.images[:-n], dataset.train.labels[:-n])
  held = data_lib.Split(dataset.train.images[-n:], dataset.train.labels[-n:])
  return dataclasses.replace(dataset, train=train), held


class Trainer:
  """Holds what one run needs: data, model, optimizer, jitted steps, mesh.

  Building it validates the config and loads the data, so every bad input is
  reported before any training starts. When a post-training stage selects
  by accuracy (`registry.holds_out`), the last
  ``config.post.validation_examples`` training examples are held out of
  training as ``validation``.

  Args:
    config: the experiment config.
    workdir: the run's directory (checked with `workdir_lib.check_workdir`).

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
    for split in ("train", "eval"):
      if not len(getattr(self.dataset, split).labels):
        raise data_lib.MissingDataError(
            f"data.name: the {split} split of {config.data.name!r} "
            f"(source {config.data.source!r}) has no examples; allowed: a "
            "dataset whose splits hold examples")
    self.validation = None
    if registry.holds_out(config.post.stages):  # selection must not see it
      most = len(self.dataset.train.labels) - config.data.batch_size
      if config.post.validation_examples > most:
        raise config_lib.ConfigError(
            "post.validation_examples", config.post.validation_examples,
            f"at most {max(most, 0)}, so that a batch of data.batch_size="
            f"{config.data.batch_size} of the "
            f"{len(self.dataset.train.labels)} training examples is left")
      self.dataset, self.validation = split_validation(
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
    if self.total_steps >= 2 ** 31:  # the optimizer counts steps in int32
      raise config_lib.ConfigError(
          "train.epochs", config.train.epochs,
          f"fewer than {2 ** 31 / self.steps_per_epoch:.0f} epochs of "
          f"{self.steps_per_epoch} steps (fewer than 2**31 steps)")
    try:
      self.model = models.get_model(
          config.model.name, num_classes=self.dataset.num_classes,
          train_arg=config.model.train_arg,
          gate_units=config.model.get("gates", ""),
          **config.model.kwargs.to_dict())
    except (ValueError, TypeError) as e:
      message = str(e)
      if not message.startswith("model."):  # e.g. 'model.name: ...'
        message = "model.kwargs: " + message.removeprefix("model: ")
      raise config_lib.ConfigError(message) from e
    try:
      self.tx = self.make_tx(self.total_steps)
    except ValueError as e:
      raise config_lib.ConfigError(str(e)) from e
    # Gates are inserted at the units the regex matches, found by tracing
    # the model: one that matches none stops the run here, in one line.
    try:
      shapes = jax.eval_shape(
          functools.partial(self.model.init, train=False), jax.random.key(0),
          jax.ShapeDtypeStruct((1, *self.dataset.input_shape), np.float32))
    except ValueError as e:
      if not str(e).startswith("model.gates:"):
        raise
      raise config_lib.ConfigError(str(e)) from e
    self._check_selections(shapes["params"])
    stages.check_config(config, tuple(self.dataset.input_shape))
    workdir_lib.claim(config, workdir)
    self.train_step = jax.jit(
        train_step, in_shardings=(self.replicated, self.sharded),
        out_shardings=(self.replicated, self.replicated), donate_argnums=0)

  def _check_selections(self, params: Any) -> None:
    """Every ``where`` of the config must select some of ``params``."""
    config = self.config
    for i, entry in enumerate(config.compression):
      field = f"compression[{i}]"
      _, tx = registry.build_method(entry, self.total_steps, field=field)
      try:
        jax.eval_shape(tx.init, params)
      except ValueError as e:
        if not str(e).startswith("where:"):
          raise config_lib.ConfigError(f"{field}: {e}") from e
        raise config_lib.ConfigError(f"{field}.kwargs.{e}") from e
    try:
      jax.eval_shape(self.tx.init, params)
    except ValueError as e:
      raise config_lib.ConfigError(
          f"optimizer: {e}" if str(e).startswith("where:") else str(e)) from e
    for stage in ("pq", "share"):
      where = config.post[stage].where
      if stage in registry.stage_names(config.post.stages) and where:
        try:
          paths.select(params, where, paths.dense_kernel)
        except ValueError as e:
          raise config_lib.ConfigError(f"post.{stage}.{e}") from e

  def make_tx(self, steps: int, *, learning_rate: float | None = None,
              optimizer: str | None = None,
              masks: types.Masks | None = None,
              extra: optax.GradientTransformation | None = None,
              compression: bool = True) -> optax.GradientTransformation:
    """The config's optax chain for ``steps`` steps.

    Training uses it as the config says; fine-tuning overrides the learning
    rate (then with a cosine schedule over ``steps``, no warm-up) and the
    optimizer, keeps fixed ``masks`` and appends ``extra``.

    Args:
      steps: the number of steps the schedules span.
      learning_rate: overrides ``optimizer.learning_rate`` (and switches to
        a cosine schedule without warm-up).
      optimizer: overrides ``optimizer.name``.
      masks: keep-masks; masked-out weights get no updates.
      extra: a transform appended after the masks (e.g. a ternary
        constraint).
      compression: whether to compose the config's ``compression`` list.

    Returns:
      An `optax.GradientTransformation`.

    Raises:
      ValueError: an argument the optimizer or a method refuses.
    """
    opt = self.config.optimizer.to_dict()
    if optimizer:
      opt["name"] = optimizer
      if optimizer != self.config.optimizer.name:
        opt["kwargs"] = {}
    fine = learning_rate is not None
    tx = registry.make_optimizer(
        opt, steps, learning_rate=learning_rate,
        schedule="cosine" if fine else None, warmup_steps=0 if fine else None)
    if compression:
      tx = registry.make_chain(self.config.compression, tx, steps)
    parts = [tx]
    if masks is not None:
      parts.append(masking.mask_updates(lambda _: masks,
                                        where=lambda name, leaf: True))
    if extra is not None:
      parts.append(extra)
    return parts[0] if len(parts) == 1 else optax.chain(*parts)

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
    return self.state_for(self.model, variables, self.tx, state_rng)

  def state_for(self, module: Any, variables: dict[str, Any],
                tx: optax.GradientTransformation,
                rng: jax.Array | None = None) -> TrainState:
    """A `TrainState` of ``module`` at ``variables``, replicated on the mesh.

    Args:
      module: a Flax module (the run's model, or a slimmed one).
      variables: ``{'params': ..., 'batch_stats': ...}``.
      tx: the optimizer chain.
      rng: a `jax.random.key`; by default the one of ``config.seed``.

    Returns:
      The state at step 0.
    """
    rng = jax.random.key(self.config.seed) if rng is None else rng
    state = TrainState.create(
        apply_fn=module.apply,
        params=jax.tree.map(jax.numpy.asarray, variables["params"]), tx=tx,
        batch_stats=variables.get("batch_stats", {}),
        rng=jax.random.key_data(rng))
    return jax.device_put(state, self.replicated)

  def fit(self, state: TrainState, steps: int, *, start: int = 0,
          seed: int | None = None,
          callback: Callable[[int, TrainState, Any, float], None]
          | None = None, desc: str = "train") -> TrainState:
    """The training loop: steps ``start`` to ``steps`` of ``train_step``.

    Batches are drawn by `data.batches` from ``seed`` (``config.seed`` by
    default) at the position ``start``, prefetched and placed on the mesh.

    Each step's finiteness flag (`all_finite` of its loss and parameters,
    computed inside the jitted step) is read every ``train.log_every`` and
    ``train.checkpoint_every`` steps and at the end, where the loop waits
    for the device anyway; the callback of a step is called only after the
    flags up to it were found finite, so it never logs or saves a
    non-finite state at those steps.

    Args:
      state: the state to train.
      steps: the step to stop at.
      start: the step the state is at (batches resume there).
      seed: the seed of the batch order.
      callback: called after every step as ``callback(step, state, metrics,
        input_seconds)`` (``step`` counts the steps done, ``input_seconds``
        the time spent fetching and placing that batch).
      desc: the progress bar's label.

    Returns:
      The state after the last step.

    Raises:
      NonFiniteError: the loss or the parameters of a step were not finite
        (the error names the first such step).
    """
    cfg, ds = self.config, self.dataset
    every = (cfg.train.log_every, cfg.train.checkpoint_every)
    flags = []
    batches = data_lib.prefetch(data_lib.batches(
        ds.train, batch_size=cfg.data.batch_size,
        seed=cfg.seed if seed is None else seed, start_step=start,
        mean=ds.mean, std=ds.std),
        put=lambda b: jax.device_put(b, self.sharded))
    try:
      for step in tqdm.trange(start, steps, desc=desc, unit="step",
                              leave=False, disable=None):
        t = time.perf_counter()
        batch = next(batches)
        waited = time.perf_counter() - t
        state, metrics = self.train_step(state, batch)
        metrics = dict(metrics)
        flags.append(metrics.pop(FINITE))
        done = step + 1
        if done == steps or any(done % n == 0 for n in every):
          finite = np.asarray(jax.device_get(flags))
          if not finite.all():
            raise NonFiniteError(done - len(flags) + 1 + int(np.argmin(finite)))
          flags = []
        if callback is not None:
          callback(done, state, metrics, waited)
    finally:
      batches.close()
    return state

  @functools.lru_cache(maxsize=16)
  def _eval_step(self, apply_fn):
    return jax.jit(functools.partial(eval_step, apply_fn),
                   in_shardings=(self.replicated, self.sharded),
                   out_shardings=self.replicated)

  def evaluate(self, state: Any, split: data_lib.Split | None = None,
               variables: dict[str, Any] | None = None) -> dict[str, float]:
    """Loss and accuracy of a state (or of other variables) on a split.

    Args:
      state: a `TrainState`, or anything with an ``apply_fn`` (a stage's
        model gives its module's ``apply``).
      split: the examples; the dataset's eval split by default.
      variables: variables to evaluate instead of the state's own.

    Returns:
      ``{'eval/loss': mean cross-entropy, 'eval/accuracy': fraction
      correct}`` over every example of the split.
    """
    if variables is None:
      variables = _variables(state.params, state.batch_stats)
    step = self._eval_step(state.apply_fn)
    split = self.dataset.eval if split is None else split
    sums = None
    # No bigger than the split (rounded up to the devices): a batch size
    # beyond it would only pad.
    devices = jax.device_count()
    batch_size = min(self.config.data.eval_batch_size,
                     -(-len(split.labels) // devices) * devices)
    for batch in data_lib.eval_batches(
        split, batch_size=batch_size,
        mean=self.dataset.mean, std=self.dataset.std):
      out = step(variables, jax.device_put(batch, self.sharded))
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
      A `CompressionReport`, with each parameter's exact FLOPs read from
      the model's computation (`sparsify.flops.param_flops`).
    """
    variables = _variables(state.params, state.batch_stats)
    x = np.zeros((1, *self.dataset.input_shape), np.float32)
    flops = flops_lib.param_flops(state.apply_fn, variables, x, train=False)
    return report_lib.compression_report(
        jax.device_get(state.params), masking.find_masks(state.opt_state),
        flops=flops)

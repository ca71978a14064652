"""The default experiment configuration and its validation.

Every config file under ``configs/`` starts from `default_config()` and
changes what it needs, so all configs share one schema:

* ``model``: ``name`` plus the model's keyword arguments (``model.kwargs``).
* ``data``: dataset ``name``, ``source``, ``data_dir``, batch sizes.
* ``optimizer``: the optax optimizer and its learning-rate schedule.
* ``compression``: the compression ``method`` appended to the optimizer chain,
  with its hyper-parameters.
* ``train``: epochs, logging, evaluation and checkpoint intervals.

`validate` checks names and ranges before anything is loaded or trained and
raises `ConfigError`, whose message is one line naming the field, the bad
value and what is allowed.
"""

from collections.abc import Iterable
from typing import Any

import ml_collections


class ConfigError(ValueError):
  """A config field holds a value that is not allowed."""

  def __init__(self, field: str, value: Any = None, allowed: str | None = None):
    # With one argument (as when re-raised by a library), it is the message.
    message = field if allowed is None else (
        f"{field}: got {value!r}; allowed: {allowed}")
    super().__init__(message)
    self.field = field
    self.value = value
    self.allowed = allowed


def default_config() -> ml_collections.ConfigDict:
  """Returns the full configuration with its defaults (dense LeNet-300-100).

  The defaults train LeNet-300-100 on the bundled MNIST subset for 10 epochs
  with SGD with momentum and a cosine schedule, without compression. Config
  files and command-line flags override single fields.

  Returns:
    A new `ml_collections.ConfigDict` with the sections ``model``, ``data``,
    ``optimizer``, ``compression``, ``post`` and ``train`` (see the module
    docstring), and ``seed``.

  Example:
    >>> import sparsify
    >>> config = sparsify.default_config()
    >>> config.model.name, config.data.name, config.compression.method
    ('lenet_300_100', 'embedded_mnist', 'none')
    >>> config.compression.method = 'gmp'
    >>> config.compression.sparsity = 0.9
  """
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = "lenet_300_100"
  c.model.kwargs = ml_collections.ConfigDict()

  c.data = ml_collections.ConfigDict()
  c.data.name = "embedded_mnist"
  c.data.source = "auto"
  c.data.data_dir = ml_collections.config_dict.placeholder(str)
  c.data.batch_size = 128
  c.data.eval_batch_size = 1000

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "momentum"
  c.optimizer.learning_rate = 0.05
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 0

  c.compression = ml_collections.ConfigDict()
  c.compression.method = "none"
  c.compression.sparsity = 0.0
  c.compression.begin = 0.0  # fraction of training where pruning starts
  c.compression.end = 0.75  # fraction of training where pruning ends
  c.compression.update_every = 100
  c.compression.allocation = "layerwise"
  c.compression.where = ml_collections.config_dict.placeholder(str)
  # DAT: threshold = ramp(step) * (mean + c * std) of surviving magnitudes;
  # `sparsity` > 0 is its target, used as `target_mode` says.
  c.compression.c = 1.0
  c.compression.power = 3.0
  c.compression.target_mode = "clamp"
  c.compression.recovery = False
  c.compression.statistics = "surviving"
  # SSS (method 'sss'): L1 strength on the scaling factors, solved by APG.
  c.compression.gamma = 0.0
  # A penalty whose gradient is added before the optimizer: none, binary,
  # kcentre, l1, group_lasso, slimming (L1 on BatchNorm scales).
  c.compression.regularizer = "none"
  c.compression.strength = 0.0
  c.compression.centres = 2  # kcentre
  c.compression.refresh_every = 100  # kcentre: k-means of the centres

  # After training (`sparsify.pipeline`): comma-separated stages out of
  # slim, search, finetune, pq, share, lct; each has its own fields below.
  c.post = ml_collections.ConfigDict()
  c.post.stages = ""
  # Selection stages (search, lct) evaluate on the last training examples,
  # which the run then holds out of training.
  c.post.validation_examples = 5000
  c.post.slim = ml_collections.ConfigDict(
      {"threshold": 0.0, "fraction": 0.0, "multiple": 1, "relative": False})
  c.post.search = ml_collections.ConfigDict(
      {"tolerance": 0.005, "norm": "l1", "order": "forward",
       "relative": False, "finetune_steps": 0})
  c.post.finetune = ml_collections.ConfigDict(
      {"epochs": 1.0, "learning_rate": 0.01})
  c.post.pq = ml_collections.ConfigDict(
      {"dim": 4, "centroids": 16,
       "where": ml_collections.config_dict.placeholder(str)})
  c.post.share = ml_collections.ConfigDict(
      {"bits": 5, "where": ml_collections.config_dict.placeholder(str)})
  c.post.lct = ml_collections.ConfigDict(
      {"sparsity": 0.9, "by": "sparsity", "sigma": "mean",
       "sigma_learning_rate": 1e-4, "steps": 300,
       "prune_steps": 500, "learning_rate": 0.01, "budget": 0.01})

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 10.0  # may be fractional
  c.train.log_every = 100
  c.train.eval_every_epochs = 1
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 2
  return c


# What a config string like ``configs/lenet5.py:dat`` selects: the method and
# the schedule shared by the gradual methods (10 % -> 70 % of training, masks
# recomputed every 100 steps). Sparsity defaults to 95 %; override it with
# ``--config.compression.sparsity``.
METHOD_PRESETS = {
    "dense": dict(method="none", sparsity=0.0),
    "gmp": dict(method="gmp", sparsity=0.95, begin=0.1, end=0.7,
                update_every=100),
    "magnitude": dict(method="magnitude", sparsity=0.95, begin=0.5),
    "random": dict(method="random", sparsity=0.95),
    # DAT shares the budget across layers by their statistics (c = 3 weighs
    # the spread of each layer's magnitudes): see `dynamic_adaptive_threshold`.
    "dat": dict(method="dat", sparsity=0.95, begin=0.1, end=0.7,
                update_every=100, c=3.0, target_mode="global"),
    "sss": dict(method="sss", gamma=0.01),
    "slimming": dict(method="none", regularizer="slimming", strength=1e-4),
    "search": dict(method="none"),
    "pq": dict(method="none"),
    "dat_pq": dict(method="dat", sparsity=0.9, begin=0.1, end=0.7,
                   update_every=100, c=3.0, target_mode="global"),
    "lct": dict(method="none"),
    # Deep Compression's recipe with DAT: prune while training, then share
    # the surviving weights' values (5 bits) with relative sparse indices.
    "deep_compression": dict(method="dat", sparsity=0.95, begin=0.1, end=0.7,
                             update_every=100, c=3.0, target_mode="global"),
}

# What else a preset sets: the stages after training (`sparsify.pipeline`).
# SSS also switches on the model's gates (see `with_method`).
PRESET_STAGES = {
    "sss": "slim,finetune",
    "slimming": "slim,finetune",
    "search": "search,finetune",
    "pq": "pq",
    "dat_pq": "pq",
    "lct": "lct",
    "deep_compression": "share",
}
_GATE_SWITCHES = ("gates", "channel_gates")


def with_method(config: ml_collections.ConfigDict,
                preset: str | None) -> ml_collections.ConfigDict:
  """Sets ``config.compression`` from a preset name (``None``: dense).

  Args:
    config: a config from `default_config`, changed in place.
    preset: one of `METHOD_PRESETS` (the part after ``:`` in
      ``--config configs/NAME.py:PRESET``).

  Returns:
    ``config``.

  Raises:
    ConfigError: ``preset`` is not one of `METHOD_PRESETS`.
  """
  preset = preset or "dense"
  if preset not in METHOD_PRESETS:
    raise ConfigError("config preset (after ':' in --config)", preset,
                      ", ".join(sorted(METHOD_PRESETS)))
  config.compression.update(METHOD_PRESETS[preset])
  config.post.stages = PRESET_STAGES.get(preset, "")
  if preset == "sss":
    # With a decaying learning rate, gates still on their way to zero stop
    # at tiny values: below 1e-4 they count as zero.
    config.post.slim.threshold = 1e-4
    for switch in _GATE_SWITCHES:
      if switch in config.model.kwargs:
        config.model.kwargs[switch] = True
  if preset == "slimming":
    config.post.slim.fraction = 0.5
  return config


def _one_of(field: str, value: Any, allowed: Iterable[str]) -> None:
  allowed = sorted(allowed)
  if value not in allowed:
    raise ConfigError(field, value, ", ".join(allowed))


def _in_range(field: str, value: Any, low: float, high: float | None = None,
              *, low_open: bool = False, high_open: bool = True,
              integer: bool = False) -> None:
  """Checks ``low <= value < high`` (ends as given); ``None`` is unbounded."""
  ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  if ok and integer:
    ok = float(value).is_integer()
  if ok:
    ok = (value > low) if low_open else (value >= low)
  if ok and high is not None:
    ok = (value < high) if high_open else (value <= high)
  if not ok:
    kind = "an integer" if integer else "a number"
    lo = f"{'>' if low_open else '>='} {low}"
    hi = "" if high is None else f" and {'<' if high_open else '<='} {high}"
    raise ConfigError(field, value, f"{kind} {lo}{hi}")


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks names and numeric ranges of ``config``; raises `ConfigError`.

  Args:
    config: a config built from `default_config`.

  Raises:
    ConfigError: the first field whose value is unknown or out of range; the
      message names the field, the value and what is allowed.

  Example:
    >>> import sparsify
    >>> from sparsify.experiment import config as config_lib
    >>> config = sparsify.default_config()
    >>> config.data.batch_size = 0
    >>> try:
    ...   config_lib.validate(config)
    ... except sparsify.ConfigError as e:
    ...   print(e)
    data.batch_size: got 0; allowed: an integer >= 1
  """
  # Imported here: the registries import this module's ConfigError.
  from sparsify import data  # pylint: disable=g-import-not-at-top
  from sparsify import models  # pylint: disable=g-import-not-at-top
  from sparsify.experiment import optim  # pylint: disable=g-import-not-at-top
  from sparsify.experiment import registry  # pylint: disable=g-import-not-at-top

  _one_of("model.name", config.model.name, models.MODELS)
  _one_of("data.name", config.data.name, data.DATASETS)
  _one_of("data.source", config.data.source, data.SOURCES)
  _in_range("data.batch_size", config.data.batch_size, 1, integer=True)
  _in_range("data.eval_batch_size", config.data.eval_batch_size, 1,
            integer=True)

  opt = config.optimizer
  _one_of("optimizer.name", opt.name, optim.OPTIMIZERS)
  _one_of("optimizer.schedule", opt.schedule, optim.SCHEDULES)
  _in_range("optimizer.learning_rate", opt.learning_rate, 0, low_open=True)
  _in_range("optimizer.momentum", opt.momentum, 0, 1)
  _in_range("optimizer.weight_decay", opt.weight_decay, 0)
  _in_range("optimizer.warmup_steps", opt.warmup_steps, 0, integer=True)

  comp = config.compression
  _one_of("compression.method", comp.method, registry.METHODS)
  _in_range("compression.sparsity", comp.sparsity, 0, 1)
  _in_range("compression.begin", comp.begin, 0, 1, high_open=False)
  _in_range("compression.end", comp.end, comp.begin, 1, high_open=False)
  _in_range("compression.update_every", comp.update_every, 1, integer=True)
  _one_of("compression.allocation", comp.allocation,
          ("erk", "global", "layerwise"))
  _in_range("compression.c", comp.c, 0)
  _in_range("compression.power", comp.power, 0, low_open=True)
  _one_of("compression.target_mode", comp.target_mode,
          ("clamp", "global", "solve"))
  _one_of("compression.statistics", comp.statistics, ("all", "surviving"))
  _in_range("compression.gamma", comp.gamma, 0)
  _one_of("compression.regularizer", comp.regularizer, registry.REGULARIZERS)
  _in_range("compression.strength", comp.strength, 0)
  _in_range("compression.centres", comp.centres, 1, integer=True)
  _in_range("compression.refresh_every", comp.refresh_every, 1, integer=True)

  post = config.post
  from sparsify.experiment import stages  # pylint: disable=g-import-not-at-top
  try:
    stages.stage_names(config)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  _in_range("post.validation_examples", post.validation_examples, 1,
            integer=True)
  _in_range("post.slim.threshold", post.slim.threshold, 0)
  _in_range("post.slim.fraction", post.slim.fraction, 0, 1)
  _in_range("post.slim.multiple", post.slim.multiple, 1, integer=True)
  _in_range("post.search.tolerance", post.search.tolerance, 0)
  _one_of("post.search.norm", post.search.norm, ("l1", "l2"))
  _one_of("post.search.order", post.search.order,
          ("backward", "forward", "size"))
  _in_range("post.search.finetune_steps", post.search.finetune_steps, 0,
            integer=True)
  _in_range("post.finetune.epochs", post.finetune.epochs, 0)
  _in_range("post.finetune.learning_rate", post.finetune.learning_rate, 0,
            low_open=True)
  _in_range("post.pq.dim", post.pq.dim, 1, integer=True)
  _in_range("post.pq.centroids", post.pq.centroids, 1, integer=True)
  _in_range("post.share.bits", post.share.bits, 1, 16, high_open=False,
            integer=True)
  _in_range("post.lct.sparsity", post.lct.sparsity, 0, 1)
  _one_of("post.lct.by", post.lct.by, ("size", "sparsity"))
  _one_of("post.lct.sigma", post.lct.sigma, ("learned", "mean"))
  for name in ("steps", "prune_steps"):
    _in_range(f"post.lct.{name}", post.lct[name], 0, integer=True)
  _in_range("post.lct.learning_rate", post.lct.learning_rate, 0,
            low_open=True)
  _in_range("post.lct.budget", post.lct.budget, 0, 1, high_open=False)
  _in_range("post.lct.sigma_learning_rate", post.lct.sigma_learning_rate, 0)

  tr = config.train
  _in_range("train.epochs", tr.epochs, 0, low_open=True)
  for name in ("log_every", "eval_every_epochs", "checkpoint_every",
               "keep_checkpoints"):
    _in_range(f"train.{name}", tr[name], 1, integer=True)
  _in_range("seed", config.seed, 0, integer=True)

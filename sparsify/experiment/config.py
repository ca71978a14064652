"""The default experiment configuration and its validation.

Every config file under ``configs/`` starts from `default_config()` and
changes what it needs, so all configs share one schema:

* ``model``: ``name`` (a built-in model, or ``module.path:Attribute`` of
  one defined elsewhere), the model's keyword arguments (``model.kwargs``),
  ``train_arg``, the keyword by which it switches to training, and
  ``gates``, a regex over unit names where gates are inserted.
* ``data``: dataset ``name``, ``source``, ``data_dir``, batch sizes.
* ``optimizer``: the optax optimizer and its learning-rate schedule.
* ``compression``: a list of methods, each ``method(name, begin=, end=,
  **kwargs)``: a name of `sparsify.experiment.registry.METHODS`, the
  fractions of training its schedule spans, and the keyword arguments handed
  to its factory. They compose into the optax chain in order.
* ``train``: epochs, logging, evaluation and checkpoint intervals.

`validate` checks names and ranges before anything is loaded or trained and
raises `ConfigError`, whose message is one line naming the field, the bad
value and what is allowed.
"""

from collections.abc import Iterable
from collections.abc import Iterator
import inspect
import math
import numbers
import re
from typing import Any

import ml_collections

from sparsify import data
from sparsify import models
from sparsify.experiment import errors
from sparsify.experiment import optim
from sparsify.experiment import registry
from sparsify.structure import significance

# Where they have always been imported from.
ConfigError = errors.ConfigError
one_line = errors.one_line

# Steps of the nominal run that validation builds every factory for, before
# the data (and so the run's length) is known.
_NOMINAL_STEPS = 1000

# JAX counts steps (and holds Python integers) in int32: every integer field
# lies in [-2**31, 2**31), and a run has fewer than 2**31 steps.
INT_LIMIT = 2**31
# `jax.random.key` reads 32 bits of a seed (without x64): larger seeds give
# the same key as smaller ones, negative ones wrap around.
SEED_LIMIT = 2**32
# The training examples of each dataset's standard split: with the batch
# size they bound a run's steps before its data is loaded.
TRAIN_EXAMPLES = {"embedded_mnist": 8000, "mnist": 60000,
                  "fashion_mnist": 60000, "cifar10": 50000}
# Fields whose text is a regular expression: every ``where`` (a method's,
# the optimizer's, a stage's) is searched in parameter paths. ``model.gates``
# is checked by `models.check_gates`.
REGEX_KEYS = ("where",)


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
    >>> from sparsify.experiment.config import method
    >>> config = sparsify.default_config()
    >>> config.model.name, config.data.name, config.compression
    ('lenet_300_100', 'embedded_mnist', [])
    >>> config.compression = [method('gmp', begin=0.1, end=0.7, sparsity=0.9)]
    >>> config.compression[0].kwargs.sparsity
    0.9
  """
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = "lenet_300_100"
  c.model.kwargs = ml_collections.ConfigDict()
  # The keyword of the model's __call__ that switches training mode:
  # 'train', 'training', 'deterministic' or 'use_running_average' (these two
  # negated), or '' for a model that takes none (`models.get_model`).
  c.model.train_arg = "train"
  # A regex over the model's unit names (as `sparsify.structure_of` names
  # them; '.*' for every unit) at whose outputs gates are inserted into its
  # params (`models.get_model`); '' for none. The sss preset sets '.*' for a
  # model without gates of its own.
  c.model.gates = ""

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
  # Further arguments of the optimizer, e.g. `strength` for 'sss'.
  c.optimizer.kwargs = ml_collections.ConfigDict()

  # Compression: a list of entries `method(name, begin=, end=, **kwargs)`,
  # composed into the optax chain in order: penalties before the optimizer,
  # masks after it (see `sparsify.experiment.registry.METHODS`).
  c.compression = []

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
  # Fine-tuning uses the training optimizer, or the one named here.
  c.post.finetune = ml_collections.ConfigDict(
      {"epochs": 1.0, "learning_rate": 0.01,
       "optimizer": ml_collections.config_dict.placeholder(str)})
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
  # Also at the first logging step after this many seconds since the last
  # checkpoint, so that a short run is protected as well.
  c.train.checkpoint_seconds = 120.0
  c.train.keep_checkpoints = 2
  c.train.plots = True  # the run's PNGs at the end (needs matplotlib)
  return c


def _placeholder(annotation: Any) -> Any:
  """An unset field that the command line can set, typed from a signature."""
  text = str(annotation)
  for kind in (float, int, str):
    if kind.__name__ in text or (kind is str and "Where" in text):
      return ml_collections.config_dict.placeholder(kind)
  return None


def method(name: str, *, begin: float | None = None, end: float | None = None,
           **kwargs: Any) -> ml_collections.ConfigDict:
  """One entry of ``config.compression``: a method by name and its arguments.

  The entry holds every keyword argument of the method's factory, the given
  ones set and the others at their defaults (unset optional ones as typed
  placeholders), so that any of them can be changed from the command line,
  e.g. ``--config.compression[0].kwargs.sparsity=0.9``. ``begin`` and
  ``end`` are fractions of training, turned into the factory's step
  arguments when the run knows its length (`registry.build_method`).

  Args:
    name: one of `sparsify.experiment.registry.METHODS`.
    begin: the fraction of training where the method's schedule starts
      (default 0 for methods with a schedule).
    end: where it ends (default 0.75 for methods with an end).
    **kwargs: arguments of the method's factory.

  Returns:
    A `ml_collections.ConfigDict` ``{name, begin, end, kwargs}``.

  Raises:
    ConfigError: ``name`` is not a method, or a keyword is not one of its
      factory's arguments.

  Example:
    >>> from sparsify.experiment.config import method
    >>> entry = method('gmp', begin=0.1, end=0.7, sparsity=0.95)
    >>> entry.name, entry.begin, entry.end, entry.kwargs.sparsity
    ('gmp', 0.1, 0.7, 0.95)
    >>> entry.kwargs.update_every  # the factory's default
    100
  """
  if name not in registry.METHODS:
    raise ConfigError("compression: method name", name,
                      ", ".join(sorted(registry.METHODS)))
  window = registry.METHODS[name].window
  params = inspect.signature(registry.METHODS[name].factory).parameters
  unknown = sorted(set(kwargs) - set(params) - set(window))
  if unknown:
    raise ConfigError(f"compression: {name} argument(s)", unknown,
                      ", ".join(sorted(set(params) - set(window))))
  fields = {}
  for arg, p in params.items():
    if arg in window or p.kind not in (p.KEYWORD_ONLY,
                                       p.POSITIONAL_OR_KEYWORD):
      continue
    if arg in kwargs:
      value = kwargs[arg]
      if value is None:
        value = _placeholder(p.annotation)
    elif p.default is None or p.default is p.empty:  # settable, unset
      value = _placeholder(p.annotation)
    elif callable(p.default):
      continue
    else:
      value = p.default
    if value is not None:
      fields[arg] = value
  entry = ml_collections.ConfigDict({"name": name})
  entry.begin = (0.0 if begin is None else float(begin)) if window[0] else (
      ml_collections.config_dict.placeholder(float))
  entry.end = (0.75 if end is None else float(end)) if window[1] else (
      ml_collections.config_dict.placeholder(float))
  entry.kwargs = ml_collections.ConfigDict(fields)
  return entry


# What a config string like ``configs/lenet5.py:dat`` selects. The gradual
# methods share one schedule (10 % -> 70 % of training, masks recomputed
# every 100 steps) and 95 % sparsity; change any argument from the command
# line, e.g. ``--config.compression[0].kwargs.sparsity=0.9``. Each preset is
# a function of the config, applied in place by `with_method`.
def _compress(*entries):
  def apply(config):
    config.compression = [method(**e) for e in entries]
  return apply


def _stages(stages, then=None):
  def apply(config):
    config.post.stages = stages
    if then is not None:
      then(config)
  return apply


def _sss(config):
  # SSS is an optimizer: Nesterov SGD on the weights, APG on the gates (or
  # BatchNorm scales). With a decaying learning rate, gates still on their
  # way to zero stop at tiny values: below 1e-4 they count as zero.
  if config.optimizer.name != "sss":  # fine-tuning keeps the plain one
    config.post.finetune.optimizer = config.optimizer.name
  config.optimizer.name = "sss"
  config.optimizer.kwargs = ml_collections.ConfigDict({"strength": 0.01})
  config.post.stages = "slim,finetune"
  config.post.slim.threshold = 1e-4
  switches = [s for s in ("gates", "channel_gates")
              if s in config.model.kwargs]
  for switch in switches:
    config.model.kwargs[switch] = True
  if not switches and not config.model.gates:
    # A model with no gates of its own: gates inserted at its units.
    config.model.gates = ".*"


def _slimming(config):
  _compress(dict(name="slimming", strength=1e-4))(config)
  config.post.stages = "slim,finetune"
  config.post.slim.fraction = 0.5


_GMP = dict(name="gmp", begin=0.1, end=0.7, sparsity=0.95, update_every=100)
# DAT shares the budget across layers by their statistics (c = 3 weighs the
# spread of each layer's magnitudes): see `dynamic_adaptive_threshold`.
_DAT = dict(name="dat", begin=0.1, end=0.7, target_sparsity=0.95,
            update_every=100, c=3.0, target_mode="global")

METHOD_PRESETS = {
    "dense": lambda config: None,
    "gmp": _compress(_GMP),
    "magnitude": _compress(dict(name="magnitude", begin=0.5, sparsity=0.95)),
    "random": _compress(dict(name="random", sparsity=0.95)),
    "random_erk": _compress(dict(name="random", sparsity=0.95,
                                 allocation="erk")),
    # GMP's schedule with a pattern: 2:4 (2 of every 4 consecutive inputs,
    # the sparse tensor cores' format) ends at 50 %; 4x4 blocks at 95 %.
    "gmp_2_4": _compress({**_GMP, "sparsity": 0.5, "pattern": "2:4"}),
    "gmp_blocks": _compress({**_GMP, "pattern": (4, 4)}),
    # Straight-through: masks from the dense weights, which keep training,
    # recomputed at every step (with rarer updates the dense copies of
    # pruned weights drift under gradients they do not feel, and the loss
    # jumps at each update).
    "magnitude_ste": _compress(dict(name="magnitude_ste", begin=0.1,
                                    sparsity=0.95, update_every=1)),
    "random_ste": _compress(dict(name="random_ste", begin=0.1,
                                 sparsity=0.95, update_every=1)),
    # Dynamic sparse training at constant sparsity (ERK, as in RigL's
    # paper), connections exchanged until 75 % of training.
    "set": _compress(dict(name="set", end=0.75, sparsity=0.95,
                          update_every=100, allocation="erk")),
    "rigl": _compress(dict(name="rigl", end=0.75, sparsity=0.95,
                           update_every=100, allocation="erk")),
    # Saliency |g w|: once at initialisation (SNIP, one batch), or as GMP's
    # score under its schedule.
    "snip": _compress(dict(name="snip", sparsity=0.95)),
    "saliency": _compress({**_GMP, "name": "saliency"}),
    # One threshold over all layers (jaxpruner's global variants).
    "gmp_global": _compress({**_GMP, "allocation": "global"}),
    "saliency_global": _compress({**_GMP, "name": "saliency",
                                  "allocation": "global"}),
    "dat": _compress(_DAT),
    "sss": _sss,
    "slimming": _slimming,
    "search": _stages("search,finetune"),
    "pq": _stages("pq"),
    "dat_pq": _stages("pq", _compress({**_DAT, "target_sparsity": 0.9})),
    "lct": _stages("lct"),
    # Deep Compression's recipe with DAT: prune while training, then share
    # the surviving weights' values (5 bits) with relative sparse indices.
    "deep_compression": _stages("share", _compress(_DAT)),
}


def with_method(config: ml_collections.ConfigDict,
                preset: str | None) -> ml_collections.ConfigDict:
  """Applies a preset (``None``: dense): compression, optimizer, stages.

  Args:
    config: a config from `default_config`, changed in place.
    preset: one of `METHOD_PRESETS` (the part after ``:`` in
      ``--config configs/NAME.py:PRESET``).

  Returns:
    ``config``.

  Raises:
    ConfigError: ``preset`` is not one of `METHOD_PRESETS`.

  Example:
    >>> import sparsify
    >>> from sparsify.experiment.config import with_method
    >>> config = with_method(sparsify.default_config(), 'gmp')
    >>> [(e.name, e.begin, e.end, e.kwargs.sparsity)
    ...  for e in config.compression]
    [('gmp', 0.1, 0.7, 0.95)]
  """
  preset = preset or "dense"
  if preset not in METHOD_PRESETS:
    raise ConfigError("config preset (after ':' in --config)", preset,
                      ", ".join(sorted(METHOD_PRESETS)))
  METHOD_PRESETS[preset](config)
  return config


def describe(config: ml_collections.ConfigDict) -> str:
  """A short name of a run's method: its entries' names joined with ``+``.

  Args:
    config: an experiment config.

  Returns:
    E.g. ``'gmp'``, ``'dat+binary'``, ``'sss'`` (the optimizer) or
    ``'none'``.
  """
  names = [e.name for e in config.compression]
  if config.optimizer.name == "sss":
    names.insert(0, "sss")
  return "+".join(names) or "none"


def _one_of(field: str, value: Any, allowed: Iterable[str]) -> None:
  allowed = sorted(allowed)
  if value not in allowed:
    raise ConfigError(field, value, ", ".join(allowed))


def _in_range(field: str, value: Any, low: float, high: float | None = None,
              *, low_open: bool = False, high_open: bool = True,
              integer: bool = False) -> None:
  """Checks ``low <= value < high`` (ends as given); ``None`` is unbounded.

  An integer field is also below `INT_LIMIT` (said only when it is not).
  """
  ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  if ok and integer:
    ok = math.isfinite(value) and float(value).is_integer()
  if ok:
    ok = (value > low) if low_open else (value >= low)
  if ok and high is not None:
    ok = (value < high) if high_open else (value <= high)
  kind = "an integer" if integer else "a number"
  lo = f"{'>' if low_open else '>='} {low}"
  if not ok:
    hi = "" if high is None else f" and {'<' if high_open else '<='} {high}"
    raise ConfigError(field, value, f"{kind} {lo}{hi}")
  if integer and high is None and value >= INT_LIMIT:
    raise ConfigError(field, value, f"{kind} {lo} and < 2**31")


def _number(value: Any) -> bool:
  """Whether ``value`` is a real number (a bool is not)."""
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _leaves(node: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
  """``(path, key, value)`` of every leaf: groups, lists and tuples walked.

  Paths read as on the command line: ``compression[0].kwargs.c``,
  ``model.kwargs.hidden[1]``; ``key`` is the last name (a list index is not
  a name: the leaf keeps its list's name).
  """
  key = path.rpartition(".")[2].split("[")[0]
  if isinstance(node, (ml_collections.ConfigDict, dict)):
    for name, value in node.items():
      yield from _leaves(value, f"{path}.{name}" if path else str(name))
  elif isinstance(node, (list, tuple)):
    for i, value in enumerate(node):
      yield from _leaves(value, f"{path}[{i}]")
  else:
    yield path, key, node


def _check_leaves(config: ml_collections.ConfigDict) -> None:
  """Checks every leaf, wherever it is: numbers finite, integers in range,
  seeds what `jax.random.key` tells apart, ``where`` regexes that compile.
  """
  for path, key, value in _leaves(config):
    if _number(value) and not math.isfinite(value):
      raise ConfigError(path, float(value), "a finite number")
    if key == "seed" and not (_number(value) and float(value).is_integer()
                              and 0 <= value < SEED_LIMIT):
      raise ConfigError(path, value, "an integer >= 0 and < 2**32")
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
      if value >= INT_LIMIT:
        raise ConfigError(path, int(value), "an integer < 2**31 (JAX counts "
                          "in int32)")
      if value < -INT_LIMIT:
        raise ConfigError(path, int(value), "an integer >= -2**31 (JAX "
                          "counts in int32)")
    if key in REGEX_KEYS and isinstance(value, str):
      try:
        re.compile(value)
      except re.error as e:
        raise ConfigError(path, value, f"a regular expression ({e})") from e


def _check_sections(config: Any) -> None:
  """Every group and field that `validate` reads is there (as defaults)."""
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError("config", config,
                      "a ConfigDict built from sparsify.default_config()")
  paths = [p for p, _, _ in _leaves(default_config())]
  for path in ["compression", "model.kwargs", "optimizer.kwargs", *paths]:
    if path.startswith(("model.kwargs.", "optimizer.kwargs.")) or (
        path == "model.gates"):  # open groups; gates default to none
      continue
    node = config
    parts = path.split(".")
    for i, part in enumerate(parts):
      inner = ".".join(parts[:i + 1])
      if not isinstance(node, ml_collections.ConfigDict):
        raise ConfigError(".".join(parts[:i]), node,
                          "a group of fields, as in "
                          "sparsify.default_config()")
      if part not in node:
        raise ConfigError(f"{inner}: got no such field; allowed: a config "
                          "built from sparsify.default_config(), which has "
                          "it")
      node = node[part]


def _max_epochs(config: ml_collections.ConfigDict) -> int:
  """The most epochs that keep a run of ``config`` under 2**31 steps."""
  examples = TRAIN_EXAMPLES.get(config.data.name, max(TRAIN_EXAMPLES.values()))
  per_epoch = -(-examples // int(config.data.batch_size))
  return (INT_LIMIT - 1) // per_epoch


def _check_epochs(field: str, value: Any, config: ml_collections.ConfigDict,
                  *, low_open: bool) -> None:
  _in_range(field, value, 0, low_open=low_open)
  most = _max_epochs(config)
  if value > most:
    raise ConfigError(field, value, (
        f"a number {'>' if low_open else '>='} 0 and <= {most} (fewer than "
        f"2**31 steps of {config.data.name} in batches of "
        f"{config.data.batch_size})"))


def _check_model(model: ml_collections.ConfigDict) -> None:
  """Checks ``model.name``, ``train_arg`` and ``gates``, importing nothing."""
  name = model.name
  if isinstance(name, str) and ":" in name:
    module, _, attribute = name.partition(":")
    if not module or not attribute:
      raise ConfigError("model.name", name, "a built-in model ("
                        f"{', '.join(sorted(models.MODELS))}) or "
                        "'module.path:Attribute'")
  else:
    _one_of("model.name", name, models.MODELS)
  if model.train_arg not in models.TRAIN_ARGS:
    raise ConfigError("model.train_arg", model.train_arg,
                      ", ".join(map(repr, models.TRAIN_ARGS)))
  try:
    models.check_gates(model.get("gates", ""))
  except ValueError as e:
    raise ConfigError(str(e)) from e


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks names and numeric ranges of ``config``; raises `ConfigError`.

  Before the checks of single fields, every leaf of the config is checked
  wherever it is (a method's keyword arguments and a model's included):
  numbers are finite, integers lie in [-2**31, 2**31) (JAX's int32), every
  ``seed`` in [0, 2**32) (what `jax.random.key` tells apart), and every
  ``where`` that is text compiles as a regular expression. Step counts that
  the data fixes later are bounded with the standard training set sizes
  (`TRAIN_EXAMPLES`): a run has fewer than 2**31 steps.

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
  _check_sections(config)
  _check_leaves(config)
  _check_model(config.model)
  _one_of("data.name", config.data.name, data.DATASETS)
  _one_of("data.source", config.data.source, data.SOURCES)
  _in_range("data.batch_size", config.data.batch_size, 1, integer=True)
  _in_range("data.eval_batch_size", config.data.eval_batch_size, 1,
            integer=True)

  opt = config.optimizer
  _one_of("optimizer.name", opt.name, registry.OPTIMIZERS)
  _one_of("optimizer.schedule", opt.schedule, optim.SCHEDULES)
  _in_range("optimizer.learning_rate", opt.learning_rate, 0, low_open=True)
  _in_range("optimizer.momentum", opt.momentum, 0, 1)
  _in_range("optimizer.weight_decay", opt.weight_decay, 0)
  _in_range("optimizer.warmup_steps", opt.warmup_steps, 0, integer=True)

  try:
    registry.make_optimizer(opt, _NOMINAL_STEPS)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  if not isinstance(config.compression, (list, tuple)):
    raise ConfigError("compression", config.compression,
                      "a list of entries `method(name, **kwargs)`")
  for i, entry in enumerate(config.compression):
    if not isinstance(entry, (dict, ml_collections.ConfigDict)):
      raise ConfigError(f"compression[{i}]", entry,
                        "an entry `method(name, **kwargs)`")
    try:  # each factory refuses its own bad arguments, naming them
      registry.build_method(entry, _NOMINAL_STEPS, field=f"compression[{i}]")
    except ValueError as e:
      raise ConfigError(str(e)) from e

  post = config.post
  if not isinstance(post.stages, str):
    raise ConfigError("post.stages", post.stages, "a comma-separated list of "
                      f"{', '.join(sorted(registry.STAGES))}, or ''")
  try:
    registry.stage_names(config.post.stages)
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
  if post.finetune.optimizer is not None:
    _one_of("post.finetune.optimizer", post.finetune.optimizer,
            set(registry.OPTIMIZERS) - {"sss"})
  _check_epochs("post.finetune.epochs", post.finetune.epochs, config,
                low_open=False)
  _in_range("post.finetune.learning_rate", post.finetune.learning_rate, 0,
            low_open=True)
  _in_range("post.pq.dim", post.pq.dim, 1, integer=True)
  _in_range("post.pq.centroids", post.pq.centroids, 1, integer=True)
  _in_range("post.share.bits", post.share.bits, 1, 16, high_open=False,
            integer=True)
  _in_range("post.lct.sparsity", post.lct.sparsity, 0, 1)
  _one_of("post.lct.by", post.lct.by, significance.SIGNIFICANCE)
  _one_of("post.lct.sigma", post.lct.sigma, ("learned", "mean"))
  for name in ("steps", "prune_steps"):
    _in_range(f"post.lct.{name}", post.lct[name], 0, integer=True)
  _in_range("post.lct.learning_rate", post.lct.learning_rate, 0,
            low_open=True)
  _in_range("post.lct.budget", post.lct.budget, 0, 1, high_open=False)
  _in_range("post.lct.sigma_learning_rate", post.lct.sigma_learning_rate, 0)

  tr = config.train
  _check_epochs("train.epochs", tr.epochs, config, low_open=True)
  for name in ("log_every", "eval_every_epochs", "checkpoint_every",
               "keep_checkpoints"):
    _in_range(f"train.{name}", tr[name], 1, integer=True)
  _in_range("train.checkpoint_seconds", tr.checkpoint_seconds, 0)

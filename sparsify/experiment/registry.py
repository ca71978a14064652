"""Compression methods by name, as used by the config system.

Each entry turns ``config.compression`` (and the number of training steps)
into an `optax.GradientTransformation` appended to the optimizer chain. A new
method registers itself by adding one entry to `METHODS`.
"""

from collections.abc import Callable

import ml_collections
import optax

from sparsify.transforms import dat
from sparsify.transforms import magnitude
from sparsify.transforms import penalties
from sparsify.transforms import random as random_pruning
from sparsify.transforms import sss

Builder = Callable[[ml_collections.ConfigDict, int],
                   optax.GradientTransformation | None]


def _window(config: ml_collections.ConfigDict, total_steps: int):
  begin = int(round(config.begin * total_steps))
  end = max(int(round(config.end * total_steps)), begin)
  return begin, end


def _gmp(config, total_steps):
  begin, end = _window(config, total_steps)
  return magnitude.gradual_magnitude_pruning(
      config.sparsity, begin_step=begin, end_step=end,
      update_every=config.update_every, allocation=config.allocation,
      where=config.where)


def _one_shot(config, total_steps):
  begin, _ = _window(config, total_steps)
  return magnitude.magnitude_pruning(
      config.sparsity, step=begin, allocation=config.allocation,
      where=config.where)


def _random(config, total_steps):
  del total_steps
  if config.allocation == "global":
    raise ValueError("allocation: got 'global'; allowed for random sparsity:"
                     " erk, layerwise")
  allocation = "erk" if config.allocation == "erk" else "uniform"
  return random_pruning.random_sparsity(config.sparsity, allocation=allocation,
                                 where=config.where)


def _dat(config, total_steps):
  begin, end = _window(config, total_steps)
  return dat.dynamic_adaptive_threshold(
      config.c, begin_step=begin, end_step=end,
      update_every=config.update_every, power=config.power,
      target_sparsity=config.sparsity or None,
      target_mode=config.target_mode, recovery=config.recovery,
      statistics=config.statistics,
      where=config.where)


METHODS: dict[str, Builder] = {
    "dat": _dat,
    "none": lambda config, total_steps: None,
    "sss": lambda config, total_steps: None,  # replaces the optimizer
    "gmp": _gmp,
    "magnitude": _one_shot,
    "random": _random,
}


def _build(registry: dict[str, Builder], field: str,
           config: ml_collections.ConfigDict, total_steps: int):
  name = config[field]
  if name not in registry:
    raise ValueError(f"compression.{field}: got {name!r}; allowed: "
                     f"{', '.join(sorted(registry))}")
  return registry[name](config, total_steps)


def make_compression(
    config: ml_collections.ConfigDict, total_steps: int
) -> optax.GradientTransformation | None:
  """The compression transform named by ``config.method`` (None for none).

  Args:
    config: the ``compression`` section of a config (`default_config`).
    total_steps: the number of training steps; the fractions
      ``config.begin`` and ``config.end`` are converted to steps with it.

  Returns:
    The `optax.GradientTransformation` of the method in `METHODS`, or
    ``None`` for ``'none'`` and ``'sss'`` (SSS replaces the optimizer).

  Raises:
    ValueError: ``config.method`` is not one of `METHODS`, or its settings
      do not fit it.
  """
  return _build(METHODS, "method", config, total_steps)


# Penalties whose gradient is added before the optimizer.
REGULARIZERS: dict[str, Builder] = {
    "none": lambda config, total_steps: None,
    "binary": lambda c, n: penalties.binary_attractor(c.strength,
                                                          where=c.where),
    "kcentre": lambda c, n: penalties.kcentre_attractor(
        c.strength, centres=c.centres, refresh_every=c.refresh_every,
        where=c.where),
    "l1": lambda c, n: penalties.l1(c.strength, where=c.where),
    "group_lasso": lambda c, n: penalties.group_lasso(
        c.strength, where=c.where),
    "slimming": lambda c, n: sss.network_slimming(c.strength),
}


def make_regularizer(
    config: ml_collections.ConfigDict, total_steps: int
) -> optax.GradientTransformation | None:
  """The penalty named by ``config.regularizer`` (None for none).

  Args:
    config: the ``compression`` section of a config (`default_config`);
      ``config.strength`` weighs the penalty.
    total_steps: the number of training steps (unused by the penalties of
      `REGULARIZERS`, which take the same arguments as `METHODS`).

  Returns:
    An `optax.GradientTransformation` that adds the penalty's gradient to
    the updates, or ``None`` for ``'none'``.

  Raises:
    ValueError: ``config.regularizer`` is not one of `REGULARIZERS`.
  """
  return _build(REGULARIZERS, "regularizer", config, total_steps)

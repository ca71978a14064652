"""Builds the optax optimizer chain from a config.

The chain is ``[penalty] -> [weight decay] -> optimizer(schedule) ->
[masks]``: a regularizer (``config.compression.regularizer``) adds its
gradient before the optimizer; the masking transform named by
``config.compression.method`` is appended last, so that it sees (and may
rewrite) the final updates. SSS replaces the optimizer.
"""

import ml_collections
import optax

from sparsify.experiment import registry
from sparsify.transforms import sss

OPTIMIZERS = ("adam", "adamw", "momentum", "nesterov", "sgd")
SCHEDULES = ("constant", "cosine", "step")


def make_schedule(
    config: ml_collections.ConfigDict, total_steps: int
) -> optax.Schedule:
  """The learning-rate schedule of ``config.optimizer``.

  ``constant``, ``cosine`` (decay to 0 at the last step) or ``step`` (x0.1 at
  50 % and 75 % of training), each after ``warmup_steps`` of linear warm-up.

  Args:
    config: the ``optimizer`` section of a config: ``learning_rate``,
      ``schedule`` and ``warmup_steps``.
    total_steps: the number of training steps, warm-up included.

  Returns:
    An `optax.Schedule`: the learning rate as a function of the step.

  Example:
    >>> import sparsify
    >>> from sparsify.experiment import optim
    >>> opt = sparsify.default_config().optimizer
    >>> opt.learning_rate, opt.schedule, opt.warmup_steps = 0.1, 'step', 10
    >>> schedule = optim.make_schedule(opt, total_steps=110)
    >>> [round(float(schedule(step)), 4) for step in (0, 5, 10, 60, 85)]
    [0.0, 0.05, 0.1, 0.01, 0.001]
  """
  lr = config.learning_rate
  warmup = int(config.warmup_steps)
  rest = max(total_steps - warmup, 1)
  if config.schedule == "constant":
    main = optax.constant_schedule(lr)
  elif config.schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, rest)
  else:
    main = optax.piecewise_constant_schedule(
        lr, {int(rest * 0.5): 0.1, int(rest * 0.75): 0.1})
  if not warmup:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def base_optimizer(
    opt: ml_collections.ConfigDict, total_steps: int
) -> optax.GradientTransformation:
  """The optimizer of ``config.optimizer`` alone, with its schedule.

  Args:
    opt: the ``optimizer`` section of a config: ``name``, the schedule's
      fields (see `make_schedule`), ``momentum`` and ``weight_decay``.
    total_steps: the number of training steps, for the schedule.

  Returns:
    An `optax.GradientTransformation`: ``optax.adamw`` for ``'adamw'``
    (decoupled weight decay), else the optimizer preceded by
    ``optax.add_decayed_weights`` when ``weight_decay`` is nonzero.
  """
  lr = make_schedule(opt, total_steps)
  if opt.name == "adamw":
    return optax.adamw(lr, weight_decay=opt.weight_decay)
  base = {
      "sgd": lambda: optax.sgd(lr),
      "momentum": lambda: optax.sgd(lr, momentum=opt.momentum),
      "nesterov": lambda: optax.sgd(lr, momentum=opt.momentum,
                                    nesterov=True),
      "adam": lambda: optax.adam(lr),
  }[opt.name]()
  if opt.weight_decay:
    base = optax.chain(optax.add_decayed_weights(opt.weight_decay), base)
  return base


def make_optimizer(
    config: ml_collections.ConfigDict, total_steps: int
) -> optax.GradientTransformation:
  """The full optax chain of a config: [penalty] -> optimizer -> [masks].

  ``compression.method`` ``'sss'`` replaces the optimizer by
  `sparsify.sparse_structure_selection` (Nesterov SGD on the weights, APG
  on the scales, with the config's learning-rate schedule, momentum and
  weight decay); a ``compression.regularizer`` adds its penalty's gradient
  before the optimizer; a masking method is appended last.

  Args:
    config: the experiment config (uses ``optimizer`` and ``compression``).
    total_steps: number of training steps, for schedules.

  Returns:
    An `optax.GradientTransformation`.
  """
  opt, comp = config.optimizer, config.compression
  if comp.method == "sss":
    return sss.sparse_structure_selection(
        make_schedule(opt, total_steps), gamma=comp.gamma,
        momentum=opt.momentum, weight_decay=opt.weight_decay)
  parts = [base_optimizer(opt, total_steps)]
  penalty = registry.make_regularizer(comp, total_steps)
  if penalty is not None:
    parts.insert(0, penalty)
  compression = registry.make_compression(comp, total_steps)
  if compression is not None:
    parts.append(compression)
  return parts[0] if len(parts) == 1 else optax.chain(*parts)

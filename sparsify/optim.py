"""Builds the optax optimizer chain from a config.

The chain is ``[weight decay] -> optimizer(schedule) -> [compression]``: the
compression transform named by ``config.compression.method`` is appended
last, so that it sees (and may rewrite) the final updates.
"""

import ml_collections
import optax

from sparsify import methods

OPTIMIZERS = ("adam", "adamw", "momentum", "nesterov", "sgd")
SCHEDULES = ("constant", "cosine", "step")


def make_schedule(
    config: ml_collections.ConfigDict, total_steps: int
) -> optax.Schedule:
  """The learning-rate schedule of ``config.optimizer``.

  ``constant``, ``cosine`` (decay to 0 at the last step) or ``step`` (x0.1 at
  50 % and 75 % of training), each after ``warmup_steps`` of linear warm-up.
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


def make_optimizer(
    config: ml_collections.ConfigDict, total_steps: int
) -> optax.GradientTransformation:
  """The full optax chain of a config: optimizer then compression.

  Args:
    config: the experiment config (uses ``optimizer`` and ``compression``).
    total_steps: number of training steps, for schedules.

  Returns:
    An `optax.GradientTransformation`.
  """
  opt = config.optimizer
  lr = make_schedule(opt, total_steps)
  if opt.name == "adamw":
    base = optax.adamw(lr, weight_decay=opt.weight_decay)
  else:
    base = {
        "sgd": lambda: optax.sgd(lr),
        "momentum": lambda: optax.sgd(lr, momentum=opt.momentum),
        "nesterov": lambda: optax.sgd(lr, momentum=opt.momentum,
                                      nesterov=True),
        "adam": lambda: optax.adam(lr),
    }[opt.name]()
    if opt.weight_decay:
      base = optax.chain(optax.add_decayed_weights(opt.weight_decay), base)
  compression = methods.make_compression(config.compression, total_steps)
  return base if compression is None else optax.chain(base, compression)

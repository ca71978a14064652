"""Learning-rate schedules and the plain optax optimizers a config names."""

import optax

OPTIMIZERS = ("adam", "adamw", "momentum", "nesterov", "sgd")
SCHEDULES = ("constant", "cosine", "step")


def make_schedule(learning_rate: float, schedule: str, warmup_steps: int,
                  total_steps: int) -> optax.Schedule:
  """A learning-rate schedule by name.

  ``constant``, ``cosine`` (decay to 0 at the last step) or ``step`` (x0.1 at
  50 % and 75 % of training), each after ``warmup_steps`` of linear warm-up.

  Args:
    learning_rate: the peak learning rate.
    schedule: one of `SCHEDULES`.
    warmup_steps: steps of linear warm-up from 0.
    total_steps: the number of training steps, warm-up included.

  Returns:
    An `optax.Schedule`: the learning rate as a function of the step.

  Example:
    >>> from sparsify.experiment import optim
    >>> schedule = optim.make_schedule(0.1, 'step', 10, total_steps=110)
    >>> [round(float(schedule(step)), 4) for step in (0, 5, 10, 60, 85)]
    [0.0, 0.05, 0.1, 0.01, 0.001]
  """
  lr = learning_rate
  warmup = int(warmup_steps)
  rest = max(total_steps - warmup, 1)
  if schedule == "constant":
    main = optax.constant_schedule(lr)
  elif schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, rest)
  elif schedule == "step":
    main = optax.piecewise_constant_schedule(
        lr, {int(rest * 0.5): 0.1, int(rest * 0.75): 0.1})
  else:
    raise ValueError(f"optimizer.schedule: got {schedule!r}; allowed: "
                     f"{', '.join(SCHEDULES)}")
  if not warmup:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def base_optimizer(name: str, learning_rate: optax.ScalarOrSchedule, *,
                   momentum: float = 0.9,
                   weight_decay: float = 0.0) -> optax.GradientTransformation:
  """A plain optax optimizer by name.

  Args:
    name: one of `OPTIMIZERS`.
    learning_rate: a float or a schedule.
    momentum: for ``momentum`` and ``nesterov``.
    weight_decay: ``optax.adamw``'s decoupled decay for ``'adamw'``; for the
      others ``optax.add_decayed_weights`` before the optimizer when nonzero.

  Returns:
    An `optax.GradientTransformation`.
  """
  lr = learning_rate
  if name == "adamw":
    return optax.adamw(lr, weight_decay=weight_decay)
  base = {
      "sgd": lambda: optax.sgd(lr),
      "momentum": lambda: optax.sgd(lr, momentum=momentum),
      "nesterov": lambda: optax.sgd(lr, momentum=momentum, nesterov=True),
      "adam": lambda: optax.adam(lr),
  }[name]()
  if weight_decay:
    base = optax.chain(optax.add_decayed_weights(weight_decay), base)
  return base

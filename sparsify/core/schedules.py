"""Hyper-parameter values over training: constants or schedules, and ramps."""

import jax
import jax.numpy as jnp
import optax

from sparsify.core import types


def value_at(value: types.ScalarOrSchedule, count: jax.Array) -> jax.typing.ArrayLike:
  """A hyper-parameter's value at ``count``: calls it if it is a schedule.

  Args:
    value: a constant or a schedule ``count -> value``.
    count: the step count (possibly traced).

  Returns:
    ``value(count)`` for a schedule, otherwise ``value``.

  Example:
    >>> import optax
    >>> from sparsify.core import schedules
    >>> schedules.value_at(0.5, 3)
    0.5
    >>> float(schedules.value_at(optax.linear_schedule(0.0, 1.0, 10), 5))
    0.5
  """
  return value(count) if callable(value) else value


def threshold_ramp(begin_step: int, end_step: int,
                   power: float = 3.0) -> optax.Schedule:
  r"""The dynamic factor :math:`f(t)`: 0 at ``begin_step``, 1 at ``end_step``.

  :math:`f(t) = 1 - \left(1 - \mathrm{clip}\left(\frac{t - t_0}{t_1 - t_0},
  0, 1\right)\right)^p`, fast at first and flat at the end, like the cubic
  sparsity schedule of gradual topk.

  Args:
    begin_step: :math:`t_0`, the step at which the factor leaves 0.
    end_step: :math:`t_1`, the step from which the factor stays at 1.
    power: the exponent :math:`p`.

  Returns:
    A schedule ``step -> f(step)`` (float32 in [0, 1]).

  Example:
    >>> from sparsify.core import schedules
    >>> f = schedules.threshold_ramp(0, 10, power=2.0)
    >>> [round(float(f(t)), 2) for t in (0, 5, 10, 20)]
    [0.0, 0.75, 1.0, 1.0]
  """
  span = max(end_step - begin_step, 1)

  def schedule(step):
    progress = jnp.clip((step - begin_step) / span, 0.0, 1.0)
    return 1.0 - (1.0 - progress) ** power

  return schedule

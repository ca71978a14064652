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


def threshold_ramp(begin_step: jax.typing.ArrayLike,
                   end_step: jax.typing.ArrayLike,
                   power: jax.typing.ArrayLike = 3.0) -> optax.Schedule:
  r"""The dynamic factor :math:`f(t)`: 0 at ``begin_step``, 1 at ``end_step``.

  :math:`f(t) = 1 - \left(1 - \mathrm{clip}\left(\frac{t - t_0}{t_1 - t_0},
  0, 1\right)\right)^p`, fast at first and flat at the end, like the cubic
  sparsity schedule of gradual topk. Every argument may be traced.

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
  def schedule(step):
    return 1.0 - (1.0 - progress(step, begin_step, end_step)) ** power

  return schedule


def progress(step: jax.typing.ArrayLike, begin_step: jax.typing.ArrayLike,
             end_step: jax.typing.ArrayLike) -> jax.Array:
  """How far ``step`` is through the window, in [0, 1].

  Every argument may be traced (as `optax.inject_hyperparams` passes them).
  An empty window (``end_step == begin_step``) jumps from 0 to 1 there.

  Args:
    step: the current step.
    begin_step: where the window starts (0 before it).
    end_step: where it ends (1 from there on).

  Returns:
    ``clip((step - begin_step) / (end_step - begin_step), 0, 1)``, float32.

  Example:
    >>> from sparsify.core import schedules
    >>> [float(schedules.progress(t, 10, 20)) for t in (0, 15, 30)]
    [0.0, 0.5, 1.0]
    >>> [float(schedules.progress(t, 10, 10)) for t in (9, 10)]
    [0.0, 1.0]
  """
  step = jnp.asarray(step, jnp.float32)
  begin = jnp.asarray(begin_step, jnp.float32)
  end = jnp.asarray(end_step, jnp.float32)
  ramp = jnp.clip((step - begin) / jnp.maximum(end - begin, 1.0), 0.0, 1.0)
  return jnp.where(end > begin, ramp, (step >= begin).astype(jnp.float32))


def polynomial_ramp(initial: jax.typing.ArrayLike, final: jax.typing.ArrayLike,
                    begin_step: jax.typing.ArrayLike,
                    end_step: jax.typing.ArrayLike,
                    power: jax.typing.ArrayLike = 3.0) -> types.Schedule:
  """``final + (initial - final) (1 - progress)^power`` over a window.

  Zhu & Gupta's sparsity schedule (cubic by default); like
  `optax.polynomial_schedule`, but every argument may be traced.

  Args:
    initial: the value up to ``begin_step``.
    final: the value from ``end_step`` on.
    begin_step: where the ramp starts.
    end_step: where it ends.
    power: the exponent.

  Returns:
    A schedule ``step -> value``.

  Example:
    >>> from sparsify.core import schedules
    >>> f = schedules.polynomial_ramp(0.0, 0.8, 0, 10)
    >>> [round(float(f(t)), 3) for t in (0, 5, 10)]
    [0.0, 0.7, 0.8]
  """
  def schedule(step):
    left = 1.0 - progress(step, begin_step, end_step)
    return final + (initial - final) * left ** power

  return schedule

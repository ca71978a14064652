"""Transforms whose only state is a step count."""

import jax.numpy as jnp
import optax

from sparsify.core import checks


def counting_transform(state_cls, fn) -> optax.GradientTransformation:
  """A transform whose state is a count: ``fn(updates, params, count)``.

  Args:
    state_cls: a NamedTuple class with a single field ``count``.
    fn: ``(updates, params, count) -> updates``, jit-compatible; ``count``
      is the number of updates seen before this one.

  Returns:
    An `optax.GradientTransformation` that needs ``params``.

  Example:
    >>> from typing import NamedTuple
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from sparsify.core import counting
    >>> class State(NamedTuple):
    ...   count: jax.Array
    >>> tx = counting.counting_transform(State, lambda u, p, c: u * (c + 1))
    >>> state = tx.init(jnp.zeros(2))
    >>> for _ in range(2):
    ...   updates, state = tx.update(jnp.ones(2), state, jnp.zeros(2))
    >>> updates, state.count
    (Array([2., 2.], dtype=float32), Array(2, dtype=int32))
  """

  def init_fn(params):
    del params
    return state_cls(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    checks.require_params(params)
    return fn(updates, params, state.count), state_cls(
        count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)

"""Types and parameter-path helpers shared by every sparsify module.

Parameters are addressed by their path in the pytree, joined with ``/``:
``{'Dense_0': {'kernel': w}}`` has one leaf named ``'Dense_0/kernel'``. Which
parameters a method touches is decided from these names (a regex or a
predicate), the way big_vision and optax masks select parameters.
"""

from collections.abc import Callable
import re
from typing import Any

import jax

Params = Any  # A pytree of arrays: the model's parameters.
Masks = Any  # A pytree shaped like (part of) `Params`, with boolean leaves.
Schedule = Callable[[jax.typing.ArrayLike], jax.typing.ArrayLike]
ScalarOrSchedule = float | Schedule

# Default: kernels of Dense and Conv layers (2-D or more). Biases, BatchNorm
# scales and shifts, embeddings and gates do not match.
DEFAULT_PRUNABLE = r"(^|/)kernel$"

NO_PARAMS_MSG = ("this transform reads the current parameters: call "
                 "`tx.update(updates, state, params)` with params")


def key_name(key: Any) -> str:
  """Returns the name of one path entry (dict key, attribute or index).

  Args:
    key: one entry of a `jax.tree_util` key path: a ``DictKey``,
      ``GetAttrKey``, ``SequenceKey`` or ``FlattenedIndexKey``; anything else
      is converted with `str`.

  Returns:
    The key, attribute name or index as a string.
  """
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_name(path: tuple[Any, ...]) -> str:
  """Joins a `jax.tree_util` key path into ``'Dense_0/kernel'``.

  A final ``.value`` attribute (how an NNX `Variable` holds its array) is
  dropped, so Linen and NNX parameters get the same names.

  Args:
    path: a key path, as given by `jax.tree_util.tree_flatten_with_path` or
      `jax.tree_util.tree_map_with_path`.

  Returns:
    The names of the path's entries joined with ``/``.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> params = {'Dense_0': {'kernel': jnp.ones((3, 2)), 'bias': jnp.ones(2)}}
    >>> leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    >>> [sparsify.path_name(path) for path, _ in leaves]
    ['Dense_0/bias', 'Dense_0/kernel']
  """
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and (
      path[-1].name == "value"):
    path = path[:-1]
  return "/".join(key_name(k) for k in path)


def named_leaves(tree: Any) -> list[tuple[str, Any]]:
  """Returns ``[(name, leaf), ...]`` in tree-flattening order.

  Args:
    tree: any pytree, usually a model's parameters.

  Returns:
    A list of ``(path_name, leaf)`` pairs, one per leaf, in the order of
    `jax.tree.leaves`.
  """
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(path_name(path), leaf) for path, leaf in leaves]


def map_with_name(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
  """Like `jax.tree.map`, with the leaf's path name as first argument.

  Args:
    fn: called as ``fn(name, leaf, *rest_leaves)`` for every leaf of ``tree``.
    tree: the pytree whose structure the result takes.
    *rest: more pytrees with the structure of ``tree``; their leaves are
      passed to ``fn`` after the leaf of ``tree``.

  Returns:
    A pytree shaped like ``tree`` holding the values returned by ``fn``.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, *xs: fn(path_name(path), *xs), tree, *rest)


def path_predicate(
    where: str | Callable[[str, Any], bool] | None = None,
) -> Callable[[str, Any], bool]:
  """Turns a regex or a ``(name, leaf) -> bool`` predicate into a predicate.

  Args:
    where: ``None`` for the default (Dense and Conv kernels of rank >= 2), a
      regular expression searched in the leaf's path name, or a callable
      ``(name, leaf) -> bool``.

  Returns:
    A callable ``(name, leaf) -> bool``.
  """
  if callable(where):
    return where
  pattern = re.compile(DEFAULT_PRUNABLE if where is None else where)
  if where is None:
    return lambda name, leaf: bool(pattern.search(name)) and jax.numpy.ndim(
        leaf) >= 2
  return lambda name, leaf: bool(pattern.search(name))


def select(
    params: Params,
    where: str | Callable[[str, Any], bool] | None = None,
) -> Any:
  """Returns a pytree of booleans marking the leaves chosen by ``where``.

  The result is what `optax.masked` expects as its ``mask`` argument.

  Args:
    params: the pytree to select from.
    where: ``None`` for the default (Dense and Conv kernels of rank >= 2), a
      regular expression searched in each leaf's path name, or a callable
      ``(name, leaf) -> bool``.

  Returns:
    A pytree shaped like ``params`` with a Python ``bool`` at every leaf.

  Example:
    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> params = {'Dense_0': {'kernel': jnp.ones((3, 2)), 'bias': jnp.ones(2)}}
    >>> sparsify.select(params)
    {'Dense_0': {'bias': False, 'kernel': True}}
    >>> sparsify.select(params, where='bias')
    {'Dense_0': {'bias': True, 'kernel': False}}
  """
  predicate = path_predicate(where)
  return map_with_name(predicate, params)

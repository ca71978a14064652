"""Parameter paths, and the selection of parameters by path (`paths.Where`).

Parameters are addressed by their path in the pytree, joined with ``/``:
``{'Dense_0': {'kernel': w}}`` has one leaf named ``'Dense_0/kernel'``. Which
parameters a method touches is decided from these names, the way big_vision
and optax masks select parameters: every factory takes one argument
``where`` of type `paths.Where`. ``None`` selects the method's default
parameters: the Dense and Conv kernels (`DEFAULT_WHERE`) unless the method
documents another default (the penalties and quantizers: `dense_kernel`).

Under `optax.inject_hyperparams`, a ``where`` that is a predicate must be
named in ``static_args`` (otherwise it is taken for a schedule); ``None``, a
regex and a collection of paths need nothing.
"""

from collections.abc import Callable, Collection
import re
from typing import Any

import jax

# What a method touches: None for the default, a regex searched in each
# leaf's path name, a collection of exact path names, or a predicate
# ``(name, leaf) -> bool``.
Where = str | Collection[str] | Callable[[str, Any], bool] | None

# Default: kernels of Dense and Conv layers (2-D or more). Biases, BatchNorm
# scales and shifts, embeddings and gates do not match.
DEFAULT_PRUNABLE = r"(^|/)kernel$"
DEFAULT_WHERE = None  # kernels of rank >= 2: `DEFAULT_PRUNABLE`


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

  Example:
    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> params = {'Dense_0': {'kernel': jnp.ones((3, 2)), 'bias': jnp.ones(2)}}
    >>> [(name, leaf.shape) for name, leaf in sparsify.named_leaves(params)]
    [('Dense_0/bias', (2,)), ('Dense_0/kernel', (3, 2))]
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


def kernel(name: str, leaf: Any) -> bool:
  """True for Dense and Conv kernels: leaves named ``kernel`` of rank >= 2.

  What ``where=None`` selects by default (`DEFAULT_PRUNABLE`).

  Args:
    name: the leaf's path, ``'/'``-separated.
    leaf: the leaf (an array).

  Returns:
    A Python bool.

  Example:
    >>> import jax.numpy as jnp
    >>> from sparsify.core import paths
    >>> paths.kernel('conv/kernel', jnp.zeros((3, 3, 1, 4)))
    True
    >>> paths.kernel('fc/bias', jnp.zeros(4))
    False
  """
  return bool(_KERNEL.search(name)) and jax.numpy.ndim(leaf) >= 2


def dense_kernel(name: str, leaf: Any) -> bool:
  """True for fully-connected kernels: 2-D leaves named ``kernel``.

  The default selection of the penalties and the quantizers, which act on
  Dense layers only.

  Args:
    name: the leaf's path, ``'/'``-separated.
    leaf: the leaf (an array).

  Returns:
    A Python bool.

  Example:
    >>> import jax.numpy as jnp
    >>> from sparsify.core import paths
    >>> paths.dense_kernel('fc1/kernel', jnp.zeros((3, 4)))
    True
    >>> paths.dense_kernel('conv/kernel', jnp.zeros((3, 3, 1, 4)))
    False
  """
  return bool(_KERNEL.search(name)) and jax.numpy.ndim(leaf) == 2


_KERNEL = re.compile(DEFAULT_PRUNABLE)


def path_predicate(
    where: Where = None,
    default: Callable[[str, Any], bool] = kernel,
) -> Callable[[str, Any], bool]:
  """Turns a `paths.Where` into a predicate ``(name, leaf) -> bool``.

  Args:
    where: ``None`` for the default, a regular expression searched in the
      leaf's path name, a collection of exact path names, or a callable
      ``(name, leaf) -> bool``.
    default: what ``None`` selects: by default `kernel` (Dense and Conv
      kernels of rank >= 2).

  Returns:
    A callable ``(name, leaf) -> bool``.

  Raises:
    ValueError: ``where`` is a string that is not a valid regular
      expression, or neither a string, a collection of strings nor a
      callable.
  """
  if callable(where):
    return where
  if where is None:
    return default
  if isinstance(where, str):
    try:
      pattern = re.compile(where)
    except re.error as e:
      raise ValueError(f"where: got {where!r}, not a regular expression "
                       f"({e}); allowed: a regex searched in parameter "
                       "paths, a collection of paths or a predicate") from e
    return lambda name, leaf: bool(pattern.search(name))
  if isinstance(where, Collection) and all(isinstance(w, str) for w in where):
    names = frozenset(where)
    return lambda name, leaf: name in names
  raise ValueError(f"where: got {where!r}; allowed: None, a regex, a "
                   "collection of parameter paths or a predicate "
                   "(name, leaf) -> bool")


def select(params: Any, where: Where = None,
           default: Callable[[str, Any], bool] = kernel) -> Any:
  """Returns a pytree of booleans marking the leaves chosen by ``where``.

  The result is what `optax.masked` expects as its ``mask`` argument.

  Args:
    params: the pytree to select from.
    where: a `paths.Where`: ``None`` for ``default``, a regular expression
      searched in each leaf's path name, a collection of exact path names,
      or a callable ``(name, leaf) -> bool``.
    default: what ``None`` selects (see `path_predicate`).

  Returns:
    A pytree shaped like ``params`` with a Python ``bool`` at every leaf.

  Raises:
    ValueError: ``where`` selects none of the leaves of a nonempty
      ``params`` (a selection that selects nothing is a mistake, not a
      no-op); the message lists the paths there are.

  Example:
    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> params = {'Dense_0': {'kernel': jnp.ones((3, 2)), 'bias': jnp.ones(2)}}
    >>> sparsify.select(params)
    {'Dense_0': {'bias': False, 'kernel': True}}
    >>> sparsify.select(params, where='bias')
    {'Dense_0': {'bias': True, 'kernel': False}}
  """
  predicate = path_predicate(where, default)
  chosen = map_with_name(predicate, params)
  names = [name for name, _ in named_leaves(params)]
  if names and not any(flag for _, flag in named_leaves(chosen)):
    raise ValueError(no_match(where, names))
  return chosen


def no_match(where: Where, names: list[str]) -> str:
  """The one-line message for a selection that selects no parameter.

  Args:
    where: the selection (a `paths.Where`).
    names: the parameter paths it was tried on.

  Returns:
    ``"where: got ...; it matches none of the N parameters; allowed: ..."``
    with the first paths listed.
  """
  shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)"
                                    if len(names) > 12 else "")
  what = "the default selection (Dense and Conv kernels)" if where is None \
      else repr(where)
  return (f"where: {what} matches none of the {len(names)} parameters; "
          f"allowed: a selection that matches some of: {shown}")

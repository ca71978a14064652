"""Groups of weights along one axis (output units), as the group lasso uses.

Each index along ``axis`` of a kernel is one group: with the default
``axis=-1``, column :math:`j` of a Dense kernel ``(in, out)`` (the incoming
weights of output unit :math:`j`) or filter ``[..., j]`` of a conv kernel
``(kh, kw, cin, cout)``. ``axis`` fixes shapes, so it is a static Python int.
"""

import jax
import jax.numpy as jnp


def group_norms(w: jax.Array, axis: int) -> jax.Array:
  r"""The L2 norm :math:`\lVert w_g \rVert_2` of every group along ``axis``.

  Args:
    w: a kernel.
    axis: the axis that indexes the groups (a static int, negative counts
      from the end).

  Returns:
    The norms, shaped like ``w`` with every axis but ``axis`` of size 1.

  Raises:
    ValueError: ``axis`` is not an axis of ``w``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sparsify.core import groups
    >>> groups.group_norms(jnp.array([[3.0, 0.0], [4.0, 1.0]]), -1)
    Array([[5., 1.]], dtype=float32)
  """
  ndim = jnp.ndim(w)
  if not -ndim <= axis < ndim:
    raise ValueError(f"axis: got {axis}; allowed: -{ndim} to {ndim - 1} for "
                     f"a parameter of shape {jnp.shape(w)}")
  others = tuple(i for i in range(ndim) if i != axis % ndim)
  return jnp.sqrt(jnp.sum(jnp.square(w), axis=others, keepdims=True))


def group_size(w: jax.Array, axis: int) -> int:
  """The number of weights :math:`|g|` in each group along ``axis``.

  Args:
    w: a kernel.
    axis: the axis that indexes the groups (a static int).

  Returns:
    ``w.size // w.shape[axis]``, a Python int.

  Example:
    >>> import jax.numpy as jnp
    >>> from sparsify.core import groups
    >>> groups.group_size(jnp.zeros((3, 3, 2, 4)), -1)
    18
  """
  return jnp.size(w) // jnp.shape(w)[axis]

"""How a sparsity budget is spread over layers: uniform or ERK."""

from collections.abc import Sequence
import math

import jax
import jax.numpy as jnp
import numpy as np


def erk_densities(
    shapes: Sequence[Sequence[int]], sparsity: float, scale: float = 1.0
) -> list[float]:
  r"""Per-layer densities of the Erdős–Rényi-Kernel allocation.

  Layer :math:`l` gets density :math:`\epsilon \cdot \sum_i n_i / \prod_i n_i`
  over its shape :math:`n`, with :math:`\epsilon` solved so that the total
  number of kept weights is :math:`(1 - s) \sum_l |W_l|`. Layers whose density
  would exceed 1 are kept dense and :math:`\epsilon` is solved again for the
  rest.

  ``sparsity`` may be traced (as `optax.inject_hyperparams` passes it): the
  same computation then runs in jax, a fixed number of rounds, one per
  layer.

  Args:
    shapes: the shape of each layer.
    sparsity: the overall fraction :math:`s` of weights removed, in [0, 1).
    scale: a factor on every raw density :math:`\sum_i n_i / \prod_i n_i`
      (it cancels unless some layer is kept dense).

  Returns:
    One density (fraction of weights kept) per layer: Python floats, or
    float32 scalars when ``sparsity`` is traced.

  Example:
    The small last layer stays dense; the large first one is the sparsest:

    >>> import sparsify
    >>> densities = sparsify.erk_densities([(784, 300), (300, 100), (100, 10)],
    ...                                    0.9)
    >>> [round(d, 3) for d in densities]
    [0.08, 0.23, 1.0]

  References:
    Evci et al., "Rigging the lottery: making all tickets winners", ICML 2020.
  """
  traced = isinstance(sparsity, jax.core.Tracer) or isinstance(
      scale, jax.core.Tracer)
  xp = jnp if traced else np
  sizes = np.array([math.prod(s) for s in shapes], np.float64)
  raw = np.array([sum(s) / math.prod(s) for s in shapes], np.float64) * scale
  dense = xp.zeros(len(shapes), bool)
  budget = (1.0 - sparsity) * sizes.sum()
  density = xp.ones(len(shapes))
  # Each round keeps dense the layers whose density would pass 1 and solves
  # again for the others; one round per layer always reaches the fixed point.
  for _ in range(len(shapes)):
    free = xp.where(dense, 0.0, raw * sizes).sum()
    eps = (budget - xp.where(dense, sizes, 0.0).sum()) / xp.where(
        free > 0, free, 1.0)
    density = xp.where(dense, 1.0, eps * raw)
    dense = dense | (density > 1.0)
  if traced:
    return list(density.astype(jnp.float32))
  return density.tolist()

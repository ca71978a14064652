"""Static random sparsity: masks drawn once at initialisation."""

from typing import Literal

import jax
import jax.numpy as jnp
import optax

from sparsify.core import checks
from sparsify.core import distributions
from sparsify.core import masking
from sparsify.core import paths
from sparsify.core import schedules
from sparsify.core import topk
from sparsify.core import types


def random_sparsity(
    sparsity: types.ScalarOrSchedule,
    *,
    seed: jax.typing.ArrayLike = 0,
    allocation: Literal["uniform", "erk"] = "uniform",
    where: paths.Where = None,
) -> optax.GradientTransformation:
  """Static random sparsity: a fixed random mask from step 0.

  Each selected layer :math:`l` keeps a uniformly random subset of its
  weights, of exactly ``kept_l`` entries::

    kept_l = size_l - round(s_l * size_l)

  where :math:`s_l` is ``sparsity`` for every layer
  (``'uniform'``) or the ERK allocation with the same total (``'erk'``, see
  `distributions.erk_densities`). The masks never change.

  Args:
    sparsity: overall fraction of weights removed, in [0, 1): a number, a
      traced array or a schedule (read at step 0, when the masks are drawn).
    seed: seed of the random masks, an integer (may be traced, e.g. under
      `jax.vmap` over seeds).
    allocation: ``'uniform'`` or ``'erk'``; static.
    where: which parameters to prune, a `paths.Where` (``None``: Dense and
      Conv kernels; see `masking.mask_updates`).

  Returns:
    An `optax.GradientTransformation`; place it last in the chain. The first
    update zeroes the masked initial weights.

  Example:
    A 4x5 kernel at sparsity 0.75 keeps 5 random weights:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> params = {'fc': {'kernel': jnp.ones((4, 5))}}
    >>> tx = sparsify.random_sparsity(0.75, seed=0)
    >>> masks = sparsify.find_masks(jax.jit(tx.init)(params))
    >>> int(masks['fc']['kernel'].sum())
    5

  References:
    Liu et al., "The unreasonable effectiveness of random pruning", ICLR 2022.
  """
  checks.check_fraction("sparsity", sparsity)
  checks.check_one_of("allocation", allocation, ("erk", "uniform"))

  def init_masks(params):
    leaves, treedef = jax.tree.flatten(params)
    s = schedules.value_at(sparsity, jnp.zeros([], jnp.int32))
    if allocation == "erk":
      per_layer = [1.0 - d for d in distributions.erk_densities(
          [p.shape for p in leaves], s)]
    else:
      per_layer = [s] * len(leaves)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    scores = [jax.random.uniform(key, p.shape) for key, p in zip(keys, leaves)]
    masks = [topk.top_k_mask([x], topk.keep_count(x.size, s))[0]
             for x, s in zip(scores, per_layer)]
    return treedef.unflatten(masks)

  return masking.mask_updates(init_masks=init_masks, where=where)

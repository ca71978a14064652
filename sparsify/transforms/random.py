"""Random masks: drawn once at initialisation, or cut once at a step.

The baselines that say how much of a method's accuracy comes from *which*
weights it keeps: `random_sparsity` trains sparse from the start,
`random_pruning` prunes a trained (or training) network at random.
"""

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


def _keep_largest(scores, sparsity, allocation):
  """Per layer, a mask of its largest scores at its share of ``sparsity``."""
  if allocation == "erk":
    per_layer = [1.0 - d for d in distributions.erk_densities(
        [x.shape for x in scores], sparsity)]
  else:
    per_layer = [sparsity] * len(scores)
  return [topk.top_k_mask([x], topk.keep_count(x.size, s))[0]
          for x, s in zip(scores, per_layer)]


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
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    scores = [jax.random.uniform(key, p.shape) for key, p in zip(keys, leaves)]
    return treedef.unflatten(_keep_largest(
        scores, schedules.value_at(sparsity, jnp.zeros([], jnp.int32)),
        allocation))

  return masking.mask_updates(init_masks=init_masks, where=where)


def random_pruning(
    sparsity: types.ScalarOrSchedule,
    *,
    step: types.ScalarOrSchedule = 0,
    seed: jax.typing.ArrayLike = 0,
    allocation: Literal["uniform", "erk"] = "uniform",
    where: paths.Where = None,
) -> optax.GradientTransformation:
  """One-shot random pruning: at ``step``, drop random weights.

  `magnitude_pruning` with random scores: at ``step`` each selected layer
  :math:`l` keeps ``kept_l = size_l - round(s_l * size_l)`` of its weights,
  a uniformly random subset (``s_l`` as in `random_sparsity`: ``sparsity``
  everywhere, or ERK's allocation of it). The masks are then fixed.

  Args:
    sparsity: overall fraction of weights removed, in [0, 1): a number, a
      traced array or a schedule (read at ``step``).
    step: the step at which to prune (a number, traced array or schedule).
    seed: seed of the random choice, an integer (may be traced).
    allocation: ``'uniform'`` or ``'erk'``; static.
    where: which parameters to prune, a `paths.Where` (``None``: Dense and
      Conv kernels; see `masking.mask_updates`).

  Returns:
    An `optax.GradientTransformation`; place it last in the chain.

  Example:
    A 4x5 kernel keeps all 20 weights until step 1, then 5 random ones:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import sparsify
    >>> params = {'fc': {'kernel': jnp.ones((4, 5))}}
    >>> tx = optax.chain(optax.sgd(0.1),
    ...                  sparsify.random_pruning(0.75, step=1, seed=0))
    >>> state, update = tx.init(params), jax.jit(tx.update)
    >>> for _ in range(2):
    ...   updates, state = update(params, state, params)
    ...   print(int(sparsify.find_masks(state)['fc']['kernel'].sum()))
    20
    5

  References:
    Blalock et al., "What is the state of neural network pruning?", MLSys
    2020 (random pruning as the baseline of every comparison).
  """
  checks.check_fraction("sparsity", sparsity)
  checks.check_one_of("allocation", allocation, ("erk", "uniform"))

  def update_masks(count, weights, masks):
    del weights  # the scores are random
    leaves, treedef = jax.tree.flatten(masks)
    keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), count),
                            len(leaves))
    # Drawn flat and reshaped: XLA compiles random bits of a flat shape in a
    # fraction of the time it takes for a kernel's 2-D or 4-D shape.
    scores = [jnp.where(m, jax.random.uniform(k, (m.size,)).reshape(m.shape),
                        -1.0) for k, m in zip(keys, leaves)]
    return treedef.unflatten(_keep_largest(
        scores, schedules.value_at(sparsity, count), allocation))

  return masking.mask_updates(update_masks=update_masks, update_every=1,
                              begin_step=step, end_step=step, where=where)

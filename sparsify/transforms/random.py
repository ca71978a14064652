"""Random masks: drawn once at initialisation, or cut once at a step.

The baselines that say how much of a method's accuracy comes from *which*
weights it keeps: `random_sparsity` trains sparse from the start,
`random_pruning` prunes a trained (or training) network at random. Both
take a sparsity ``pattern`` (`sparsify.core.patterns`): random N:M keeps N
random weights of every M consecutive inputs, random blocks keep random
tiles (each tile scored by the norm of random numbers).
"""

from typing import Literal

import jax
import jax.numpy as jnp
import optax

from sparsify.core import checks
from sparsify.core import distributions
from sparsify.core import masking
from sparsify.core import paths
from sparsify.core import patterns
from sparsify.core import schedules
from sparsify.core import topk
from sparsify.core import types

Allocation = Literal["uniform", "erk"]

ALLOCATIONS = ("erk", "uniform")


def _keep_largest(scores, sparsity, allocation, pattern):
  """Per layer, a mask of its largest scores at its share of ``sparsity``."""
  if allocation == "erk":
    per_layer = [1.0 - d for d in distributions.erk_densities(
        [x.shape for x in scores], sparsity)]
  else:
    per_layer = [sparsity] * len(scores)
  if patterns.parse(pattern) == patterns.UNSTRUCTURED:
    # Uniform draws tie (float32 has 2**24 values in [0, 1)): exactly the
    # layer's count is kept, ties to the lower index.
    return [topk.top_k_exact([x], topk.keep_count(x.size, s))[0]
            for x, s in zip(scores, per_layer)]
  return [patterns.layer_mask(x, s, pattern)
          for x, s in zip(scores, per_layer)]


def random_masks(
    key: jax.Array,
    like: types.Params,
    sparsity: jax.typing.ArrayLike,
    allocation: Allocation = "uniform",
    pattern: patterns.Pattern | patterns.Structure = patterns.UNSTRUCTURED,
    within: types.Masks | None = None,
) -> types.Masks:
  """Masks keeping a uniformly random subset of every layer, of exact size.

  Layer :math:`l` keeps ``kept_l = size_l - round(s_l * size_l)`` weights
  (or, in a ``pattern``, the count that pattern keeps at :math:`s_l`), where
  :math:`s_l` is ``sparsity`` (``'uniform'``) or ERK's share of it
  (``'erk'``). The random scores are drawn flat and reshaped: XLA compiles
  random bits of a flat shape in a fraction of the time it takes for a
  kernel's 2-D or 4-D shape. With ``within``, the weights it prunes score
  0, below every other, so that the new masks only drop more weights.

  Args:
    key: a `jax.random` key; one key is split off it per layer.
    like: the layers (a pytree of arrays: only their shapes are read).
    sparsity: the overall fraction removed, a scalar (possibly traced).
    allocation: ``'uniform'`` or ``'erk'`` (not with N:M); static.
    pattern: ``'unstructured'``, ``'N:M'`` or ``(b1, b2)``; static.
    within: current masks shaped like ``like``, or ``None`` for a fresh
      draw.

  Returns:
    Boolean masks shaped like ``like``.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from sparsify.transforms import random as random_lib
    >>> masks = random_lib.random_masks(
    ...     jax.random.key(0), {'fc': jnp.ones((8, 3))}, 0.5, pattern='1:2')
    >>> masks['fc'].reshape(4, 2, 3).sum(axis=1)
    Array([[1, 1, 1],
           [1, 1, 1],
           [1, 1, 1],
           [1, 1, 1]], dtype=int32)
  """
  leaves, treedef = jax.tree.flatten(like)
  keys = jax.random.split(key, len(leaves))
  scores = [jax.random.uniform(k, (x.size,)).reshape(x.shape)
            for k, x in zip(keys, leaves)]
  if within is not None:
    scores = [jnp.where(m, x, 0.0) for m, x in zip(
        treedef.flatten_up_to(within), scores)]
  return treedef.unflatten(_keep_largest(scores, sparsity, allocation,
                                         pattern))


def random_sparsity(
    sparsity: types.ScalarOrSchedule,
    *,
    seed: jax.typing.ArrayLike = 0,
    allocation: Allocation = "uniform",
    pattern: patterns.Pattern = patterns.UNSTRUCTURED,
    where: paths.Where = None,
) -> optax.GradientTransformation:
  """Static random sparsity: a fixed random mask from step 0.

  Each selected layer :math:`l` keeps a uniformly random subset of its
  weights, of exactly ``kept_l`` entries::

    kept_l = size_l - round(s_l * size_l)

  where :math:`s_l` is ``sparsity`` for every layer
  (``'uniform'``) or the ERK allocation with the same total (``'erk'``, see
  `distributions.erk_densities`). The masks never change. In a
  ``pattern``, ``'N:M'`` keeps N random weights of every M consecutive
  inputs (``sparsity`` must be 1 - N/M, ``allocation`` ``'uniform'``) and
  ``(b1, b2)`` keeps ``tiles - round(s * tiles)`` random tiles.

  Args:
    sparsity: overall fraction of weights removed, in [0, 1): a number, a
      traced array or a schedule (read at step 0, when the masks are drawn).
    seed: seed of the random masks, an integer (may be traced, e.g. under
      `jax.vmap` over seeds).
    allocation: ``'uniform'`` or ``'erk'`` (not with N:M); static.
    pattern: ``'unstructured'``, ``'N:M'`` or a block shape ``(b1, b2)``;
      see `sparsify.core.patterns`. Static.
    where: which parameters to prune, a `paths.Where` (``None``: Dense and
      Conv kernels; see `masking.mask_updates`).

  Returns:
    An `optax.GradientTransformation`; place it last in the chain. The first
    update zeroes the masked initial weights.

  Raises:
    ValueError: a bad argument, in one line naming it; with N:M, a
      ``sparsity`` other than 1 - N/M, ERK, or (at ``init``) a layer whose
      input dimension is not a multiple of M.

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
  checks.check_one_of("allocation", allocation, ALLOCATIONS)
  structure = patterns.check_pattern(pattern, sparsity=sparsity,
                                     allocation=allocation,
                                     per_layer="uniform")

  def init_masks(params):
    patterns.check_layers(params, structure)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    scores = [jax.random.uniform(key, p.shape) for key, p in zip(keys, leaves)]
    return treedef.unflatten(_keep_largest(
        scores, schedules.value_at(sparsity, jnp.zeros([], jnp.int32)),
        allocation, structure))

  return masking.mask_updates(init_masks=init_masks, where=where)


def random_pruning(
    sparsity: types.ScalarOrSchedule,
    *,
    step: types.ScalarOrSchedule = 0,
    seed: jax.typing.ArrayLike = 0,
    allocation: Allocation = "uniform",
    pattern: patterns.Pattern = patterns.UNSTRUCTURED,
    where: paths.Where = None,
) -> optax.GradientTransformation:
  """One-shot random pruning: at ``step``, drop random weights.

  `magnitude_pruning` with random scores: at ``step`` each selected layer
  :math:`l` keeps ``kept_l = size_l - round(s_l * size_l)`` of its weights,
  a uniformly random subset (``s_l`` as in `random_sparsity`: ``sparsity``
  everywhere, or ERK's allocation of it). The masks are then fixed. A
  ``pattern`` works as in `random_sparsity`.

  Args:
    sparsity: overall fraction of weights removed, in [0, 1): a number, a
      traced array or a schedule (read at ``step``).
    step: the step at which to prune (a number, traced array or schedule).
    seed: seed of the random choice, an integer (may be traced).
    allocation: ``'uniform'`` or ``'erk'`` (not with N:M); static.
    pattern: ``'unstructured'``, ``'N:M'`` or a block shape ``(b1, b2)``;
      see `sparsify.core.patterns`. Static.
    where: which parameters to prune, a `paths.Where` (``None``: Dense and
      Conv kernels; see `masking.mask_updates`).

  Returns:
    An `optax.GradientTransformation`; place it last in the chain.

  Raises:
    ValueError: a bad argument, in one line naming it (see
      `random_sparsity`).

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
  checks.check_one_of("allocation", allocation, ALLOCATIONS)
  structure = patterns.check_pattern(pattern, sparsity=sparsity,
                                     allocation=allocation,
                                     per_layer="uniform")

  def init_masks(params):
    patterns.check_layers(params, structure)  # before the first step
    return masking.all_true(params)

  def update_masks(count, weights, masks):
    del weights  # the scores are random
    return random_masks(jax.random.fold_in(jax.random.key(seed), count),
                        masks, schedules.value_at(sparsity, count),
                        allocation, structure, within=masks)

  return masking.mask_updates(init_masks=init_masks, update_masks=update_masks,
                              update_every=1, begin_step=step, end_step=step,
                              where=where)

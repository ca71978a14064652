r"""Straight-through sparse training: a sparse forward pass, dense weights.

The model trains with masked weights, the gradients computed there update a
dense copy of them kept in the optimizer state, and the masks are recomputed
from the dense copy, so a pruned weight whose dense value grows comes back.
The training state always holds the masked weights: a step needs no extra
call, and the sparse model is the trained model.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from sparsify.core import checks
from sparsify.core import masking
from sparsify.core import paths
from sparsify.core import patterns
from sparsify.core import schedules
from sparsify.core import topk
from sparsify.core import types
from sparsify.transforms import random as random_lib

# ``(step, dense weights) -> masks``, jit-compatible.
DenseMasks = Callable[[jax.Array, types.Params], types.Masks]


def _straight_through(
    dense_masks: DenseMasks,
    structure: patterns.Structure,
    begin_step: types.ScalarOrSchedule,
    update_every: types.ScalarOrSchedule,
    where: paths.Where,
) -> optax.GradientTransformation:
  r"""The straight-through mechanism, with masks from ``dense_masks``.

  Its state is a `masking.MaskState` whose ``dense`` holds the dense copy of
  every selected weight (kept ones equal the parameters, bit for bit).
  `masking.mask_updates` with ``keep_pruned=True`` holds the same copy but
  recomputes the masks from the weights *before* the step's update (so that
  its steps without a recompute cost no more than static masks), which here
  would give :math:`m(\bar w_t) \odot \bar w_{t+1}`, a mask one step late;
  the dense copy is updated at every step anyway, so the masks are taken
  from :math:`\bar w_{t+1}` at no extra cost.
  """
  checks.check_integer("update_every", update_every, 1)
  checks.check_integer("begin_step", begin_step, 0)

  def init_fn(params):
    patterns.check_layers(params, structure)
    return masking.MaskState(
        count=jnp.zeros([], jnp.int32), masks=masking.all_true(params),
        dense=jax.tree.map(jnp.copy, params))  # own buffers

  def update_fn(updates, state, params=None):
    checks.require_params(params)
    step, old = state.count, state.masks
    dense = jax.tree.map(lambda d, u: (d + u).astype(d.dtype), state.dense,
                         updates)
    begin = schedules.value_at(begin_step, step)
    every = schedules.value_at(update_every, step)
    due = (step >= begin) & ((step - begin) % every == 0)
    masks = jax.lax.cond(due, lambda: dense_masks(step, dense), lambda: old)
    # Kept weights get the chain's update unchanged (they equal the dense
    # copy), revived ones jump to their dense value, pruned ones to zero:
    # params + updates == where(masks, dense, 0) exactly.
    updates = jax.tree.map(
        lambda u, p, d, m, o: jnp.where(m, jnp.where(o, u, d - p), -p),
        updates, params, dense, masks, old)
    return updates, masking.MaskState(
        count=optax.safe_increment(step), masks=masks, dense=dense)

  inner = optax.GradientTransformation(init_fn, update_fn)
  return optax.masked(inner, lambda params: paths.select(params, where))


def magnitude_ste(
    sparsity: types.ScalarOrSchedule,
    *,
    begin_step: types.ScalarOrSchedule = 0,
    update_every: types.ScalarOrSchedule = 1,
    allocation: topk.Allocation = "layerwise",
    pattern: patterns.Pattern = patterns.UNSTRUCTURED,
    where: paths.Where = None,
) -> optax.GradientTransformation:
  r"""Magnitude pruning with straight-through training of the pruned weights.

  A dense copy :math:`\bar w` of the selected weights lives in the optimizer
  state; the model's weights are :math:`w = m \odot \bar w`. With
  :math:`u_t` the chain's update (from gradients taken at the masked
  :math:`w_t`: the straight-through estimate of the gradient at
  :math:`\bar w_t`),

  .. math::
    \bar w_{t+1} = \bar w_t + u_t, \qquad
    w_{t+1} = m_{t+1} \odot \bar w_{t+1},

  where :math:`m_{t+1}` keeps the largest :math:`|\bar w_{t+1}|` at
  sparsity :math:`s` (in ``pattern``, per layer or global) at a mask update
  (:math:`t \ge t_0` and :math:`(t - t_0) \bmod k = 0`) and is
  :math:`m_t` otherwise; before :math:`t_0` every weight is kept. A pruned
  weight keeps its dense value and its updates, and comes back as soon as it
  is among the largest again; the parameters are always exactly masked.

  jaxpruner's ``SteMagnitudePruning`` computes the same masks (with
  ``update_every=1``, the forward pass of every step :math:`t \ge 1` sees
  :math:`m(\bar w_t) \odot \bar w_t` in both), but keeps the dense weights
  as the model's parameters and masks them in a ``pre_forward_update`` call
  that every trainer must make; here the training state holds the masked
  weights and the dense copy is optimizer state (one extra copy of the
  selected weights), so the first forward pass sees the initial weights
  unmasked and no call is needed. SR-STE's decay of the pruned weights (Zhou
  et al.) is not included.

  Every numeric argument is a number, a traced array or a schedule of the
  step count, so `optax.inject_hyperparams` can trace all of them;
  ``allocation`` and ``pattern`` are static.

  Args:
    sparsity: fraction :math:`s` of weights removed, in [0, 1) (read at each
      mask update); with ``'N:M'`` it must be 1 - N/M.
    begin_step: first mask update :math:`t_0`.
    update_every: steps between mask updates :math:`k`.
    allocation: ``'layerwise'`` or ``'global'`` (not with N:M); static.
    pattern: ``'unstructured'``, ``'N:M'`` or a block shape ``(b1, b2)``;
      see `sparsify.core.patterns`. Static.
    where: which parameters to prune, a `paths.Where` (``None``: Dense and
      Conv kernels; see `masking.mask_updates`).

  Returns:
    An `optax.GradientTransformation`; place it last in the chain. Its state
    is a `masking.MaskState` whose ``dense`` is the dense copy.

  Raises:
    ValueError: a bad argument, in one line naming it (for N:M, see
      `gradual_magnitude_pruning`).

  Example:
    Half of a 4x1 kernel is kept; the gradient pushes the first, pruned
    weight up until it passes the third, which it replaces:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from sparsify.transforms import ste
    >>> params = {'fc': {'kernel': jnp.array([[1.0], [2.0], [3.0], [4.25]])}}
    >>> grads = {'fc': {'kernel': jnp.array([[-1.5], [0.0], [0.0], [0.0]])}}
    >>> tx = optax.chain(optax.sgd(1.0), ste.magnitude_ste(0.5))
    >>> state, update = tx.init(params), jax.jit(tx.update)
    >>> for _ in range(2):
    ...   updates, state = update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    ...   print(params['fc']['kernel'][:, 0])
    [0.   0.   3.   4.25]
    [4.   0.   0.   4.25]

  References:
    Bengio, Léonard & Courville, "Estimating or propagating gradients
    through stochastic neurons for conditional computation", 2013
    (the straight-through estimator). https://arxiv.org/abs/1308.3432
    Zhou et al., "Learning N:M fine-grained structured sparse neural networks
    from scratch", ICLR 2021 (N:M with the STE, and SR-STE).
    Lee et al., "JaxPruner: a concise library for sparsity research", 2023.
  """
  checks.check_fraction("sparsity", sparsity)
  checks.check_one_of("allocation", allocation, topk.ALLOCATIONS)
  structure = patterns.check_pattern(pattern, sparsity=sparsity,
                                     allocation=allocation)

  def dense_masks(step, dense):
    scores = jax.tree.map(jnp.abs, dense)
    return patterns.select(scores, schedules.value_at(sparsity, step),
                           structure, allocation)

  return _straight_through(dense_masks, structure, begin_step, update_every,
                           where)


def random_ste(
    sparsity: types.ScalarOrSchedule,
    *,
    seed: jax.typing.ArrayLike = 0,
    begin_step: types.ScalarOrSchedule = 0,
    update_every: types.ScalarOrSchedule = 1,
    allocation: random_lib.Allocation = "uniform",
    pattern: patterns.Pattern = patterns.UNSTRUCTURED,
    where: paths.Where = None,
) -> optax.GradientTransformation:
  r"""Random masks with straight-through training: a fresh mask each update.

  As `magnitude_ste`, a dense copy :math:`\bar w` trains on the gradients
  taken at the masked weights,

  .. math::
    \bar w_{t+1} = \bar w_t + u_t, \qquad
    w_{t+1} = m_{t+1} \odot \bar w_{t+1},

  but :math:`m_{t+1}` is a fresh uniformly random mask at every mask update
  (:math:`t \ge t_0`, :math:`(t - t_0) \bmod k = 0`), of exactly
  ``size - round(s * size)`` kept weights per layer (``'uniform'``) or ERK's
  share (``'erk'``), or in ``pattern``; it does not depend on the previous
  mask, and pruned weights come back with their dense values. The control
  for `magnitude_ste`: the same training with masks that know nothing of the
  weights.

  jaxpruner's ``SteRandomPruning`` also draws fresh random scores at every
  step (from the seed folded with the step count), in the parameters' dtype
  and at every forward pass; here they are float32 and drawn at each mask
  update, so ``update_every`` can keep a mask for several steps.

  Every numeric argument is a number, a traced array or a schedule of the
  step count, so `optax.inject_hyperparams` can trace all of them;
  ``allocation`` and ``pattern`` are static.

  Args:
    sparsity: fraction :math:`s` of weights removed, in [0, 1) (read at each
      mask update); with ``'N:M'`` it must be 1 - N/M.
    seed: seed of the random masks, an integer (may be traced); the mask of
      step :math:`t` comes from the seed folded with :math:`t`.
    begin_step: first mask update :math:`t_0`.
    update_every: steps between mask updates :math:`k`.
    allocation: ``'uniform'`` or ``'erk'`` (not with N:M); static.
    pattern: ``'unstructured'``, ``'N:M'`` or a block shape ``(b1, b2)``;
      see `sparsify.core.patterns`. Static.
    where: which parameters to prune, a `paths.Where` (``None``: Dense and
      Conv kernels; see `masking.mask_updates`).

  Returns:
    An `optax.GradientTransformation`; place it last in the chain. Its state
    is a `masking.MaskState` whose ``dense`` is the dense copy.

  Raises:
    ValueError: a bad argument, in one line naming it.

  Example:
    Every step keeps 5 of 20 weights, a different 5 each time:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import sparsify
    >>> from sparsify.transforms import ste
    >>> params = {'fc': {'kernel': jnp.ones((4, 5))}}
    >>> tx = optax.chain(optax.sgd(0.1), ste.random_ste(0.75, seed=0))
    >>> state, update = tx.init(params), jax.jit(tx.update)
    >>> kept = []
    >>> for _ in range(2):
    ...   updates, state = update(params, state, params)
    ...   params = optax.apply_updates(params, updates)
    ...   kept.append(sparsify.find_masks(state)['fc']['kernel'])
    >>> [int(k.sum()) for k in kept], bool((kept[0] == kept[1]).all())
    ([5, 5], False)

  References:
    Bengio, Léonard & Courville, "Estimating or propagating gradients
    through stochastic neurons for conditional computation", 2013.
    https://arxiv.org/abs/1308.3432
    Lee et al., "JaxPruner: a concise library for sparsity research", 2023.
  """
  checks.check_fraction("sparsity", sparsity)
  checks.check_one_of("allocation", allocation, random_lib.ALLOCATIONS)
  structure = patterns.check_pattern(pattern, sparsity=sparsity,
                                     allocation=allocation,
                                     per_layer="uniform")

  def dense_masks(step, dense):
    key = jax.random.fold_in(jax.random.key(seed), step)
    return random_lib.random_masks(key, dense,
                                   schedules.value_at(sparsity, step),
                                   allocation, structure)

  return _straight_through(dense_masks, structure, begin_step, update_every,
                           where)

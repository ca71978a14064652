"""Magnitude pruning: gradual (GMP) and one-shot, on the shared mask mechanism.

Scores are weight magnitudes; the selection of the largest is the sort-free
radix selection of `sparsify.core.topk`, in the sparsity pattern of
`sparsify.core.patterns` (unstructured, N:M or blocks).
"""

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


def gradual_magnitude_pruning(
    sparsity: types.ScalarOrSchedule,
    *,
    begin_step: types.ScalarOrSchedule,
    end_step: types.ScalarOrSchedule,
    update_every: types.ScalarOrSchedule = 100,
    initial_sparsity: types.ScalarOrSchedule = 0.0,
    power: types.ScalarOrSchedule = 3.0,
    allocation: topk.Allocation = "layerwise",
    pattern: patterns.Pattern = patterns.UNSTRUCTURED,
    where: paths.Where = None,
) -> optax.GradientTransformation:
  r"""Gradual magnitude pruning with the polynomial (cubic) schedule.

  Every ``update_every`` steps between ``begin_step`` (:math:`t_0`) and
  ``end_step`` (:math:`t_1`) the weights of smallest magnitude are masked so
  that the sparsity follows

  .. math::
    s_t = s_f + (s_i - s_f)\left(1 - \frac{t - t_0}{t_1 - t_0}\right)^3,

  and stays at :math:`s_f` after :math:`t_1`. Masks only grow: a pruned
  weight has magnitude zero and is never chosen again.

  With a ``pattern`` the weights go in its structure (`patterns.select`):
  ``'N:M'`` keeps :math:`\max(N, M - \mathrm{round}(s_t M))` of every
  :math:`M` consecutive inputs, so ``'2:4'`` with :math:`s_f = 0.5` goes
  4:4, 3:4, 2:4 and ends a valid 2:4 kernel (:math:`s_f` must be
  :math:`1 - N/M`); a block shape ``(b1, b2)`` prunes whole tiles of the
  kernel's 2-D view, lowest L2 norm first, and :math:`s_t` counts tiles.

  Every numeric argument is a number, a traced array or a schedule of the
  step count (read at each mask update), so `optax.inject_hyperparams` can
  trace all of them; ``allocation`` and ``pattern`` are static.

  Args:
    sparsity: final sparsity :math:`s_f` in [0, 1).
    begin_step: first pruning step :math:`t_0`.
    end_step: last pruning step :math:`t_1 \ge t_0`.
    update_every: steps between mask updates (:math:`\Delta t`).
    initial_sparsity: :math:`s_i`.
    power: exponent of the schedule (3 in the paper).
    allocation: ``'layerwise'`` (every layer reaches :math:`s_t`) or
      ``'global'`` (one threshold over all selected layers; refused with
      N:M, whose groups lie within a layer); static.
    pattern: ``'unstructured'``, ``'N:M'`` (along each kernel's input axis;
      every selected layer's input dimension must be a multiple of M) or a
      block shape ``(b1, b2)``; see `sparsify.core.patterns`. Static.
    where: which parameters to prune, a `paths.Where` (``None``: Dense and
      Conv kernels; see `masking.mask_updates`).

  Returns:
    An `optax.GradientTransformation`; place it last in the chain.

  Raises:
    ValueError: a bad argument, in one line naming it; with N:M, a final
      ``sparsity`` other than 1 - N/M, global allocation, or (at ``init``)
      a layer whose input dimension is not a multiple of M.

  Example:
    With ``power=1`` the sparsity ramps linearly to 0.75 over steps 0 to 2;
    the zeros of a 4x4 kernel after each step:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import sparsify
    >>> params = {'fc': {'kernel': jnp.arange(1.0, 17.0).reshape(4, 4)}}
    >>> grads = {'fc': {'kernel': jnp.zeros((4, 4))}}
    >>> tx = optax.chain(optax.sgd(0.1), sparsify.gradual_magnitude_pruning(
    ...     0.75, begin_step=0, end_step=2, update_every=1, power=1.0))
    >>> state, update = tx.init(params), jax.jit(tx.update)
    >>> for _ in range(3):
    ...   updates, state = update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    ...   print(int((params['fc']['kernel'] == 0).sum()))
    0
    6
    12

    The same schedule to 50 % in the 2:4 pattern: every 4 inputs of each
    output keep 4, then 3, then 2 weights:

    >>> params = {'fc': {'kernel': jnp.arange(1.0, 17.0).reshape(4, 4)}}
    >>> tx = optax.chain(optax.sgd(0.1), sparsify.gradual_magnitude_pruning(
    ...     0.5, begin_step=0, end_step=2, update_every=1, power=1.0,
    ...     pattern='2:4'))
    >>> state, update = tx.init(params), jax.jit(tx.update)
    >>> for _ in range(3):
    ...   updates, state = update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    ...   print((params['fc']['kernel'] != 0).sum(axis=0))
    [4 4 4 4]
    [3 3 3 3]
    [2 2 2 2]

  References:
    Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of
    pruning for model compression", 2017. https://arxiv.org/abs/1710.01878
  """
  checks.check_fraction("sparsity", sparsity)
  checks.check_fraction("initial_sparsity", initial_sparsity)
  checks.check_window(begin_step, end_step)
  checks.check_one_of("allocation", allocation, topk.ALLOCATIONS)
  structure = patterns.check_pattern(pattern, sparsity=sparsity,
                                     allocation=allocation)

  def init_masks(params):
    patterns.check_layers(params, structure)  # before the first step
    return masking.all_true(params)

  def update_masks(step, weights, masks):
    ramp = schedules.polynomial_ramp(*(schedules.value_at(v, step) for v in (
        initial_sparsity, sparsity, begin_step, end_step, power)))
    scores = jax.tree.map(lambda w, m: jnp.abs(jnp.where(m, w, 0)), weights,
                          masks)
    return patterns.select(scores, ramp(step), structure, allocation)

  return masking.mask_updates(
      init_masks=init_masks, update_masks=update_masks,
      update_every=update_every, begin_step=begin_step, end_step=end_step,
      where=where)

def magnitude_pruning(
    sparsity: types.ScalarOrSchedule,
    *,
    step: types.ScalarOrSchedule = 0,
    allocation: topk.Allocation = "layerwise",
    pattern: patterns.Pattern = patterns.UNSTRUCTURED,
    where: paths.Where = None,
) -> optax.GradientTransformation:
  """One-shot magnitude pruning: at ``step``, drop the smallest weights.

  At ``step`` each selected layer (or, with ``'global'``, all of them
  pooled) keeps the weights whose magnitude is at least ``q``, that of its
  ``k``-th largest weight::

    mask = |W| >= q,    k = size - round(sparsity * size)

  The masks are then kept fixed for the rest of training (the pruned
  weights stay exactly zero, the others keep training). With a ``pattern``
  (see `gradual_magnitude_pruning`), ``'N:M'`` keeps the N largest of every
  M consecutive inputs (``sparsity`` must be 1 - N/M) and ``(b1, b2)`` the
  tiles of largest L2 norm.

  Args:
    sparsity: fraction of weights to remove, in [0, 1); a number, a traced
      array or a schedule (read at ``step``).
    step: the step at which to prune (a number, traced array or schedule).
    allocation: ``'layerwise'`` or ``'global'`` (not with N:M); static.
    pattern: ``'unstructured'``, ``'N:M'`` or a block shape ``(b1, b2)``;
      see `sparsify.core.patterns`. Static.
    where: which parameters to prune, a `paths.Where` (see
      `masking.mask_updates`).

  Returns:
    An `optax.GradientTransformation`; place it last in the chain.

  Raises:
    ValueError: a bad argument, in one line naming it (see
      `gradual_magnitude_pruning`).

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import sparsify
    >>> params = {'fc': {'kernel': jnp.array([[0.1, -2.0], [3.0, -0.4]])}}
    >>> tx = optax.chain(optax.sgd(0.1), sparsify.magnitude_pruning(0.5))
    >>> grads = {'fc': {'kernel': jnp.zeros((2, 2))}}
    >>> updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    >>> optax.apply_updates(params, updates)['fc']['kernel']
    Array([[ 0., -2.],
           [ 3.,  0.]], dtype=float32)

  References:
    Han, Pool, Tran & Dally, "Learning both weights and connections for
    efficient neural networks", NeurIPS 2015.
  """
  return gradual_magnitude_pruning(
      sparsity, begin_step=step, end_step=step, initial_sparsity=sparsity,
      update_every=1, allocation=allocation, pattern=pattern, where=where)


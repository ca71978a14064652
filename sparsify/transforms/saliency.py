r"""Gradient saliency pruning: one-shot SNIP, and gradual with GMP's schedule.

The score of a weight is its saliency :math:`|g \odot w|`, the first-order
change of the loss when it is removed. Both methods need the raw gradients,
so they wrap the optimizer (`gradients.masked_optimizer`) as RigL does; the
selection is the sort-free radix selection of `sparsify.core.topk`, with
exact counts (`topk.top_k_exact`), or a sparsity ``pattern`` of
`sparsify.core.patterns` (N:M groups, L2-norm blocks) as GMP takes it.
"""

import jax
import jax.numpy as jnp
import optax

from sparsify.core import checks
from sparsify.core import gradients
from sparsify.core import masking
from sparsify.core import paths
from sparsify.core import patterns
from sparsify.core import schedules
from sparsify.core import topk
from sparsify.core import types


def saliency(grads: types.Params, weights: types.Params) -> types.Params:
  r"""The saliency :math:`|g \odot w|` of every weight, in float32.

  Args:
    grads: gradients shaped like ``weights``.
    weights: the weights.

  Returns:
    A float32 pytree shaped like ``weights``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sparsify.transforms import saliency
    >>> saliency.saliency(jnp.array([2.0, -1.0]), jnp.array([0.5, 3.0]))
    Array([1., 3.], dtype=float32)
  """
  return jax.tree.map(
      lambda g, w: jnp.abs(g.astype(jnp.float32) * w.astype(jnp.float32)),
      grads, weights)


def keep_most_salient(scores: types.Params, masks: types.Masks,
                      sparsity: jax.typing.ArrayLike,
                      allocation: topk.Allocation = "layerwise",
                      pattern: patterns.Pattern = patterns.UNSTRUCTURED
                      ) -> types.Masks:
  """Masks keeping the kept weights of largest score, at ``sparsity``.

  Exactly ``size - round(sparsity * size)`` weights per layer
  (``'layerwise'``) or of all layers pooled (``'global'``) are kept, ties
  to the first in flattening order; only weights kept by ``masks`` are
  eligible (masks only shrink), those of score zero included. In another
  ``pattern`` the selection is `patterns.select`'s: N:M groups (ties to the
  lower input index) or the tiles of largest L2 norm (tiles tied with the
  last one kept are all kept).

  Args:
    scores: non-negative scores of the selected weights.
    masks: their current masks.
    sparsity: the fraction to remove (may be traced).
    allocation: ``'layerwise'`` or ``'global'``.
    pattern: ``'unstructured'``, ``'N:M'`` or a block shape ``(b1, b2)``.

  Returns:
    Masks shaped like ``scores``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sparsify.transforms import saliency
    >>> saliency.keep_most_salient({'a': jnp.array([0.0, 3.0, 0.0, 1.0])},
    ...                            {'a': jnp.array([True, True, True, False])},
    ...                            0.5)
    {'a': Array([ True,  True, False, False], dtype=bool)}
  """
  leaves, treedef = jax.tree.flatten(scores)
  eligible = [jnp.where(m, jnp.maximum(s, gradients.TINY), 0.0)
              for s, m in zip(leaves, jax.tree.leaves(masks))]
  structure = patterns.parse(pattern)
  if structure != patterns.UNSTRUCTURED:
    return patterns.select(treedef.unflatten(eligible), sparsity, structure,
                           allocation)
  if allocation == "global":
    total = sum(s.size for s in leaves)
    return treedef.unflatten(
        topk.top_k_exact(eligible, topk.keep_count(total, sparsity)))
  checks.check_one_of("allocation", allocation, topk.ALLOCATIONS)
  return treedef.unflatten([
      topk.top_k_exact([s], topk.keep_count(s.size, sparsity))[0]
      for s in eligible])


def _zeros(params):
  return jax.tree.map(lambda w: jnp.zeros(jnp.shape(w), jnp.float32), params)


def _all_true_fitting(structure):
  """Initial masks that keep everything, once the layers fit ``structure``."""

  def init_masks(params):
    patterns.check_layers(params, structure)
    return masking.all_true(params)

  return init_masks


def snip(
    optimizer: optax.GradientTransformation,
    *,
    sparsity: types.ScalarOrSchedule,
    batches: types.ScalarOrSchedule = 1,
    allocation: topk.Allocation = "layerwise",
    pattern: patterns.Pattern = patterns.UNSTRUCTURED,
    where: paths.Where = None,
) -> optax.GradientTransformation:
  r"""SNIP: prune once, at initialisation, by the saliency of a few batches.

  The saliency of the first :math:`B` = ``batches`` gradients, all taken at
  the initial weights :math:`w_0`,

  .. math::
    S = \sum_{b < B} |g_b \odot w_0|,

  decides the masks once, at the :math:`B`-th update (step :math:`B - 1`):
  each layer (``'layerwise'``) or all selected layers pooled (``'global'``)
  keep exactly their ``size - round(sparsity * size)`` weights of largest
  :math:`S` (ties to the first in row-major order). The masks are then
  fixed. To keep every gradient at :math:`w_0`, the first :math:`B - 1`
  updates are zero and the optimizer does not run; the :math:`B`-th update
  prunes and takes the optimizer's first step on the last batch. With
  :math:`B = 1` (the paper's single batch) no score is stored; otherwise the
  state holds one float32 copy of the selected weights for :math:`S`.

  Args:
    optimizer: the optimizer; this transform replaces it in the training
      step and receives the raw gradients.
    sparsity: fraction of weights removed, in [0, 1): a number, a traced
      array or a schedule (read at step :math:`B - 1`).
    batches: :math:`B \ge 1`, how many batches' gradients the saliency sums.
    allocation: ``'layerwise'`` or ``'global'`` (the paper's); static.
    pattern: ``'unstructured'``, ``'N:M'`` (``sparsity`` must be 1 - N/M,
      ``'layerwise'`` only) or a block shape ``(b1, b2)``, as in
      `patterns.select`; static.
    where: which parameters to prune, a `paths.Where` (``None``: Dense and
      Conv kernels).

  Returns:
    An `optax.GradientTransformation`: the whole optimizer, to use alone.

  Example:
    The saliencies of the 2x2 kernel are 0.5, 0.2, 0.0, 0.75: at sparsity
    0.5 the first update keeps the two largest and trains them:

    >>> import jax.numpy as jnp
    >>> import optax
    >>> from sparsify.transforms import saliency
    >>> params = {'fc': {'kernel': jnp.array([[1.0, -2.0], [4.0, 3.0]])}}
    >>> grads = {'fc': {'kernel': jnp.array([[0.5, 0.1], [0.0, -0.25]])}}
    >>> tx = saliency.snip(optax.sgd(1.0), sparsity=0.5)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> optax.apply_updates(params, updates)['fc']['kernel']
    Array([[0.5 , 0.  ],
           [0.  , 3.25]], dtype=float32)

  References:
    Lee, Ajanthan & Torr, "SNIP: single-shot network pruning based on
    connection sensitivity", ICLR 2019. https://arxiv.org/abs/1810.02340
  """
  checks.check_fraction("sparsity", sparsity)
  checks.check_integer("batches", batches, 1)
  checks.check_one_of("allocation", allocation, topk.ALLOCATIONS)
  structure = patterns.check_pattern(pattern, sparsity=sparsity,
                                     allocation=allocation)
  last = lambda count: schedules.value_at(batches, count) - 1
  one_batch = checks.is_number(batches) and batches == 1

  def update_scores(step, grads, weights, scores):
    summing = step <= last(step)
    return jax.tree.map(lambda s, x: jnp.where(summing, s + x, s), scores,
                        saliency(grads, weights))

  def update_masks(step, weights, masks, grads, scores):
    if one_batch:
      scores = saliency(grads, weights)
    return keep_most_salient(scores, masks,
                             schedules.value_at(sparsity, step), allocation,
                             structure)

  return gradients.masked_optimizer(
      optimizer, update_masks, init_masks=_all_true_fitting(structure),
      init_scores=None if one_batch else _zeros,
      update_scores=None if one_batch else update_scores, begin_step=last,
      end_step=last, hold_steps=None if one_batch else last, where=where)


def gradual_saliency_pruning(
    optimizer: optax.GradientTransformation,
    *,
    sparsity: types.ScalarOrSchedule,
    begin_step: types.ScalarOrSchedule,
    end_step: types.ScalarOrSchedule,
    update_every: types.ScalarOrSchedule = 100,
    initial_sparsity: types.ScalarOrSchedule = 0.0,
    power: types.ScalarOrSchedule = 3.0,
    decay: types.ScalarOrSchedule = 0.9,
    allocation: topk.Allocation = "layerwise",
    pattern: patterns.Pattern = patterns.UNSTRUCTURED,
    where: paths.Where = None,
) -> optax.GradientTransformation:
  r"""Gradual pruning with GMP's polynomial schedule, by saliency.

  `gradual_magnitude_pruning` with the score :math:`|w|` replaced by an
  exponential moving average of the saliency, updated at every step from the
  raw gradient,

  .. math::
    S_t = \beta S_{t-1} + (1 - \beta)\,|g_t \odot w_t|, \quad S_{-1} = 0,

  (``decay`` :math:`\beta`; 0 uses the step's own saliency and stores
  nothing). Every ``update_every`` steps from ``begin_step`` to
  ``end_step`` the kept weights of smallest :math:`S_t` are pruned so that
  each layer (or all of them pooled) reaches exactly

  .. math::
    s_t = s_f + (s_i - s_f)\left(1 - \frac{t - t_0}{t_1 - t_0}\right)^p,

  (`schedules.polynomial_ramp`, as in GMP); masks only shrink, ties go to
  the first weight in row-major order. The average carries no bias
  correction: it would scale every score by the same factor and leave the
  ranking unchanged. An average over steps ranks by the saliency of recent
  batches rather than one, at the cost of one float32 copy of the selected
  weights.

  Args:
    optimizer: the optimizer; this transform replaces it in the training
      step and receives the raw gradients.
    sparsity: final sparsity :math:`s_f` in [0, 1).
    begin_step: first pruning step :math:`t_0`.
    end_step: last pruning step :math:`t_1 \ge t_0`.
    update_every: steps between mask updates.
    initial_sparsity: :math:`s_i`.
    power: the schedule's exponent :math:`p` (3 in Zhu & Gupta).
    decay: :math:`\beta` in [0, 1), the average's decay per step.
    allocation: ``'layerwise'`` or ``'global'``; static.
    pattern: ``'unstructured'``, ``'N:M'`` (``sparsity`` must be 1 - N/M,
      ``'layerwise'`` only) or a block shape ``(b1, b2)``, as in
      `patterns.select`; static.
    where: which parameters to prune, a `paths.Where` (``None``: Dense and
      Conv kernels).

  Returns:
    An `optax.GradientTransformation`: the whole optimizer, to use alone.

  Example:
    With ``power=1`` the sparsity ramps to 0.75 over steps 0 to 2:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from sparsify.transforms import saliency
    >>> params = {'fc': {'kernel': jnp.arange(1.0, 17.0).reshape(4, 4)}}
    >>> grads = {'fc': {'kernel': jnp.ones((4, 4))}}
    >>> tx = saliency.gradual_saliency_pruning(
    ...     optax.sgd(0.0), sparsity=0.75, begin_step=0, end_step=2,
    ...     update_every=1, power=1.0)
    >>> state, update = tx.init(params), jax.jit(tx.update)
    >>> for _ in range(3):
    ...   updates, state = update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    ...   print(int((params['fc']['kernel'] == 0).sum()))
    0
    6
    12

  References:
    Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of
    pruning for model compression", 2017 (the schedule); Molchanov, Tyree,
    Karras, Aila & Kautz, "Pruning convolutional neural networks for
    resource efficient inference", ICLR 2017 (the first-order saliency).
  """
  checks.check_fraction("sparsity", sparsity)
  checks.check_fraction("initial_sparsity", initial_sparsity)
  checks.check_fraction("decay", decay)
  checks.check_window(begin_step, end_step)
  checks.check_one_of("allocation", allocation, topk.ALLOCATIONS)
  structure = patterns.check_pattern(pattern, sparsity=sparsity,
                                     allocation=allocation)
  current = checks.is_number(decay) and decay == 0

  def update_scores(step, grads, weights, scores):
    beta = jnp.asarray(schedules.value_at(decay, step), jnp.float32)
    return jax.tree.map(lambda s, x: beta * s + (1.0 - beta) * x, scores,
                        saliency(grads, weights))

  def update_masks(step, weights, masks, grads, scores):
    if current:
      scores = saliency(grads, weights)
    ramp = schedules.polynomial_ramp(*(schedules.value_at(v, step) for v in (
        initial_sparsity, sparsity, begin_step, end_step, power)))
    return keep_most_salient(scores, masks, ramp(step), allocation,
                             structure)

  return gradients.masked_optimizer(
      optimizer, update_masks, init_masks=_all_true_fitting(structure),
      init_scores=None if current else _zeros,
      update_scores=None if current else update_scores,
      update_every=update_every, begin_step=begin_step, end_step=end_step,
      where=where)

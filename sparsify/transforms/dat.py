"""DAT: dynamic and adaptive threshold pruning, from scratch."""

from typing import Literal

import jax
import jax.numpy as jnp
import optax

from sparsify.core import checks
from sparsify.core import masking
from sparsify.core import paths
from sparsify.core import schedules
from sparsify.core import topk
from sparsify.core import types

TARGET_MODES = ("clamp", "solve", "global")


def layer_threshold(weights: jax.Array, mask: jax.Array,
                    c: jax.typing.ArrayLike) -> jax.Array:
  r""":math:`\mu + c\,\sigma` of the magnitudes of the surviving weights.

  :math:`\mu = \sum_i M_i |w_i| / n` and :math:`\sigma^2 = \sum_i M_i
  (|w_i| - \mu)^2 / n`, with :math:`n = \max(\sum_i M_i, 1)`.

  Args:
    weights: the layer's weights.
    mask: booleans shaped like ``weights``; `True` marks the weights the
      statistics are measured on.
    c: the multiplier of the standard deviation.

  Returns:
    The threshold, a float32 scalar.

  Example:
    >>> import jax.numpy as jnp
    >>> from sparsify.transforms import dat
    >>> w = jnp.array([-1.0, 3.0, 0.5, -5.0])
    >>> float(dat.layer_threshold(w, jnp.array([True, True, False, True]), 0.0))
    3.0
  """
  magnitude = jnp.abs(weights)
  n = jnp.maximum(mask.sum(), 1)
  mean = jnp.where(mask, magnitude, 0).sum() / n
  var = jnp.where(mask, (magnitude - mean) ** 2, 0).sum() / n
  return mean + c * jnp.sqrt(var)


def dynamic_adaptive_threshold(
    c: types.ScalarOrSchedule = 1.0,
    *,
    begin_step: types.ScalarOrSchedule,
    end_step: types.ScalarOrSchedule,
    update_every: types.ScalarOrSchedule = 100,
    power: types.ScalarOrSchedule = 3.0,
    target_sparsity: types.ScalarOrSchedule | None = None,
    target_mode: Literal["clamp", "solve", "global"] = "clamp",
    recovery: bool = False,
    statistics: Literal["surviving", "all"] = "surviving",
    prune_factor: types.ScalarOrSchedule = 0.9,
    revive_factor: types.ScalarOrSchedule = 1.1,
    where: paths.Where = None,
) -> optax.GradientTransformation:
  r"""Dynamic and adaptive threshold (DAT) pruning during training from scratch.

  Every ``update_every`` steps between ``begin_step`` (:math:`t_0`) and
  ``end_step`` (:math:`t_1`), each selected layer :math:`l` gets the
  threshold

  .. math::
    \tau_l(t) = f(t)\,\bigl(\mu_l + c\,\sigma_l\bigr),
    \qquad f(t) = 1 - \Bigl(1 - \tfrac{t - t_0}{t_1 - t_0}\Bigr)^{p},

  where :math:`\mu_l, \sigma_l` are the mean and standard deviation of
  :math:`|w|` over the layer's surviving weights (*adaptive*: each layer
  follows its own statistics) and :math:`f` rises from 0 to 1 (*dynamic*: the
  network is pruned gradually while it trains). A weight is pruned when
  :math:`|w| < \tau_l`. Because :math:`\mu_l, \sigma_l` are re-measured on
  the survivors, the threshold keeps climbing while :math:`f` ramps up, and
  with no target (below) sparsity can run far past what :math:`c` suggests.
  ``statistics='all'`` measures them over the whole layer instead, pruned
  weights counting as zeros, which makes the rule self-limiting.

  A target sparsity :math:`s^*` may be asked for instead of relying on
  :math:`c` alone. With :math:`q_l` the magnitude below which a fraction
  :math:`s^*` of the layer lies (found exactly, without sorting):

  * ``'clamp'``: :math:`\tau_l = \min(f(t)(\mu_l + c\sigma_l),\ q_l)`; the
    layer never passes :math:`s^*` and reaches it if :math:`c` is large
    enough.
  * ``'solve'``: :math:`c` is solved per layer at every update so that the
    full threshold equals :math:`q_l`, i.e. :math:`\tau_l = f(t)\,q_l`; every
    layer reaches :math:`s^*` at :math:`t_1`.
  * ``'global'``: one factor :math:`\alpha` for all layers,
    :math:`\tau_l = f(t)\,\alpha\,(\mu_l + c\sigma_l)`, with
    :math:`\alpha` solved so that a fraction :math:`s^*` of all selected
    weights lies below their layer's full threshold (the exact
    :math:`s^*`-quantile of :math:`|w| / (\mu_l + c\sigma_l)` pooled over
    layers). The statistics decide how the budget is shared: a layer whose
    weights are spread out (large :math:`\sigma_l / \mu_l`) loses more of
    them, and small layers are not forced to the same sparsity as large
    ones. The network reaches :math:`s^*` at :math:`t_1`.

  With ``recovery=True`` (hysteresis, as in Dynamic Network Surgery) pruned
  weights keep training in the optimizer state; a kept weight is pruned when
  :math:`|w| < a\tau_l` and a pruned one revived when :math:`|\hat w| >
  b\tau_l` (:math:`a` = ``prune_factor``, :math:`b` = ``revive_factor``);
  at :math:`t_1` the band closes (:math:`a = b = 1`), so the final masks are
  exactly the threshold's.
  Without it, masks only grow.

  This rule is a reconstruction: the paper's text fixes that the threshold is
  per layer, follows the layer's weight statistics and changes during
  training from scratch; the exact formula above is our choice.

  Every numeric argument is a number, a traced array or a schedule of the
  step count (read at each mask update), so `optax.inject_hyperparams` can
  trace all of them; ``target_mode``, ``recovery`` and ``statistics`` are
  static (``target_sparsity=None`` too: it is not a number).

  Args:
    c: aggressiveness; larger prunes more.
    begin_step: first mask update, :math:`t_0`.
    end_step: last mask update, :math:`t_1`; masks stay fixed afterwards.
    update_every: steps between mask updates.
    power: exponent :math:`p` of the ramp.
    target_sparsity: optional :math:`s^*` in [0, 1).
    target_mode: ``'clamp'``, ``'solve'`` or ``'global'``, how :math:`s^*`
      is used.
    recovery: let pruned weights train on and come back.
    statistics: ``'surviving'`` (default) or ``'all'``: which weights
      :math:`\mu_l, \sigma_l` are measured on.
    prune_factor: :math:`a`, with recovery.
    revive_factor: :math:`b`, with recovery.
    where: which parameters to prune, a `paths.Where` (``None``: Dense and
      Conv kernels; see `masking.mask_updates`).

  Returns:
    An `optax.GradientTransformation`; place it last in the chain.

  Example:
    A threshold that reaches its full value at step 1, with half of the
    layer as the target; the six smallest of twelve weights are pruned:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import sparsify
    >>> params = {'fc': {'kernel': jnp.arange(1.0, 13.0).reshape(3, 4)}}
    >>> grads = {'fc': {'kernel': jnp.zeros((3, 4))}}
    >>> tx = optax.chain(optax.sgd(0.1), sparsify.dynamic_adaptive_threshold(
    ...     1.0, begin_step=0, end_step=1, update_every=1,
    ...     target_sparsity=0.5))
    >>> state, update = tx.init(params), jax.jit(tx.update)
    >>> for _ in range(2):
    ...   updates, state = update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> int((params['fc']['kernel'] == 0).sum())
    6

  References:
    Jiang, Li & Qian, "Dynamic and adaptive threshold for DNN compression
    from scratch", SEAL 2017.
    Guo, Yao & Chen, "Dynamic network surgery for efficient DNNs", NeurIPS
    2016 (the hysteresis).
  """
  if target_sparsity is not None:
    checks.check_fraction("target_sparsity", target_sparsity)
  checks.check_one_of("statistics", statistics, ("all", "surviving"))
  checks.check_one_of("target_mode", target_mode, TARGET_MODES)
  checks.check_window(begin_step, end_step)

  def at(value, step):
    return schedules.value_at(value, step)

  def ramp(step):
    return schedules.threshold_ramp(at(begin_step, step), at(end_step, step),
                                    at(power, step))(step)

  def layer_mask(step, w, m):
    # Without recovery a pruned weight is zero: only its last update is in w.
    magnitude = jnp.abs(w if recovery else jnp.where(m, w, 0))
    population = m if statistics == "surviving" else jnp.ones_like(m)
    tau = ramp(step) * layer_threshold(jnp.where(m, w, 0), population,
                                       at(c, step))
    if target_sparsity is not None:
      # q: smallest kept magnitude when a fraction s* of the layer is pruned.
      keep = topk.top_k_mask(
          [magnitude], topk.keep_count(w.size, at(target_sparsity, step)))[0]
      q = jnp.min(jnp.where(keep, magnitude, jnp.inf))
      q = jnp.where(jnp.isfinite(q), q, 0.0)
      tau = jnp.minimum(tau, q) if target_mode == "clamp" else ramp(step) * q
    return _decide(step, m, magnitude, tau)

  def _decide(step, m, magnitude, tau):
    if not recovery:
      return m & (magnitude >= tau)
    # The hysteresis band closes at the last update, so that the final masks
    # are exactly the threshold's (and meet a target exactly).
    last = step >= at(end_step, step)
    a = jnp.where(last, 1.0, at(prune_factor, step))
    b = jnp.where(last, 1.0, at(revive_factor, step))
    return jnp.where(m, magnitude >= a * tau, magnitude >= b * tau)

  def global_masks(step, weights, masks):
    # One quantile of the magnitudes in units of each layer's statistic.
    leaves, treedef = jax.tree.flatten(weights)
    old = treedef.flatten_up_to(masks)
    scores = []
    for w, m in zip(leaves, old):
      magnitude = jnp.abs(w if recovery else jnp.where(m, w, 0))
      population = m if statistics == "surviving" else jnp.ones_like(m)
      base = layer_threshold(jnp.where(m, w, 0), population, at(c, step))
      scores.append(magnitude / jnp.where(base > 0, base, 1.0))
    total = sum(w.size for w in leaves)
    keep = topk.top_k_mask(
        scores, topk.keep_count(total, at(target_sparsity, step)))
    q = jnp.min(jnp.stack([jnp.min(jnp.where(k, s, jnp.inf))
                           for k, s in zip(keep, scores)]))
    q = jnp.where(jnp.isfinite(q), q, 0.0)
    # Thresholding the scores themselves (not magnitudes against q * base,
    # which rounds) keeps exactly the selected weights at the end of the ramp.
    return treedef.unflatten([_decide(step, m, s, ramp(step) * q)
                              for s, m in zip(scores, old)])

  def update_masks(step, weights, masks):
    if target_mode == "global" and target_sparsity is not None:
      return global_masks(step, weights, masks)
    return jax.tree.map(lambda w, m: layer_mask(step, w, m), weights, masks)

  return masking.mask_updates(
      update_masks=update_masks, update_every=update_every,
      begin_step=begin_step, end_step=end_step, keep_pruned=recovery,
      where=where)

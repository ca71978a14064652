"""Proximal steps for structured sparsity: SSS, ISTA, group lasso, slimming.

An L1 or group-lasso penalty is not differentiable at zero, so adding its
subgradient to the loss gradient leaves weights hovering near zero. A
proximal step applies the penalty exactly instead, and drives whole
structures to exactly ``0.0``. Every transform here returns updates such that
``optax.apply_updates(params, updates)`` is the new point, so it works with
any training loop with no extra call; all of them need ``params``.

The new point is computed first and the update returned as
``new - params``; adding it back to ``params`` may differ from ``new`` by one
rounding of the last bit, except where ``new`` is zero: then the update is
``-params`` and the sum is exactly ``0.0``.
"""

from collections.abc import Callable
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsify import base

# Scaling factors of SSS: leaves (or modules) named ``gate`` and BatchNorm
# scales, which play the role of per-channel factors when no gate is added.
SSS_SCALES = r"(^|/)gate(/|$)|(^|/)scale$"
# BatchNorm (and LayerNorm) scales, the parameters Network Slimming penalises.
BN_SCALES = r"(^|/)scale$"


def _at(value: base.ScalarOrSchedule, count: jax.Array) -> jax.typing.ArrayLike:
  """A hyper-parameter's value at ``count``: calls it if it is a schedule."""
  return value(count) if callable(value) else value


def _count_only(state_cls, fn) -> optax.GradientTransformation:
  """A transform whose state is a count: ``fn(updates, params, count)``."""

  def init_fn(params):
    del params
    return state_cls(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(base.NO_PARAMS_MSG)
    return fn(updates, params, state.count), state_cls(
        count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


def soft_threshold(x: Any, a: jax.typing.ArrayLike) -> Any:
  r"""The soft-threshold, proximal operator of :math:`a \lVert\cdot\rVert_1`.

  .. math::
    S_a(z) = \operatorname{sign}(z)\,\max(|z| - a, 0)

  Args:
    x: an array, or a pytree of arrays (applied leaf by leaf).
    a: the threshold, a non-negative scalar (possibly traced).

  Returns:
    ``S_a(x)``, shaped like ``x``; entries with ``|x| <= a`` are exactly 0.

  Example:
    >>> soft_threshold(jnp.array([-2.0, 0.5, 3.0]), 1.0)
    Array([-1.,  0.,  2.], dtype=float32)
  """
  return jax.tree.map(
      lambda z: jnp.sign(z) * jnp.maximum(jnp.abs(z) - a, 0), x)


class APGState(NamedTuple):
  """State of `accelerated_proximal_gradient`: step count and velocity."""
  count: jax.Array  # int32
  velocity: optax.Updates


def accelerated_proximal_gradient(
    learning_rate: base.ScalarOrSchedule,
    *,
    gamma: base.ScalarOrSchedule,
    momentum: float = 0.9,
    nonnegative: bool = False,
) -> optax.GradientTransformation:
  r"""The modified accelerated proximal gradient (APG) of SSS.

  Stores the Nesterov-shifted variable :math:`\lambda'`, so the gradient it
  receives is taken at the stored point. With :math:`\eta_t` the scheduled
  learning rate and :math:`\gamma` the L1 strength:

  .. math::
    z_t &= \lambda'_{t-1} - \eta_t \nabla L(\lambda'_{t-1}) \\
    v_t &= S_{\eta_t\gamma}(z_t) - \lambda'_{t-1} + \mu v_{t-1} \\
    \lambda'_t &= S_{\eta_t\gamma}(z_t) + \mu v_t

  with :math:`v_0 = 0`; the update returned is
  :math:`\lambda'_t - \lambda'_{t-1}`. With ``nonnegative=True``
  :math:`\lambda'_t` is clamped to :math:`\ge 0` after the step, as in the
  authors' code (the velocity is kept as computed). This is the whole
  optimizer of the scale parameters (learning rate included).

  Once a scale stays in the dead zone (:math:`|z_t| \le \eta_t\gamma` twice
  in a row) it is exactly zero in exact arithmetic. In float32, rounding
  (XLA may fuse :math:`\mu v + x` into one multiply-add) can leave a residue
  of about :math:`2^{-24}` of the previous value, which shrinks by that
  factor every step, so the scale reaches exactly ``0.0`` a few steps later.

  Args:
    learning_rate: :math:`\eta`, a float or a schedule ``step -> value``.
    gamma: L1 strength :math:`\gamma`, a float or a schedule.
    momentum: :math:`\mu`.
    nonnegative: clamp the scales at zero from below.

  Returns:
    An `optax.GradientTransformation` whose state is an `APGState`.

  Example:
    >>> tx = accelerated_proximal_gradient(0.1, gamma=0.01, momentum=0.9)
    >>> updates, state = tx.update(grads, tx.init(scales), scales)

  References:
    Huang & Wang, "Data-driven sparse structure selection for deep neural
    networks", ECCV 2018. https://arxiv.org/abs/1707.01213
  """

  def init_fn(params):
    return APGState(count=jnp.zeros([], jnp.int32),
                    velocity=jax.tree.map(jnp.zeros_like, params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(base.NO_PARAMS_MSG)
    lr = _at(learning_rate, state.count)
    threshold = lr * _at(gamma, state.count)
    shrunk = jax.tree.map(lambda g, p: soft_threshold(p - lr * g, threshold),
                          updates, params)
    velocity = jax.tree.map(
        lambda s, p, v: ((s - p) + momentum * v).astype(v.dtype), shrunk,
        params, state.velocity)
    new = jax.tree.map(lambda s, v: s + momentum * v, shrunk, velocity)
    if nonnegative:
      new = jax.tree.map(lambda x: jnp.maximum(x, 0), new)
    updates = jax.tree.map(lambda n, p: (n - p).astype(p.dtype), new, params)
    return updates, APGState(count=optax.safe_increment(state.count),
                             velocity=velocity)

  return optax.GradientTransformation(init_fn, update_fn)


class ProximalSGDState(NamedTuple):
  """State of `proximal_sgd`."""
  count: jax.Array  # int32


def proximal_sgd(
    learning_rate: base.ScalarOrSchedule,
    *,
    l1: base.ScalarOrSchedule,
) -> optax.GradientTransformation:
  r"""Proximal gradient descent on an L1 penalty (ISTA).

  .. math::
    \lambda_t = S_{\eta_t l_1}(\lambda_{t-1} - \eta_t g_t)

  Args:
    learning_rate: :math:`\eta`, a float or a schedule.
    l1: penalty strength :math:`l_1`, a float or a schedule.

  Returns:
    An `optax.GradientTransformation`; the whole optimizer of the parameters
    it is given (use `optax.multi_transform` to restrict it).

  Example:
    >>> tx = proximal_sgd(0.1, l1=1e-3)

  References:
    Beck & Teboulle, "A fast iterative shrinkage-thresholding algorithm for
    linear inverse problems", SIAM J. Imaging Sciences 2009.
  """

  def step(updates, params, count):
    lr = _at(learning_rate, count)
    threshold = lr * _at(l1, count)
    return jax.tree.map(
        lambda g, p: (soft_threshold(p - lr * g, threshold) - p).astype(
            p.dtype), updates, params)

  return _count_only(ProximalSGDState, step)


class GroupLassoState(NamedTuple):
  """State of `group_lasso_prox`."""
  count: jax.Array  # int32


def group_lasso_prox(
    learning_rate: base.ScalarOrSchedule,
    *,
    strength: base.ScalarOrSchedule,
    axis: int = -1,
    scale_by_group_size: bool = True,
    where: str | Callable[[str, Any], bool] | None = None,
) -> optax.GradientTransformation:
  r"""Proximal step of the group lasso, one group per output unit.

  Each index along ``axis`` is one group: column :math:`j` of a Dense kernel
  ``(in, out)``, filter ``[..., j]`` of a conv kernel
  ``(kh, kw, cin, cout)``. With :math:`w = \text{params} + \text{updates}`
  the point the optimizer reached,

  .. math::
    w_g \leftarrow w_g \max\left(0, 1 - \frac{\eta_t \lambda
      \sqrt{|g|}}{\lVert w_g \rVert_2}\right),

  where :math:`|g|` is the number of weights in a group (the factor
  :math:`\sqrt{|g|}` of Yuan & Lin, dropped with
  ``scale_by_group_size=False``). A group whose norm is at most the threshold
  becomes exactly zero.

  Args:
    learning_rate: :math:`\eta`, the optimizer's learning rate or schedule.
    strength: group-lasso strength :math:`\lambda`, a float or a schedule.
    axis: the axis that indexes the groups (output units).
    scale_by_group_size: include :math:`\sqrt{|g|}` in the threshold.
    where: which parameters (see `masking.mask_updates`); ``None`` for Dense
      and Conv kernels.

  Returns:
    An `optax.GradientTransformation`; place it after the optimizer.

  Example:
    >>> tx = optax.chain(optax.sgd(0.1, momentum=0.9),
    ...                  group_lasso_prox(0.1, strength=1e-4))

  References:
    Yuan & Lin, "Model selection and estimation in regression with grouped
    variables", J. R. Stat. Soc. B 2006; Wen et al., "Learning structured
    sparsity in deep neural networks", NeurIPS 2016.
  """

  def prox(u, p, threshold):
    w = p + u
    ax = axis % w.ndim
    others = tuple(i for i in range(w.ndim) if i != ax)
    norm = jnp.sqrt(jnp.sum(jnp.square(w), axis=others, keepdims=True))
    if scale_by_group_size:
      threshold = threshold * np.sqrt(w.size // w.shape[ax])
    factor = jnp.where(norm > threshold,
                       1 - threshold / jnp.where(norm > 0, norm, 1), 0)
    return (w * factor - p).astype(p.dtype)

  def step(updates, params, count):
    threshold = _at(learning_rate, count) * _at(strength, count)
    return jax.tree.map(lambda u, p: prox(u, p, threshold), updates, params)

  return optax.masked(_count_only(GroupLassoState, step),
                      lambda params: base.select(params, where))


def sss_labels(params: base.Params, scale_pattern: str = SSS_SCALES) -> Any:
  """Labels ``'scales'`` (path matches ``scale_pattern``) or ``'weights'``."""
  pattern = re.compile(scale_pattern)
  return base.map_with_name(
      lambda name, _: "scales" if pattern.search(name) else "weights", params)


def sss_optimizer(
    weights_tx: optax.GradientTransformation,
    scales_tx: optax.GradientTransformation,
    *,
    scale_pattern: str = SSS_SCALES,
) -> optax.GradientTransformation:
  r"""Trains the scaling factors and the other parameters with two optimizers.

  SSS trains the weights :math:`W` with Nesterov SGD (momentum 0.9, weight
  decay 1e-4) and the scaling factors :math:`\lambda` with
  `accelerated_proximal_gradient` (no weight decay); see `sss`.

  Args:
    weights_tx: the optimizer of every parameter that is not a scale.
    scales_tx: the optimizer of the scales, given their ``params``.
    scale_pattern: regex searched in a parameter's path that marks a scale;
      by default leaves or modules named ``gate`` and BatchNorm ``scale``.

  Returns:
    An `optax.multi_transform` over the labels of `sss_labels`.

  Example:
    >>> tx = sss_optimizer(optax.sgd(0.1, momentum=0.9, nesterov=True),
    ...                    accelerated_proximal_gradient(0.1, gamma=0.01))
  """
  return optax.multi_transform(
      {"weights": weights_tx, "scales": scales_tx},
      lambda params: sss_labels(params, scale_pattern))


def sss(
    learning_rate: base.ScalarOrSchedule,
    *,
    gamma: base.ScalarOrSchedule,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    nonnegative: bool = True,
    scale_pattern: str = SSS_SCALES,
) -> optax.GradientTransformation:
  r"""Sparse Structure Selection: Nesterov SGD on W, APG on the scales.

  Minimises :math:`L(W, \lambda) + R(W) + \gamma \lVert\lambda\rVert_1`.
  The weights get ``add_decayed_weights(weight_decay)`` then Nesterov SGD;
  the scales get `accelerated_proximal_gradient` with the same learning rate
  (schedule), ``momentum`` and no weight decay, so unneeded structures reach
  exactly zero during the single training run and can be removed.

  Args:
    learning_rate: :math:`\eta`, a float or a schedule shared by both parts.
    gamma: L1 strength on the scales, a float or a schedule.
    momentum: momentum of both parts (0.9 in the paper).
    weight_decay: decay of the weights (not of the scales).
    nonnegative: clamp scales at zero from below, as the authors' code does.
    scale_pattern: which parameters are scales (see `sss_optimizer`).

  Returns:
    An `optax.GradientTransformation`.

  Example:
    >>> lr = optax.piecewise_constant_schedule(
    ...     0.1, {30 * steps_per_epoch: 0.1, 60 * steps_per_epoch: 0.1})
    >>> tx = sss(lr, gamma=0.01)

  References:
    Huang & Wang, "Data-driven sparse structure selection for deep neural
    networks", ECCV 2018. https://arxiv.org/abs/1707.01213
  """
  weights_tx = optax.chain(
      optax.add_decayed_weights(weight_decay),
      optax.sgd(learning_rate, momentum=momentum, nesterov=True))
  scales_tx = accelerated_proximal_gradient(
      learning_rate, gamma=gamma, momentum=momentum, nonnegative=nonnegative)
  return sss_optimizer(weights_tx, scales_tx, scale_pattern=scale_pattern)


class NetworkSlimmingState(NamedTuple):
  """State of `network_slimming`."""
  count: jax.Array  # int32


def network_slimming(
    l1: base.ScalarOrSchedule,
    *,
    where: str | Callable[[str, Any], bool] = BN_SCALES,
) -> optax.GradientTransformation:
  r"""Adds the L1 subgradient :math:`l_1 \operatorname{sign}(\gamma)`.

  .. math::
    g \leftarrow g + l_1 \operatorname{sign}(\gamma)

  on the BatchNorm scales :math:`\gamma`, like `optax.add_decayed_weights`
  for L2; other parameters pass unchanged. After training, channels whose
  :math:`|\gamma|` falls below `slimming_threshold` are pruned.

  Args:
    l1: penalty strength, a float or a schedule.
    where: which parameters are penalised: a regex on the path (default:
      names ending in ``scale``) or a predicate ``(path, leaf) -> bool``.

  Returns:
    An `optax.GradientTransformation`; place it before the optimizer.

  Example:
    >>> tx = optax.chain(network_slimming(1e-4), optax.sgd(0.1, momentum=0.9))

  References:
    Liu et al., "Learning efficient convolutional networks through network
    slimming", ICCV 2017. https://arxiv.org/abs/1708.06519
  """

  def step(updates, params, count):
    strength = _at(l1, count)
    return jax.tree.map(
        lambda g, p: (g + strength * jnp.sign(p)).astype(g.dtype), updates,
        params)

  return optax.masked(_count_only(NetworkSlimmingState, step),
                      lambda params: base.select(params, where))


def slimming_threshold(
    params: base.Params,
    fraction: float,
    where: str | Callable[[str, Any], bool] = BN_SCALES,
) -> float:
  r"""The global threshold below which a ``fraction`` of the scales fall.

  Pools :math:`|\gamma|` over every selected parameter (``n`` values) and
  returns the ``k``-th smallest, ``k = floor(fraction * n)`` counted from 0:
  without ties, exactly ``k`` values lie strictly below it, and those
  channels are the ones Network Slimming prunes.

  Args:
    params: the trained parameters.
    fraction: fraction of channels to prune, in [0, 1).
    where: which parameters hold the scales (see `network_slimming`).

  Returns:
    The threshold, a Python float.
  """
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"fraction: got {fraction}; allowed: a fraction in "
                     "[0, 1)")
  chosen = base.select(params, where)
  values = [np.abs(np.asarray(p)).ravel()
            for p, keep in zip(jax.tree.leaves(params), jax.tree.leaves(chosen))
            if keep]
  if not values:
    raise ValueError(f"where: {where!r} selects no parameter")
  values = np.concatenate(values)
  k = int(np.floor(fraction * values.size))
  return float(np.partition(values, k)[k])

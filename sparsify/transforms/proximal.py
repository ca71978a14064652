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

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsify.core import checks
from sparsify.core import counting
from sparsify.core import groups
from sparsify.core import paths
from sparsify.core import schedules
from sparsify.core import types


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
    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> sparsify.soft_threshold(jnp.array([-2.0, 0.5, 3.0]), 1.0)
    Array([-1.,  0.,  2.], dtype=float32)

  References:
    Donoho, "De-noising by soft-thresholding", IEEE Transactions on
    Information Theory 41(3), 1995.
  """
  return jax.tree.map(
      lambda z: jnp.sign(z) * jnp.maximum(jnp.abs(z) - a, 0), x)


class APGState(NamedTuple):
  """State of `accelerated_proximal_gradient`: step count and velocity."""
  count: jax.Array  # int32
  velocity: optax.Updates


def accelerated_proximal_gradient(
    learning_rate: types.ScalarOrSchedule,
    *,
    strength: types.ScalarOrSchedule,
    momentum: types.ScalarOrSchedule = 0.9,
    nonnegative: bool = False,
) -> optax.GradientTransformation:
  r"""The modified accelerated proximal gradient (APG) of SSS.

  Stores the Nesterov-shifted variable :math:`\lambda'`, so the gradient it
  receives is taken at the stored point. With :math:`\eta_t` the scheduled
  learning rate and :math:`\gamma` the L1 strength (``strength``):

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
    strength: L1 strength :math:`\gamma`, a float or a schedule.
    momentum: :math:`\mu`, a float or a schedule.
    nonnegative: clamp the scales at zero from below.

  Returns:
    An `optax.GradientTransformation` whose state is an `APGState`.

  Example:
    With a zero gradient the first step soft-thresholds by
    :math:`\eta\gamma = 0.5` and the momentum adds :math:`\mu` times that
    move again: 2 and 3 move by 0.95, and 0.25, which the shrinkage sets to
    0, would overshoot to -0.225 but is clamped at 0 (``nonnegative``):

    >>> import jax.numpy as jnp
    >>> import optax
    >>> import sparsify
    >>> scales = jnp.array([0.25, 2.0, 3.0])
    >>> tx = sparsify.accelerated_proximal_gradient(0.5, strength=1.0,
    ...                                             nonnegative=True)
    >>> updates, state = tx.update(jnp.zeros(3), tx.init(scales), scales)
    >>> optax.apply_updates(scales, updates)
    Array([0.  , 1.05, 2.05], dtype=float32)

  References:
    Huang & Wang, "Data-driven sparse structure selection for deep neural
    networks", ECCV 2018. https://arxiv.org/abs/1707.01213
  """

  checks.check_nonnegative("learning_rate", learning_rate)
  checks.check_nonnegative("strength", strength)
  checks.check_fraction("momentum", momentum, closed=True)

  def init_fn(params):
    return APGState(count=jnp.zeros([], jnp.int32),
                    velocity=jax.tree.map(jnp.zeros_like, params))

  def update_fn(updates, state, params=None):
    checks.require_params(params)
    lr = schedules.value_at(learning_rate, state.count)
    threshold = lr * schedules.value_at(strength, state.count)
    mu = schedules.value_at(momentum, state.count)
    shrunk = jax.tree.map(lambda g, p: soft_threshold(p - lr * g, threshold),
                          updates, params)
    velocity = jax.tree.map(
        lambda s, p, v: ((s - p) + mu * v).astype(v.dtype), shrunk,
        params, state.velocity)
    new = jax.tree.map(lambda s, v: s + mu * v, shrunk, velocity)
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
    learning_rate: types.ScalarOrSchedule,
    *,
    strength: types.ScalarOrSchedule,
) -> optax.GradientTransformation:
  r"""Proximal gradient descent on an L1 penalty (ISTA).

  .. math::
    \lambda_t = S_{\eta_t l_1}(\lambda_{t-1} - \eta_t g_t)

  Args:
    learning_rate: :math:`\eta`, a float or a schedule.
    strength: penalty strength :math:`l_1`, a float or a schedule.

  Returns:
    An `optax.GradientTransformation`; the whole optimizer of the parameters
    it is given (use `optax.multi_transform` to restrict it).

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import sparsify
    >>> params = jnp.array([0.25, -2.0, 3.0])
    >>> tx = sparsify.proximal_sgd(0.5, strength=1.0)
    >>> updates, _ = tx.update(jnp.array([0.0, 0.0, 2.0]), tx.init(params),
    ...                        params)
    >>> optax.apply_updates(params, updates)  # S_0.5([0.25, -2, 2])
    Array([ 0. , -1.5,  1.5], dtype=float32)

  References:
    Beck & Teboulle, "A fast iterative shrinkage-thresholding algorithm for
    linear inverse problems", SIAM J. Imaging Sciences 2009.
  """

  checks.check_nonnegative("learning_rate", learning_rate)
  checks.check_nonnegative("strength", strength)

  def step(updates, params, count):
    lr = schedules.value_at(learning_rate, count)
    threshold = lr * schedules.value_at(strength, count)
    return jax.tree.map(
        lambda g, p: (soft_threshold(p - lr * g, threshold) - p).astype(
            p.dtype), updates, params)

  return counting.counting_transform(ProximalSGDState, step)


class GroupLassoState(NamedTuple):
  """State of `group_lasso_prox`."""
  count: jax.Array  # int32


def group_lasso_prox(
    learning_rate: types.ScalarOrSchedule,
    *,
    strength: types.ScalarOrSchedule,
    axis: int = -1,
    scale_by_group_size: bool = True,
    where: paths.Where = None,
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
    axis: the axis that indexes the groups (output units); static, since it
      fixes shapes: under `optax.inject_hyperparams` name it in
      ``static_args``.
    scale_by_group_size: include :math:`\sqrt{|g|}` in the threshold.
    where: which parameters, a `paths.Where`: ``None`` for Dense and Conv
      kernels.

  Returns:
    An `optax.GradientTransformation`; place it after the optimizer.

  Example:
    Two output units of a Dense kernel and the threshold
    :math:`\eta\lambda = 2.5`: the first column (norm 0.5) becomes 0, the
    second (norm 5) is scaled by :math:`1 - 2.5 / 5`:

    >>> import jax.numpy as jnp
    >>> import optax
    >>> import sparsify
    >>> params = {'fc': {'kernel': jnp.array([[0.3, 3.0], [0.4, 4.0]])}}
    >>> tx = optax.chain(optax.sgd(0.5), sparsify.group_lasso_prox(
    ...     0.5, strength=5.0, scale_by_group_size=False))
    >>> grads = {'fc': {'kernel': jnp.zeros((2, 2))}}
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> optax.apply_updates(params, updates)['fc']['kernel']
    Array([[0. , 1.5],
           [0. , 2. ]], dtype=float32)

  References:
    Yuan & Lin, "Model selection and estimation in regression with grouped
    variables", J. R. Stat. Soc. B 2006; Wen et al., "Learning structured
    sparsity in deep neural networks", NeurIPS 2016.
  """

  checks.check_nonnegative("learning_rate", learning_rate)
  checks.check_nonnegative("strength", strength)

  def prox(u, p, threshold):
    w = p + u
    norm = groups.group_norms(w, axis)
    if scale_by_group_size:
      threshold = threshold * np.sqrt(groups.group_size(w, axis))
    factor = jnp.where(norm > threshold,
                       1 - threshold / jnp.where(norm > 0, norm, 1), 0)
    return (w * factor - p).astype(p.dtype)

  def step(updates, params, count):
    threshold = (schedules.value_at(learning_rate, count)
                 * schedules.value_at(strength, count))
    return jax.tree.map(lambda u, p: prox(u, p, threshold), updates, params)

  return optax.masked(counting.counting_transform(GroupLassoState, step),
                      lambda params: paths.select(params, where))

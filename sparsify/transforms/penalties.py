r"""Penalties on the weights, as transforms that add the penalty's gradient.

Each transform here turns the incoming gradient :math:`g` into
:math:`g + \lambda_t \nabla R(w)`, like `optax.add_decayed_weights` does for
:math:`R(w) = \tfrac12 \lVert w \rVert^2`: place it before the optimizer
(``optax.chain(binary_attractor(1e-4), optax.sgd(0.1))``) and the optimizer
minimises :math:`L + \lambda R`. The penalty acts on the parameters chosen by
``where`` (a `paths.Where`), by default (``None``) the fully-connected
kernels (`paths.dense_kernel`: 2-D leaves named ``kernel``); other
parameters pass unchanged. ``strength`` and the other numeric
hyper-parameters are floats, traced arrays or schedules of the transform's
step count, except the structural ones each factory names static. All of
them need ``params``.

The attractors pull each weight toward a few values, so that the trained
layer is easy to quantize (Soulie et al. 2016, compression on the fly).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsify import quantize
from sparsify.core import checks
from sparsify.core import counting
from sparsify.core import groups
from sparsify.core import paths
from sparsify.core import schedules
from sparsify.core import types


def _selection(where: paths.Where):
  """``params -> flags`` of `optax.masked`: ``where``, or the Dense kernels."""
  return lambda params: paths.select(params, where, paths.dense_kernel)


def _penalty(state_cls, gradient, strength, where):
  """Adds ``strength(count) * gradient(w, count)`` on the selected leaves."""
  checks.check_nonnegative("strength", strength)

  def step(updates, params, count):
    lam = schedules.value_at(strength, count)
    return jax.tree.map(
        lambda g, p: (g + lam * gradient(p, count)).astype(g.dtype), updates,
        params)

  return optax.masked(counting.counting_transform(state_cls, step),
                      _selection(where))


class BinaryAttractorState(NamedTuple):
  """State of `binary_attractor`."""
  count: jax.Array  # int32


def binary_attractor(
    strength: types.ScalarOrSchedule,
    *,
    alpha: types.ScalarOrSchedule | None = None,
    where: paths.Where = None,
) -> optax.GradientTransformation:
  r"""Adds the gradient of a penalty that pulls weights to :math:`\pm\alpha`.

  .. math::
    R(w) = \sum_i (w_i^2 - \alpha^2)^2, \qquad
    \nabla R(w)_i = 4 w_i (w_i^2 - \alpha^2),
    \qquad g \leftarrow g + \lambda_t \nabla R(w).

  :math:`\alpha` is per layer: the given value, or with ``alpha=None`` the
  layer's mean :math:`|w|` (over all its entries), recomputed from the
  current weights at every step and held constant in the gradient.

  Args:
    strength: :math:`\lambda`, a float or a schedule of the step count.
    alpha: the attracting magnitude, a float or a schedule; ``None`` for each
      layer's mean absolute weight.
    where: which parameters, a `paths.Where`: ``None`` for fully-connected
      kernels (`paths.dense_kernel`), a regex searched in the path, a
      collection of paths or a predicate ``(path, leaf) -> bool``.

  Returns:
    An `optax.GradientTransformation`; place it before the optimizer.

  Example:
    With a zero loss gradient the update is :math:`\lambda \nabla R(w)`;
    the bias is not selected:

    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> params = {'fc': {'kernel': jnp.array([[0.5, -2.0, 1.0]]),
    ...                  'bias': jnp.array([3.0])}}
    >>> grads = {'fc': {'kernel': jnp.zeros((1, 3)), 'bias': jnp.zeros(1)}}
    >>> tx = sparsify.binary_attractor(0.5, alpha=1.0)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates['fc']['kernel'], updates['fc']['bias']
    (Array([[ -0.75, -12.  ,   0.  ]], dtype=float32),
     Array([0.], dtype=float32))

    In training, place it before the optimizer:

    >>> import optax
    >>> tx = optax.chain(sparsify.binary_attractor(1e-3),
    ...                  optax.sgd(0.1, momentum=0.9))

  References:
    Soulie, Gripon & Robert, "Compression of deep neural networks on the
    fly", ICANN 2016. https://arxiv.org/abs/1509.08745
  """
  if alpha is not None:
    checks.check_nonnegative("alpha", alpha)

  def gradient(w, count):
    a = (jnp.mean(jnp.abs(w)) if alpha is None
         else schedules.value_at(alpha, count))
    return 4.0 * w * (jnp.square(w) - jnp.square(a))

  return _penalty(BinaryAttractorState, gradient, strength, where)


class KCentreAttractorState(NamedTuple):
  """State of `kcentre_attractor`.

  Attributes:
    count: number of updates seen so far (int32).
    centres: per selected parameter, its ``k`` centres (float32 ``(k,)``).
  """
  count: jax.Array
  centres: Any


def kcentre_attractor(
    strength: types.ScalarOrSchedule,
    *,
    centres: int = 2,
    refresh_every: types.ScalarOrSchedule = 100,
    iterations: int = 10,
    seed: jax.typing.ArrayLike = 0,
    where: paths.Where = None,
) -> optax.GradientTransformation:
  r"""Adds the gradient of a penalty that drives weights toward k centres.

  .. math::
    R(w) = \sum_i \min_j (w_i - c_j)^2, \qquad
    \nabla R(w)_i = 2 (w_i - c_{j^*(i)}), \quad
    j^*(i) = \arg\min_j |w_i - c_j|

  (the lowest :math:`j` on a tie), with centres :math:`c` per layer held in
  the state. `init` sets them by 1-D `quantize.kmeans` of the layer's
  weights (k-means++ seeding with key ``jax.random.split(key(seed), L)[i]``
  for the ``i``-th of ``L`` selected leaves, then ``iterations`` Lloyd
  updates). At every step :math:`t` with :math:`t \bmod T = 0`
  (``T = refresh_every``; step 0 included) they are refreshed from the
  current weights by ``iterations`` Lloyd updates started from the previous
  centres, before the step's gradient is computed.

  Args:
    strength: :math:`\lambda`, a float or a schedule of the step count.
    centres: ``k``, the number of centres per layer (at most the layer's
      size); static, since it fixes the state's shapes.
    refresh_every: ``T``, steps between refreshes of the centres (an
      integer, a traced array or a schedule).
    iterations: Lloyd updates per k-means (at most; they stop at a fixed
      point); static.
    seed: seeds the k-means++ initialisation (may be traced).
    where: which parameters (see `binary_attractor`).

  Returns:
    An `optax.GradientTransformation` whose state holds a
    `KCentreAttractorState`; place it before the optimizer.

  Example:
    The centres of ``[0, 1, 4, 5]`` are 0.5 and 4.5, so each weight is
    pulled by :math:`\lambda \cdot 2 (w - c) = \pm 0.5`:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> params = {'fc': {'kernel': jnp.array([[0.0, 1.0], [4.0, 5.0]])}}
    >>> grads = {'fc': {'kernel': jnp.zeros((2, 2))}}
    >>> tx = sparsify.kcentre_attractor(0.5, centres=2)
    >>> updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    >>> updates['fc']['kernel']
    Array([[-0.5,  0.5],
           [-0.5,  0.5]], dtype=float32)

  References:
    Soulie, Gripon & Robert, "Compression of deep neural networks on the
    fly", ICANN 2016. https://arxiv.org/abs/1509.08745
  """
  checks.check_nonnegative("strength", strength)
  checks.check_static_integer("centres", centres, 1)
  checks.check_static_integer("iterations", iterations, 0)
  checks.check_integer("refresh_every", refresh_every, 1)

  def column(w):
    return jnp.reshape(w, (-1, 1)).astype(jnp.float32)

  def first_centres(w, key):
    if jnp.size(w) < centres:
      raise ValueError(f"centres: got {centres}; a selected parameter of "
                       f"shape {jnp.shape(w)} has {jnp.size(w)} weights; "
                       f"allowed: 1 to {jnp.size(w)}")
    return quantize.kmeans(column(w), centres, key=key,
                           iterations=iterations)[0][:, 0]

  def refresh(w, c):
    return quantize.lloyd(column(w), c[:, None],
                          iterations=iterations)[0][:, 0]

  def gradient(w, c):
    nearest = jnp.argmin(jnp.abs(w[..., None] - c), axis=-1)
    return 2.0 * (w - jnp.take(c, nearest).astype(w.dtype))

  def init_fn(params):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), max(len(leaves), 1))
    return KCentreAttractorState(
        count=jnp.zeros([], jnp.int32),
        centres=treedef.unflatten(
            [first_centres(w, k) for w, k in zip(leaves, keys)]))

  def update_fn(updates, state, params=None):
    checks.require_params(params)
    count = state.count
    kept = state.centres
    new_centres = jax.lax.cond(
        count % schedules.value_at(refresh_every, count) == 0,
        lambda: jax.tree.map(refresh, params, kept), lambda: kept)
    lam = schedules.value_at(strength, count)
    updates = jax.tree.map(
        lambda g, p, c: (g + lam * gradient(p, c)).astype(g.dtype), updates,
        params, new_centres)
    return updates, KCentreAttractorState(
        count=optax.safe_increment(count), centres=new_centres)

  return optax.masked(optax.GradientTransformation(init_fn, update_fn),
                      _selection(where))


class L1PenaltyState(NamedTuple):
  """State of `l1`."""
  count: jax.Array  # int32


def l1(strength: types.ScalarOrSchedule, *,
       where: paths.Where = None) -> optax.GradientTransformation:
  r"""Adds the L1 subgradient :math:`\lambda_t \operatorname{sign}(w)`.

  .. math::
    R(w) = \sum_i |w_i|, \qquad g \leftarrow g + \lambda_t
    \operatorname{sign}(w)

  with :math:`\operatorname{sign}(0) = 0`. Weights only hover around zero;
  `proximal.proximal_sgd` reaches exact zeros.

  Args:
    strength: :math:`\lambda`, a float or a schedule of the step count.
    where: which parameters (see `binary_attractor`).

  Returns:
    An `optax.GradientTransformation`; place it before the optimizer.

  Example:
    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> params = {'fc': {'kernel': jnp.array([[0.5, -2.0, 0.0]])}}
    >>> grads = {'fc': {'kernel': jnp.array([[1.0, 1.0, 1.0]])}}
    >>> tx = sparsify.l1(0.5)
    >>> tx.update(grads, tx.init(params), params)[0]['fc']['kernel']
    Array([[1.5, 0.5, 1. ]], dtype=float32)

  References:
    Tibshirani, "Regression shrinkage and selection via the lasso", J. R.
    Stat. Soc. B 58(1), 1996.
  """
  return _penalty(L1PenaltyState, lambda w, _: jnp.sign(w), strength, where)


class GroupLassoPenaltyState(NamedTuple):
  """State of `group_lasso`."""
  count: jax.Array  # int32


def group_lasso(
    strength: types.ScalarOrSchedule,
    *,
    axis: int = -1,
    scale_by_group_size: bool = False,
    where: paths.Where = None,
) -> optax.GradientTransformation:
  r"""Adds the group-lasso subgradient, one group per output unit.

  Each index along ``axis`` is one group :math:`w_g`: with the default
  ``axis=-1``, column :math:`j` of a Dense kernel ``(in, out)`` (the
  incoming weights of output neuron :math:`j`) or filter ``[..., j]`` of a
  conv kernel ``(kh, kw, cin, cout)``, as in `proximal.group_lasso_prox`.

  .. math::
    R(w) = \sum_g \rho_g \lVert w_g \rVert_2, \qquad
    \nabla R(w)_g = \rho_g \frac{w_g}{\lVert w_g \rVert_2}

  and 0 for a group that is entirely zero; :math:`\rho_g = 1`, or
  :math:`\sqrt{|g|}` with ``scale_by_group_size=True`` (the default of
  `proximal.group_lasso_prox`). The proximal step reaches exact zeros; this
  subgradient only shrinks groups.

  Args:
    strength: :math:`\lambda`, a float or a schedule of the step count.
    axis: the axis that indexes the groups; static, since it fixes shapes
      (see `sparsify.core.groups`).
    scale_by_group_size: weigh each group by the square root of its size.
    where: which parameters (see `binary_attractor`).

  Returns:
    An `optax.GradientTransformation`; place it before the optimizer.

  Example:
    The first column (norm 5) gets its unit direction, the zero column
    nothing:

    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> params = {'fc': {'kernel': jnp.array([[3.0, 0.0], [4.0, 0.0]])}}
    >>> grads = {'fc': {'kernel': jnp.zeros((2, 2))}}
    >>> tx = sparsify.group_lasso(1.0)
    >>> tx.update(grads, tx.init(params), params)[0]['fc']['kernel']
    Array([[0.6, 0. ],
           [0.8, 0. ]], dtype=float32)

  References:
    Yuan & Lin, "Model selection and estimation in regression with grouped
    variables", J. R. Stat. Soc. B 2006.
  """

  checks.check_static_integer("axis", axis)

  def gradient(w, _):
    norm = groups.group_norms(w, axis)
    g = jnp.where(norm > 0, w / jnp.where(norm > 0, norm, 1.0), 0.0)
    if scale_by_group_size:
      g = g * np.sqrt(groups.group_size(w, axis))
    return g

  return _penalty(GroupLassoPenaltyState, gradient, strength, where)

"""SSS (sparse structure selection) and its baseline, Network Slimming.

SSS trains scaling factors of structures (neurons, channels, groups, residual
blocks) with an accelerated proximal gradient and everything else with
Nesterov SGD; Network Slimming penalises BatchNorm scales with L1 and prunes
the channels whose scales fall below a global threshold.
"""

from collections.abc import Mapping
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsify.core import checks
from sparsify.core import counting
from sparsify.core import paths
from sparsify.core import schedules
from sparsify.core import types
from sparsify.transforms import proximal

# Gates: leaves or modules named ``gate`` (`sparsify.Gate`) and the
# ``gates`` collection of `sparsify.insert_gates`.
GATES = r"(^|/)gates?(/|$)"
# BatchNorm scales, by their module's name (``BatchNorm_0``, ``batch_norm``,
# ``bn``, ``bn1``, ``stem_bn``): the parameters Network Slimming penalises.
# LayerNorm and RMSNorm scales do not match; `batchnorm_scales` finds the
# BatchNorm scales of any model from its running statistics instead.
BN_SCALES = r"(^|/)([^/]*_)?(?i:bn|batch_?norm)[^/]*/scale$"
# Scaling factors of SSS: gates, and BatchNorm scales, which play the role of
# per-channel factors when no gate is added.
SSS_SCALES = GATES + "|" + BN_SCALES


def batchnorm_scales(variables: Any) -> frozenset[str]:
  """The BatchNorm scales of any model: scales whose module keeps statistics.

  A ``scale`` belongs to a BatchNorm when its module also has running
  ``mean`` and ``var`` (Linen: in another collection, ``batch_stats``; NNX:
  in the same state), whatever the module is named; a LayerNorm's does not.

  Args:
    variables: Linen variables (``{'params': ..., 'batch_stats': ...}``) or
      an NNX state.

  Returns:
    The scales' paths as the optimizer sees them (Linen: within
    ``params``), to pass as ``where``.

  Example:
    >>> import flax.linen as nn
    >>> import jax, jax.numpy as jnp
    >>> from sparsify.transforms import sss
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     x = nn.BatchNorm(use_running_average=True, name='norm_a')(x)
    ...     return nn.LayerNorm(name='norm_b')(x)
    >>> variables = Net().init(jax.random.key(0), jnp.ones((1, 3)))
    >>> sorted(sss.batchnorm_scales(variables))
    ['norm_a/scale']
  """
  names = [n for n, _ in paths.named_leaves(variables)]
  linen = isinstance(variables, Mapping) and "params" in variables

  def module(name):
    parts = name.split("/")[:-1]
    return "/".join(parts[1:] if linen else parts)

  stats = ({module(n) for n in names if n.endswith("/mean")} &
           {module(n) for n in names if n.endswith("/var")})
  prefix = "params/" if linen else ""
  return frozenset(n[len(prefix):] for n in names
                   if n.startswith(prefix) and n.endswith("/scale") and
                   module(n) in stats)


def sss_labels(params: types.Params, where: paths.Where = None) -> Any:
  """Labels ``'scales'`` (selected by ``where``) or ``'weights'``.

  ``None`` picks the scaling factors from the parameters: the gates when the
  model has any (`GATES`: ``gate`` leaves or modules, the ``gates``
  collection of `sparsify.insert_gates`; its BatchNorm scales are then
  ordinary weights), else the BatchNorm scales named as such (`BN_SCALES`).
  LayerNorm and RMSNorm scales are never picked by default: zeroing one
  feature of a normalization over features is not removing it. Pass
  ``where=batchnorm_scales(variables)`` to find BatchNorm scales under any
  name, or a regex to pick LayerNorm scales on purpose.

  Args:
    params: the model's parameters.
    where: the scales, a `paths.Where`: a regex searched in each
      parameter's path, a collection of paths, a predicate, or ``None``.

  Returns:
    A pytree shaped like ``params`` of the strings ``'scales'`` and
    ``'weights'``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sparsify.transforms import sss
    >>> params = {'bn': {'scale': jnp.ones(2)}, 'gate': {'gate': jnp.ones(2)}}
    >>> sss.sss_labels(params)
    {'bn': {'scale': 'weights'}, 'gate': {'gate': 'scales'}}
    >>> sss.sss_labels({'bn': {'scale': jnp.ones(2)},
    ...                 'fc': {'kernel': jnp.ones(2)}})
    {'bn': {'scale': 'scales'}, 'fc': {'kernel': 'weights'}}
    >>> sss.sss_labels({'LayerNorm_0': {'scale': jnp.ones(2)}})
    {'LayerNorm_0': {'scale': 'weights'}}
  """
  if where is None:
    gated = any(re.search(GATES, n) for n, _ in paths.named_leaves(params))
    where = GATES if gated else BN_SCALES
  scale = paths.path_predicate(where)
  return paths.map_with_name(
      lambda name, leaf: "scales" if scale(name, leaf) else "weights", params)


def sss_optimizer(
    weights_tx: optax.GradientTransformation,
    scales_tx: optax.GradientTransformation,
    *,
    where: paths.Where = None,
) -> optax.GradientTransformation:
  r"""Trains the scaling factors and the other parameters with two optimizers.

  SSS solves

  .. math::
    (W^*, \lambda^*) = \arg\min_{W, \lambda}\ L(W, \lambda) + R(W)
      + \gamma \lVert\lambda\rVert_1

  by training the weights :math:`W` with Nesterov SGD (momentum 0.9, weight
  decay 1e-4) and the scaling factors :math:`\lambda` with
  `accelerated_proximal_gradient` (no weight decay); see
  `sparse_structure_selection`. This builds the pair for any two
  optimizers.

  Args:
    weights_tx: the optimizer of every parameter that is not a scale.
    scales_tx: the optimizer of the scales, given their ``params``.
    where: which parameters are scales, a `paths.Where` (a regex searched
      in a parameter's path, a collection of paths or a predicate); by
      default (``None``) the gates if the model has any, else the BatchNorm
      scales (see `sss_labels`; never a LayerNorm's).

  Returns:
    An `optax.multi_transform` over the labels of `sss_labels`.

  Example:
    The gate takes a proximal step that zeroes its small entry; the
    kernel a plain SGD step:

    >>> import jax.numpy as jnp
    >>> import optax
    >>> import sparsify
    >>> params = {'fc1': {'kernel': jnp.ones((1, 2))},
    ...           'fc1_gate': {'gate': jnp.array([0.25, 2.0])}}
    >>> grads = {'fc1': {'kernel': jnp.ones((1, 2))},
    ...          'fc1_gate': {'gate': jnp.zeros(2)}}
    >>> tx = sparsify.sss_optimizer(
    ...     optax.sgd(0.5), sparsify.accelerated_proximal_gradient(
    ...         0.5, strength=1.0, nonnegative=True))
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> new = optax.apply_updates(params, updates)
    >>> new['fc1']['kernel'], new['fc1_gate']['gate']
    (Array([[0.5, 0.5]], dtype=float32), Array([0.  , 1.05], dtype=float32))

  References:
    Huang & Wang, "Data-driven sparse structure selection for deep neural
    networks", ECCV 2018. https://arxiv.org/abs/1707.01213
  """
  return optax.multi_transform(
      {"weights": weights_tx, "scales": scales_tx},
      lambda params: sss_labels(params, where))


def sparse_structure_selection(
    learning_rate: types.ScalarOrSchedule,
    *,
    strength: types.ScalarOrSchedule,
    momentum: types.ScalarOrSchedule = 0.9,
    weight_decay: types.ScalarOrSchedule = 1e-4,
    nonnegative: bool = True,
    where: paths.Where = None,
) -> optax.GradientTransformation:
  r"""Sparse Structure Selection: Nesterov SGD on W, APG on the scales.

  Minimises :math:`L(W, \lambda) + R(W) + \gamma \lVert\lambda\rVert_1`
  (:math:`\gamma` is ``strength``),
  with :math:`R(W) = \tfrac{\beta}{2} \lVert W \rVert^2` (``weight_decay``
  :math:`\beta`).
  The weights get ``add_decayed_weights(weight_decay)`` then Nesterov SGD;
  the scales get `accelerated_proximal_gradient` with the same learning rate
  (schedule), ``momentum`` and no weight decay, so unneeded structures reach
  exactly zero during the single training run and can be removed.

  Args:
    learning_rate: :math:`\eta`, a float or a schedule shared by both parts.
    strength: L1 strength :math:`\gamma` on the scales, a float or a
      schedule.
    momentum: momentum of both parts (0.9 in the paper), a float or a
      schedule.
    weight_decay: decay of the weights (not of the scales), a float or a
      schedule.
    nonnegative: clamp scales at zero from below, as the authors' code does.
    where: which parameters are scales (see `sss_optimizer`).

  Returns:
    An `optax.GradientTransformation`.

  Example:
    One step with a zero loss gradient: the small gate reaches exactly 0
    (the threshold is :math:`\eta_t \gamma = 0.5`), the other shrinks:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import sparsify
    >>> params = {'fc1': {'kernel': jnp.ones((2, 2))},
    ...           'fc1_gate': {'gate': jnp.array([0.25, 2.0])}}
    >>> grads = jax.tree.map(jnp.zeros_like, params)
    >>> lr = optax.piecewise_constant_schedule(0.5, {100: 0.1})  # x0.1 at 100
    >>> tx = sparsify.sparse_structure_selection(lr, strength=1.0)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> optax.apply_updates(params, updates)['fc1_gate']['gate']
    Array([0.  , 1.05], dtype=float32)

  References:
    Huang & Wang, "Data-driven sparse structure selection for deep neural
    networks", ECCV 2018. https://arxiv.org/abs/1707.01213
  """
  checks.check_nonnegative("weight_decay", weight_decay)
  if callable(momentum):  # optax.trace takes a number: inject the schedule
    nesterov = optax.chain(
        optax.inject_hyperparams(optax.trace, static_args="nesterov")(
            decay=momentum, nesterov=True),
        optax.scale_by_learning_rate(learning_rate))
  else:
    nesterov = optax.sgd(learning_rate, momentum=momentum, nesterov=True)
  weights_tx = optax.chain(optax.add_decayed_weights(weight_decay), nesterov)
  scales_tx = proximal.accelerated_proximal_gradient(
      learning_rate, strength=strength, momentum=momentum,
      nonnegative=nonnegative)
  return sss_optimizer(weights_tx, scales_tx, where=where)


class NetworkSlimmingState(NamedTuple):
  """State of `network_slimming`."""
  count: jax.Array  # int32


def network_slimming(
    strength: types.ScalarOrSchedule,
    *,
    where: paths.Where = BN_SCALES,
) -> optax.GradientTransformation:
  r"""Adds the L1 subgradient :math:`\lambda_t \operatorname{sign}(\gamma)`.

  .. math::
    g \leftarrow g + \lambda_t \operatorname{sign}(\gamma)

  on the BatchNorm scales :math:`\gamma`, like `optax.add_decayed_weights`
  for L2; other parameters pass unchanged. The optimizer then minimises

  .. math::
    L' = L + \lambda \sum_\gamma |\gamma|.

  After training, channels whose :math:`|\gamma|` falls below
  `slimming_threshold` are pruned.

  Args:
    strength: penalty strength :math:`\lambda`, a float or a schedule.
    where: which parameters are penalised, a `paths.Where`; by default
      `BN_SCALES` (the scales of modules named as BatchNorms; for any
      name, `batchnorm_scales`).

  Returns:
    An `optax.GradientTransformation`; place it before the optimizer.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import sparsify
    >>> params = {'bn': {'scale': jnp.array([0.5, -0.2])},
    ...           'fc': {'kernel': jnp.ones((2, 2))}}
    >>> grads = {'bn': {'scale': jnp.zeros(2)},
    ...          'fc': {'kernel': jnp.zeros((2, 2))}}
    >>> tx = sparsify.network_slimming(0.1)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates['bn']['scale'], float(updates['fc']['kernel'].sum())
    (Array([ 0.1, -0.1], dtype=float32), 0.0)

    In training, place it before the optimizer:

    >>> tx = optax.chain(sparsify.network_slimming(1e-4),
    ...                  optax.sgd(0.1, momentum=0.9))

  References:
    Liu et al., "Learning efficient convolutional networks through network
    slimming", ICCV 2017. https://arxiv.org/abs/1708.06519
  """

  checks.check_nonnegative("strength", strength)

  def step(updates, params, count):
    lam = schedules.value_at(strength, count)
    return jax.tree.map(
        lambda g, p: (g + lam * jnp.sign(p)).astype(g.dtype), updates,
        params)

  return optax.masked(counting.counting_transform(NetworkSlimmingState, step),
                      lambda params: paths.select(params, where))


def slimming_threshold(
    params: types.Params,
    fraction: float,
    where: paths.Where = BN_SCALES,
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

  Raises:
    ValueError: if ``fraction`` is outside [0, 1) or ``where`` selects no
      parameter.

  Example:
    Five scales over two layers; pruning 40 % of them removes the two below
    0.25:

    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> params = {'bn1': {'scale': jnp.array([0.125, 0.75, 0.25])},
    ...           'bn2': {'scale': jnp.array([-0.0625, 0.5])}}
    >>> sparsify.slimming_threshold(params, 0.4)
    0.25

  References:
    Liu et al., "Learning efficient convolutional networks through network
    slimming", ICCV 2017. https://arxiv.org/abs/1708.06519
  """
  checks.check_fraction("fraction", fraction)
  chosen = paths.select(params, where)
  values = [np.abs(np.asarray(p)).ravel()
            for p, keep in zip(jax.tree.leaves(params), jax.tree.leaves(chosen))
            if keep]
  if not values:
    raise ValueError(f"where: {where!r} selects no parameter")
  values = np.concatenate(values)
  k = int(np.floor(fraction * values.size))
  return float(np.partition(values, k)[k])

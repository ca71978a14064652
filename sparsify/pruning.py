"""Magnitude and random pruning built on the shared mask mechanism.

The selection of the ``k`` largest scores is sort-free: a radix selection
over the bit patterns of the (non-negative) float32 scores finds the exact
k-th largest value with three histogram passes, no sort and no `top_k`, so the
cost of recomputing masks stays a small multiple of one pass over the weights
(a full sort of a 784x300 kernel costs some forty LeNet-300-100 steps on CPU).
"""

from collections.abc import Callable, Sequence
import math
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsify import base
from sparsify import masking

Allocation = Literal["layerwise", "global"]
ALLOCATIONS = ("layerwise", "global")

# Radix digits of a non-negative float32's bit pattern, high to low: sign and
# exponent with 3 mantissa bits, then 10 and 10 more mantissa bits.
_DIGITS = ((20, 11), (10, 10), (0, 10))  # (shift, width)


def _kth_largest_bits(scores: Sequence[jax.Array], k: jax.Array) -> jax.Array:
  """Bit pattern of the k-th largest value over all ``scores`` (all >= 0).

  Radix selection: the bit pattern of a non-negative float32 orders like its
  value, so a histogram of the highest digit finds the bucket holding the
  k-th largest, a histogram of the next digit inside that bucket narrows it,
  and so on: three scatter-add passes with small histograms, no sort.
  """
  bits = [jax.lax.bitcast_convert_type(s.astype(jnp.float32), jnp.int32)
          .ravel() for s in scores]
  prefix = jnp.int32(0)  # the digits found so far, in place
  need = k  # how many of the entries matching `prefix` to take
  matched_shift = 31
  for shift, width in _DIGITS:
    size = 1 << width
    digit = [(b >> shift) & (size - 1) for b in bits]
    hist = sum(
        jnp.zeros(size + 1, jnp.int32).at[
            jnp.where((b >> matched_shift) == (prefix >> matched_shift), d,
                      size)].add(1)
        for b, d in zip(bits, digit))[:-1]
    at_least = jnp.cumsum(hist[::-1])[::-1]  # entries with digit >= i
    chosen = jnp.sum(at_least >= need, dtype=jnp.int32) - 1
    above = jnp.where(chosen + 1 < size,
                      at_least[jnp.minimum(chosen + 1, size - 1)], 0)
    need = need - above
    prefix = prefix | (chosen << shift)
    matched_shift = shift
  return prefix


def top_k_mask(
    scores: Sequence[jax.Array], k: jax.typing.ArrayLike
) -> list[jax.Array]:
  """Masks keeping the ``k`` largest of non-negative ``scores``, jointly.

  The threshold is the exact k-th largest score; entries tied with it are all
  kept, so ties may keep more than ``k``. ``k`` may be traced.

  Args:
    scores: non-negative arrays, treated as one pool.
    k: how many entries to keep in the whole pool (0 keeps none).

  Returns:
    One boolean array per score array.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> top_k_mask = jax.jit(sparsify.top_k_mask)
    >>> top_k_mask([jnp.array([3.0, 1.0, 2.0]), jnp.array([0.5, 4.0])], 2)
    [Array([ True, False, False], dtype=bool),
     Array([False,  True], dtype=bool)]
  """
  k = jnp.asarray(k, jnp.int32)
  threshold = _kth_largest_bits(scores, k)
  return [
      (jax.lax.bitcast_convert_type(s.astype(jnp.float32), jnp.int32)
       >= threshold) & (k > 0)
      for s in scores
  ]


def keep_count(size: int, sparsity: jax.typing.ArrayLike) -> jax.Array:
  """Number of weights kept out of ``size`` at ``sparsity`` (rounded).

  Args:
    size: the number of weights.
    sparsity: the fraction removed, a scalar (possibly traced).

  Returns:
    ``size - round(sparsity * size)``, an int32 scalar.

  Example:
    >>> from sparsify import pruning
    >>> int(pruning.keep_count(10, 0.75))
    2
  """
  return jnp.int32(size) - jnp.round(
      jnp.asarray(sparsity, jnp.float32) * size).astype(jnp.int32)


def select_by_score(
    scores: base.Params,
    sparsity: jax.typing.ArrayLike,
    allocation: Allocation = "layerwise",
) -> base.Masks:
  """Masks that drop the ``sparsity`` fraction of lowest scores.

  Args:
    scores: pytree of non-negative score arrays (e.g. magnitudes).
    sparsity: fraction in [0, 1) to remove, a scalar (possibly traced).
    allocation: ``'layerwise'`` removes that fraction of every layer;
      ``'global'`` removes it from all layers pooled, so layers end with
      different sparsities.

  Returns:
    A pytree of boolean masks shaped like ``scores``.

  Example:
    Keeping half of six scores: two per layer, or the three largest of all:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> scores = {'a': jnp.array([3.0, 1.0, 2.0, 5.0]),
    ...           'b': jnp.array([0.5, 0.25])}
    >>> select = jax.jit(sparsify.select_by_score, static_argnames='allocation')
    >>> select(scores, 0.5)
    {'a': Array([ True, False, False,  True], dtype=bool),
     'b': Array([ True, False], dtype=bool)}
    >>> select(scores, 0.5, allocation='global')
    {'a': Array([ True, False,  True,  True], dtype=bool),
     'b': Array([False, False], dtype=bool)}
  """
  leaves, treedef = jax.tree.flatten(scores)
  if allocation == "global":
    total = sum(x.size for x in leaves)
    return treedef.unflatten(top_k_mask(leaves, keep_count(total, sparsity)))
  if allocation != "layerwise":
    raise ValueError(f"allocation: got {allocation!r}; allowed: "
                     f"{', '.join(ALLOCATIONS)}")
  masks = [top_k_mask([x], keep_count(x.size, sparsity))[0] for x in leaves]
  return treedef.unflatten(masks)


def check_fraction(name: str, value: Any) -> None:
  """Checks a Python number; arrays (e.g. injected hyper-parameters) pass.

  Args:
    name: the argument's name, for the error message.
    value: the value to check.

  Raises:
    ValueError: if ``value`` is a Python number outside [0, 1).

  Example:
    >>> from sparsify import pruning
    >>> pruning.check_fraction("sparsity", 0.9)
    >>> pruning.check_fraction("sparsity", 1.0)
    Traceback (most recent call last):
      ...
    ValueError: sparsity: got 1.0; allowed: a fraction in [0, 1)
  """
  if isinstance(value, (int, float)) and not 0.0 <= value < 1.0:
    raise ValueError(f"{name}: got {value}; allowed: a fraction in [0, 1)")


def gradual_magnitude_pruning(
    sparsity: float,
    *,
    begin_step: int,
    end_step: int,
    update_every: int = 100,
    initial_sparsity: float = 0.0,
    power: float = 3.0,
    allocation: Allocation = "layerwise",
    where: str | Callable[[str, Any], bool] | None = None,
) -> optax.GradientTransformation:
  r"""Gradual magnitude pruning with the polynomial (cubic) schedule.

  Every ``update_every`` steps between ``begin_step`` (:math:`t_0`) and
  ``end_step`` (:math:`t_1`) the weights of smallest magnitude are masked so
  that the sparsity follows

  .. math::
    s_t = s_f + (s_i - s_f)\left(1 - \frac{t - t_0}{t_1 - t_0}\right)^3,

  and stays at :math:`s_f` after :math:`t_1`. Masks only grow: a pruned
  weight has magnitude zero and is never chosen again.

  Args:
    sparsity: final sparsity :math:`s_f` in [0, 1).
    begin_step: first pruning step :math:`t_0`.
    end_step: last pruning step :math:`t_1 \ge t_0`.
    update_every: steps between mask updates (:math:`\Delta t`).
    initial_sparsity: :math:`s_i`.
    power: exponent of the schedule (3 in the paper).
    allocation: ``'layerwise'`` (every layer reaches :math:`s_t`) or
      ``'global'`` (one threshold over all selected layers).
    where: which parameters to prune (see `masking.mask_updates`).

  Returns:
    An `optax.GradientTransformation`; place it last in the chain.

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

  References:
    Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of
    pruning for model compression", 2017. https://arxiv.org/abs/1710.01878
  """
  check_fraction("sparsity", sparsity)
  check_fraction("initial_sparsity", initial_sparsity)
  if end_step < begin_step or begin_step < 0:
    raise ValueError(f"end_step: got begin_step={begin_step}, end_step="
                     f"{end_step}; allowed: 0 <= begin_step <= end_step")
  schedule = optax.polynomial_schedule(
      init_value=initial_sparsity, end_value=sparsity, power=power,
      transition_steps=max(end_step - begin_step, 1),
      transition_begin=begin_step)
  if end_step == begin_step:
    schedule = lambda step: jnp.asarray(sparsity, jnp.float32)  # pylint: disable=unnecessary-lambda-assignment

  def update_masks(step, weights, masks):
    scores = jax.tree.map(lambda w, m: jnp.abs(jnp.where(m, w, 0)), weights,
                          masks)
    return select_by_score(scores, schedule(step), allocation)

  return masking.mask_updates(
      update_masks=update_masks, update_every=update_every,
      begin_step=begin_step, end_step=end_step, where=where)


def magnitude_pruning(
    sparsity: float,
    *,
    step: int = 0,
    allocation: Allocation = "layerwise",
    where: str | Callable[[str, Any], bool] | None = None,
) -> optax.GradientTransformation:
  """One-shot magnitude pruning: at ``step``, drop the smallest weights.

  At ``step`` each selected layer (or, with ``'global'``, all of them
  pooled) keeps the weights whose magnitude is at least ``q``, that of its
  ``k``-th largest weight::

    mask = |W| >= q,    k = size - round(sparsity * size)

  The masks are then kept fixed for the rest of training (the pruned
  weights stay exactly zero, the others keep training).

  Args:
    sparsity: fraction of weights to remove, in [0, 1).
    step: the step at which to prune.
    allocation: ``'layerwise'`` or ``'global'``.
    where: which parameters to prune (see `masking.mask_updates`).

  Returns:
    An `optax.GradientTransformation`; place it last in the chain.

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
      update_every=1, allocation=allocation, where=where)


def erk_densities(
    shapes: Sequence[Sequence[int]], sparsity: float, scale: float = 1.0
) -> list[float]:
  r"""Per-layer densities of the Erdős–Rényi-Kernel allocation.

  Layer :math:`l` gets density :math:`\epsilon \cdot \sum_i n_i / \prod_i n_i`
  over its shape :math:`n`, with :math:`\epsilon` solved so that the total
  number of kept weights is :math:`(1 - s) \sum_l |W_l|`. Layers whose density
  would exceed 1 are kept dense and :math:`\epsilon` is solved again for the
  rest.

  Args:
    shapes: the shape of each layer.
    sparsity: the overall fraction :math:`s` of weights removed, in [0, 1).
    scale: a factor on every raw density :math:`\sum_i n_i / \prod_i n_i`
      (it cancels unless some layer is kept dense).

  Returns:
    One density (fraction of weights kept) per layer, Python floats.

  Example:
    The small last layer stays dense; the large first one is the sparsest:

    >>> import sparsify
    >>> densities = sparsify.erk_densities([(784, 300), (300, 100), (100, 10)],
    ...                                    0.9)
    >>> [round(d, 3) for d in densities]
    [0.08, 0.23, 1.0]

  References:
    Evci et al., "Rigging the lottery: making all tickets winners", ICML 2020.
  """
  sizes = np.array([math.prod(s) for s in shapes], np.float64)
  raw = np.array([scale * sum(s) / math.prod(s) for s in shapes], np.float64)
  dense = np.zeros(len(shapes), bool)
  budget = (1.0 - sparsity) * sizes.sum()
  while True:
    eps = (budget - sizes[dense].sum()) / (raw[~dense] * sizes[~dense]).sum()
    density = np.where(dense, 1.0, eps * raw)
    if (density <= 1.0).all():
      return density.tolist()
    dense |= density > 1.0


def random_sparsity(
    sparsity: float,
    *,
    seed: int = 0,
    allocation: Literal["uniform", "erk"] = "uniform",
    where: str | Callable[[str, Any], bool] | None = None,
) -> optax.GradientTransformation:
  """Static random sparsity: a fixed random mask from step 0.

  Each selected layer :math:`l` keeps a uniformly random subset of its
  weights, of exactly ``kept_l`` entries::

    kept_l = size_l - round(s_l * size_l)

  where :math:`s_l` is ``sparsity`` for every layer
  (``'uniform'``) or the ERK allocation with the same total (``'erk'``, see
  `erk_densities`). The masks never change.

  Args:
    sparsity: overall fraction of weights removed, in [0, 1).
    seed: seed of the random masks.
    allocation: ``'uniform'`` or ``'erk'``.
    where: which parameters to prune (see `masking.mask_updates`).

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
  check_fraction("sparsity", sparsity)
  if allocation not in ("uniform", "erk"):
    raise ValueError(f"allocation: got {allocation!r}; allowed: erk, uniform")

  def init_masks(params):
    leaves, treedef = jax.tree.flatten(params)
    if allocation == "erk":
      per_layer = [1.0 - d for d in erk_densities(
          [p.shape for p in leaves], sparsity)]
    else:
      per_layer = [sparsity] * len(leaves)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    scores = [jax.random.uniform(key, p.shape) for key, p in zip(keys, leaves)]
    masks = [top_k_mask([x], keep_count(x.size, s))[0]
             for x, s in zip(scores, per_layer)]
    return treedef.unflatten(masks)

  return masking.mask_updates(init_masks=init_masks, where=where)

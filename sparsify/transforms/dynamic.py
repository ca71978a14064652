r"""Dynamic sparse training: SET and RigL, at constant sparsity from the start.

Each selected layer starts from `random_sparsity`'s random mask and keeps its
number of weights for the whole run; every ``update_every`` steps until
``end_step`` it drops the fraction

.. math::
  \zeta_t = \frac{\zeta}{2}\left(1 + \cos\frac{\pi t}{T_\mathrm{end}}\right)

of its kept weights with the smallest magnitude and regrows as many: at
random (SET) or where the dense gradient is largest (RigL). Both wrap the
optimizer (`gradients.masked_optimizer`): RigL needs the gradients of pruned
weights, which a transform after the optimizer never sees, and both need the
optimizer to see only the kept weights' gradients, so that a regrown weight
starts at zero with zero momentum instead of the momentum its dense gradient
would have built while it was pruned.

Every selection is the sort-free radix selection of `sparsify.core.topk`
(`topk.top_k_exact`), so a mask update costs a few passes over the
weights, linear in their number. With a block ``pattern`` the same happens
to whole tiles (`sparsify.core.patterns`), scored by their L2 norm.
"""

import math
from typing import Literal

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
from sparsify.transforms import random as random_lib

_ALLOWED = "'unstructured' or a block shape (b1, b2)"


def check_pattern(pattern: patterns.Pattern) -> patterns.Structure:
  """Parses a dynamic sparse training ``pattern``: unstructured or blocks.

  A drop-and-grow that keeps N:M groups would have to drop and grow within
  every group; it is refused.

  Args:
    pattern: ``'unstructured'`` or a block shape ``(b1, b2)``.

  Returns:
    The parsed pattern (see `patterns.parse`).

  Raises:
    ValueError: any other pattern, in one line naming what is allowed.

  Example:
    >>> from sparsify.transforms import dynamic
    >>> dynamic.check_pattern((4, 1))
    Blocks(rows=4, cols=1)
    >>> dynamic.check_pattern('2:4')
    Traceback (most recent call last):
      ...
    ValueError: pattern: got '2:4'; allowed: 'unstructured' or a block shape (b1, b2)
  """
  try:
    structure = patterns.parse(pattern)
  except ValueError:
    structure = None
  if structure is None or isinstance(structure, patterns.NByM):
    raise ValueError(f"pattern: got {pattern!r}; allowed: {_ALLOWED}")
  return structure


def _check_blocks_fit(params, structure):
  """Every layer's 2-D view must be a whole number of tiles (exact counts)."""
  if not isinstance(structure, patterns.Blocks):
    return
  for name, leaf in paths.named_leaves(params):
    shape = tuple(jnp.shape(leaf))
    rows, cols = (math.prod(shape[:-1]), shape[-1]) if len(shape) > 1 else (
        math.prod(shape), 1)
    if rows % structure.rows or cols % structure.cols:
      raise ValueError(
          f"pattern {structure}: {name} of shape {shape} (2-D view "
          f"({rows}, {cols})) is not a whole number of tiles, so its count "
          "of kept weights could not stay fixed; leave it out with `where` "
          "or choose a block shape that divides it")


def drop_fraction(step: jax.typing.ArrayLike, zeta: jax.typing.ArrayLike,
                  end_step: jax.typing.ArrayLike) -> jax.Array:
  r"""The cosine-decayed fraction of kept weights replaced at ``step``.

  .. math::
    \zeta_t = \frac{\zeta}{2}\left(1 + \cos\frac{\pi t}{T_\mathrm{end}}
    \right) \text{ for } t < T_\mathrm{end}, \quad 0 \text{ from }
    T_\mathrm{end} \text{ on}.

  Args:
    step: the step :math:`t` (may be traced).
    zeta: the initial fraction :math:`\zeta` (may be traced).
    end_step: :math:`T_\mathrm{end}` (may be traced).

  Returns:
    :math:`\zeta_t`, a float32 scalar.

  Example:
    >>> from sparsify.transforms import dynamic
    >>> [round(float(dynamic.drop_fraction(t, 0.3, 100)), 3)
    ...  for t in (0, 50, 100, 150)]
    [0.3, 0.15, 0.0, 0.0]
  """
  t = jnp.asarray(step, jnp.float32)
  end = jnp.asarray(end_step, jnp.float32)
  fraction = 0.5 * jnp.asarray(zeta, jnp.float32) * (
      1.0 + jnp.cos(jnp.pi * t / jnp.maximum(end, 1.0)))
  return jnp.where(t < end, fraction, 0.0)


def drop_and_grow(weights: types.Params, masks: types.Masks,
                  grow_scores: types.Params,
                  fraction: jax.typing.ArrayLike,
                  pattern: patterns.Pattern = "unstructured") -> types.Masks:
  r"""One drop-and-grow of every layer: its count of kept weights is kept.

  A layer with :math:`n` kept weights keeps the :math:`n - k` of largest
  magnitude, :math:`k = \mathrm{round}(\text{fraction} \cdot n)`, and adds
  the :math:`k` of largest ``grow_scores`` among all the others (a weight
  just dropped may be grown back; it then stays as it was). Ties go to the
  first weight in row-major order, both when keeping and when growing.

  With a block shape ``pattern`` the same is done to the tiles of every
  layer's 2-D view (`patterns.tile_scores`): a tile's magnitude is the L2
  norm of its weights, its growth score the L2 norm of its scores, and
  :math:`n` and :math:`k` count tiles.

  Args:
    weights: the current weights.
    masks: their masks, shaped like ``weights``.
    grow_scores: non-negative growth scores shaped like ``weights``.
    fraction: the fraction of kept weights replaced (may be traced).
    pattern: ``'unstructured'`` or a block shape ``(b1, b2)`` whose tiles
      divide every layer (see `check_pattern`); static.

  Returns:
    The new masks; every layer keeps exactly as many weights (tiles) as
    before.

  Example:
    Two of four kept weights are replaced: the two smallest go, the two
    pruned ones of largest score come in:

    >>> import jax.numpy as jnp
    >>> from sparsify.transforms import dynamic
    >>> w = jnp.array([0.5, -0.1, 0.0, 2.0, 0.0, 0.3])
    >>> m = jnp.array([True, True, False, True, False, True])
    >>> dynamic.drop_and_grow(w, m, jnp.array([0., 0., 3., 0., 1., 0.]), 0.5)
    Array([ True, False,  True,  True,  True, False], dtype=bool)
  """
  fraction = jnp.asarray(fraction, jnp.float32)
  structure = check_pattern(pattern)

  def replace(magnitude, m, growth):
    n = jnp.sum(m, dtype=jnp.int32)
    k = jnp.round(fraction * n).astype(jnp.int32)
    magnitude = jnp.maximum(magnitude, gradients.TINY)
    survivors = topk.top_k_exact([jnp.where(m, magnitude, 0.0)],
                                      n - k)[0]
    growth = jnp.maximum(growth, gradients.TINY)
    grown = topk.top_k_exact([jnp.where(survivors, 0.0, growth)], k)[0]
    return survivors | grown

  def layer(w, m, g):
    magnitude = jnp.abs(w).astype(jnp.float32)
    growth = jnp.asarray(g, jnp.float32)
    if structure == patterns.UNSTRUCTURED:
      return replace(magnitude, m, growth)
    tiles = lambda x: patterns.tile_scores(x, structure)
    kept = replace(tiles(jnp.where(m, magnitude, 0.0)),
                   tiles(m.astype(jnp.float32)) > 0, tiles(growth))
    return patterns.untile(kept, w.shape, structure)

  return jax.tree.map(layer, weights, masks, grow_scores)


def _dynamic_sparse_training(optimizer, grow_scores, sparsity, end_step,
                             update_every, zeta, allocation, pattern, where,
                             seed):
  """The transform SET and RigL share; ``grow_scores(step, masks, grads)``."""
  checks.check_fraction("sparsity", sparsity)
  checks.check_fraction("zeta", zeta, closed=True)
  checks.check_integer("end_step", end_step, 0)
  checks.check_one_of("allocation", allocation, ("uniform", "erk"))
  structure = check_pattern(pattern)

  def init_masks(params):
    _check_blocks_fit(params, structure)
    # The selected parameters only: random_sparsity draws its masks over
    # the same leaves as when it is used alone.
    initial = random_lib.random_sparsity(
        sparsity, seed=seed, allocation=allocation, pattern=structure,
        where=lambda name, leaf: True)
    return masking.find_masks(initial.init(params))

  def update_masks(step, weights, masks, grads, scores):
    del scores
    fraction = drop_fraction(step, schedules.value_at(zeta, step),
                             schedules.value_at(end_step, step))
    fraction = jnp.where(step > 0, fraction, 0.0)  # train before the first
    return drop_and_grow(weights, masks, grow_scores(step, masks, grads),
                         fraction, structure)

  return gradients.masked_optimizer(
      optimizer, update_masks, init_masks=init_masks,
      update_every=update_every, begin_step=0, end_step=end_step,
      where=where)


def rigl(
    optimizer: optax.GradientTransformation,
    *,
    sparsity: types.ScalarOrSchedule,
    end_step: types.ScalarOrSchedule,
    update_every: types.ScalarOrSchedule = 100,
    zeta: types.ScalarOrSchedule = 0.3,
    allocation: Literal["uniform", "erk"] = "uniform",
    pattern: patterns.Pattern = "unstructured",
    where: paths.Where = None,
    seed: jax.typing.ArrayLike = 0,
) -> optax.GradientTransformation:
  r"""RigL: drop the smallest weights, regrow where the gradient is largest.

  Each selected layer :math:`l` starts from a random mask of
  :math:`n_l = |W_l| - \mathrm{round}(s_l |W_l|)` weights (`random_sparsity`
  with the same ``seed``, ``sparsity`` and ``allocation``) and keeps
  exactly :math:`n_l` for the whole run. At :math:`t = \Delta T, 2\Delta T,
  \ldots < T_\mathrm{end}` it drops the :math:`k = \mathrm{round}(\zeta_t
  n_l)` kept weights of smallest :math:`|w_t|` (`drop_fraction`:
  :math:`\zeta_t = \tfrac{\zeta}{2}(1 + \cos(\pi t / T_\mathrm{end}))`) and
  grows the :math:`k` others of largest :math:`|g_t|`, the raw (dense)
  gradient of the step, given to this transform:

  .. math::
    m_{t+1} = \mathrm{TopK}_{n_l - k}(m_t \odot |w_t|) \cup
    \mathrm{TopK}_{k}\big(|g_t| \text{ outside it}\big).

  Ties go to the first weight in row-major order. A grown weight starts at
  exactly zero, and its optimizer slots (momentum, Adam's moments: every
  part of the optimizer's state shaped like the parameters) are set to zero
  with it; the optimizer only ever sees the gradients of kept weights, so
  nothing of a weight's pruned past leaks in (a weight dropped and grown in
  the same update stays as it was). The kept weights take the optimizer's
  step as usual, mask updates included.

  The mask update is sort-free (radix selection, `topk.top_k_exact`):
  its cost grows linearly with the number of weights. It runs inside
  `jax.lax.cond`, so other steps cost what static masks cost.

  Args:
    optimizer: the optimizer, e.g. ``optax.sgd(0.1, momentum=0.9)``; this
      transform replaces it in the training step and receives the raw
      gradients.
    sparsity: fraction of the selected weights removed, in [0, 1): a
      number, a traced array or a schedule (read at step 0).
    end_step: :math:`T_\mathrm{end}`, after which the masks stay fixed (75%
      of training in the paper).
    update_every: :math:`\Delta T`, steps between mask updates.
    zeta: :math:`\zeta`, the initial fraction of kept weights replaced, in
      [0, 1].
    allocation: ``'uniform'`` (every layer at ``sparsity``) or ``'erk'``
      (`distributions.erk_densities`, same total); static.
    pattern: ``'unstructured'`` or a block shape ``(b1, b2)``: whole tiles
      of every layer's 2-D view are dropped and grown, by the L2 norm of
      their weights and of their gradients (`drop_and_grow`); the tiles
      must divide every selected layer. N:M is refused; static.
    where: which parameters are sparse, a `paths.Where` (``None``: Dense and
      Conv kernels).
    seed: seed of the initial mask (may be traced).

  Returns:
    An `optax.GradientTransformation`: the whole optimizer, to use alone
    (``TrainState.create(..., tx=rigl(...))``).

  Example:
    A 4x5 kernel keeps 5 weights at every step while its mask changes:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import sparsify
    >>> from sparsify.transforms import dynamic
    >>> normal = lambda i: jax.random.normal(jax.random.key(i), (4, 5))
    >>> params = {'fc': {'kernel': normal(0)}}
    >>> tx = dynamic.rigl(optax.sgd(0.1), sparsity=0.75, end_step=6,
    ...                   update_every=2, zeta=0.5)
    >>> state, update = tx.init(params), jax.jit(tx.update)
    >>> first = sparsify.find_masks(state)['fc']['kernel']
    >>> for i in range(6):
    ...   grads = {'fc': {'kernel': normal(i + 1)}}
    ...   updates, state = update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> masks = sparsify.find_masks(state)['fc']['kernel']
    >>> int(masks.sum()), bool((masks != first).any())
    (5, True)

  References:
    Evci, Gale, Menick, Castro & Elsen, "Rigging the lottery: making all
    tickets winners", ICML 2020. https://arxiv.org/abs/1911.11134
  """

  def grow_scores(step, masks, grads):
    del step, masks
    return jax.tree.map(lambda g: jnp.abs(g.astype(jnp.float32)), grads)

  return _dynamic_sparse_training(optimizer, grow_scores, sparsity, end_step,
                                  update_every, zeta, allocation, pattern,
                                  where, seed)


def sparse_evolutionary_training(
    optimizer: optax.GradientTransformation,
    *,
    sparsity: types.ScalarOrSchedule,
    end_step: types.ScalarOrSchedule,
    update_every: types.ScalarOrSchedule = 100,
    zeta: types.ScalarOrSchedule = 0.3,
    allocation: Literal["uniform", "erk"] = "uniform",
    pattern: patterns.Pattern = "unstructured",
    where: paths.Where = None,
    seed: jax.typing.ArrayLike = 0,
) -> optax.GradientTransformation:
  r"""SET: drop the smallest weights, regrow as many at random.

  `rigl` with random growth: at each mask update every selected layer drops
  its :math:`k = \mathrm{round}(\zeta_t n_l)` kept weights of smallest
  magnitude and grows :math:`k` of the others chosen uniformly at random
  (the :math:`k` largest of uniform draws, ties to the first in row-major
  order), from a key that is ``fold_in(key(seed), t)``, so a run is
  reproducible from ``seed`` and the step. Initial masks, counts, schedule,
  zero start and zero optimizer slots of grown weights are as in `rigl`.

  SET does not need the gradients of pruned weights, but it takes the
  optimizer as RigL does, for the same reason it needs: a transform placed
  after the optimizer cannot keep the pruned weights' gradients out of the
  optimizer's moments, so a regrown weight would bring back the momentum
  its dense gradient built while it was pruned.

  Args:
    optimizer: the optimizer; this transform replaces it in the training
      step.
    sparsity: fraction of the selected weights removed, in [0, 1): a
      number, a traced array or a schedule (read at step 0).
    end_step: :math:`T_\mathrm{end}`, after which the masks stay fixed.
    update_every: :math:`\Delta T`, steps between mask updates.
    zeta: :math:`\zeta`, the initial fraction of kept weights replaced, in
      [0, 1] (decayed by the cosine of `drop_fraction`).
    allocation: ``'uniform'`` or ``'erk'`` (the Erdős–Rényi allocation of
      the paper, extended to kernels); static.
    pattern: ``'unstructured'`` or a block shape ``(b1, b2)`` (random
      tiles grown; see `rigl`); N:M is refused; static.
    where: which parameters are sparse, a `paths.Where` (``None``: Dense and
      Conv kernels).
    seed: seed of the initial mask and of the growth (may be traced).

  Returns:
    An `optax.GradientTransformation`: the whole optimizer, to use alone.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import sparsify
    >>> from sparsify.transforms import dynamic
    >>> params = {'fc': {'kernel': jnp.ones((8, 8))}}
    >>> tx = dynamic.sparse_evolutionary_training(
    ...     optax.adam(1e-2), sparsity=0.9, end_step=10, update_every=5,
    ...     allocation='erk', seed=1)
    >>> state = tx.init(params)
    >>> for _ in range(5):
    ...   updates, state = tx.update(params, state, params)
    >>> int(sparsify.find_masks(state)['fc']['kernel'].sum())
    6

  References:
    Mocanu, Mocanu, Stone, Nguyen, Gibescu & Liotta, "Scalable training of
    artificial neural networks with adaptive sparse connectivity inspired
    by network science", Nature Communications 2018.
    https://arxiv.org/abs/1707.04780
  """

  def grow_scores(step, masks, grads):
    del grads
    leaves, treedef = jax.tree.flatten(masks)
    keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), step),
                            len(leaves))
    # Drawn flat and reshaped, as random_pruning does (faster to compile).
    return treedef.unflatten([
        jax.random.uniform(key, (m.size,)).reshape(m.shape)
        for key, m in zip(keys, leaves)])

  return _dynamic_sparse_training(optimizer, grow_scores, sparsity, end_step,
                                  update_every, zeta, allocation, pattern,
                                  where, seed)

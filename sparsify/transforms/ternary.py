r"""LCT: layer-wise compressive training into ternary layers.

Layer-wise compressive training starts from a trained network and compresses
it one layer at a time:

1. magnitude pruning of the Dense and Conv kernels to one *global* sparsity,
   so each layer ends with its own sparsity (`layer_significance`);
2. the layers are sorted by significance, least significant first (by
   default the more a layer was pruned, the less it matters);
3. "σ-constrained SGD" (`ternary_constrained`) collapses the chosen layers
   onto the ternary set :math:`\{-\sigma, 0, +\sigma\}` on their pruning
   mask, while a full-precision latent copy keeps training.

The accuracy-driven loop (constrain the next layer, train briefly, keep it if
the accuracy drop stays within the budget, otherwise revert and stop) is
written with these parts by the trainer. A ternary layer is stored as a
bitmask, one sign bit per surviving weight and one float σ (`ternary_bits`).

Exactness in float32: a ternary layer holds the values ``ternarize`` returns,
bit for bit. σ is rounded to `SIGMA_BITS` significant bits before it is
written into the weights, so that moving a weight from :math:`\pm\sigma_{t-1}`
to :math:`\pm\sigma_t` (both rounded, within a factor :math:`2^7` of each
other) is an exact float32 addition. On the first step, when the weights are
still full precision, an entry that no float32 update can move exactly onto
its target (a sign flip of a large weight whose low bits do not cancel) is
set to 0 for that step and reaches its target on the next one, so the layer
never holds a fourth value.
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsify.core import checks
from sparsify.core import paths
from sparsify.core import schedules
from sparsify.core import types

SIGMA_MODES = ("learned", "mean")
ENCODINGS = ("base3", "bitmask", "two_bit")
SIGMA_BITS = 16  # significant bits of the σ written into a ternary layer



def sigma_of(w: jax.typing.ArrayLike, mask: jax.typing.ArrayLike) -> jax.Array:
  r"""Mean magnitude of the surviving weights of a layer.

  .. math::
    \sigma(W, M) = \frac{\sum_i M_i\,|W_i|}{\sum_i M_i},
    \qquad \sigma = 0 \text{ when } \sum_i M_i = 0.

  When no surviving weight is exactly zero, it is the σ minimising
  :math:`\sum_i M_i (W_i - \sigma\,\mathrm{sign}(W_i))^2`: the L2-optimal
  scale for the ternary pattern :math:`\mathrm{sign}(W) \odot M`.

  Args:
    w: the weights.
    mask: booleans shaped like ``w``; `True` marks a surviving weight.

  Returns:
    A float32 scalar.

  Example:
    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> sparsify.sigma_of(jnp.array([-2.0, 0.5, 3.0]),
    ...                   jnp.array([True, False, True]))
    Array(2.5, dtype=float32)

  References:
    Grimaldi, Tenace & Calimera, "Layer-wise compressive training for
    convolutional neural networks", Future Internet 11(1):7, 2019.
  """
  w, mask = jnp.asarray(w), jnp.asarray(mask, jnp.bool_)
  _check_shape(w, mask)
  count = jnp.sum(mask, dtype=jnp.int32)
  total = jnp.sum(jnp.where(mask, jnp.abs(w), 0), dtype=jnp.float32)
  return jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)


def _check_shape(w: jax.Array, mask: jax.Array) -> None:
  if jnp.shape(mask) != jnp.shape(w):
    raise ValueError(f"mask: got shape {jnp.shape(mask)}; allowed: the "
                     f"weights' shape {jnp.shape(w)}")


def _round_sigma(sigma: jax.typing.ArrayLike) -> jax.Array:
  """σ rounded to nearest (ties to even) with `SIGMA_BITS` significant bits."""
  drop = 24 - SIGMA_BITS  # float32 significand bits cleared
  bits = jax.lax.bitcast_convert_type(jnp.asarray(sigma, jnp.float32),
                                      jnp.int32)
  bits = (bits + ((1 << (drop - 1)) - 1) + ((bits >> drop) & 1)) & ~(
      (1 << drop) - 1)
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def ternarize(
    w: jax.typing.ArrayLike,
    mask: jax.typing.ArrayLike,
    sigma: jax.typing.ArrayLike,
    delta: jax.typing.ArrayLike = 0.0,
) -> jax.Array:
  r"""Projects weights onto :math:`\{-\hat\sigma, 0, +\hat\sigma\}` on a mask.

  .. math::
    t_i = \hat\sigma\,\mathrm{sign}(w_i)\,[\,|w_i| > \delta\,]\,M_i,

  where :math:`\hat\sigma` is σ rounded to `SIGMA_BITS` significant bits
  (relative error at most :math:`2^{-16}`), so that steps between ternary
  values are exact in float32. With :math:`\delta = 0` every surviving
  non-zero weight becomes :math:`\pm\hat\sigma` and zeros are exactly the
  masked entries (and weights that are exactly 0).

  Args:
    w: the weights (or their latent full-precision copy).
    mask: booleans shaped like ``w``; `False` entries become 0.
    sigma: the scale σ >= 0, a scalar.
    delta: the dead zone: weights with :math:`|w| \le \delta` become 0.

  Returns:
    The ternary array, shaped and typed like ``w``.

  Example:
    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> sparsify.ternarize(jnp.array([-2.0, 0.5, 3.0]),
    ...                    jnp.array([True, True, False]), 1.5)
    Array([-1.5,  1.5,  0. ], dtype=float32)

  References:
    Li, Zhang & Liu, "Ternary weight networks", 2016 (the dead zone
    :math:`\delta`). https://arxiv.org/abs/1605.04711
  """
  w, mask = jnp.asarray(w), jnp.asarray(mask, jnp.bool_)
  _check_shape(w, mask)
  scale = _round_sigma(sigma).astype(w.dtype)
  keep = mask & (jnp.abs(w) > delta)
  return jnp.where(keep, jnp.where(w > 0, scale, -scale),
                   jnp.zeros((), w.dtype))


def ternary_bits(mask: Any, *, encoding: str = "bitmask") -> int:
  r"""Storage of ternary layers, in bits, one float32 σ per layer included.

  For a layer of :math:`n` weights of which :math:`k` are non-zero:

  * ``'bitmask'``: a bitmask of the non-zero entries plus one sign bit per
    non-zero weight, :math:`n + k + 32`;
  * ``'two_bit'``: a 2-bit code per weight, :math:`2n + 32`;
  * ``'base3'``: five ternary digits per byte (:math:`3^5 \le 256`),
    :math:`8\lceil n/5 \rceil + 32`.

  The bitmask never costs more than the 2-bit code (equal when the layer is
  dense); the 2-bit code is fixed-width, so a weight is decoded without
  counting the bits before it. Base-3 packing (1.6 bits per weight) is the
  cheapest when more than 60 % of the weights are non-zero, the bitmask when
  fewer are.

  Args:
    mask: a boolean array marking the non-zero entries of one ternary layer
      (with ``threshold=0`` the pruning mask), or a pytree of them (bits are
      summed, one σ per leaf).
    encoding: ``'bitmask'``, ``'two_bit'`` or ``'base3'``.

  Returns:
    The number of bits, a Python int.

  Example:
    >>> import numpy as np
    >>> import sparsify
    >>> sparsify.ternary_bits(np.array([True, False, True, True]))  # 4 + 3 + 32
    39
    >>> sparsify.ternary_bits(np.array([True, False, True, True]),
    ...                       encoding='two_bit')  # 2 * 4 + 32
    40
  """
  checks.check_one_of("encoding", encoding, ENCODINGS)
  total = 0
  for leaf in jax.tree.leaves(mask):
    m = np.asarray(leaf, bool)
    n, k = m.size, int(m.sum())
    if encoding == "bitmask":
      total += n + k
    elif encoding == "two_bit":
      total += 2 * n
    else:
      total += 8 * math.ceil(n / 5)
    total += 32
  return total


class TernaryState(NamedTuple):
  """State of `ternary_constrained` (for the constrained leaves).

  Attributes:
    count: number of updates seen so far (int32).
    latent: the full-precision copy of each constrained weight; zero outside
      the mask.
    masks: the fixed boolean mask of each constrained weight.
    sigma: one float32 σ per constrained weight (before the rounding of
      `ternarize`).
  """
  count: jax.Array
  latent: types.Params
  masks: types.Masks
  sigma: types.Params


def ternary_constrained(
    *,
    where: paths.Where = None,
    sigma: str = "mean",
    sigma_learning_rate: types.ScalarOrSchedule = 1.0,
    threshold: types.ScalarOrSchedule = 0.0,
    masks: types.Masks | None = None,
) -> optax.GradientTransformation:
  r"""σ-constrained SGD: chosen layers stay ternary on a fixed mask.

  Each constrained weight :math:`W` (params :math:`p`, mask :math:`M`) keeps
  a full-precision latent copy :math:`L` in the state, initialised to
  :math:`M \odot p`. With :math:`u` the incoming update (the preceding
  chain's output, e.g. :math:`-\eta\nabla_W \mathcal{L}` after
  ``optax.sgd(η)``: the gradient with respect to the ternary weights is
  passed straight through to the latent), each step computes

  .. math::
    L &\leftarrow M \odot (L + u) \\
    \mu &= \textstyle\sum_i M_i |L_i| \,/\, \sum_i M_i \\
    \delta &= \theta\,\mu \\
    t &= \hat\sigma\,\mathrm{sign}(L)\,[\,|L| > \delta\,]\,M

  (`ternarize`) and returns :math:`t - p`, so ``optax.apply_updates`` yields
  exactly :math:`t` (on the first step, an entry float32 cannot move onto
  its target lands on 0 instead; see the module docstring). The default
  :math:`\theta = 0` keeps every surviving
  weight at :math:`\pm\sigma`: zeros are exactly the pruned entries, as the
  bitmask-plus-sign storage of `ternary_bits` assumes. :math:`\theta > 0`
  adds a dead zone inside the mask (0.7 in Ternary Weight Networks).

  σ is one scalar per layer:

  * ``'mean'``: :math:`\sigma = \mu`, the mean magnitude of the surviving
    latent weights, recomputed every step.
  * ``'learned'``: σ starts at :math:`\sigma(p, M)` and follows its own
    gradient. The weights are :math:`W = \sigma s` with :math:`s` the
    ternary pattern at which the gradient was taken (:math:`\mathrm{sign}
    (p) \odot M`, read from the latent weights so that it is defined even
    when :math:`\sigma = 0` and σ can grow back), so
    :math:`\partial\mathcal{L}/\partial\sigma =
    \sum_i s_i\,\partial\mathcal{L}/\partial W_i`, a sum over the non-zero
    ternary entries. Written with the incoming update,

    .. math::
      \sigma \leftarrow \max\Bigl(0,\ \sigma + \eta_\sigma \sum_i u_i\,
        \mathrm{sign}(p_i)\,M_i\Bigr),

    which after ``optax.sgd(η)`` is plain gradient descent on σ with step
    :math:`\eta\,\eta_\sigma`. After a preconditioner (Adam), each
    :math:`u_i` is already of the order of η, and the sum over the layer's
    :math:`k` weights calls for :math:`\eta_\sigma \approx 1/k`.

  The mask is fixed: ``masks`` when given for a leaf, otherwise the non-zero
  entries of the parameters at ``init`` (a network pruned beforehand). The
  learned σ is a reconstruction of "σ learned per layer"; the mean rule and
  the dead zone are configurable choices.

  Args:
    where: which weights to constrain, chosen among the Dense and Conv
      kernels (`paths.kernel`): ``None`` for all of them, a collection of
      parameter paths (``['fc2/kernel']``; each must be one of them), a
      regex searched in their paths or a predicate ``(path, leaf) -> bool``.
      Other leaves pass through unchanged.
    sigma: ``'mean'`` or ``'learned'``; static.
    sigma_learning_rate: :math:`\eta_\sigma` for ``'learned'``, a float >= 0
      or a schedule.
    threshold: :math:`\theta` >= 0, a float or a schedule.
    masks: optional fixed masks: a pytree shaped like (part of) the params,
      or a ``{path: mask}`` dict, e.g. `Significance.masks`; a leaf without
      one (absent, or `types.NO_MASK`) takes the non-zero entries of its
      parameter.

  Returns:
    An `optax.GradientTransformation`; place it last in the chain. Its state
    is an `optax.MaskedState` holding a `TernaryState`.

  Example:
    Prune, then constrain the least significant layer; after one step its
    surviving weights are :math:`\pm\sigma` with :math:`\sigma` their mean
    magnitude:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import sparsify
    >>> params = {'fc1': {'kernel': jnp.array([[0.5, -1.5], [0.25, 2.5]])},
    ...           'fc2': {'kernel': jnp.array([[3.0], [-4.0]])}}
    >>> sig = sparsify.layer_significance(params, sparsity=0.2)
    >>> params = sparsify.apply_masks(params, sig.masks)
    >>> tx = optax.chain(optax.sgd(0.01),
    ...                  sparsify.ternary_constrained(where=sig.order[:1]))
    >>> state = tx.init(params)
    >>> grads = {'fc1': {'kernel': jnp.zeros((2, 2))},
    ...          'fc2': {'kernel': jnp.zeros((2, 1))}}
    >>> updates, state = jax.jit(tx.update)(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> sig.order[0], params['fc1']['kernel']
    ('fc1/kernel', Array([[ 1.5, -1.5],
                          [ 0. ,  1.5]], dtype=float32))
    >>> params['fc2']['kernel'].ravel()  # not constrained
    Array([ 3., -4.], dtype=float32)

  References:
    Grimaldi, Tenace & Calimera, "Layer-wise compressive training for
    convolutional neural networks", Future Internet 11(1):7, 2019.
    Zhu, Han, Mao & Dally, "Trained ternary quantization", ICLR 2017 (a
    scale learned by its own gradient).
  """
  checks.check_one_of("sigma", sigma, SIGMA_MODES)
  checks.check_nonnegative("sigma_learning_rate", sigma_learning_rate)
  checks.check_nonnegative("threshold", threshold)
  if (where is not None and not isinstance(where, str)
      and not callable(where)):
    where = tuple(where)
    if not all(isinstance(n, str) for n in where):
      raise ValueError(f"where: got {where!r}; allowed: parameter paths "
                       "(str), a regex, a predicate or None")
  picked = paths.path_predicate(where)
  given = None if masks is None else dict(paths.named_leaves(masks))

  def chosen(name, leaf):
    return paths.kernel(name, leaf) and picked(name, leaf)

  def selection(tree):
    flags = paths.map_with_name(chosen, tree)
    if isinstance(where, tuple):
      found = {n for n, f in paths.named_leaves(flags) if f}
      missing = sorted(set(where) - found)
      if missing:
        available = sorted(n for n, leaf in paths.named_leaves(tree)
                           if paths.kernel(n, leaf))
        raise ValueError(f"where: {missing} not found among the Dense and "
                         f"Conv kernels; allowed: {available}")
    return flags

  def init_mask(name, p):
    if given is not None and name in given:
      m = jnp.asarray(given[name], jnp.bool_)
      if m.shape != jnp.shape(p):
        raise ValueError(f"masks: got shape {m.shape} for {name!r}; allowed:"
                         f" the parameter's shape {jnp.shape(p)}")
      return m
    return jnp.asarray(p) != 0

  def init_fn(params):
    fixed = paths.map_with_name(init_mask, params)
    latent = jax.tree.map(lambda p, m: jnp.where(m, p, 0), params, fixed)
    sigmas = jax.tree.map(sigma_of, params, fixed)
    return TernaryState(count=jnp.zeros([], jnp.int32), latent=latent,
                        masks=fixed, sigma=sigmas)

  def constrain(u, p, latent, m, s, theta, lr_sigma):
    if sigma == "learned":
      # sign(p), read from the latent weights so that it survives sigma = 0.
      live = jnp.abs(latent) > theta * sigma_of(latent, m)
      pattern = jnp.where(m & live, jnp.sign(latent), 0)
      s = jnp.maximum(s + lr_sigma * jnp.sum(u * pattern, dtype=jnp.float32),
                      0.0)
    latent = jnp.where(m, latent + u, 0).astype(latent.dtype)
    mean = sigma_of(latent, m)
    if sigma == "mean":
      s = mean
    t = ternarize(latent, m, s, theta * mean).astype(p.dtype)
    step = (t - p).astype(p.dtype)
    # Where float32 cannot land on t from p (first step only), land on 0.
    step = jnp.where(p + step == t, step, -p)
    return step, latent, jnp.asarray(s, jnp.float32)

  def update_fn(updates, state, params=None):
    checks.require_params(params)
    theta = schedules.value_at(threshold, state.count)
    lr_sigma = schedules.value_at(sigma_learning_rate, state.count)
    leaves, treedef = jax.tree.flatten(updates)
    others = [treedef.flatten_up_to(x) for x in (params, state.latent,
                                                 state.masks, state.sigma)]
    out = [constrain(*args, theta, lr_sigma)
           for args in zip(leaves, *others)]
    count = optax.safe_increment(state.count)
    if not out:
      return updates, state._replace(count=count)
    steps, latent, sigmas = (treedef.unflatten(list(x)) for x in zip(*out))
    return steps, TernaryState(count=count, latent=latent, masks=state.masks,
                               sigma=sigmas)

  inner = optax.GradientTransformation(init_fn, update_fn)
  return optax.masked(inner, selection)

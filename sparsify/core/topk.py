"""Sort-free selection of the ``k`` largest scores.

The selection of the ``k`` largest scores is a radix selection over the bit
patterns of the (non-negative) float32 scores: it finds the exact k-th
largest value with three histogram passes, no sort and no `top_k`, so the
cost of recomputing masks stays a small multiple of one pass over the weights
(a full sort of a 784x300 kernel costs some forty LeNet-300-100 steps on CPU).
"""

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp

from sparsify.core import checks
from sparsify.core import types

Allocation = Literal["layerwise", "global"]

ALLOCATIONS = ("layerwise", "global")

# Radix digits of a non-negative float32's bit pattern, high to low: sign and
# exponent with 3 mantissa bits, then 10 and 10 more mantissa bits.
_DIGITS = ((20, 11), (10, 10), (0, 10))  # (shift, width)

def _ordered_bits(scores: jax.Array) -> jax.Array:
  """The int32 bit patterns of non-negative float32 scores, in value order.

  ``-0.0`` (whose pattern is negative) and anything not above zero become
  ``+0.0``, so that all zeros tie and sort below every positive score.
  """
  s = scores.astype(jnp.float32)
  return jax.lax.bitcast_convert_type(jnp.where(s > 0, s, 0.0), jnp.int32)


def _kth_largest_bits(scores: Sequence[jax.Array], k: jax.Array) -> jax.Array:
  """Bit pattern of the k-th largest value over all ``scores`` (all >= 0).

  Radix selection: the bit pattern of a non-negative float32 orders like its
  value, so a histogram of the highest digit finds the bucket holding the
  k-th largest, a histogram of the next digit inside that bucket narrows it,
  and so on: three scatter-add passes with small histograms, no sort.
  """
  bits = [_ordered_bits(s).ravel() for s in scores]
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
      (_ordered_bits(s) >= threshold) & (k > 0)
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
    >>> from sparsify.core import topk
    >>> int(topk.keep_count(10, 0.75))
    2
  """
  return jnp.int32(size) - jnp.round(
      jnp.asarray(sparsity, jnp.float32) * size).astype(jnp.int32)

def select_by_score(
    scores: types.Params,
    sparsity: jax.typing.ArrayLike,
    allocation: Allocation = "layerwise",
) -> types.Masks:
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
  checks.check_one_of("allocation", allocation, ALLOCATIONS)
  masks = [top_k_mask([x], keep_count(x.size, sparsity))[0] for x in leaves]
  return treedef.unflatten(masks)


def top_k_exact(scores: Sequence[jax.Array],
                k: jax.typing.ArrayLike) -> list[jax.Array]:
  """Masks keeping exactly the ``k`` largest of non-negative ``scores``.

  Like `top_k_mask` (one pool, sort-free radix selection of the k-th
  largest value), but of the entries tied with the k-th largest only as
  many are kept as make ``k``: the first ones in flattening order (the
  arrays in order, each in row-major order). That is one more pass (a
  cumulative sum), so the cost stays linear in the number of entries.

  Args:
    scores: non-negative arrays (anything not above zero counts as 0),
      treated as one pool.
    k: how many entries to keep, ``0 <= k`` (all of them if ``k`` exceeds
      their number); may be traced.

  Returns:
    One boolean array per score array, ``min(k, n)`` `True` in all.

  Example:
    Three entries tie at 1.0; two of them make ``k = 3``, the first two:

    >>> import jax.numpy as jnp
    >>> from sparsify.core import topk
    >>> topk.top_k_exact([jnp.array([1.0, 2.0, 1.0, 1.0])], 3)
    [Array([ True,  True,  True, False], dtype=bool)]
  """
  k = jnp.asarray(k, jnp.int32)
  scores = [jnp.where(s > 0, s, 0.0).astype(jnp.float32) for s in scores]
  with_ties = top_k_mask(scores, k)
  kth = jnp.min(jnp.stack([jnp.min(jnp.where(m, s, jnp.inf))
                           for s, m in zip(scores, with_ties)]))
  above = [s > kth for s in scores]
  room = k - sum(jnp.sum(a, dtype=jnp.int32) for a in above)
  kept, before = [], jnp.int32(0)
  for s, a in zip(scores, above):
    tied = s == kth  # none when k == 0: then kth is +inf
    rank = before + jnp.cumsum(tied.ravel(), dtype=jnp.int32).reshape(s.shape)
    kept.append(a | (tied & (rank <= room)))
    before = before + jnp.sum(tied, dtype=jnp.int32)
  return kept

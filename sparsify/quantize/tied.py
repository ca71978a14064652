"""Fine-tuning that keeps a quantized layer quantized: tied updates.

After weight sharing (`sparsify.quantize.share_weights`) or product
quantization (`sparsify.quantize.pq_encode`) the weights of a layer fall into
*groups* that hold one value: the kept weights with the same shared code,
or, for PQ, the entries at one position of the sub-vectors assigned to the
same centroid of a sub-space. Deep Compression fine-tunes the centroids
instead of the weights; `tie_updates` does the same inside an optax chain:
it replaces each weight's update by the mean update of its group, so that
weights that share a value share it after every step, exactly (same value
plus same update is the same value in floating point), and pruned weights
stay where they are. After fine-tuning, `refit_shared` and `refit_pq` read
the new codebooks off the weights, with the codes unchanged.

A `Tie` says which group each weight of a leaf belongs to: `shared_tie`,
`pq_tie` and `sign_tie` (a ternary layer, whose weights are
:math:`\\pm\\sigma`: one magnitude, moved by the mean signed update) build
one.
"""

from collections.abc import Mapping
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsify.core import paths
from sparsify.quantize import pq
from sparsify.quantize import sharing


class Tie(NamedTuple):
  """Which weights of one leaf move together (see `tie_updates`).

  Attributes:
    groups: int32 numpy array of the leaf's shape, in ``[-1, count)``: the
      group of each weight; -1 for a weight that never moves (pruned).
    count: the number of groups.
    signs: None, or a float32 numpy array of ``+1`` / ``-1`` of the leaf's
      shape: a weight moves by its sign times its group's mean signed
      update (a ternary layer's ``-sigma`` weights mirror its ``+sigma``
      ones).
  """
  groups: np.ndarray
  count: int
  signs: np.ndarray | None = None


def shared_tie(code: sharing.SharedCode) -> Tie:
  """The groups of a weight-shared kernel: its kept weights by shared code.

  Args:
    code: a `SharedCode` (or anything with its ``codebook``, ``codes``,
      ``mask`` and ``shape`` fields, e.g. `sparsify.spz.SharedLayer`).

  Returns:
    A `Tie`: group ``codes[i]`` for the ``i``-th kept weight (C order), -1
    for the pruned ones; one group per codebook entry.

  Example:
    >>> import numpy as np
    >>> from sparsify import quantize
    >>> code = quantize.SharedCode(codebook=np.array([-1.0, 2.0]),
    ...                            codes=np.array([1, 0, 1]),
    ...                            mask=np.array([[True, False], [True, True]]),
    ...                            shape=(2, 2))
    >>> quantize.shared_tie(code).groups
    array([[ 1, -1],
           [ 0,  1]], dtype=int32)
  """
  shape = tuple(int(v) for v in code.shape)
  keep = np.asarray(code.mask).astype(bool)
  codes = np.asarray(code.codes)
  if keep.shape != shape or codes.shape != (int(keep.sum()),):
    raise ValueError(f"code: got mask {keep.shape} and codes {codes.shape}; "
                     f"allowed: a mask of the kernel's shape {shape} and one "
                     "code per kept weight")
  groups = np.full(shape, -1, np.int32)
  groups[keep] = codes
  return Tie(groups, int(np.size(code.codebook)))


def pq_tie(code: pq.PQCode, mask: Any = None) -> Tie:
  """The groups of a product-quantized kernel: one per centroid entry.

  With ``W`` the ``(m, n)`` view of the kernel (see `sparsify.quantize.pq`),
  ``d = n / s`` and ``k`` centroids per sub-space, weight ``W[r, j d + t]``
  holds ``codebooks[j, codes[r, j], t]``: its group is ``(j k + codes[r,
  j]) d + t``, so the entries at position ``t`` of every sub-vector of
  sub-space ``j`` assigned to the same centroid move together.

  Args:
    code: a `PQCode` (or anything with its ``codebooks``, ``codes`` and
      ``shape`` fields, e.g. `sparsify.spz.PQLayer`).
    mask: None, or booleans of the kernel's shape: the pruned weights
      (False) get group -1 and never move.

  Returns:
    A `Tie` with ``s k d`` groups.

  Example:
    One sub-space, two centroids; units 0 and 2 share centroid 0:

    >>> import numpy as np
    >>> from sparsify import quantize
    >>> code = quantize.PQCode(codebooks=np.zeros((1, 2, 2)),
    ...                        codes=np.array([[0], [1], [0]]), shape=(2, 3))
    >>> quantize.pq_tie(code).groups
    array([[0, 2, 0],
           [1, 3, 1]], dtype=int32)
  """
  shape = tuple(int(v) for v in code.shape)
  s, k, d = np.shape(code.codebooks)
  codes = np.asarray(code.codes).astype(np.int64)
  m, n = shape[-1], math.prod(shape[:-1])
  if codes.shape != (m, s) or s * d != n:
    raise ValueError(f"code: codebooks {np.shape(code.codebooks)} and codes "
                     f"{codes.shape} do not fit a kernel of shape {shape}")
  j = np.arange(n) // d  # sub-space of each input
  t = np.arange(n) % d  # position in its sub-vector
  groups = (j[:, None] * k + codes[:, j].T) * d + t[:, None]  # (n, m)
  groups = groups.reshape(shape).astype(np.int32)
  if mask is not None:
    keep = np.asarray(mask).astype(bool)
    if keep.shape != shape:
      raise ValueError(f"mask: got shape {keep.shape}; allowed: the "
                       f"kernel's shape {shape}")
    groups = np.where(keep, groups, -1).astype(np.int32)
  return Tie(groups, int(s * k * d))


def sign_tie(kernel: Any) -> Tie:
  r"""The group of a ternary kernel: its nonzero weights, with their signs.

  A ternary kernel is :math:`\sigma\,s` with :math:`s \in \{-1, 0, 1\}`;
  its nonzero weights form one group with signs :math:`s`, so they keep
  one magnitude (`tie_updates` moves each by :math:`s_i` times the mean of
  :math:`s_j u_j`), and its zeros never move.

  Args:
    kernel: the kernel; its zeros are the pruned weights.

  Returns:
    A `Tie` with one group and the kernel's signs.

  Example:
    >>> import numpy as np
    >>> from sparsify import quantize
    >>> tie = quantize.sign_tie(np.array([[0.5, 0.0], [-0.5, 0.5]]))
    >>> tie.groups, tie.signs
    (array([[ 0, -1],
           [ 0,  0]], dtype=int32), array([[ 1.,  1.],
           [-1.,  1.]], dtype=float32))
  """
  w = np.asarray(kernel)
  groups = np.where(w != 0, 0, -1).astype(np.int32)
  return Tie(groups, 1, np.where(w < 0, -1.0, 1.0).astype(np.float32))


def _as_tie(name: str, value: Any) -> Tie:
  if isinstance(value, Tie):
    return value
  if isinstance(value, sharing.SharedCode):
    return shared_tie(value)
  if isinstance(value, pq.PQCode):
    return pq_tie(value)
  raise ValueError(f"ties[{name!r}]: got {type(value).__name__}; allowed: a "
                   "Tie, SharedCode or PQCode (for a masked PQ layer: "
                   "pq_tie(code, mask))")


class TieState(NamedTuple):
  """The groups of `tie_updates`, as arrays (not constants of the step).

  Attributes:
    segments: ``{path: int32 (size,)}``, each weight's group in C order;
      the pruned weights' group is ``count``, an extra one.
    inverses: ``{path: float32 (count + 1,)}``, one over each group's size
      (0 for an empty group and for the extra one).
    signs: ``{path: float32 (size,)}``, the `Tie`'s signs (ones without).
  """
  segments: dict[str, jax.Array]
  inverses: dict[str, jax.Array]
  signs: dict[str, jax.Array]


def _tied(update: jax.Array, state: TieState, name: str,
          count: int) -> jax.Array:
  """``update`` replaced by its group means (0 for pruned weights)."""
  segments, signs = state.segments[name], state.signs[name].astype(
      update.dtype)
  sums = jax.ops.segment_sum(update.reshape(-1) * signs, segments,
                             num_segments=count + 1)
  means = sums * state.inverses[name].astype(update.dtype)
  out = jnp.where(segments == count, 0, means[segments] * signs)  # +0
  return out.reshape(update.shape)


def tie_updates(ties: Mapping[str, Tie | sharing.SharedCode | pq.PQCode]
                ) -> optax.GradientTransformation:
  r"""Each tied weight's update replaced by the mean update of its group.

  For a leaf with groups :math:`G_1, \dots, G_K` (`Tie`), signs
  :math:`s_i \in \{\pm 1\}` (1 unless the `Tie` has signs) and incoming
  updates :math:`u_i`:

  .. math::
    u_i \leftarrow s_i\,\frac{1}{|G_{g(i)}|}\sum_{j \in G_{g(i)}} s_j u_j,
    \qquad u_i \leftarrow 0 \text{ for a weight of no group.}

  Weights of a group that hold the same value (times their sign) get the
  same update, so ``optax.apply_updates`` leaves them equal, bit for bit:
  a shared kernel keeps its ``2**bits`` values at the same positions, a PQ
  kernel its codes, a ternary kernel its one magnitude, and pruned weights
  stay zero. This is Deep Compression's fine-tuning of the shared
  centroids, where a centroid moves by the gradients of the weights
  assigned to it; the mean (rather than the paper's sum) gives each
  centroid the step of a single weight, whatever its group's size. Place
  the transform last in the chain, after any masking, so that the
  optimizer's state (momentum, Adam moments) follows the weights'
  own gradients and only the applied step is tied.

  Args:
    ties: ``{path: tie}`` for the leaves to tie (paths as
      `sparsify.path_name` writes them, e.g. ``'fc1/kernel'``); a tie is a
      `Tie`, or a `SharedCode` or (unmasked) `PQCode`, converted with
      `shared_tie` or `pq_tie`. Other leaves pass through unchanged.
      Structural, so static under `optax.inject_hyperparams`.

  Returns:
    An `optax.GradientTransformation`; its state is a `TieState`, the
    groups as arrays (so that a jitted step takes them as inputs rather
    than compiling them in as constants).

  Raises:
    ValueError: a path that names no leaf of the params, or a tie whose
      shape is not its leaf's (at ``init``).

  Example:
    The two weights of code 1 move by the mean of their updates, the
    pruned weight does not move:

    >>> import jax.numpy as jnp
    >>> import optax
    >>> from sparsify import quantize
    >>> params = {'fc': {'kernel': jnp.array([[2.0, 0.0], [-1.0, 2.0]])}}
    >>> code = quantize.share_weights(params['fc']['kernel'], bits=1)
    >>> tx = optax.chain(optax.sgd(1.0), quantize.tie_updates(
    ...     {'fc/kernel': code}))
    >>> grads = {'fc': {'kernel': jnp.array([[0.5, 9.0], [0.25, 0.25]])}}
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates['fc']['kernel']
    Array([[-0.375,  0.   ],
           [-0.25 , -0.375]], dtype=float32)

  References:
    Han, Mao & Dally, "Deep Compression: compressing deep neural networks
    with pruning, trained quantization and Huffman coding", ICLR 2016
    (Section 3.1, fine-tuning the shared weights).
  """
  ties = {name: _as_tie(name, value) for name, value in ties.items()}
  segments, inverses, signs = {}, {}, {}
  for name, tie in ties.items():
    groups = np.asarray(tie.groups)
    if groups.size and (groups.min() < -1 or groups.max() >= tie.count):
      raise ValueError(f"ties[{name!r}]: groups in [{groups.min()}, "
                       f"{groups.max()}]; allowed: [-1, {tie.count})")
    sizes = np.bincount(groups[groups >= 0], minlength=tie.count)
    inverse = np.zeros(tie.count + 1, np.float64)
    inverse[:-1][sizes > 0] = 1.0 / sizes[sizes > 0]
    inverses[name] = inverse.astype(np.float32)
    segments[name] = np.where(groups < 0, tie.count, groups).reshape(
        -1).astype(np.int32)
    signs[name] = (np.ones(groups.size, np.float32) if tie.signs is None
                   else np.asarray(tie.signs, np.float32).reshape(-1))

  def init_fn(params):
    shapes = dict(paths.named_leaves(params))
    for name, tie in ties.items():
      if name not in shapes:
        raise ValueError(f"ties: {name!r} names no parameter; parameters: "
                         f"{sorted(shapes)}")
      if tuple(np.shape(shapes[name])) != tuple(np.shape(tie.groups)):
        raise ValueError(f"ties[{name!r}]: shape {np.shape(tie.groups)}; "
                         f"allowed: the parameter's {np.shape(shapes[name])}")
    arrays = lambda d: {k: jnp.asarray(v) for k, v in d.items()}
    return TieState(arrays(segments), arrays(inverses), arrays(signs))

  def update_fn(updates, state, params=None):
    del params
    out = paths.map_with_name(
        lambda name, u: u if name not in ties else _tied(
            u, state, name, ties[name].count), updates)
    return out, state

  return optax.GradientTransformation(init_fn, update_fn)


def _first_members(groups: np.ndarray, count: int) -> np.ndarray:
  """For each group, the flat index of its first member; -1 if it is empty."""
  flat = groups.reshape(-1)
  first = np.full(count, -1, np.int64)
  members = np.flatnonzero(flat >= 0)
  # The first occurrence of each group among the members, in C order.
  found, where = np.unique(flat[members], return_index=True)
  first[found] = members[where]
  return first


def refit_shared(code: sharing.SharedCode,
                 kernel: Any) -> sharing.SharedCode:
  """The `SharedCode` of a kernel fine-tuned with its codes tied.

  The codes and mask stay; each shared value is read off the kernel (a
  code no kept weight uses keeps its value). The kernel must hold one value
  per code on the kept weights and zeros elsewhere, as `tie_updates` leaves
  it.

  Args:
    code: the code the kernel was tied to.
    kernel: the fine-tuned kernel.

  Returns:
    A `SharedCode` that `shared_decode` turns into ``kernel`` exactly.

  Raises:
    ValueError: the kernel does not hold one value per code, or is nonzero
      where the code prunes.

  Example:
    >>> import numpy as np
    >>> from sparsify import quantize
    >>> code = quantize.share_weights(np.array([[2.0, 0.0], [-1.0, 2.0]]),
    ...                               bits=1)
    >>> new = quantize.refit_shared(code, np.array([[1.5, 0.0], [-1.25, 1.5]]))
    >>> new.codebook
    array([-1.25,  1.5 ], dtype=float32)
  """
  w = np.asarray(kernel, np.float32)
  tie = shared_tie(code)
  if w.shape != tie.groups.shape:
    raise ValueError(f"kernel: got shape {w.shape}; allowed: the code's "
                     f"{tie.groups.shape}")
  first = _first_members(tie.groups, tie.count)
  book = np.array(code.codebook, np.float32).reshape(-1)
  used = first >= 0
  book[used] = w.reshape(-1)[first[used]]
  new = sharing.SharedCode(book, np.asarray(code.codes),
                           np.asarray(code.mask).astype(bool), tie.groups.shape)
  _check_exact(np.asarray(sharing.shared_decode(new)), w, "shared")
  return new


def refit_pq(code: pq.PQCode, kernel: Any, mask: Any = None) -> pq.PQCode:
  """The `PQCode` of a kernel fine-tuned with its codes tied.

  The codes stay; each codebook entry is read off the kernel where a kept
  weight holds it (an entry no kept weight holds keeps its value). The
  kernel must be ``pq_decode`` of such a code, as `tie_updates` leaves it.

  Args:
    code: the code the kernel was tied to.
    kernel: the fine-tuned kernel.
    mask: None, or booleans of the kernel's shape (False: pruned, zero).

  Returns:
    A `PQCode` that ``pq_decode(code, mask)`` turns into ``kernel`` exactly.

  Raises:
    ValueError: the kernel is not a decoding of the code's codes.

  Example:
    >>> import numpy as np
    >>> from sparsify import quantize
    >>> code = quantize.PQCode(codebooks=np.zeros((1, 2, 2)),
    ...                        codes=np.array([[0], [1], [0]]), shape=(2, 3))
    >>> kernel = np.array([[1.0, 3.0, 1.0], [2.0, 4.0, 2.0]])
    >>> quantize.refit_pq(code, kernel).codebooks
    array([[[1., 2.],
            [3., 4.]]], dtype=float32)
  """
  w = np.asarray(kernel, np.float32)
  tie = pq_tie(code, mask)
  if w.shape != tie.groups.shape:
    raise ValueError(f"kernel: got shape {w.shape}; allowed: the code's "
                     f"{tie.groups.shape}")
  first = _first_members(tie.groups, tie.count)
  books = np.array(code.codebooks, np.float32)
  flat = books.reshape(-1)  # group (j k + c) d + t is entry [j, c, t]
  used = first >= 0
  # The kernel's C-order flat index of W.T's entries is its own.
  flat[used] = w.reshape(-1)[first[used]]
  new = pq.PQCode(flat.reshape(books.shape), np.asarray(code.codes),
                  tie.groups.shape)
  _check_exact(np.asarray(pq.pq_decode(new, mask)), w, "pq")
  return new


def _check_exact(decoded: np.ndarray, kernel: np.ndarray, what: str) -> None:
  if not np.array_equal(decoded, kernel):
    bad = int(np.count_nonzero(decoded != kernel))
    raise ValueError(f"kernel: {bad} of {kernel.size} weights differ from "
                     f"the {what} code's values; allowed: a kernel whose "
                     "weights of each group are equal (fine-tuned with "
                     "tie_updates)")

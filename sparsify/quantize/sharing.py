"""Weight sharing: the kept weights of a pruned kernel share a few values.

Deep Compression's trained quantization (`share_weights`) is the scalar case
of product quantization: the kept weights of a pruned kernel are clustered
by 1-D k-means (`sparsify.quantize.kmeans`) into ``k = 2**bits`` values, and
each kept weight is stored as a ``bits``-bit index into that codebook.
`SharedCode` holds the ``codebook`` (``(k,)`` float32), the ``codes``
(int32, one per kept weight in C order), the ``mask`` of kept weights and
the kernel's ``shape``; `sparsify.spz.shared_layer` stores one with relative
indices for the mask. `share_params` shares the weights of every selected
kernel of a parameter pytree.
"""

from collections.abc import Callable, Mapping
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sparsify.core import paths
from sparsify.core import types
from sparsify.quantize import pq
from sparsify.quantize.kmeans import check_iterations
from sparsify.quantize.kmeans import kmeans_plus_plus
from sparsify.quantize.kmeans import lloyd

_INITS = ("linear", "kmeans++")


class SharedCode(NamedTuple):
  """A kernel whose kept weights share ``k`` values (see `share_weights`).

  Attributes:
    codebook: float32 ``(k,)``, the shared values.
    codes: int32 ``(nnz,)`` in ``[0, k)``, one per kept weight in C order.
    mask: boolean, the kernel's shape; True where a weight is kept.
    shape: the kernel's shape, a tuple of ints.
  """
  codebook: jax.Array
  codes: jax.Array
  mask: jax.Array
  shape: tuple[int, ...]


def _check_bits(bits):
  if (not isinstance(bits, (int, np.integer)) or isinstance(bits, bool)
      or not 1 <= bits <= 16):
    raise ValueError(f"bits: got {bits!r}; allowed: an integer in [1, 16]")


def share_weights(
    kernel: jax.typing.ArrayLike,
    *,
    bits: int,
    key: jax.Array | None = None,
    mask: jax.typing.ArrayLike | None = None,
    iterations: int = 25,
    init: str = "linear",
) -> SharedCode:
  r"""Weight sharing: the kept weights of a kernel take ``k = 2**bits`` values.

  The kept weights :math:`w_1, \dots, w_N` (C order) are clustered by 1-D
  k-means, `lloyd` on the ``(N, 1)`` column:

  .. math::
    \min_{c, a} \sum_i (w_i - c_{a_i})^2, \qquad
    \hat w_i = c_{a_i}.

  Seeding (``init``): ``'linear'`` (the default, as in Deep Compression)
  spaces the centroids evenly over :math:`[\min_i w_i, \max_i w_i]`,
  ``np.linspace(min, max, k)`` computed in float64 and rounded to float32,
  so that the few large weights keep centroids of their own; ``key`` is
  not used. ``'kmeans++'`` seeds with `kmeans_plus_plus` driven by ``key``.

  A kernel with fewer kept weights than ``2**bits`` gets ``k = 2**b``, ``b =
  floor(log2 N)`` (``N`` rounded down to a power of two); one with none
  gets the codebook ``[0.0]`` and no codes.

  Args:
    kernel: the weights, any shape.
    bits: code bits per kept weight, an integer in ``[1, 16]``.
    key: a JAX PRNG key; needed with ``init='kmeans++'`` only.
    mask: optional booleans shaped like ``kernel``, True where kept; by
      default the nonzero weights are kept.
    iterations: the most Lloyd updates.
    init: ``'linear'`` or ``'kmeans++'``.

  Returns:
    A `SharedCode`; `shared_decode` rebuilds the kernel.

  Example:
    One bit per kept weight: the four nonzero weights share two values:

    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> kernel = jnp.array([[0.5, -1.0, 0.0], [1.5, 0.0, -2.0]])
    >>> code = sparsify.share_weights(kernel, bits=1)
    >>> code.codebook, code.codes
    (Array([-1.5,  1. ], dtype=float32), Array([1, 0, 1, 0], dtype=int32))
    >>> sparsify.shared_decode(code)
    Array([[ 1. , -1.5,  0. ],
           [ 1. ,  0. , -1.5]], dtype=float32)

  References:
    Han, Mao & Dally, "Deep Compression: compressing deep neural networks
    with pruning, trained quantization and Huffman coding", ICLR 2016.
  """
  _check_bits(bits)
  check_iterations(iterations)
  if init not in _INITS:
    raise ValueError(f"init: got {init!r}; allowed: {list(_INITS)}")
  if init == "kmeans++" and key is None:
    raise ValueError("key: got None; allowed: a JAX PRNG key, which "
                     "init='kmeans++' needs")
  w = np.asarray(kernel, np.float32)
  shape = tuple(int(v) for v in w.shape)
  if mask is None:
    keep = w != 0
  else:
    if tuple(np.shape(mask)) != shape:
      raise ValueError(f"mask: got shape {np.shape(mask)}; allowed: the "
                       f"kernel's shape {shape}")
    keep = np.asarray(mask).astype(bool)
  kept = w[keep]  # C order.
  n = kept.size
  if n == 0:
    return SharedCode(jnp.zeros((1,), jnp.float32), jnp.zeros((0,), jnp.int32),
                      jnp.asarray(keep), shape)
  k = min(2 ** int(bits), 1 << (n.bit_length() - 1))
  if init == "linear":
    start = np.linspace(float(kept.min()), float(kept.max()), k)
    start = jnp.asarray(start.astype(np.float32)[:, None])
  else:
    start = kmeans_plus_plus(kept[:, None], k, key=key)
  # Rows padded to a power of two (masked out, so they change nothing):
  # layers of similar size share one compiled Lloyd loop.
  rows = max(16, 1 << (n - 1).bit_length())
  x = np.zeros((rows, 1), np.float32)
  x[:n, 0] = kept
  real = np.arange(rows)[:, None] < n
  centroids, codes = lloyd(x, start, iterations=iterations, mask=real)
  return SharedCode(centroids[:, 0], codes[:n], jnp.asarray(keep), shape)


def shared_decode(code: SharedCode) -> jax.Array:
  """Rebuilds the kernel of a `SharedCode`: ``codebook[codes]`` where kept.

  Args:
    code: the `SharedCode`.

  Returns:
    The float32 kernel of shape ``code.shape``, zero where ``code.mask`` is
    False; its kept entries, in C order, are ``codebook[codes]``.

  Example:
    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> code = sparsify.SharedCode(
    ...     codebook=jnp.array([-1.0, 2.0]), codes=jnp.array([1, 0, 1]),
    ...     mask=jnp.array([[True, False], [True, True]]), shape=(2, 2))
    >>> sparsify.shared_decode(code)
    Array([[ 2.,  0.],
           [-1.,  2.]], dtype=float32)
  """
  shape = tuple(code.shape)
  codebook = jnp.asarray(code.codebook, jnp.float32)
  codes = np.asarray(code.codes)
  keep = np.asarray(code.mask).astype(bool)
  if codebook.ndim != 1 or codebook.shape[0] < 1:
    raise ValueError(f"code: got codebook shape {codebook.shape}; allowed: "
                     "(k,) with k >= 1")
  if keep.shape != shape:
    raise ValueError(f"code: got mask shape {keep.shape}; allowed: the "
                     f"kernel's shape {shape}")
  nnz = int(np.count_nonzero(keep))
  if codes.shape != (nnz,):
    raise ValueError(f"code: got codes shape {codes.shape}; allowed: ({nnz},),"
                     " one per kept weight")
  positions = np.flatnonzero(keep)
  flat = jnp.zeros(math.prod(shape), jnp.float32)
  flat = flat.at[positions].set(codebook[jnp.asarray(codes, jnp.int32)])
  return flat.reshape(shape)


def share_params(
    params: types.Params,
    *,
    bits: int | Mapping[str, int],
    key: jax.Array | None = None,
    where: str | Callable[[str, Any], bool] | None = None,
    masks: types.Masks | None = None,
    iterations: int = 25,
    init: str = "linear",
) -> tuple[types.Params, dict[str, SharedCode]]:
  """Weight sharing (`share_weights`) of every selected kernel of a pytree.

  The kept weights ``w_i`` of a layer are clustered by 1-D k-means into
  ``k = 2**bits`` shared values ``c_j``, and each is replaced by its
  centroid::

    a_i = argmin_j (w_i - c_j)^2,    w_i <- c[a_i]

  Each selected leaf is replaced by ``shared_decode(share_weights(leaf))``
  (in the leaf's dtype); with ``init='kmeans++'`` the ``i``-th of ``L``
  selected leaves (flattening order) is seeded with
  ``jax.random.split(key, L)[i]``.

  Args:
    params: the trained parameters.
    bits: code bits for every layer, or a dict ``path -> bits``; each in
      ``[1, 16]``.
    key: a JAX PRNG key; needed with ``init='kmeans++'`` only.
    where: which leaves: ``None`` for fully-connected kernels (2-D leaves
      named ``kernel``), a regex searched in the path, or a predicate
      ``(path, leaf) -> bool``.
    masks: optional pruning masks shaped like (part of) ``params``, e.g.
      `masking.find_masks` of the optimizer state; a layer without one keeps
      its nonzero weights.
    iterations: the most Lloyd updates per layer.
    init: the seeding, ``'linear'`` or ``'kmeans++'`` (see `share_weights`).

  Returns:
    ``(shared_params, codes)`` with ``codes`` a dict ``path -> SharedCode``.

  Example:
    Two bits for ``fc1`` (four values), one for ``fc2`` (two values):

    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> params = {'fc1': {'kernel': jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)},
    ...           'fc2': {'kernel': jnp.linspace(-1.0, 1.0, 8).reshape(4, 2)}}
    >>> sparams, codes = sparsify.share_params(
    ...     params, bits={'fc1/kernel': 2, 'fc2/kernel': 1})
    >>> [len(set(sparams[n]['kernel'].ravel().tolist()))
    ...  for n in ('fc1', 'fc2')]
    [4, 2]
    >>> codes['fc1/kernel'].codes.shape
    (12,)

  References:
    Han, Mao & Dally, "Deep Compression", ICLR 2016.
  """
  predicate = paths.path_predicate(where, paths.dense_kernel)
  chosen = [(name, leaf) for name, leaf in paths.named_leaves(params)
            if predicate(name, leaf)]
  if not chosen:
    raise ValueError(f"where: {where!r} selects no parameter")
  if init == "kmeans++" and key is None:
    raise ValueError("key: got None; allowed: a JAX PRNG key, which "
                     "init='kmeans++' needs")
  mask_of = {} if masks is None else dict(paths.named_leaves(masks))
  keys = [None] * len(chosen) if key is None else list(
      jax.random.split(key, len(chosen)))
  codes = {}
  for (name, leaf), k in zip(chosen, keys):
    try:
      codes[name] = share_weights(
          leaf, bits=pq.per_layer(bits, name, "bits"), key=k,
          mask=mask_of.get(name), iterations=iterations, init=init)
    except ValueError as e:
      raise ValueError(f"{name}: {e}") from None

  def replace(name, leaf):
    if name not in codes:
      return leaf
    return shared_decode(codes[name]).astype(leaf.dtype)

  return paths.map_with_name(replace, params), codes

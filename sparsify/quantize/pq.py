"""Product quantization (PQ) of weight matrices.

A kernel whose last axis indexes output units is viewed as a matrix
``W = kernel.reshape(-1, kernel.shape[-1]).T`` of shape ``(m, n)``: one row
per output unit, ``n`` inputs (a conv kernel ``(h, w, c_in, c_out)`` gives
``n = h * w * c_in``). PQ splits ``W`` along its inputs into ``s`` blocks of
``d = n / s`` columns; block ``j`` holds columns ``[j d, (j + 1) d)``. Each
block's ``m`` rows are clustered by k-means (`sparsify.quantize.kmeans`) into
``k`` centroids: the block is stored as a codebook ``(k, d)`` and one code in
``[0, k)`` per row, so

    W[:, j*d:(j+1)*d] = codebooks[j][codes[:, j]]
    kernel = W.T.reshape(kernel.shape)

`PQCode` holds ``codebooks`` (``(s, k, d)`` float32), ``codes`` (``(m, s)``
int32) and the kernel's ``shape``. Stored with codes bit-packed at
``ceil(log2 k)`` bits each (`sparsify.spz.bits`), a PQ layer takes
``32 k n + ceil(log2 k) m s`` bits (`pq_storage_bits`, `pq_nbytes`).
"""

from collections.abc import Callable, Mapping
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sparsify.core import paths
from sparsify.core import types
from sparsify.quantize.kmeans import check_iterations
from sparsify.quantize.kmeans import masked_rows
from sparsify.quantize.kmeans import seeded_lloyd
from sparsify.spz import bits


class PQCode(NamedTuple):
  """A product-quantized kernel (see the module docstring for the layout).

  Attributes:
    codebooks: float32 ``(s, k, n // s)``, one codebook per sub-space.
    codes: int32 ``(m, s)`` in ``[0, k)``, one code per output unit and
      sub-space.
    shape: the kernel's shape, a tuple of ints.
  """
  codebooks: jax.Array
  codes: jax.Array
  shape: tuple[int, ...]


def _divisors(n):
  return [d for d in range(1, n + 1) if n % d == 0]


def _check_pq(m, n, subspaces, centroids, shape=None):
  layer = "" if shape is None else f" of a kernel of shape {shape}"
  if (not isinstance(subspaces, (int, np.integer)) or subspaces < 1
      or n % subspaces):
    raise ValueError(f"subspaces: got {subspaces!r}; allowed: a divisor of "
                     f"the {n} inputs{layer}: {_divisors(n)}")
  if not isinstance(centroids, (int, np.integer)) or not 1 <= centroids <= m:
    raise ValueError(f"centroids: got {centroids!r}; allowed: an integer in "
                     f"[1, {m}] (at most the {m} output units{layer})")


@functools.partial(jax.jit, static_argnames=("s", "k"))
def _encode(kernel, mask, key, iterations, s, k):
  """Codebooks and codes of ``kernel`` (already reshaped to ``(n, m)``)."""
  n, m = kernel.shape
  x, msk = masked_rows(kernel, mask)
  blocks = lambda a: a.T.reshape(m, s, n // s).transpose(1, 0, 2)
  fit = lambda x, msk, key: seeded_lloyd(x, msk, key, k, iterations)
  codebooks, assignment = jax.vmap(fit)(blocks(x), blocks(msk),
                                        jax.random.split(key, s))
  return codebooks, assignment.T


@functools.partial(jax.jit, static_argnames=("shape",))
def _decode(codebooks, codes, shape):
  s, _, d = codebooks.shape
  m = codes.shape[0]
  blocks = jax.vmap(lambda book, q: book[q])(codebooks, codes.T)  # (s, m, d)
  return blocks.transpose(1, 0, 2).reshape(m, s * d).T.reshape(shape)


def pq_encode(
    kernel: jax.typing.ArrayLike,
    *,
    subspaces: int,
    centroids: int,
    key: jax.Array,
    iterations: int = 25,
    mask: jax.typing.ArrayLike | None = None,
) -> PQCode:
  r"""Product-quantizes a kernel: ``s`` sub-spaces, ``k`` centroids each.

  With :math:`W` the ``(m, n)`` view of the kernel and :math:`W^{(j)}` its
  ``j``-th block of :math:`d = n/s` columns, each block is clustered by
  `kmeans` (key ``jax.random.split(key, s)[j]``):

  .. math::
    W^{(j)}_{r} \approx C^{(j)}[q_{rj}], \qquad
    q_{rj} = \arg\min_i \lVert W^{(j)}_r - C^{(j)}_i \rVert^2.

  With ``mask`` (pruned weights False), k-means fits only the kept weights:
  distances and centroid means count kept entries only (see `lloyd`), so
  pruned weights do not pull the codebook toward zero; decode with the
  same mask (``pq_decode(code, mask)``) to put the zeros back. The mask is
  not part of the code and not counted by `pq_storage_bits`.

  Args:
    kernel: a weight array of rank >= 2, last axis the output units.
    subspaces: ``s``, a divisor of ``n``.
    centroids: ``k``, in ``[1, m]``.
    key: a JAX PRNG key.
    iterations: the most Lloyd updates per sub-space.
    mask: optional boolean array shaped like ``kernel``, True where kept.

  Returns:
    A `PQCode`.

  Example:
    A ``(4, 4)`` kernel (``n = 4`` inputs, ``m = 4`` units) in two
    sub-spaces of 2 inputs, two centroids each; units 0 and 1 share a
    centroid, as do units 2 and 3:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> kernel = jnp.tile(jnp.array([0.0, 0.5, 8.0, 8.5]), (4, 1))
    >>> code = sparsify.pq_encode(kernel, subspaces=2, centroids=2,
    ...                           key=jax.random.key(0))
    >>> code.codebooks.shape, code.codes.shape
    ((2, 2, 2), (4, 2))
    >>> sparsify.pq_decode(code)[0]
    Array([0.25, 0.25, 8.25, 8.25], dtype=float32)

  References:
    Jegou, Douze & Schmid, "Product quantization for nearest neighbor
    search", IEEE TPAMI 2011; Gong et al., "Compressing deep convolutional
    networks using vector quantization", 2014.
  """
  shape = tuple(int(v) for v in jnp.shape(kernel))
  if len(shape) < 2:
    raise ValueError(f"kernel: got shape {shape}; allowed: rank >= 2 with the"
                     " output units on the last axis")
  if mask is not None and tuple(jnp.shape(mask)) != shape:
    raise ValueError(f"mask: got shape {jnp.shape(mask)}; allowed: the "
                     f"kernel's shape {shape}")
  check_iterations(iterations)
  m, n = shape[-1], math.prod(shape[:-1])
  _check_pq(m, n, subspaces, centroids, shape)
  codebooks, codes = _encode(
      jnp.reshape(kernel, (n, m)),
      None if mask is None else jnp.reshape(mask, (n, m)), key,
      iterations, s=int(subspaces), k=int(centroids))
  return PQCode(codebooks=codebooks, codes=codes, shape=shape)


def pq_decode(code: PQCode,
              mask: jax.typing.ArrayLike | None = None) -> jax.Array:
  """Rebuilds the kernel from a `PQCode`; zero where ``mask`` is False.

  Args:
    code: the `PQCode`.
    mask: optional boolean array of the kernel's shape (True where kept).

  Returns:
    The float32 kernel of shape ``code.shape``.

  Example:
    A hand-made code of a ``(2, 2)`` kernel: one sub-space, two centroids;
    unit 0 takes centroid 1, unit 1 centroid 0:

    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> code = sparsify.PQCode(codebooks=jnp.array([[[1.0, 2.0], [3.0, 4.0]]]),
    ...                        codes=jnp.array([[1], [0]]), shape=(2, 2))
    >>> sparsify.pq_decode(code)
    Array([[3., 1.],
           [4., 2.]], dtype=float32)
    >>> sparsify.pq_decode(code, mask=jnp.array([[True, False],
    ...                                          [True, True]]))
    Array([[3., 0.],
           [4., 2.]], dtype=float32)
  """
  shape = tuple(code.shape)
  codebooks, codes = jnp.asarray(code.codebooks), jnp.asarray(code.codes)
  if codebooks.ndim != 3 or codes.ndim != 2 or len(shape) < 2:
    raise ValueError(f"code: got codebooks {codebooks.shape}, codes "
                     f"{codes.shape}, shape {shape}; allowed: (s, k, d), "
                     "(m, s) and a kernel shape of rank >= 2")
  s, _, d = codebooks.shape
  m, n = shape[-1], math.prod(shape[:-1])
  if codes.shape != (m, s) or s * d != n:
    raise ValueError(f"code: codebooks {codebooks.shape} and codes "
                     f"{codes.shape} do not fit a kernel of shape {shape}; "
                     f"allowed: codes ({m}, s) and codebooks (s, k, {n} // s)")
  kernel = _decode(codebooks, codes.astype(jnp.int32), shape)
  if mask is not None:
    if tuple(jnp.shape(mask)) != shape:
      raise ValueError(f"mask: got shape {jnp.shape(mask)}; allowed: the "
                       f"kernel's shape {shape}")
    kernel = jnp.where(mask, kernel, 0.0)
  return kernel


def pq_storage_bits(m: int, n: int, subspaces: int, centroids: int) -> int:
  r"""Bits of a PQ layer: :math:`32 k n + \lceil\log_2 k\rceil m s`.

  ``s`` codebooks of ``k`` float32 vectors of length ``n / s``, and one
  :math:`\lceil\log_2 k\rceil`-bit code per output unit and sub-space.

  Args:
    m: output units (rows of ``W``).
    n: inputs (columns of ``W``).
    subspaces: ``s``, a divisor of ``n``.
    centroids: ``k``, in ``[1, m]``.

  Returns:
    The number of bits, an int.

  Example:
    LeNet-300-100's first layer (300 units, 784 inputs), 4 sub-spaces of 16
    centroids: :math:`32 \cdot 16 \cdot 784 + 4 \cdot 300 \cdot 4` bits.

    >>> import sparsify
    >>> sparsify.pq_storage_bits(300, 784, subspaces=4, centroids=16)
    406208
  """
  if m < 1 or n < 1:
    raise ValueError(f"m, n: got {m}, {n}; allowed: positive integers")
  _check_pq(m, n, subspaces, centroids)
  return 32 * centroids * n + bits.code_bits(centroids) * m * subspaces


def pq_compression_rate(m: int, n: int, subspaces: int,
                        centroids: int) -> float:
  r"""Compression rate over float32: :math:`32 m n` / `pq_storage_bits`.

  Args:
    m: output units (rows of ``W``).
    n: inputs (columns of ``W``).
    subspaces: ``s``, a divisor of ``n``.
    centroids: ``k``, in ``[1, m]``.

  Returns:
    The rate, a Python float (> 1 when PQ saves storage).

  Example:
    >>> import sparsify
    >>> round(sparsify.pq_compression_rate(300, 784, 4, 16), 2)
    18.53
  """
  return 32 * m * n / pq_storage_bits(m, n, subspaces, centroids)


def pq_nbytes(code: PQCode) -> int:
  """Bytes of a `PQCode` stored as float32 codebooks and bit-packed codes.

  Equals ``ceil(pq_storage_bits(m, n, s, k) / 8)``.

  Args:
    code: the `PQCode`.

  Returns:
    The number of bytes, a Python int.

  Example:
    Two codebooks of 2 x 4 floats (64 bytes) and 8 one-bit codes (1 byte):

    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> code = sparsify.PQCode(codebooks=jnp.zeros((2, 2, 4)),
    ...                        codes=jnp.zeros((4, 2), jnp.int32), shape=(8, 4))
    >>> sparsify.pq_nbytes(code), sparsify.pq_storage_bits(4, 8, 2, 2) // 8
    (65, 65)
  """
  k = jnp.shape(code.codebooks)[1]
  books = np.asarray(code.codebooks, np.float32)
  return books.nbytes + bits.pack_codes(code.codes, bits.code_bits(k)).nbytes


def per_layer(value: Any, name: str, what: str) -> Any:
  """One layer's value of an argument given for every layer or per layer.

  Args:
    value: the argument: one value for every layer, or a dict ``path ->
      value``.
    name: the layer's path, e.g. ``'fc1/kernel'``.
    what: the argument's name, for the error message.

  Returns:
    ``value[name]`` for a dict, else ``value``.

  Raises:
    ValueError: naming ``what``, if ``value`` is a dict without ``name``.

  Example:
    >>> from sparsify.quantize import pq
    >>> pq.per_layer(4, 'fc1/kernel', 'centroids')
    4
    >>> pq.per_layer({'fc1/kernel': 8}, 'fc1/kernel', 'centroids')
    8
  """
  if isinstance(value, Mapping):
    if name not in value:
      raise ValueError(f"{what}: no entry for {name!r}; entries: "
                       f"{sorted(value)}")
    return value[name]
  return value


def pq_quantize(
    params: types.Params,
    *,
    subspaces: int | Mapping[str, int],
    centroids: int | Mapping[str, int],
    key: jax.Array,
    where: str | Callable[[str, Any], bool] | None = None,
    masks: types.Masks | None = None,
    iterations: int = 25,
) -> tuple[types.Params, dict[str, PQCode]]:
  """Product-quantizes every selected kernel of a parameter pytree.

  Each selected leaf is replaced by ``pq_decode(pq_encode(leaf))`` (in the
  leaf's dtype), with its own key (``jax.random.split(key, L)[i]`` for the
  ``i``-th of ``L`` selected leaves in flattening order). With ``W`` the
  ``(m, n)`` view of the kernel, block ``j`` of ``d = n / s`` columns and
  row ``r`` (see the module docstring)::

    codes[r, j] = argmin_i ||W[r, j*d:(j+1)*d] - codebooks[j, i]||^2
    W[r, j*d:(j+1)*d] <- codebooks[j, codes[r, j]]

  This is the post-training step of compression on the fly (Soulie et al.):
  train the fully-connected layers with an attractor of
  `sparsify.regularizers`, then product-quantize them.

  Args:
    params: the trained parameters.
    subspaces: ``s`` for every layer, or a dict ``path -> s``.
    centroids: ``k`` for every layer, or a dict ``path -> k``.
    key: a JAX PRNG key.
    where: which leaves: ``None`` for fully-connected kernels (2-D leaves
      named ``kernel``), a regex searched in the path, or a predicate
      ``(path, leaf) -> bool``.
    masks: optional pruning masks shaped like (part of) ``params``, e.g.
      `masking.find_masks` of the optimizer state; a masked layer is fitted
      on its kept weights and keeps its zeros (see `pq_encode`).
    iterations: the most Lloyd updates per sub-space.

  Returns:
    ``(quantized_params, codes)`` with ``codes`` a dict ``path -> PQCode``.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> params = {'fc': {'kernel': jnp.tile(jnp.array([0.0, 0.5, 8.0, 8.5]),
    ...                                     (4, 1)),
    ...                  'bias': jnp.ones(4)}}
    >>> qparams, codes = sparsify.pq_quantize(
    ...     params, subspaces=2, centroids=2, key=jax.random.key(0))
    >>> qparams['fc']['kernel'][0]
    Array([0.25, 0.25, 8.25, 8.25], dtype=float32)
    >>> qparams['fc']['bias']  # not a selected kernel
    Array([1., 1., 1., 1.], dtype=float32)
    >>> list(codes), sparsify.pq_nbytes(codes['fc/kernel'])  # 32 + 1 bytes
    (['fc/kernel'], 33)

  References:
    Jegou, Douze & Schmid, "Product quantization for nearest neighbor
    search", IEEE TPAMI 2011; Gong et al., "Compressing deep convolutional
    networks using vector quantization", 2014; Soulie, Gripon & Robert,
    "Compression of deep neural networks on the fly", ICANN 2016.
  """
  predicate = paths.path_predicate(where, paths.dense_kernel)
  chosen = [(name, leaf) for name, leaf in paths.named_leaves(params)
            if predicate(name, leaf)]
  if not chosen:
    raise ValueError(f"where: {where!r} selects no parameter")
  mask_of = {} if masks is None else dict(paths.named_leaves(masks))
  codes = {}
  for (name, leaf), k in zip(chosen, jax.random.split(key, len(chosen))):
    try:
      codes[name] = pq_encode(
          leaf, subspaces=per_layer(subspaces, name, "subspaces"),
          centroids=per_layer(centroids, name, "centroids"), key=k,
          iterations=iterations, mask=mask_of.get(name))
    except ValueError as e:
      raise ValueError(f"{name}: {e}") from None

  def replace(name, leaf):
    if name not in codes:
      return leaf
    return pq_decode(codes[name], mask_of.get(name)).astype(leaf.dtype)

  return paths.map_with_name(replace, params), codes


"""Product quantization (PQ) of weight matrices, and the k-means behind it.

A kernel whose last axis indexes output units is viewed as a matrix
``W = kernel.reshape(-1, kernel.shape[-1]).T`` of shape ``(m, n)``: one row
per output unit, ``n`` inputs (a conv kernel ``(h, w, c_in, c_out)`` gives
``n = h * w * c_in``). PQ splits ``W`` along its inputs into ``s`` blocks of
``d = n / s`` columns; block ``j`` holds columns ``[j d, (j + 1) d)``. Each
block's ``m`` rows are clustered by k-means into ``k`` centroids: the block is
stored as a codebook ``(k, d)`` and one code in ``[0, k)`` per row, so

    W[:, j*d:(j+1)*d] = codebooks[j][codes[:, j]]
    kernel = W.T.reshape(kernel.shape)

`PQCode` holds ``codebooks`` (``(s, k, d)`` float32), ``codes`` (``(m, s)``
int32) and the kernel's ``shape``. Stored with codes bit-packed at
``ceil(log2 k)`` bits each, a PQ layer takes ``32 k n + ceil(log2 k) m s``
bits (`pq_storage_bits`, `pq_nbytes`).

Weight sharing (`share_weights`, Deep Compression's trained quantization) is
the scalar case: the kept weights of a pruned kernel are clustered by 1-D
k-means into ``k = 2**bits`` values, and each kept weight is stored as a
``bits``-bit index into that codebook. `SharedCode` holds the ``codebook``
(``(k,)`` float32), the ``codes`` (int32, one per kept weight in C order),
the ``mask`` of kept weights and the kernel's ``shape``.
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

_HIGHEST = jax.lax.Precision.HIGHEST


def dense_kernel(name: str, leaf: Any) -> bool:
  """True for fully-connected kernels: 2-D leaves named ``kernel``.

  Args:
    name: the leaf's path, ``'/'``-separated.
    leaf: the leaf (an array).

  Returns:
    Whether the leaf is a Dense kernel, a Python bool.

  Example:
    >>> import jax.numpy as jnp
    >>> from sparsify import quantize
    >>> quantize.dense_kernel('fc1/kernel', jnp.zeros((3, 4)))
    True
    >>> quantize.dense_kernel('conv/kernel', jnp.zeros((3, 3, 1, 4)))
    False
  """
  return name.rsplit("/", 1)[-1] == "kernel" and jnp.ndim(leaf) == 2


def code_bits(k: int) -> int:
  """Bits per code for ``k`` centroids: ``ceil(log2 k)`` (0 for ``k = 1``).

  Args:
    k: the number of centroids, ``>= 1``.

  Returns:
    The number of bits, a Python int.

  Example:
    >>> from sparsify import quantize
    >>> [quantize.code_bits(k) for k in (1, 2, 16, 17)]
    [0, 1, 4, 5]
  """
  return (int(k) - 1).bit_length()


# --- k-means ----------------------------------------------------------------


def _masked_rows(x, mask):
  """``x`` (float32) zeroed where ``mask`` is False, and the mask as floats."""
  x = jnp.asarray(x, jnp.float32)
  if mask is None:
    return x, jnp.ones_like(x)
  mask = jnp.asarray(mask, jnp.bool_)
  return jnp.where(mask, x, 0.0), mask.astype(jnp.float32)


def _distances(x, m, c):
  """Squared distances ``(N, k)`` over the kept coordinates of each row."""
  xx = jnp.sum(x * x, axis=1, keepdims=True)
  xc = jnp.dot(x, c.T, precision=_HIGHEST)
  cc = jnp.dot(m, (c * c).T, precision=_HIGHEST)
  return xx - 2.0 * xc + cc


def _assign(x, m, c):
  return jnp.argmin(_distances(x, m, c), axis=1).astype(jnp.int32)


def _seed(x, m, key, k):
  """k-means++ seeding driven by ``k`` uniforms (see `kmeans_plus_plus`)."""
  n = x.shape[0]
  u = jax.random.uniform(key, (k,), jnp.float32)
  uniform_row = lambda v: jnp.minimum((v * n).astype(jnp.int32), n - 1)
  to_row = lambda c: jnp.sum(m * jnp.square(x - c), axis=1)
  first = x[uniform_row(u[0])]
  centroids = jnp.zeros((k, x.shape[1]), jnp.float32).at[0].set(first)

  def body(i, carry):
    centroids, d2 = carry
    cum = jnp.cumsum(d2)
    total = cum[-1]
    row = jnp.sum(cum <= u[i] * total, dtype=jnp.int32)  # first cum > u total
    row = jnp.where(row < n, row, jnp.argmax(d2).astype(jnp.int32))
    row = jnp.where(total > 0, row, uniform_row(u[i]))
    c = x[row]
    return centroids.at[i].set(c), jnp.minimum(d2, to_row(c))

  return jax.lax.fori_loop(1, k, body, (centroids, to_row(first)))[0]


def _lloyd(x, m, centroids, iterations):
  """Lloyd iterations from ``centroids``; stops early once assignments hold."""
  k = centroids.shape[0]

  def update(a, c):
    sums = jax.ops.segment_sum(x, a, num_segments=k)
    counts = jax.ops.segment_sum(m, a, num_segments=k)
    return jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), c)

  def cond(carry):
    i, _, _, changed = carry
    return (i < iterations) & changed

  def body(carry):
    i, c, a, _ = carry
    c = update(a, c)
    new = _assign(x, m, c)
    return i + 1, c, new, jnp.any(new != a)

  init = (jnp.int32(0), centroids, _assign(x, m, centroids), jnp.bool_(True))
  _, c, a, _ = jax.lax.while_loop(cond, body, init)
  return c, a


@functools.partial(jax.jit, static_argnames=("k",))
def _seed_jit(x, mask, key, k):
  return _seed(*_masked_rows(x, mask), key, k)


@jax.jit
def _lloyd_jit(x, mask, centroids, iterations):
  return _lloyd(*_masked_rows(x, mask), centroids.astype(jnp.float32),
                iterations)


def _check_rows(x, mask, what="x"):
  if jnp.ndim(x) != 2 or jnp.shape(x)[0] < 1:
    raise ValueError(f"{what}: got shape {jnp.shape(x)}; allowed: a 2-D array"
                     " (N, d) with N >= 1 rows")
  if mask is not None and jnp.shape(mask) != jnp.shape(x):
    raise ValueError(f"mask: got shape {jnp.shape(mask)}; allowed: the shape"
                     f" of {what}, {jnp.shape(x)}")


def _check_k(k, n_rows):
  if not isinstance(k, (int, np.integer)) or not 1 <= k <= n_rows:
    raise ValueError(f"k: got {k!r}; allowed: an integer in [1, {n_rows}] "
                     f"(at most the number of rows, {n_rows})")


def _check_iterations(iterations):
  if not isinstance(iterations, (int, np.integer)) or iterations < 0:
    raise ValueError(f"iterations: got {iterations!r}; allowed: an integer "
                     ">= 0")


def kmeans_plus_plus(
    x: jax.typing.ArrayLike,
    k: int,
    *,
    key: jax.Array,
    mask: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""k-means++ seeding: ``k`` rows of ``x`` chosen far apart.

  Draws :math:`u = (u_0, \dots, u_{k-1})`, ``jax.random.uniform(key, (k,))``.
  The first centre is row :math:`\lfloor u_0 N \rfloor`. With :math:`D_r^2`
  the squared distance of row :math:`r` to its nearest centre so far and
  :math:`C_r = \sum_{q \le r} D_q^2`, centre :math:`i` is the first row with
  :math:`C_r > u_i C_{N-1}`, i.e. a row drawn with probability proportional
  to :math:`D_r^2`; such a row is never one already chosen. When every
  :math:`D_r^2` is 0 (fewer distinct rows than ``k``), centre :math:`i` is
  row :math:`\lfloor u_i N \rfloor`, a duplicate.

  With ``mask``, distances only count kept coordinates and masked entries
  of ``x`` are read as 0.

  Args:
    x: the rows, ``(N, d)``.
    k: number of centres, ``1 <= k <= N``.
    key: a JAX PRNG key.
    mask: optional boolean ``(N, d)``, True where an entry counts.

  Returns:
    The centres, float32 ``(k, d)``.

  References:
    Arthur & Vassilvitskii, "k-means++: the advantages of careful seeding",
    SODA 2007.
  """
  _check_rows(x, mask)
  _check_k(k, jnp.shape(x)[0])
  return _seed_jit(x, mask, key, k=int(k))


def lloyd(
    x: jax.typing.ArrayLike,
    centroids: jax.typing.ArrayLike,
    *,
    iterations: int = 25,
    mask: jax.typing.ArrayLike | None = None,
) -> tuple[jax.Array, jax.Array]:
  r"""Lloyd's k-means iterations from given centroids.

  Each iteration assigns every row to its nearest centroid (the lowest index
  on a tie) and moves each centroid to the mean of its rows:

  .. math::
    a_r = \arg\min_j \lVert x_r - c_j \rVert^2, \qquad
    c_j \leftarrow \frac{\sum_{r: a_r = j} x_r}{|\{r: a_r = j\}|}.

  A centroid that receives no row keeps its previous value. The loop stops
  after ``iterations`` updates, or earlier once an update leaves the
  assignment unchanged (a fixed point: more updates would change nothing).
  The returned assignment is that of the returned centroids.

  With ``mask``, both steps only count kept entries:
  :math:`\lVert x_r - c_j\rVert^2` sums over the kept coordinates of row
  :math:`r`, and coordinate :math:`t` of :math:`c_j` becomes the mean of the
  kept :math:`x_{rt}` of its rows (unchanged when there are none).

  Args:
    x: the rows, ``(N, d)``.
    centroids: the starting centroids, ``(k, d)``.
    iterations: the most centroid updates to run.
    mask: optional boolean ``(N, d)``, True where an entry counts.

  Returns:
    ``(centroids, assignment)``: float32 ``(k, d)`` and int32 ``(N,)``.
  """
  _check_rows(x, mask)
  _check_iterations(iterations)
  if jnp.ndim(centroids) != 2 or jnp.shape(centroids)[1] != jnp.shape(x)[1]:
    raise ValueError(f"centroids: got shape {jnp.shape(centroids)}; allowed: "
                     f"(k, {jnp.shape(x)[1]})")
  return _lloyd_jit(x, mask, centroids, iterations)


def kmeans(
    x: jax.typing.ArrayLike,
    k: int,
    *,
    key: jax.Array,
    iterations: int = 25,
    mask: jax.typing.ArrayLike | None = None,
) -> tuple[jax.Array, jax.Array]:
  r"""k-means of the rows of ``x``: k-means++ seeding, then Lloyd.

  Minimises :math:`\sum_r \min_j \lVert x_r - c_j\rVert^2` locally:
  `kmeans_plus_plus` picks the starting centroids, `lloyd` refines them
  (an empty cluster keeps its centroid). Compiled once per shape and ``k``.

  Args:
    x: the rows, ``(N, d)``.
    k: number of centroids, ``1 <= k <= N``.
    key: a JAX PRNG key (drives the seeding only).
    iterations: the most Lloyd updates.
    mask: optional boolean ``(N, d)``, True where an entry counts (see
      `lloyd`).

  Returns:
    ``(centroids, assignment)``: float32 ``(k, d)`` and int32 ``(N,)``, each
    row assigned to its nearest centroid.

  Example:
    Two clusters of 1-D points:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import sparsify
    >>> x = jnp.array([[0.0], [0.1], [0.2], [5.0], [5.2]])
    >>> centroids, assignment = sparsify.kmeans(x, 2, key=jax.random.key(0))
    >>> sorted(round(float(c), 2) for c in centroids[:, 0])
    [0.1, 5.1]
    >>> sorted(np.bincount(assignment).tolist())
    [2, 3]

  References:
    Lloyd, "Least squares quantization in PCM", IEEE Trans. Inf. Theory 1982.
  """
  _check_rows(x, mask)
  _check_k(k, jnp.shape(x)[0])
  _check_iterations(iterations)
  return _lloyd_jit(x, mask, _seed_jit(x, mask, key, k=int(k)), iterations)


# --- product quantization ---------------------------------------------------


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
  x, msk = _masked_rows(kernel, mask)
  blocks = lambda a: a.T.reshape(m, s, n // s).transpose(1, 0, 2)
  fit = lambda x, msk, key: _lloyd(x, msk, _seed(x, msk, key, k), iterations)
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
  _check_iterations(iterations)
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
  return 32 * centroids * n + code_bits(centroids) * m * subspaces


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


def pack_codes(codes: jax.typing.ArrayLike, bits: int) -> np.ndarray:
  """Packs codes in row-major order, ``bits`` bits each, high bit first.

  Args:
    codes: non-negative integers below ``2 ** bits``, any shape.
    bits: bits per code (``code_bits(k)``).

  Returns:
    A uint8 array of ``ceil(codes.size * bits / 8)`` bytes; the last byte is
    padded with zero bits.

  Raises:
    ValueError: if a code does not fit in ``bits`` bits.

  Example:
    >>> from sparsify import quantize
    >>> quantize.pack_codes([1, 2, 3], 2)  # 01 10 11 00
    array([108], dtype=uint8)
  """
  flat = np.asarray(codes).ravel()
  if flat.size and (flat.min() < 0 or flat.max() >= 2 ** bits):
    raise ValueError(f"codes: got values in [{flat.min()}, {flat.max()}]; "
                     f"allowed: [0, {2 ** bits - 1}] for {bits} bits")
  shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
  matrix = (flat.astype(np.uint64)[:, None] >> shifts) & np.uint64(1)
  return np.packbits(matrix.astype(np.uint8).ravel())


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
  """Inverse of `pack_codes`: the first ``count`` codes, int32 ``(count,)``.

  Args:
    packed: the uint8 bytes written by `pack_codes`.
    bits: bits per code.
    count: how many codes to read.

  Returns:
    An int32 array of shape ``(count,)``.

  Example:
    >>> import numpy as np
    >>> from sparsify import quantize
    >>> quantize.unpack_codes(np.array([108], np.uint8), 2, 3)
    array([1, 2, 3], dtype=int32)
  """
  if bits == 0:
    return np.zeros(count, np.int32)
  matrix = np.unpackbits(np.asarray(packed, np.uint8), count=count * bits)
  weights = 1 << np.arange(bits - 1, -1, -1, dtype=np.int64)
  return (matrix.reshape(count, bits).astype(np.int64) @ weights).astype(
      np.int32)


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
  return books.nbytes + pack_codes(code.codes, code_bits(k)).nbytes


def _per_layer(value, name, what):
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
  predicate = dense_kernel if where is None else paths.path_predicate(where)
  chosen = [(name, leaf) for name, leaf in paths.named_leaves(params)
            if predicate(name, leaf)]
  if not chosen:
    raise ValueError(f"where: {where!r} selects no parameter")
  mask_of = {} if masks is None else dict(paths.named_leaves(masks))
  codes = {}
  for (name, leaf), k in zip(chosen, jax.random.split(key, len(chosen))):
    try:
      codes[name] = pq_encode(
          leaf, subspaces=_per_layer(subspaces, name, "subspaces"),
          centroids=_per_layer(centroids, name, "centroids"), key=k,
          iterations=iterations, mask=mask_of.get(name))
    except ValueError as e:
      raise ValueError(f"{name}: {e}") from None

  def replace(name, leaf):
    if name not in codes:
      return leaf
    return pq_decode(codes[name], mask_of.get(name)).astype(leaf.dtype)

  return paths.map_with_name(replace, params), codes


# --- weight sharing ---------------------------------------------------------

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
  _check_iterations(iterations)
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
    start = _seed_jit(kept[:, None], None, key, k=k)
  # Rows padded to a power of two (masked out, so they change nothing):
  # layers of similar size share one compiled Lloyd loop.
  rows = max(16, 1 << (n - 1).bit_length())
  x = np.zeros((rows, 1), np.float32)
  x[:n, 0] = kept
  real = np.arange(rows)[:, None] < n
  centroids, codes = _lloyd_jit(x, real, start, iterations)
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
  predicate = dense_kernel if where is None else paths.path_predicate(where)
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
          leaf, bits=_per_layer(bits, name, "bits"), key=k,
          mask=mask_of.get(name), iterations=iterations, init=init)
    except ValueError as e:
      raise ValueError(f"{name}: {e}") from None

  def replace(name, leaf):
    if name not in codes:
      return leaf
    return shared_decode(codes[name]).astype(leaf.dtype)

  return paths.map_with_name(replace, params), codes

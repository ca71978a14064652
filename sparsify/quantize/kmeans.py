"""k-means of the rows of a matrix: k-means++ seeding, then Lloyd iterations.

`kmeans_plus_plus` picks ``k`` starting centroids far apart, `lloyd` moves
them to the means of their rows until the assignment holds, `kmeans` runs
both. Each takes an optional mask: distances and means then count only the
kept entries of each row, so that pruned weights do not pull a codebook
toward zero. Product quantization (`sparsify.quantize.pq`) clusters the
blocks of a kernel this way, weight sharing (`sparsify.quantize.sharing`)
its kept weights.

Every function compiles once per shape and ``k``; `seeded_lloyd` is the
unchecked, traceable body for callers that `jax.vmap` or `jax.jit` it.
``sparsify.quantize.kmeans`` is the function `kmeans` (the package exports
it); reach this module's other names with ``from sparsify.quantize.kmeans
import ...``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST


def masked_rows(
    x: jax.typing.ArrayLike,
    mask: jax.typing.ArrayLike | None,
) -> tuple[jax.Array, jax.Array]:
  """Returns ``x`` as float32 zeroed where ``mask`` is False, and the mask.

  The pair is what `seeded_lloyd` takes: masked entries of ``x`` read as 0,
  and the mask as float32 weights (1 kept, 0 masked).

  Args:
    x: the rows, ``(N, d)`` (any shape works).
    mask: None (everything kept), or booleans of the shape of ``x``.

  Returns:
    ``(x, weights)``, two float32 arrays of the shape of ``x``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sparsify.quantize.kmeans import masked_rows
    >>> x, m = masked_rows(jnp.array([[1.0, 2.0]]), jnp.array([[True, False]]))
    >>> x, m
    (Array([[1., 0.]], dtype=float32), Array([[1., 0.]], dtype=float32))
  """
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


def seeded_lloyd(
    x: jax.Array,
    weights: jax.Array,
    key: jax.Array,
    k: int,
    iterations: jax.typing.ArrayLike,
) -> tuple[jax.Array, jax.Array]:
  """k-means++ seeding then Lloyd on masked rows, unchecked and traceable.

  What `kmeans` computes, for callers that trace it themselves (under
  `jax.vmap` over the blocks of a kernel, say): no argument is checked, and
  ``iterations`` may be traced.

  Args:
    x: float32 rows ``(N, d)``, zero where masked (see `masked_rows`).
    weights: float32 ``(N, d)``, 1 where an entry counts, 0 where masked.
    key: a JAX PRNG key, for the seeding.
    k: number of centroids, a static int in ``[1, N]``.
    iterations: the most Lloyd updates.

  Returns:
    ``(centroids, assignment)``: float32 ``(k, d)`` and int32 ``(N,)``.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from sparsify.quantize.kmeans import masked_rows, seeded_lloyd
    >>> x, w = masked_rows(jnp.array([[0.0], [0.2], [5.0]]), None)
    >>> centroids, assignment = seeded_lloyd(x, w, jax.random.key(0), 2, 10)
    >>> sorted(round(float(c), 2) for c in centroids[:, 0])
    [0.1, 5.0]
  """
  return _lloyd(x, weights, _seed(x, weights, key, k), iterations)


@functools.partial(jax.jit, static_argnames=("k",))
def _seed_jit(x, mask, key, k):
  return _seed(*masked_rows(x, mask), key, k)


@jax.jit
def _lloyd_jit(x, mask, centroids, iterations):
  return _lloyd(*masked_rows(x, mask), centroids.astype(jnp.float32),
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


def check_iterations(iterations: int) -> None:
  """Raises a ValueError naming ``iterations`` unless it is an integer >= 0.

  Args:
    iterations: the most Lloyd updates a caller asks for.

  Raises:
    ValueError: if ``iterations`` is not a Python or numpy integer >= 0.

  Example:
    >>> from sparsify.quantize.kmeans import check_iterations
    >>> check_iterations(25)
    >>> check_iterations(-1)
    Traceback (most recent call last):
    ...
    ValueError: iterations: got -1; allowed: an integer >= 0
  """
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
  check_iterations(iterations)
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
  check_iterations(iterations)
  return _lloyd_jit(x, mask, _seed_jit(x, mask, key, k=int(k)), iterations)


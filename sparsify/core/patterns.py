r"""Sparsity patterns: which sets of weights a keep-mask may drop together.

A pattern says how the weights a method removes are arranged; the method's
scores (magnitudes, random numbers) say which ones. Three patterns:

* ``'unstructured'``: any weights; the ``k`` largest scores of a layer (or of
  all layers pooled) are kept, by `topk.select_by_score`.
* ``'N:M'`` (e.g. ``'2:4'``): every ``M`` consecutive weights along a
  kernel's *input* axis keep their ``N`` largest scores. The input axis is
  the reduction axis of the layer's product: axis 0 of a Dense kernel
  ``(in, out)``, axis 2 of a Conv kernel ``(h, w, in, out)`` (in general
  axis ``ndim - 2``; axis 0 of a vector), so every output's dot product sees
  ``N`` of every ``M`` consecutive inputs: the layout of NVIDIA's sparse
  tensor cores (2:4 along the reduction dimension).
* a block shape ``(b1, b2)``: whole tiles of the kernel's 2-D view
  ``(in, out)`` (leading axes flattened into ``in``, row-major, so a Conv
  kernel's rows are its ``(h, w, in)`` taps with ``in`` fastest) are kept or
  dropped, ranked by the L2 norm of each tile.

Rules every method that takes a ``pattern`` follows:

* **N:M groups must fit.** A selected layer whose input dimension is not a
  multiple of ``M`` is an error naming the layer (never left dense, which
  would report a sparsity the model does not have); leave it out with
  ``where``.
* **Gradual N:M.** At sparsity :math:`s` every group keeps
  :math:`\max(N, M - \mathrm{round}(sM))` weights, the rounding of
  `topk.keep_count` applied to a group of ``M``: a schedule to 50 % with
  ``'2:4'`` goes 4:4, 3:4, 2:4. The final sparsity is implied by the
  pattern: a ``sparsity`` given as a Python number must equal
  :math:`1 - N/M` (`check_pattern` says so in one line); a traced value or a
  schedule above it keeps ``N`` (never fewer).
* **N:M ties** go to the lower input index: of equal scores, the one that
  comes first along the input axis is kept, so a group keeps exactly its
  count (``numpy.argsort(-scores, kind='stable')`` per group, first ones
  kept).
* **N:M is per layer**: global allocation (one budget over layers) is
  refused.
* **Ragged blocks.** When ``b1`` does not divide ``in`` (or ``b2`` does not
  divide ``out``), the last tiles of the view are smaller. Such an edge tile
  is scored as if it were a full tile with the same mean square,
  :math:`\|t\|_2 \sqrt{b_1 b_2 / |t|}`, so that edge rows and columns are
  not pruned first merely for having fewer weights, and it counts as one
  tile: the sparsity of block patterns counts tiles, ``keep =
  tiles - round(s * tiles)``; the fraction of *weights* removed equals it
  when the block shape divides the view and may differ from it otherwise.
  As for unstructured selection, tiles tied with the last kept score are all
  kept.

Every selection is sort-free and linear in the layer's size: N:M ranks each
weight within its group by ``M`` comparisons, blocks use the radix
selection of `topk` over tile scores.
"""

import dataclasses
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparsify.core import checks
from sparsify.core import paths
from sparsify.core import topk
from sparsify.core import types

# What a ``pattern`` argument may be: 'unstructured', 'N:M' or (b1, b2).
Pattern = str | tuple[int, int]

UNSTRUCTURED = "unstructured"

_ALLOWED = ("'unstructured', 'N:M' with 0 < N <= M, or a block shape "
            "(b1, b2)")
_N_BY_M = re.compile(r"^(\d+):(\d+)$")


@dataclasses.dataclass(frozen=True)
class NByM:
  """The parsed pattern ``'N:M'``: ``n`` kept of every ``m`` inputs.

  Attributes:
    n: weights kept per group at the final sparsity.
    m: the size of a group (consecutive weights along the input axis).
  """
  n: int
  m: int

  def __str__(self):
    return f"{self.n}:{self.m}"


@dataclasses.dataclass(frozen=True)
class Blocks:
  """The parsed pattern ``(rows, cols)``: tiles of a kernel's 2-D view.

  Attributes:
    rows: tile height, along the flattened input axis.
    cols: tile width, along the output axis.
  """
  rows: int
  cols: int

  def __str__(self):
    return f"({self.rows}, {self.cols})"


Structure = str | NByM | Blocks  # What `parse` returns.


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def parse(pattern: Pattern | NByM | Blocks) -> Structure:
  """Parses and validates a ``pattern`` argument.

  Args:
    pattern: ``'unstructured'``, a string ``'N:M'`` with ``0 < N <= M``, or
      a block shape ``(b1, b2)`` of positive integers (a tuple or list);
      an already parsed `NByM` or `Blocks` passes through.

  Returns:
    ``'unstructured'``, an `NByM` or a `Blocks`.

  Raises:
    ValueError: ``pattern`` is none of these, in one line.

  Example:
    >>> from sparsify.core import patterns
    >>> patterns.parse('2:4'), patterns.parse((4, 1))
    (NByM(n=2, m=4), Blocks(rows=4, cols=1))
    >>> patterns.parse('3:2')
    Traceback (most recent call last):
      ...
    ValueError: pattern: got '3:2'; allowed: 'unstructured', 'N:M' with 0 < N <= M, or a block shape (b1, b2)
  """
  if isinstance(pattern, (NByM, Blocks)):
    return pattern
  if isinstance(pattern, str):
    if pattern == UNSTRUCTURED:
      return UNSTRUCTURED
    match = _N_BY_M.match(pattern)
    if match:
      n, m = int(match.group(1)), int(match.group(2))
      if 0 < n <= m:
        return NByM(n, m)
  elif (isinstance(pattern, (tuple, list)) and len(pattern) == 2
        and all(_is_int(b) and b >= 1 for b in pattern)):
    return Blocks(int(pattern[0]), int(pattern[1]))
  raise ValueError(f"pattern: got {pattern!r}; allowed: {_ALLOWED}")


def check_pattern(
    pattern: Pattern | NByM | Blocks,
    *,
    sparsity: types.ScalarOrSchedule | None = None,
    allocation: str = "layerwise",
    per_layer: str = "layerwise",
) -> Structure:
  """Parses ``pattern`` and checks the arguments it constrains.

  An N:M pattern implies its final sparsity and works within layers, so it
  refuses a ``sparsity`` (a Python number) other than :math:`1 - N/M` and an
  ``allocation`` other than the per-layer one.

  Args:
    pattern: the method's ``pattern`` argument (see `parse`).
    sparsity: the method's final sparsity; arrays and schedules pass, as
      ``None`` does.
    allocation: the method's ``allocation`` argument.
    per_layer: the name of the method's per-layer allocation
      (``'layerwise'``, ``'uniform'``), the only one N:M accepts.

  Returns:
    The parsed pattern, as `parse` returns it.

  Raises:
    ValueError: a bad pattern, or an N:M pattern with another final sparsity
      or a non per-layer allocation; one line naming the argument.

  Example:
    >>> from sparsify.core import patterns
    >>> patterns.check_pattern('2:4', sparsity=0.5)
    NByM(n=2, m=4)
    >>> patterns.check_pattern('2:4', sparsity=0.75)
    Traceback (most recent call last):
      ...
    ValueError: sparsity: got 0.75; allowed: 0.5 with pattern '2:4' (1 - N/M)
  """
  structure = parse(pattern)
  if isinstance(structure, NByM):
    implied = 1.0 - structure.n / structure.m
    if checks.is_number(sparsity) and not math.isclose(
        sparsity, implied, rel_tol=1e-6, abs_tol=1e-6):
      raise ValueError(f"sparsity: got {sparsity!r}; allowed: {implied:g} "
                       f"with pattern '{structure}' (1 - N/M)")
    if allocation != per_layer:
      raise ValueError(f"allocation: got {allocation!r}; allowed: "
                       f"{per_layer!r} with pattern '{structure}' (N:M groups "
                       "lie within a layer)")
  return structure


def input_axis(ndim: int) -> int:
  """The input (reduction) axis of a kernel of rank ``ndim``: ``ndim - 2``.

  Axis 0 of a Dense kernel ``(in, out)``, axis 2 of a Conv kernel
  ``(h, w, in, out)``; a vector's (or scalar's) only axis, 0.

  Args:
    ndim: the kernel's rank.

  Returns:
    ``max(ndim - 2, 0)``.

  Example:
    >>> from sparsify.core import patterns
    >>> patterns.input_axis(2), patterns.input_axis(4), patterns.input_axis(1)
    (0, 2, 0)
  """
  return max(ndim - 2, 0)


def check_layers(params: types.Params, pattern: Pattern | Structure) -> None:
  """Checks that every layer of ``params`` can take ``pattern``.

  Only N:M constrains shapes: a layer's input dimension (axis
  `input_axis`) must be a multiple of ``M``. Call it where the method first
  sees the parameters (its ``init``), so the error comes before training.

  Args:
    params: the selected parameters (a pytree; `types.NO_MASK` leaves are
      skipped).
    pattern: the pattern (see `parse`).

  Raises:
    ValueError: a layer does not fit, in one line naming it.

  Example:
    >>> import jax.numpy as jnp
    >>> from sparsify.core import patterns
    >>> patterns.check_layers({'fc': {'kernel': jnp.ones((8, 3))}}, '2:4')
    >>> patterns.check_layers({'out': {'kernel': jnp.ones((10, 3))}}, '2:4')
    Traceback (most recent call last):
      ...
    ValueError: pattern '2:4': out/kernel has 10 inputs (axis 0 of shape (10, 3)), not a multiple of 4; leave it out with `where` or choose another pattern
  """
  structure = parse(pattern)
  if not isinstance(structure, NByM):
    return
  for name, leaf in paths.named_leaves(params):
    shape = tuple(jnp.shape(leaf))
    axis = input_axis(len(shape))
    inputs = shape[axis] if shape else 1
    if inputs % structure.m:
      raise ValueError(
          f"pattern '{structure}': {name} has {inputs} inputs (axis {axis} "
          f"of shape {shape}), not a multiple of {structure.m}; leave it out "
          "with `where` or choose another pattern")


def group_keep_count(pattern: NByM,
                     sparsity: jax.typing.ArrayLike) -> jax.Array:
  """Weights kept per group of ``M`` at ``sparsity``: ``max(N, M - round(sM))``.

  Args:
    pattern: the parsed N:M pattern.
    sparsity: the current sparsity, a scalar (possibly traced).

  Returns:
    An int32 scalar in ``[N, M]``.

  Example:
    >>> from sparsify.core import patterns
    >>> nm = patterns.parse('2:4')
    >>> [int(patterns.group_keep_count(nm, s)) for s in (0.0, 0.2, 0.5, 0.9)]
    [4, 3, 2, 2]
  """
  return jnp.clip(topk.keep_count(pattern.m, sparsity), pattern.n, pattern.m)


def n_by_m_mask(scores: jax.Array, keep: jax.typing.ArrayLike,
                m: int) -> jax.Array:
  """Keeps the ``keep`` largest of every ``m`` scores along the input axis.

  A weight's rank in its group is the number of group members with a larger
  score, or an equal score and a lower index; it is kept when its rank is
  below ``keep``, so every group keeps exactly ``keep`` weights. ``m``
  comparisons per weight, no sort.

  Args:
    scores: a layer's scores (any order-comparable values), its input axis
      (`input_axis`) a multiple of ``m``.
    keep: how many to keep per group, an integer scalar (possibly traced).
    m: the group size (static).

  Returns:
    A boolean array shaped like ``scores``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sparsify.core import patterns
    >>> scores = jnp.array([[4.0, 1.0], [3.0, 1.0], [1.0, 2.0], [2.0, 1.0]])
    >>> patterns.n_by_m_mask(scores, 2, 4)  # ties: the first ones kept
    Array([[ True,  True],
           [ True, False],
           [False,  True],
           [False, False]], dtype=bool)
  """
  shape = scores.shape if scores.ndim else (1,)
  axis = input_axis(len(shape))
  grouped = jnp.reshape(
      scores, shape[:axis] + (shape[axis] // m, m) + shape[axis + 1:])
  within = axis + 1  # the axis of a group's members
  index = jnp.arange(m).reshape((m,) + (1,) * (grouped.ndim - within - 1))
  rank = jnp.zeros(grouped.shape, jnp.int32)
  for j in range(m):
    other = jax.lax.slice_in_dim(grouped, j, j + 1, axis=within)
    rank += (other > grouped) | ((other == grouped) & (j < index))
  return jnp.reshape(rank < keep, scores.shape)


def _view(shape: tuple[int, ...]) -> tuple[int, int]:
  """The 2-D view ``(in, out)`` of a kernel: leading axes into ``in``."""
  if not shape:
    return 1, 1
  if len(shape) == 1:
    return shape[0], 1
  return math.prod(shape[:-1]), shape[-1]


def tile_scores(scores: jax.Array, block: Blocks) -> jax.Array:
  r"""The L2 norm of every tile of ``scores``' 2-D view, in float32.

  The view is ``(in, out)`` with the leading axes flattened into ``in``
  (a vector is one column); tile ``(i, j)`` covers rows ``i b1 .. i b1 + b1``
  and columns ``j b2 .. j b2 + b2``. An edge tile that the view cuts short
  (``t`` entries of ``b1 b2``) scores :math:`\|t\|_2 \sqrt{b_1 b_2 / t}`,
  the norm of a full tile with its mean square.

  Args:
    scores: a layer's scores (magnitudes: the norm of ``|w|`` is that of
      ``w``).
    block: the parsed block shape.

  Returns:
    A float32 array ``(ceil(in / b1), ceil(out / b2))``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sparsify.core import patterns
    >>> w = jnp.array([[3.0, 0.0, 1.0], [4.0, 0.0, 1.0]])
    >>> patterns.tile_scores(w, patterns.parse((2, 2)))
    Array([[5., 2.]], dtype=float32)
  """
  rows, cols = _view(tuple(scores.shape))
  b1, b2 = block.rows, block.cols
  t1, t2 = -(-rows // b1), -(-cols // b2)
  x = jnp.reshape(scores, (rows, cols)).astype(jnp.float32)
  x = jnp.pad(x, ((0, t1 * b1 - rows), (0, t2 * b2 - cols)))
  squares = jnp.sum(jnp.square(x).reshape(t1, b1, t2, b2), axis=(1, 3))
  entries = np.outer(np.minimum(b1, rows - b1 * np.arange(t1)),
                     np.minimum(b2, cols - b2 * np.arange(t2)))
  # 1.0 exactly for full tiles, whose score is then their plain norm.
  factor = (b1 * b2 / entries).astype(np.float32)
  return jnp.sqrt(squares * factor)


def untile(tile_mask: jax.Array, shape: tuple[int, ...],
           block: Blocks) -> jax.Array:
  """Spreads a mask over tiles back onto the kernel's ``shape``.

  Args:
    tile_mask: booleans, one per tile (as `tile_scores` lays them out).
    shape: the kernel's shape.
    block: the parsed block shape.

  Returns:
    A boolean array of ``shape``: each weight takes its tile's value.

  Example:
    >>> import jax.numpy as jnp
    >>> from sparsify.core import patterns
    >>> patterns.untile(jnp.array([[True, False]]), (2, 3),
    ...                 patterns.parse((2, 2)))
    Array([[ True,  True, False],
           [ True,  True, False]], dtype=bool)
  """
  rows, cols = _view(tuple(shape))
  t1, t2 = tile_mask.shape
  b1, b2 = block.rows, block.cols
  full = jnp.broadcast_to(tile_mask[:, None, :, None], (t1, b1, t2, b2))
  return jnp.reshape(full.reshape(t1 * b1, t2 * b2)[:rows, :cols], shape)


def layer_mask(scores: jax.Array, sparsity: jax.typing.ArrayLike,
               pattern: Pattern | Structure = UNSTRUCTURED) -> jax.Array:
  """One layer's keep-mask at ``sparsity`` in ``pattern``.

  Unstructured: the ``size - round(s size)`` largest scores (ties with the
  last one kept). N:M: `group_keep_count` per group, by `n_by_m_mask`.
  Blocks: the ``tiles - round(s tiles)`` tiles of largest `tile_scores`.

  Args:
    scores: the layer's non-negative scores (N:M accepts any values).
    sparsity: the fraction removed, a scalar (possibly traced).
    pattern: the pattern (see `parse`); static.

  Returns:
    A boolean array shaped like ``scores``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sparsify.core import patterns
    >>> scores = jnp.array([[1.0, 8.0], [2.0, 7.0], [4.0, 5.0], [3.0, 6.0]])
    >>> patterns.layer_mask(scores, 0.5, '2:4')
    Array([[False,  True],
           [False,  True],
           [ True, False],
           [ True, False]], dtype=bool)
  """
  structure = parse(pattern)
  if isinstance(structure, NByM):
    return n_by_m_mask(scores, group_keep_count(structure, sparsity),
                       structure.m)
  if isinstance(structure, Blocks):
    tiles = tile_scores(scores, structure)
    keep = topk.top_k_mask([tiles], topk.keep_count(tiles.size, sparsity))[0]
    return untile(keep, scores.shape, structure)
  return topk.top_k_mask([scores], topk.keep_count(scores.size, sparsity))[0]


def select(
    scores: types.Params,
    sparsity: jax.typing.ArrayLike,
    pattern: Pattern | Structure = UNSTRUCTURED,
    allocation: topk.Allocation = "layerwise",
) -> types.Masks:
  """Masks that drop the ``sparsity`` fraction of lowest scores, in a pattern.

  ``'unstructured'`` is `topk.select_by_score`, unchanged. N:M keeps
  ``max(N, M - round(sM))`` of every ``M`` inputs of every layer
  (``'layerwise'`` only). Blocks keep the tiles of largest L2 norm: per
  layer, or with ``'global'`` over the tiles of all layers pooled.

  Args:
    scores: pytree of non-negative score arrays (e.g. magnitudes).
    sparsity: fraction in [0, 1) to remove, a scalar (possibly traced).
    pattern: ``'unstructured'``, ``'N:M'`` or ``(b1, b2)`` (see `parse`);
      static.
    allocation: ``'layerwise'`` or ``'global'``; static.

  Returns:
    A pytree of boolean masks shaped like ``scores``.

  Raises:
    ValueError: a bad pattern or allocation, N:M with ``'global'``, or a
      layer whose input dimension is not a multiple of ``M``.

  Example:
    Two 2x2 tiles of a 4x4 kernel, the two of largest norm kept:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> from sparsify.core import patterns
    >>> scores = {'fc': jnp.array([[1.0, 1.0, 5.0, 5.0],
    ...                            [1.0, 1.0, 5.0, 5.0],
    ...                            [4.0, 4.0, 0.5, 0.5],
    ...                            [4.0, 4.0, 0.5, 0.5]])}
    >>> jax.jit(patterns.select, static_argnums=2)(scores, 0.5, (2, 2))['fc']
    Array([[False, False,  True,  True],
           [False, False,  True,  True],
           [ True,  True, False, False],
           [ True,  True, False, False]], dtype=bool)
  """
  checks.check_one_of("allocation", allocation, topk.ALLOCATIONS)
  structure = check_pattern(pattern, allocation=allocation)
  if structure == UNSTRUCTURED:
    return topk.select_by_score(scores, sparsity, allocation)
  check_layers(scores, structure)
  if isinstance(structure, Blocks) and allocation == "global":
    leaves, treedef = jax.tree.flatten(scores)
    tiles = [tile_scores(x, structure) for x in leaves]
    keep = topk.top_k_mask(
        tiles, topk.keep_count(sum(t.size for t in tiles), sparsity))
    return treedef.unflatten([untile(k, x.shape, structure)
                              for k, x in zip(keep, leaves)])
  return jax.tree.map(lambda x: layer_mask(x, sparsity, structure), scores)

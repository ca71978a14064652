"""Compression report: size, sparsity, FLOPs and sparse storage per layer.

A report has one row per parameter leaf (``'Dense_0/kernel'``,
``'Dense_0/bias'``, ...) and a total row. Rows are per leaf rather than per
module so that every number belongs to exactly one array.

FLOPs are forward FLOPs per example, 2 per multiply-accumulate with a kernel
weight. A kernel (a leaf named ``.../kernel`` of rank >= 2, see
`paths.DEFAULT_PRUNABLE`) is used once per output position, so::

  flops_dense     = 2 * kernel.size * positions
  flops_effective = 2 * nonzeros    * positions

with ``positions = prod(output_shape[1:-1])`` of the module that owns the
kernel (batch first, features last): 1 for a Dense layer on ``(batch, in)``,
``Ho * Wo`` for a 2-D convolution. Grouped and dilated convolutions follow the
same formula. Zero weights are skipped everywhere, padding edge effects are
ignored. Biases, normalisation, activations and pooling count 0 FLOPs.
Kernels of rank > 2 are read as channels-last convolution kernels; kernels of
`nn.DenseGeneral` with several output axes are not recognised.

Bytes assume float32 values (4 bytes each, whatever the stored dtype). The
sparse size of a leaf is the smallest of three encodings (ties go to the
simpler one, in this order), counted as the compressed file stores them
(`sparsify.spz.encodings.smallest_lossless`):

* ``dense``: ``4 * size``;
* ``bitmask``: ``ceil(size / 8)`` bytes of bits, plus ``4 * nnz`` of values;
* ``csr``: the leaf as a ``(prod(shape[:-1]), shape[-1])`` matrix (1-D leaves
  as one row): ``4 * nnz`` of values, ``nnz`` column indices and ``rows + 1``
  row pointers, each index in the fewest of 1, 2, 4 (or 8) bytes that holds
  it (compressed sparse rows with absolute column indices).

``bytes_index`` is the part of ``bytes_sparse`` spent on the bitmask or the
indices.
"""

from collections.abc import Mapping
import dataclasses
import json
import math
import os
import textwrap
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparsify.core import paths
from sparsify.core import types
from sparsify.spz import encodings

BYTES_PER_VALUE = 4  # float32
_IS_KERNEL = paths.path_predicate(None)


def _ratio(num: int | None, den: int | None) -> float | None:
  """``num / den``; ``inf`` for ``x / 0``, None when undefined."""
  if num is None or den is None or (num == 0 and den == 0):
    return None
  return math.inf if den == 0 else num / den


def _finite_or_none(x: float | None) -> float | None:
  return x if x is not None and math.isfinite(x) else None


@dataclasses.dataclass(frozen=True)
class LayerReport:
  """One row of a `CompressionReport`: a parameter leaf, or the total.

  Attributes:
    name: the leaf's path, e.g. ``'Conv_0/kernel'``, or ``'total'``.
    shape: the leaf's shape (None for the total).
    params: number of entries.
    nonzeros: number of nonzero entries of ``param * mask``.
    sparsity: ``1 - nonzeros / params``.
    flops_dense: forward FLOPs per example with every weight; None when the
      output shape of a convolution is unknown.
    flops_effective: the same, skipping zero weights.
    bytes_dense: ``4 * params``.
    bytes_sparse: bytes of the smallest encoding.
    bytes_index: bytes of ``bytes_sparse`` spent on bitmask or indices.
    encoding: ``'dense'``, ``'bitmask'`` or ``'csr'``; for the total, the
      common encoding of all layers or ``'mixed'``.
  """
  name: str
  shape: tuple[int, ...] | None
  params: int
  nonzeros: int
  sparsity: float
  flops_dense: int | None
  flops_effective: int | None
  bytes_dense: int
  bytes_sparse: int
  bytes_index: int
  encoding: str

  @property
  def compression_ratio(self) -> float | None:
    """``bytes_dense / bytes_sparse``."""
    return _ratio(self.bytes_dense, self.bytes_sparse)

  @property
  def flops_ratio(self) -> float | None:
    """``flops_dense / flops_effective`` (None without FLOPs)."""
    return _ratio(self.flops_dense, self.flops_effective)

  def to_dict(self) -> dict[str, Any]:
    """The fields and both ratios as JSON types (non-finite ratios: None).

    Returns:
      A dict of the dataclass fields (``shape`` as a list) plus
      ``compression_ratio`` and ``flops_ratio``.
    """
    out = dataclasses.asdict(self)
    out["shape"] = None if self.shape is None else list(self.shape)
    out["compression_ratio"] = _finite_or_none(self.compression_ratio)
    out["flops_ratio"] = _finite_or_none(self.flops_ratio)
    return out


@dataclasses.dataclass(frozen=True)
class CompressionReport:
  """Per-layer rows and their total; see `compression_report`.

  Attributes:
    layers: one `LayerReport` per parameter leaf, in tree-flattening order.
    total: the sums over ``layers``, named ``'total'``.
  """
  layers: tuple[LayerReport, ...]
  total: LayerReport

  def to_dict(self) -> dict[str, Any]:
    """Returns ``{'layers': [row, ...], 'total': row}`` of JSON types.

    Returns:
      A dict whose rows are `LayerReport.to_dict` dicts.
    """
    return {"layers": [layer.to_dict() for layer in self.layers],
            "total": self.total.to_dict()}

  def to_json(self, path: str | os.PathLike[str]) -> None:
    """Writes `to_dict` as JSON to ``path``.

    Args:
      path: the file to write; replaced if it exists.
    """
    with open(path, "w") as f:
      json.dump(self.to_dict(), f, indent=2)

  def table(self) -> str:
    """Returns a fixed-width text table: one row per layer, then the total.

    Returns:
      The table (shape, parameters, nonzeros, sparsity, FLOPs, bytes,
      encoding and compression ratio per row), followed by notes on how
      FLOPs and bytes are counted, as one string with newlines.
    """
    header = ("layer", "shape", "params", "nonzeros", "sparsity", "FLOPs",
              "eff. FLOPs", "dense", "sparse", "index", "encoding", "ratio")
    body = [_cells(layer) for layer in self.layers]
    total = _cells(self.total)
    widths = [max(len(row[i]) for row in [header, *body, total])
              for i in range(len(header))]
    left = (0, 1, 10)

    def line(row):
      return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    rule = "-" * len(line(header))
    speedup = self.total.flops_ratio
    speedup = ("unknown: pass output_shapes" if speedup is None else
               f"{_fmt_ratio(speedup)} fewer in total")
    notes = [
        "FLOPs: forward, per example, 2 per multiply-accumulate with a kernel"
        f" weight; eff. skips zero weights ({speedup}).",
        "sparse: per layer the smallest of dense (4 B/value), bitmask (1 bit/"
        "entry + 4 B/nonzero) and csr (4 B/nonzero + column indices + row"
        " pointers, 1/2/4 B each); index: bytes of bitmask or indices.",
    ]
    width = max(80, len(rule))
    return "\n".join([line(header), rule, *map(line, body), rule, line(total),
                      "", *(textwrap.fill(n, width) for n in notes)])


def _fmt_scaled(n: int | None, step: int, units: tuple[str, ...]) -> str:
  """``n`` with the largest unit that keeps it >= 1: ``12.3 KiB``, ``4.6 M``."""
  if n is None:
    return "n/a"
  k = 0
  while k + 1 < len(units) and n >= step ** (k + 1):
    k += 1
  if k == 0:
    return f"{n} {units[0]}".rstrip()
  return f"{n / step**k:.1f} {units[k]}"


def _fmt_bytes(n: int) -> str:
  return _fmt_scaled(n, 1024, ("B", "KiB", "MiB", "GiB"))


def _fmt_flops(n: int | None) -> str:
  return _fmt_scaled(n, 1000, ("", "k", "M", "G", "T"))


def _fmt_ratio(r: float | None) -> str:
  if r is None:
    return "-"
  return "inf" if math.isinf(r) else f"{r:.1f}x"


def _cells(r: LayerReport) -> tuple[str, ...]:
  shape = "" if r.shape is None else "x".join(map(str, r.shape)) or "scalar"
  return (r.name, shape, f"{r.params:,}", f"{r.nonzeros:,}",
          f"{100 * r.sparsity:.1f} %", _fmt_flops(r.flops_dense),
          _fmt_flops(r.flops_effective), _fmt_bytes(r.bytes_dense),
          _fmt_bytes(r.bytes_sparse), _fmt_bytes(r.bytes_index), r.encoding,
          _fmt_ratio(r.compression_ratio))


def _sparsity(nonzeros: int, params: int) -> float:
  return 1.0 - nonzeros / params if params else 0.0


def _flops(name: str, x: np.ndarray, nnz: int,
           output_shapes: Mapping[str, Any] | None
           ) -> tuple[int | None, int | None]:
  """Dense and effective forward FLOPs per example of one leaf."""
  if not _IS_KERNEL(name, x):
    return 0, 0
  module = name.rpartition("/")[0]
  known = output_shapes is not None and module in output_shapes
  if known:
    positions = math.prod(int(d) for d in output_shapes[module][1:-1])
  elif x.ndim == 2:  # Dense on (batch, features).
    positions = 1
  elif output_shapes is None:
    return None, None
  else:
    raise ValueError(
        f"No output shape for module {module!r} of convolution kernel "
        f"{name!r}: add it to output_shapes, e.g. with "
        "layer_output_shapes(model, variables, input_shape).")
  return 2 * x.size * positions, 2 * nnz * positions


def _layer(name: str, value: Any, mask: Any,
           output_shapes: Mapping[str, Any] | None) -> LayerReport:
  """The report row of one parameter leaf."""
  x = np.asarray(value)
  if mask is not None:
    m = np.asarray(mask, dtype=bool)
    try:
      m = np.broadcast_to(m, x.shape)
    except ValueError:
      raise ValueError(f"Mask of {name!r} has shape {m.shape}, which does not"
                       f" broadcast to the parameter's {x.shape}.") from None
    x = np.where(m, x, np.zeros((), x.dtype))
  params, nnz = int(x.size), int(np.count_nonzero(x))
  flops_dense, flops_effective = _flops(name, x, nnz, output_shapes)
  stored = encodings.smallest_lossless(x.shape, nnz, BYTES_PER_VALUE)
  return LayerReport(
      name=name, shape=tuple(int(d) for d in x.shape), params=params,
      nonzeros=nnz, sparsity=_sparsity(nnz, params), flops_dense=flops_dense,
      flops_effective=flops_effective, bytes_dense=BYTES_PER_VALUE * params,
      bytes_sparse=stored.nbytes, bytes_index=stored.index_bytes,
      encoding=stored.encoding)


def _total(layers: tuple[LayerReport, ...]) -> LayerReport:
  """Sums the rows; FLOPs are None if any layer's are."""
  def add(field):
    values = [getattr(layer, field) for layer in layers]
    return None if None in values else sum(values)

  params, nnz = add("params"), add("nonzeros")
  encodings = {layer.encoding for layer in layers}
  return LayerReport(
      name="total", shape=None, params=params, nonzeros=nnz,
      sparsity=_sparsity(nnz, params), flops_dense=add("flops_dense"),
      flops_effective=add("flops_effective"), bytes_dense=add("bytes_dense"),
      bytes_sparse=add("bytes_sparse"), bytes_index=add("bytes_index"),
      encoding=encodings.pop() if len(encodings) == 1 else "mixed")


def compression_report(
    params: types.Params,
    masks: types.Masks | None = None,
    *,
    output_shapes: Mapping[str, Any] | None = None,
) -> CompressionReport:
  """Counts size, sparsity, FLOPs and sparse storage of every parameter.

  For each leaf ``w`` with keep-mask ``m`` (all True when absent):
  ``nonzeros = count_nonzero(w * m)``, ``sparsity = 1 - nonzeros / size``;
  FLOPs and bytes as in the module docstring. The total sums the rows and
  recomputes sparsity and the ratios from the sums.

  Args:
    params: a pytree of arrays (``variables['params']`` of a Flax model).
    masks: None, or a pytree of boolean keep-masks with the structure of
      ``params``, where a leaf may be None or `optax.MaskedNode` (or absent
      from a dict) for "no mask". A mask broadcasts to its parameter's shape,
      so a scalar ``False`` zeroes the whole leaf.
    output_shapes: ``{module path: output shape}``, as returned by
      `layer_output_shapes`, giving the output positions of convolutions. If
      None, convolution FLOPs (and so the total FLOPs) are None while Dense
      FLOPs are still counted; if given, a convolution missing from it
      raises a ValueError. A 2-D kernel missing from it counts one position.

  Returns:
    A `CompressionReport`.

  Raises:
    ValueError: if a mask names no parameter or does not broadcast to it, or
      a convolution's output shape is missing from ``output_shapes``.

  Example:
    >>> import numpy as np
    >>> import sparsify
    >>> params = {'conv': {'kernel': np.ones((3, 3, 1, 8), np.float32),
    ...                    'bias': np.ones(8, np.float32)},
    ...           'head': {'kernel': np.ones((128, 10), np.float32),
    ...                    'bias': np.ones(10, np.float32)}}
    >>> keep = np.arange(1280).reshape(128, 10) % 10 == 0  # 10 % of head
    >>> report = sparsify.compression_report(
    ...     params, {'head': {'kernel': keep}},
    ...     output_shapes={'conv': (1, 28, 28, 8)})  # conv: 28x28 positions
    >>> [(row.name, row.nonzeros, row.encoding, row.bytes_sparse)
    ...  for row in report.layers]
    [('conv/bias', 8, 'dense', 32), ('conv/kernel', 72, 'dense', 288),
     ('head/bias', 10, 'dense', 40), ('head/kernel', 128, 'bitmask', 672)]
    >>> total = report.total
    >>> total.params, round(total.sparsity, 3), total.flops_dense
    (1370, 0.841, 115456)
  """
  leaves = paths.named_leaves(params)
  mask_of = dict(paths.named_leaves(masks)) if masks is not None else {}
  unknown = sorted(set(mask_of) - {name for name, _ in leaves})
  if unknown:
    raise ValueError(f"Masks {unknown} match no parameter; masks must follow"
                     " the structure of params.")
  layers = tuple(_layer(name, value, mask_of.get(name), output_shapes)
                 for name, value in leaves)
  return CompressionReport(layers=layers, total=_total(layers))


def layer_output_shapes(
    model: Any,
    variables: Any,
    input_shape: tuple[int, ...],
    *,
    dtype: Any = jnp.float32,
    **apply_kwargs: Any,
) -> dict[str, tuple[int, ...]]:
  """Returns the output shape of every Flax Linen submodule, by tracing only.

  Traces ``model.apply(variables, x, capture_intermediates=True)`` with
  `jax.eval_shape`, so nothing is computed. A module called several times
  reports its first call; modules returning something other than one array
  are left out.

  Args:
    model: a `flax.linen.Module`.
    variables: its variables (``{'params': ...}`` and any other collection);
      arrays or `jax.ShapeDtypeStruct`.
    input_shape: shape of the input, batch first.
    dtype: dtype of the input.
    **apply_kwargs: passed to ``model.apply`` (e.g. ``train=False``).

  Returns:
    ``{module path: shape}`` with paths joined by ``'/'`` (``'Conv_0'``,
    ``'block1/conv1'``); ``''`` is the model itself.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> from sparsify import models
    >>> model = models.LeNet5()
    >>> variables = jax.eval_shape(model.init, jax.random.key(0),
    ...                            jnp.ones((1, 28, 28, 1)))
    >>> shapes = sparsify.layer_output_shapes(model, variables, (1, 28, 28, 1))
    >>> shapes['conv1'], shapes['conv2'], shapes['head']
    ((1, 24, 24, 20), (1, 8, 8, 50), (1, 10))
  """
  def run(variables, x):
    _, state = model.apply(variables, x, capture_intermediates=True,
                           mutable=["intermediates"], **apply_kwargs)
    return state["intermediates"]

  x = jax.ShapeDtypeStruct(tuple(input_shape), dtype)
  shapes = {}

  def collect(tree, path):
    for key, value in tree.items():
      if key == "__call__":
        first = value[0] if isinstance(value, tuple) and value else value
        if hasattr(first, "shape"):
          shapes.setdefault("/".join(path), tuple(first.shape))
      elif isinstance(value, Mapping):
        collect(value, (*path, str(key)))

  collect(jax.eval_shape(run, variables, x), ())
  return shapes

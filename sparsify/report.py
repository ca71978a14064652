"""Compression report: size, sparsity, FLOPs and sparse storage per layer.

A report has one row per parameter leaf (``'Dense_0/kernel'``,
``'Dense_0/bias'``, ...) and a total row. Rows are per leaf rather than per
module so that every number belongs to exactly one array.

FLOPs are forward FLOPs per example, exact, from the counts of
`sparsify.flops.param_flops` (``compression_report(params, masks,
flops=param_flops(apply_fn, variables, x))``), which reads them from the
traced computation of any Linen or NNX model: 2 per multiply-accumulate (MAC)
of every ``dot_general`` and convolution, each product counted as XLA's cost
analysis (``jax.jit(f).lower(...).compile().cost_analysis()['flops']``)
counts it: a Dense layer at every token, a padded convolution only where a
kernel tap lands on the input. (XLA also counts elementwise operations, 1
FLOP per output entry; here they count 0.) A row's FLOPs are those of the
products that read its leaf as their weight::

  flops_dense     = 2 * sum(macs)
  flops_effective = 2 * sum(macs[w * m != 0])

where ``macs`` holds, per entry of the leaf, the MACs it takes part in
(`sparsify.flops.LeafFlops`): a zero or masked weight saves exactly its own
MACs, and a border tap of a padded convolution saves fewer than the centre
tap. Biases, normalisation, activation functions and pooling count 0. The
total adds to the rows the products that no row owns: those with no weight
or two (attention's ``q @ k^T``, a product of two parameters), counted under
``'activations'``, and those whose weight is a variable outside ``params``;
masking does not change these. The total is thus every matmul and
convolution FLOP of the model.

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
import math
import os
import textwrap
from typing import Any

import numpy as np

from sparsify import flops as flops_lib
from sparsify.core import paths
from sparsify.core import types
from sparsify.experiment import files
from sparsify.spz import encodings

BYTES_PER_VALUE = 4  # float32


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
    flops_dense: forward FLOPs per example of the products reading the leaf
      as their weight (for the total: of the model); None without counts.
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
    total: the sums over ``layers``, named ``'total'``; its FLOPs add those
      of the products that no row owns (see the module docstring).
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
    """Writes `to_dict` as strict JSON to ``path``, atomically.

    Args:
      path: the file to write; replaced if it exists.
    """
    files.write_json(os.fspath(path), self.to_dict())

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
    speedup = ("unknown: pass flops=param_flops(...)" if speedup is None else
               f"{_fmt_ratio(speedup)} fewer in total")
    unowned = self.total.flops_dense
    if unowned is not None:
      unowned -= sum(layer.flops_dense for layer in self.layers)
    unowned = (f"; the total includes {_fmt_flops(unowned)} of products "
               "with no weight among the rows (attention's q @ k^T)"
               if unowned else "")
    notes = [
        ("FLOPs: forward, per example, 2 per multiply-accumulate of every "
         "matmul and convolution, as XLA counts those; eff. skips zero "
         f"weights ({speedup}){unowned}."),
        ("sparse: per layer the smallest of dense (4 B/value), bitmask (1 "
         "bit/entry + 4 B/nonzero) and csr (4 B/nonzero + column indices + "
         "row pointers, 1/2/4 B each); index: bytes of bitmask or indices."),
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


def _layer(name: str, value: Any, mask: Any,
           leaf_flops: flops_lib.LeafFlops | None) -> LayerReport:
  """The report row of one parameter leaf (FLOPs None without counts)."""
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
  flops_dense = flops_effective = None
  if leaf_flops is not None:
    if leaf_flops.shape != x.shape:
      raise ValueError(
          f"flops[{leaf_flops.name!r}] counts a leaf of shape "
          f"{leaf_flops.shape}, but parameter {name!r} has shape {x.shape}: "
          "count flops with param_flops on the variables of these params.")
    flops_dense, flops_effective = leaf_flops.flops, leaf_flops.effective(x)
  stored = encodings.smallest_lossless(x.shape, nnz, BYTES_PER_VALUE)
  return LayerReport(
      name=name, shape=tuple(int(d) for d in x.shape), params=params,
      nonzeros=nnz, sparsity=_sparsity(nnz, params), flops_dense=flops_dense,
      flops_effective=flops_effective, bytes_dense=BYTES_PER_VALUE * params,
      bytes_sparse=stored.nbytes, bytes_index=stored.index_bytes,
      encoding=stored.encoding)


def _total(layers: tuple[LayerReport, ...],
           unowned: float | None) -> LayerReport:
  """Sums the rows; FLOPs add ``unowned``, and are None if it is."""
  def add(field):
    values = [getattr(layer, field) for layer in layers]
    return None if None in values else sum(values)

  def add_flops(field):
    rows = add(field)
    return None if unowned is None or rows is None else rows + unowned

  params, nnz = add("params"), add("nonzeros")
  encodings = {layer.encoding for layer in layers}
  return LayerReport(
      name="total", shape=None, params=params, nonzeros=nnz,
      sparsity=_sparsity(nnz, params), flops_dense=add_flops("flops_dense"),
      flops_effective=add_flops("flops_effective"),
      bytes_dense=add("bytes_dense"), bytes_sparse=add("bytes_sparse"),
      bytes_index=add("bytes_index"),
      encoding=encodings.pop() if len(encodings) == 1 else "mixed")


def compression_report(
    params: types.Params,
    masks: types.Masks | None = None,
    *,
    flops: Mapping[str, flops_lib.LeafFlops] | None = None,
) -> CompressionReport:
  """Counts size, sparsity, FLOPs and sparse storage of every parameter.

  For each leaf ``w`` with keep-mask ``m`` (all True when absent):
  ``nonzeros = count_nonzero(w * m)``, ``sparsity = 1 - nonzeros / size``,
  ``flops_dense = flops[w].flops``, ``flops_effective =
  flops[w].effective(w * m)``; bytes as in the module docstring. The total
  sums the rows, adds the FLOPs of the entries of ``flops`` that are no row
  (``'activations'``, variables outside ``params``), and recomputes sparsity
  and the ratios from the sums.

  Args:
    params: a pytree of arrays: ``variables['params']`` of a Linen model
      (or all its ``variables``), ``nnx.state(model, nnx.Param)`` of an NNX
      one.
    masks: None, or a pytree of boolean keep-masks with the structure of
      ``params``, where a leaf may be None or `optax.MaskedNode` (or absent
      from a dict) for "no mask". A mask broadcasts to its parameter's shape,
      so a scalar ``False`` zeroes the whole leaf.
    flops: None, or the counts of `sparsify.flops.param_flops` traced on
      the model's variables (which hold ``params``); its keys name the
      leaves as `param_flops` does, the Linen ``'params/'`` prefix dropped.
      As `param_flops` counts every leaf it is given, 0 FLOPs for those that
      no product reads, a leaf of ``params`` missing from it is an error, not
      0 FLOPs. If None, every FLOPs field is None.

  Returns:
    A `CompressionReport`.

  Raises:
    ValueError: if a mask names no parameter or does not broadcast to it, or
      ``flops`` has no entry, or one of another shape, for a parameter.

  Example:
    >>> import flax.linen as nn
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import sparsify
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):  # x: [batch, 4, 4, 1]
    ...     x = nn.Conv(8, (3, 3), padding='SAME', name='conv')(x)
    ...     return nn.Dense(10, name='head')(x.reshape(len(x), -1))
    >>> params = {'conv': {'kernel': np.ones((3, 3, 1, 8), np.float32),
    ...                    'bias': np.ones(8, np.float32)},
    ...           'head': {'kernel': np.ones((128, 10), np.float32),
    ...                    'bias': np.ones(10, np.float32)}}
    >>> flops = sparsify.param_flops(Net().apply, {'params': params},
    ...                              jnp.ones((1, 4, 4, 1)))
    >>> keep = np.arange(1280).reshape(128, 10) % 10 == 0  # 10 % of head
    >>> report = sparsify.compression_report(
    ...     params, {'head': {'kernel': keep}}, flops=flops)
    >>> [(row.name, row.nonzeros, row.encoding, row.bytes_sparse)
    ...  for row in report.layers]
    [('conv/bias', 8, 'dense', 32), ('conv/kernel', 72, 'dense', 288),
     ('head/bias', 10, 'dense', 40), ('head/kernel', 128, 'bitmask', 672)]
    >>> report.layers[1].flops_dense  # 2 * 8 * (3 + 4 + 3) ** 2, not 2*72*16
    1600
    >>> total = report.total
    >>> total.params, round(total.sparsity, 3), total.flops_dense
    (1370, 0.841, 4160)
    >>> total.flops_effective  # 1600 + 2 * 128
    1856
  """
  leaves = paths.named_leaves(params)
  mask_of = dict(paths.named_leaves(masks)) if masks is not None else {}
  unknown = sorted(set(mask_of) - {name for name, _ in leaves})
  if unknown:
    raise ValueError(f"Masks {unknown} match no parameter; masks must follow"
                     " the structure of params.")
  keys = flops_lib._names(params)  # pylint: disable=protected-access
  if flops is not None:
    missing = [name for (name, _), key in zip(leaves, keys)
               if key not in flops]
    if missing:
      raise ValueError(
          f"flops has no entry for parameters {missing}: "
          "count flops with param_flops on the variables of these params.")
  layers = tuple(
      _layer(name, value, mask_of.get(name),
             None if flops is None else flops[key])
      for (name, value), key in zip(leaves, keys))
  unowned = None
  if flops is not None:
    owned = set(keys)
    unowned = sum(leaf.flops for key, leaf in flops.items()
                  if key not in owned)
  return CompressionReport(layers=layers, total=_total(layers, unowned))

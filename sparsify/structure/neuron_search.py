"""Binary-search neuron pruning: how many neurons each hidden layer can lose.

Neurons (Dense units, conv filters) are the `units.SpecUnit` groups of a
structure specification. Each neuron is scored by the norm of its incoming
weights; in every hidden layer the number of lowest-scoring neurons that can
be removed while the accuracy stays within a tolerance of the unpruned
model's is found by binary search, layer after layer, with optional
fine-tuning in between. Removed neurons are zeroed in place
(`apply_neuron_masks`), so the pruned network is evaluated with the original
model; `surgery.slim` then builds the smaller network.
"""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import math
from typing import Any, Literal, NamedTuple

import jax.numpy as jnp
import numpy as np

from sparsify.core import paths
from sparsify.core import types
from sparsify.structure import units

Norm = Literal["l1", "l2"]
NORMS = ("l1", "l2")
ORDERS = ("forward", "backward", "size")


def _kernels(flat: Mapping[str, Any], unit: units.SpecUnit) -> list[tuple[
    np.ndarray, int]]:
  """The unit's producer kernels present in ``flat``, with their unit axis."""
  out = [(np.asarray(flat[path]), axis) for path, axis in unit.producers
         if path in flat and path.rsplit("/", 1)[-1] == "kernel"]
  if not out:
    raise ValueError(
        f"unit {unit.name!r}: none of its producers "
        f"{[p for p, _ in unit.producers]} is a kernel in params; a unit "
        "needs at least one producer whose path ends in 'kernel'")
  return out


def neuron_scores(params: types.Params, spec: Sequence[units.SpecUnit],
                  norm: Norm = "l1") -> dict[str, np.ndarray]:
  r"""The norm of each neuron's incoming weights, per unit group.

  For neuron :math:`j` of a unit whose producer kernel :math:`W` has the
  units along axis ``a``,

  .. math::
    s_j = \|W_{[\dots, j, \dots]}\|_1 = \sum |W_{[\dots, j, \dots]}|
    \quad\text{or}\quad
    s_j = \|W_{[\dots, j, \dots]}\|_2,

  the slice taken at index ``j`` of axis ``a``: a Dense kernel's column, a
  conv kernel's output filter (all its spatial taps and input channels).
  Only producers whose path ends in ``kernel`` count; biases, BatchNorm
  parameters and gates are not included. A unit with several kernel
  producers gets the norm of all of them together.

  Args:
    params: the model's parameters.
    spec: the structure specification (see `sparsify.models.structure`).
    norm: ``'l1'`` or ``'l2'``.

  Returns:
    ``{unit name: float64 array of shape (N,)}``.

  Example:
    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> params = {'fc1': {'kernel': jnp.array([[1.0, -2.0, 0.0, 3.0],
    ...                                        [1.0, 0.0, 0.5, -1.0]]),
    ...                   'bias': jnp.zeros(4)},
    ...           'head': {'kernel': jnp.ones((4, 1))}}
    >>> spec = sparsify.spec_for('mlp', hidden=(4,))
    >>> sparsify.neuron_scores(params, spec)
    {'fc1': array([2. , 2. , 0.5, 4. ])}
    >>> sparsify.neuron_scores(params, spec, norm='l2')['fc1'].round(3)
    array([1.414, 2.   , 0.5  , 3.162])

  References:
    Zhang, Qin & Chan, "An efficient binary search based neuron pruning
    method for ConvNet condensation", ICONIP 2017.
  """
  if norm not in NORMS:
    raise ValueError(f"norm: got {norm!r}; allowed: {', '.join(NORMS)}")
  flat = dict(paths.named_leaves(params))
  scores = {}
  for unit in spec:
    total = None
    for w, axis in _kernels(flat, unit):
      w = np.moveaxis(np.asarray(w, np.float64), axis, 0).reshape(
          w.shape[axis], -1)
      part = (np.abs(w) if norm == "l1" else np.square(w)).sum(axis=1)
      if total is not None and total.shape != part.shape:
        raise ValueError(f"unit {unit.name!r}: its kernels have "
                         f"{total.shape[0]} and {part.shape[0]} units")
      total = part if total is None else total + part
    scores[unit.name] = total if norm == "l1" else np.sqrt(total)
  return scores


def neuron_masks(scores: Mapping[str, np.ndarray],
                 counts: Mapping[str, int]) -> dict[str, np.ndarray]:
  """Keep-masks removing the ``count`` lowest-scoring neurons of each unit.

  Neurons are ranked by score with a stable sort: among equal scores the
  neuron with the lower index is removed first, so the masks are
  deterministic.

  Args:
    scores: ``{unit name: (N,) scores}`` (see `neuron_scores`).
    counts: ``{unit name: number of neurons to remove}``, each in
      ``[0, N]``; units absent from it remove none.

  Returns:
    ``{unit name: boolean (N,) array}``, ``True`` for the neurons kept.

  Example:
    >>> import numpy as np
    >>> import sparsify
    >>> sparsify.neuron_masks({"fc1": np.array([3.0, 1.0, 2.0])}, {"fc1": 1})
    {'fc1': array([ True, False,  True])}
  """
  unknown = sorted(set(counts) - set(scores))
  if unknown:
    raise ValueError(f"counts: unknown unit(s) {unknown}; allowed: "
                     f"{sorted(scores)}")
  masks = {}
  for name, s in scores.items():
    s = np.asarray(s)
    n = int(counts.get(name, 0))
    if not 0 <= n <= s.shape[0]:
      raise ValueError(f"counts[{name!r}]: got {n}; allowed: 0 to "
                       f"{s.shape[0]} (the unit's neurons)")
    keep = np.ones(s.shape[0], bool)
    keep[np.argsort(s, kind="stable")[:n]] = False
    masks[name] = keep
  return masks


def apply_neuron_masks(params: types.Params, spec: Sequence[units.SpecUnit],
                       keep: Mapping[str, Any], *,
                       consumers: bool = False) -> types.Params:
  """Zeroes the producer slices of the removed neurons.

  Every producer of a unit present in ``params`` (kernel slice, bias,
  BatchNorm scale and shift) is set to zero at the removed indices, so a
  removed neuron outputs :math:`f(0) = 0` after an activation with
  :math:`f(0) = 0` (relu, tanh), and the model computes what `surgery.slim`
  of the same ``keep`` computes. Producers outside ``params`` (BatchNorm running
  statistics) are left alone: with scale and shift at zero they do not
  matter. Consumer slices (the next layer's input rows) are kept unless
  ``consumers=True``; they multiply zero either way.

  Args:
    params: the model's parameters.
    spec: the structure specification.
    keep: ``{unit name: boolean (N,) array}``; units absent are untouched.
    consumers: also zero the consumer slices of the removed neurons.

  Returns:
    Params of the same structure, shapes and dtypes.

  Example:
    Removing the two neurons of lowest L1 score (columns 0 and 2):

    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> params = {'fc1': {'kernel': jnp.array([[1.0, -2.0, 0.0, 3.0],
    ...                                        [1.0, 0.0, 0.5, -1.0]]),
    ...                   'bias': jnp.zeros(4)},
    ...           'head': {'kernel': jnp.ones((4, 1))}}
    >>> spec = sparsify.spec_for('mlp', hidden=(4,))
    >>> keep = sparsify.neuron_masks(sparsify.neuron_scores(params, spec),
    ...                              {"fc1": 2})
    >>> pruned = sparsify.apply_neuron_masks(params, spec, keep)
    >>> pruned['fc1']['kernel']
    Array([[ 0., -2.,  0.,  3.],
           [ 0.,  0.,  0., -1.]], dtype=float32)
    >>> pruned['head']['kernel'].ravel()  # consumers are kept by default
    Array([1., 1., 1., 1.], dtype=float32)
  """
  units = {u.name: u for u in spec}
  unknown = sorted(set(keep) - set(units))
  if unknown:
    raise ValueError(f"keep: unknown unit(s) {unknown}; allowed: "
                     f"{sorted(units)}")
  slices: dict[str, list[tuple[int, Any, str]]] = {}
  for name, k in keep.items():
    unit = units[name]
    pairs = unit.producers + (unit.consumers if consumers else ())
    for path, axis in pairs:
      slices.setdefault(path, []).append((axis, k, name))

  def zero(path, x):
    for axis, k, name in slices.get(path, ()):
      k = jnp.asarray(k, bool)
      if k.ndim == 1 and k.size and x.shape[axis] != k.size and (
          x.shape[axis] % k.size == 0):
        # Flattened (positions, units) inputs, units innermost, as after
        # flattening NHWC maps into a Dense layer (see `units.SpecUnit`).
        k = jnp.tile(k, x.shape[axis] // k.size)
      if k.shape != (x.shape[axis],):
        raise ValueError(f"keep[{name!r}]: shape {k.shape}, but {path} has "
                         f"{x.shape[axis]} units along axis {axis}")
      shape = [1] * x.ndim
      shape[axis] = -1
      x = jnp.where(k.reshape(shape), x, jnp.zeros((), x.dtype))
    return x

  return paths.map_with_name(zero, params)


def ungated_spec(spec: Sequence[units.SpecUnit],
                 params: types.Params) -> list[units.SpecUnit]:
  """The specification with the gates that ``params`` lacks set to None.

  `sparsify.models.structure` names the gates of gated models; for the same
  model built without gates, this is the specification `surgery.slim` needs.

  Args:
    spec: the structure specification of the gated model.
    params: the parameters of the model actually trained.

  Returns:
    A new list of `units.SpecUnit`; units whose gate path is not a leaf of
    ``params`` get ``gate=None``.

  Example:
    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> from sparsify.structure import neuron_search
    >>> params = {'fc1': {'kernel': jnp.ones((3, 4)), 'bias': jnp.zeros(4)},
    ...           'head': {'kernel': jnp.ones((4, 1))}}
    >>> spec = sparsify.spec_for('mlp', hidden=(4,))
    >>> spec[0].gate, neuron_search.ungated_spec(spec, params)[0].gate
    ('fc1_gate/gate', None)
  """
  names = {name for name, _ in paths.named_leaves(params)}
  return [u if u.gate in names else dataclasses.replace(u, gate=None)
          for u in spec]


class SearchStep(NamedTuple):
  """One evaluation of the search.

  ``unit`` is None for the baseline (unpruned) evaluation; otherwise the
  unit searched, with ``mid`` of its neurons removed on top of the layers
  already decided.
  """
  unit: str | None
  mid: int
  accuracy: float
  accepted: bool


class SearchResult(NamedTuple):
  """What `binary_search_prune` found.

  Attributes:
    keep: ``{unit name: boolean (N,) array}`` for every unit of the spec
      (all ``True`` for units not searched), ready for `surgery.slim`.
    counts: neurons removed per unit.
    kept: neurons kept per unit.
    params: the final parameters with removed neurons zeroed (after the
      last fine-tuning, when given).
    log: a `SearchStep` per call of ``evaluate``, the baseline first.
    baseline: the accuracy of the unpruned parameters.
  """
  keep: dict[str, np.ndarray]
  counts: dict[str, int]
  kept: dict[str, int]
  params: types.Params
  log: list[SearchStep]
  baseline: float


def _visit_order(spec: Sequence[units.SpecUnit], sizes: Mapping[str, int],
                 order: str, layers: Sequence[str] | None,
                 min_keep: int) -> list[str]:
  """Validates the options and returns the unit names in visiting order."""
  if order not in ORDERS:
    raise ValueError(f"order: got {order!r}; allowed: {', '.join(ORDERS)}")
  names = [u.name for u in spec]
  if len(set(names)) != len(names):
    raise ValueError(f"spec: unit names must be unique; got {names}")
  if layers is not None:
    if isinstance(layers, str):
      raise ValueError(f"layers: give a list of unit names, not the string "
                       f"{layers!r}")
    unknown = sorted(set(layers) - set(names))
    if unknown:
      raise ValueError(f"layers: unknown unit(s) {unknown}; allowed: {names}")
    names = [n for n in names if n in set(layers)]
  if isinstance(min_keep, bool) or not isinstance(
      min_keep, (int, np.integer)) or min_keep < 1:
    raise ValueError(f"min_keep: got {min_keep!r}; allowed: an integer >= 1")
  small = [n for n in names if sizes[n] < min_keep]
  if small:
    raise ValueError(f"min_keep: got {min_keep}, more than the "
                     f"{[sizes[n] for n in small]} neurons of unit(s) "
                     f"{small}")
  if order == "backward":
    return names[::-1]
  if order == "size":
    return sorted(names, key=lambda n: -sizes[n])  # stable: ties forward
  return names


def binary_search_prune(
    params: types.Params,
    evaluate: Callable[[types.Params], float],
    tolerance: float,
    *,
    spec: Sequence[units.SpecUnit],
    norm: Norm = "l1",
    order: Literal["forward", "backward", "size"] = "forward",
    relative: bool = False,
    finetune: Callable[[types.Params, dict[str, np.ndarray]],
                       types.Params] | None = None,
    min_keep: int = 1,
    layers: Sequence[str] | None = None,
) -> SearchResult:
  r"""Finds by binary search how many neurons each hidden layer can lose.

  With :math:`a_0` = ``evaluate(params)`` the unpruned accuracy and
  :math:`\varepsilon` = ``tolerance`` (or ``tolerance`` :math:`\cdot|a_0|`
  when ``relative``), each unit group of :math:`N` neurons, in the chosen
  order, is searched by

  .. math::
    &lo = 0,\ hi = N - \text{min\_keep};\ \text{while } lo < hi:
      mid = \lceil (lo + hi) / 2 \rceil, \\
    &a = \text{evaluate}(\text{the } mid \text{ lowest-scoring neurons
      removed}),\quad
    lo = mid \text{ if } a \ge a_0 - \varepsilon \text{ else } hi = mid - 1,

  on top of the removals already decided for earlier layers; ``lo``
  neurons are removed. That is at most
  :math:`\lceil \log_2(N - \text{min\_keep} + 1) \rceil` evaluations per
  layer, the right count when accuracy does not increase with the number
  removed. Scores (`neuron_scores`) are computed when a layer is visited,
  from the current parameters with the inputs from neurons already removed
  zeroed, so fine-tuning between layers changes the ranking of later
  layers. After each layer, ``finetune(params, keep)`` (if given) receives
  the masked parameters and the keep-masks of every unit so far; its
  result, with the removed neurons zeroed again, is the starting point of
  the next layer. The baseline :math:`a_0` stays the unpruned accuracy.

  Args:
    params: the trained model's parameters.
    evaluate: ``params -> accuracy`` (higher is better), any Python callable;
      called once on ``params``, then once per search step.
    tolerance: :math:`\ge 0`, the accuracy that may be lost.
    spec: the unit groups (see `sparsify.models.structure`).
    norm: ``'l1'`` or ``'l2'`` norm of the incoming weights.
    order: ``'forward'`` (spec order), ``'backward'`` or ``'size'`` (largest
      groups first, ties in spec order).
    relative: ``tolerance`` is a fraction of the baseline accuracy.
    finetune: optional ``(params, keep) -> params`` called after each layer.
    min_keep: neurons every searched layer keeps, ``>= 1``.
    layers: unit names to search (default all); the others keep every
      neuron.

  Returns:
    A `SearchResult`.

  Example:
    A one-hidden-layer network scored by how little its output on ``x``
    changes (0 is the best); with a tolerance of 0.5 only the weakest
    neuron (column 2) can go, found in two evaluations after the baseline:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> from sparsify.structure import neuron_search
    >>> params = {'fc1': {'kernel': jnp.array([[1.0, -2.0, 0.0, 3.0],
    ...                                        [1.0, 0.0, 0.5, -1.0]]),
    ...                   'bias': jnp.zeros(4)},
    ...           'head': {'kernel': jnp.ones((4, 1))}}
    >>> spec = sparsify.spec_for('mlp', hidden=(4,))
    >>> def output(p, x=jnp.ones((1, 2))):
    ...   h = jax.nn.relu(x @ p['fc1']['kernel'] + p['fc1']['bias'])
    ...   return h @ p['head']['kernel']
    >>> def evaluate(p):
    ...   return -float(jnp.abs(output(p) - output(params)).sum())
    >>> result = sparsify.binary_search_prune(params, evaluate, 0.5, spec=spec)
    >>> result.counts, result.keep['fc1'], len(result.log)
    ({'fc1': 1}, array([ True,  True, False,  True]), 3)
    >>> slim = sparsify.slim({'params': result.params},
    ...                      neuron_search.ungated_spec(spec, params),
    ...                      result.keep)
    >>> slim['params']['fc1']['kernel'].shape
    (2, 3)

  References:
    Zhang, Qin & Chan, "An efficient binary search based neuron pruning
    method for ConvNet condensation", ICONIP 2017.
  """
  try:
    tol = float(tolerance)
  except (TypeError, ValueError):
    tol = math.nan
  if not (math.isfinite(tol) and tol >= 0):
    raise ValueError(f"tolerance: got {tolerance!r}; allowed: a finite "
                     "number >= 0")
  if norm not in NORMS:
    raise ValueError(f"norm: got {norm!r}; allowed: {', '.join(NORMS)}")
  if finetune is not None and not callable(finetune):
    raise ValueError(f"finetune: got {finetune!r}; allowed: None or a "
                     "callable (params, keep) -> params")
  sizes = {u: s.shape[0] for u, s in neuron_scores(params, spec).items()}
  names = _visit_order(spec, sizes, order, layers, min_keep)
  baseline = float(evaluate(params))
  eps = tol * abs(baseline) if relative else tol
  log = [SearchStep(None, 0, baseline, True)]
  keep = {u: np.ones(n, bool) for u, n in sizes.items()}
  current = params
  for name in names:
    scores = neuron_scores(
        apply_neuron_masks(current, spec, keep, consumers=True), spec,
        norm)[name]
    lo, hi = 0, scores.shape[0] - min_keep
    while lo < hi:
      mid = (lo + hi + 1) // 2
      trial = {**keep, **neuron_masks({name: scores}, {name: mid})}
      acc = float(evaluate(apply_neuron_masks(current, spec, trial)))
      accepted = acc >= baseline - eps
      log.append(SearchStep(name, mid, acc, accepted))
      lo, hi = (mid, hi) if accepted else (lo, mid - 1)
    keep[name] = neuron_masks({name: scores}, {name: lo})[name]
    current = apply_neuron_masks(current, spec, keep)
    if finetune is not None:
      current = apply_neuron_masks(
          finetune(current, {k: v.copy() for k, v in keep.items()}), spec,
          keep)
  return SearchResult(
      keep=keep,
      counts={n: int(np.sum(~k)) for n, k in keep.items()},
      kept=units.count_kept(keep),
      params=current,
      log=log,
      baseline=baseline)

"""Binary-search neuron pruning: how many neurons each hidden layer can lose.

Neurons (Dense units, conv filters, groups, heads) are the elements of the
units `sparsify.structure_of` finds in any Flax model. Each neuron is scored
by the norm of its incoming weights; in every hidden layer the number of lowest-scoring neurons that can
be removed while the accuracy stays within a tolerance of the unpruned
model's is found by binary search, layer after layer, with optional
fine-tuning in between. Removed neurons are zeroed in place
(`apply_neuron_masks`), so the pruned network is evaluated with the original
model; `sparsify.slim_model` then builds the smaller network.
"""

from collections.abc import Callable, Mapping, Sequence
import math
from typing import Any, Literal, NamedTuple

import numpy as np

from sparsify.structure import surgery
from sparsify.structure import trace
from sparsify.structure import units

Norm = Literal["l1", "l2"]
NORMS = ("l1", "l2")
ORDERS = ("forward", "backward", "size")


def _kernels(flat: Mapping[str, Any], unit: units.Unit) -> list[tuple[
    np.ndarray, units.Slot]]:
  """The unit's producer kernels (parameters of two or more axes)."""
  out = [(np.asarray(flat[s.path]), s) for s in unit.producers()
         if not s.path.startswith("batch_stats/") and s.path in flat
         and np.ndim(flat[s.path]) >= 2]
  if not out:
    raise ValueError(
        f"unit {unit.name!r}: none of its producers "
        f"{[s.path for s in unit.producers()]} is a kernel (a parameter of "
        "two or more axes); a neuron is scored by its incoming weights")
  return out


def neuron_scores(variables: Any, structure: Sequence[units.Unit],
                  norm: Norm = "l1") -> dict[str, np.ndarray]:
  r"""The norm of each neuron's incoming weights, per unit.

  For element :math:`j` of a unit whose producer kernel :math:`W` holds it
  at indices :math:`I_j` of axis ``a`` (one index for a neuron or channel,
  several for a group),

  .. math::
    s_j = \sum_{i \in I_j} \|W_{[\dots, i, \dots]}\|_1
    \quad\text{or}\quad
    s_j = \Big(\sum_{i \in I_j} \|W_{[\dots, i, \dots]}\|_2^2\Big)^{1/2},

  the slice taken at index ``i`` of axis ``a``: a Dense kernel's column, a
  conv kernel's output filter (all its taps and input channels). Only
  kernels count (producers of two or more axes); biases, normalization
  parameters and gates do not. A unit with several producer kernels (a
  residual stream) gets the norm of all of them together.

  Args:
    variables: the model's variables, as given to `sparsify.structure_of`.
    structure: its units (`sparsify.structure_of`), or some of them.
    norm: ``'l1'`` or ``'l2'``.

  Returns:
    ``{unit name: float64 array of shape (size,)}``.

  Example:
    >>> import flax.linen as nn
    >>> import jax, jax.numpy as jnp
    >>> import sparsify
    >>> net = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(1)])
    >>> x = jnp.ones((1, 2))
    >>> variables = net.init(jax.random.key(0), x)
    >>> variables['params']['layers_0']['kernel'] = jnp.array(
    ...     [[1.0, -2.0, 0.0, 3.0], [1.0, 0.0, 0.5, -1.0]])
    >>> structure = sparsify.structure_of(net.apply, variables, x)
    >>> sparsify.neuron_scores(variables, structure)
    {'layers_0': array([2. , 2. , 0.5, 4. ])}
    >>> sparsify.neuron_scores(variables, structure, norm='l2')[
    ...     'layers_0'].round(3)
    array([1.414, 2.   , 0.5  , 3.162])

  References:
    Zhang, Qin & Chan, "An efficient binary search based neuron pruning
    method for ConvNet condensation", ICONIP 2017.
  """
  if norm not in NORMS:
    raise ValueError(f"norm: got {norm!r}; allowed: {', '.join(NORMS)}")
  flat = dict(trace.leaves(variables))
  scores = {}
  for unit in structure:
    total = np.zeros(unit.size)
    for w, slot in _kernels(flat, unit):
      w = np.moveaxis(np.asarray(w, np.float64), slot.axis, 0).reshape(
          w.shape[slot.axis], -1)
      per_index = (np.abs(w) if norm == "l1" else np.square(w)).sum(axis=1)
      total += per_index[slot.index].sum(axis=1)
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


def apply_neuron_masks(variables: Any, structure: Sequence[units.Unit],
                       keep: Mapping[str, Any], *,
                       consumers: bool = False) -> Any:
  """Zeroes the producer slices of the removed neurons (`surgery.mask`).

  Every producer of a removed element (kernel slice, bias, normalization
  scale and shift, gate) is set to zero, so for an exact unit the model
  computes what `sparsify.slim` of the same ``keep`` computes. Running
  statistics are left alone. Consumer slices (the next layer's input rows)
  are kept unless ``consumers=True``; they multiply zero either way.

  Args:
    variables: the model's variables.
    structure: its `sparsify.Structure`.
    keep: ``{unit name: boolean (size,) array}``; units absent are whole.
    consumers: also zero the consumer slices of the removed neurons.

  Returns:
    Variables of the same structure, shapes and dtypes (numpy arrays).

  Example:
    >>> import flax.linen as nn
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> import sparsify
    >>> net = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(1)])
    >>> x = jnp.ones((1, 2))
    >>> variables = net.init(jax.random.key(0), x)
    >>> structure = sparsify.structure_of(net.apply, variables, x)
    >>> keep = {'layers_0': np.array([False, True, False, True])}
    >>> pruned = sparsify.apply_neuron_masks(variables, structure, keep)
    >>> bool((pruned['params']['layers_0']['kernel'][:, [0, 2]] == 0).all())
    True
    >>> bool((pruned['params']['layers_2']['kernel'] != 0).all())
    True
  """
  return surgery.mask(variables, structure, keep, consumers=consumers)


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
    keep: ``{unit name: boolean (size,) array}`` for every unit searched
      (all ``True`` for units not searched), ready for `surgery.slim`.
    counts: neurons removed per unit.
    kept: neurons kept per unit.
    variables: the final variables with removed neurons zeroed (after the
      last fine-tuning, when given).
    log: a `SearchStep` per call of ``evaluate``, the baseline first.
    baseline: the accuracy of the unpruned parameters.
  """
  keep: dict[str, np.ndarray]
  counts: dict[str, int]
  kept: dict[str, int]
  variables: Any
  log: list[SearchStep]
  baseline: float


def _visit_order(candidates: Sequence[units.Unit], sizes: Mapping[str, int],
                 order: str, layers: Sequence[str] | None,
                 min_keep: int) -> list[str]:
  """Validates the options and returns the unit names in visiting order."""
  if order not in ORDERS:
    raise ValueError(f"order: got {order!r}; allowed: {', '.join(ORDERS)}")
  names = [u.name for u in candidates]
  if len(set(names)) != len(names):
    raise ValueError(f"structure: unit names must be unique; got {names}")
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
    variables: Any,
    evaluate: Callable[[Any], float],
    tolerance: float,
    *,
    structure: Sequence[units.Unit],
    norm: Norm = "l1",
    order: Literal["forward", "backward", "size"] = "forward",
    relative: bool = False,
    finetune: Callable[[Any, dict[str, np.ndarray]], Any] | None = None,
    min_keep: int = 1,
    layers: Sequence[str] | None = None,
) -> SearchResult:
  r"""Finds by binary search how many neurons each hidden layer can lose.

  With :math:`a_0` = ``evaluate(variables)`` the unpruned accuracy and
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
  layers. After each layer, ``finetune(variables, keep)`` (if given)
  receives the masked variables and the keep-masks of every unit so far; its
  result, with the removed neurons zeroed again, is the starting point of
  the next layer. The baseline :math:`a_0` stays the unpruned accuracy.

  The units searched are, by default, the exact ones of ``structure``
  whose elements are neurons, channels, heads or groups (`Unit.kind`);
  residual-stream features are searched only when named in ``layers``.

  Args:
    variables: the trained model's variables.
    evaluate: ``variables -> accuracy`` (higher is better), any Python
      callable; called once on ``variables``, then once per search step.
    tolerance: :math:`\ge 0`, the accuracy that may be lost.
    structure: the model's units (`sparsify.structure_of`).
    norm: ``'l1'`` or ``'l2'`` norm of the incoming weights.
    order: ``'forward'`` (the structure's order), ``'backward'`` or
      ``'size'`` (largest units first, ties in forward order).
    relative: ``tolerance`` is a fraction of the baseline accuracy.
    finetune: optional ``(variables, keep) -> variables`` called after each
      layer.
    min_keep: neurons every searched layer keeps, ``>= 1``.
    layers: unit names to search (default all); the others keep every
      neuron.

  Returns:
    A `SearchResult`.

  Example:
    A one-hidden-layer network scored by how little its output on ``x``
    changes (0 is the best); with a tolerance of 0.5 only the weakest
    neuron (column 2) can go, found in two evaluations after the baseline:

    >>> import flax.linen as nn
    >>> import jax, jax.numpy as jnp
    >>> import sparsify
    >>> net = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(1)])
    >>> x = jnp.ones((1, 2))
    >>> variables = net.init(jax.random.key(0), x)
    >>> variables['params']['layers_0'] = {
    ...     'kernel': jnp.array([[1.0, -2.0, 0.0, 3.0],
    ...                          [1.0, 0.0, 0.5, -1.0]]),
    ...     'bias': jnp.zeros(4)}
    >>> variables['params']['layers_2']['kernel'] = jnp.ones((4, 1))
    >>> structure = sparsify.structure_of(net.apply, variables, x)
    >>> def evaluate(v):
    ...   return -float(jnp.abs(net.apply(v, x) - net.apply(variables, x)
    ...                         ).sum())
    >>> result = sparsify.binary_search_prune(variables, evaluate, 0.5,
    ...                                       structure=structure)
    >>> result.counts, result.keep['layers_0'], len(result.log)
    ({'layers_0': 1}, array([ True,  True, False,  True]), 3)
    >>> slim_apply, small = sparsify.slim_model(net.apply, result.variables,
    ...                                         result.keep, x)
    >>> small['params']['layers_0']['kernel'].shape
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
                     "callable (variables, keep) -> variables")
  if layers is None:
    candidates = [u for u in structure if u.exact and u.kind != "stream"]
  else:
    candidates = list(structure)
  sizes = {u.name: u.size for u in candidates}
  names = _visit_order(candidates, sizes, order, layers, min_keep)
  baseline = float(evaluate(variables))
  eps = tol * abs(baseline) if relative else tol
  log = [SearchStep(None, 0, baseline, True)]
  keep = {u.name: np.ones(u.size, bool) for u in candidates}
  current = variables
  for name in names:
    scores = neuron_scores(
        apply_neuron_masks(current, candidates, keep, consumers=True),
        [u for u in candidates if u.name == name], norm)[name]
    lo, hi = 0, scores.shape[0] - min_keep
    while lo < hi:
      mid = (lo + hi + 1) // 2
      trial = {**keep, **neuron_masks({name: scores}, {name: mid})}
      acc = float(evaluate(apply_neuron_masks(current, candidates, trial)))
      accepted = acc >= baseline - eps
      log.append(SearchStep(name, mid, acc, accepted))
      lo, hi = (mid, hi) if accepted else (lo, mid - 1)
    keep[name] = neuron_masks({name: scores}, {name: lo})[name]
    current = apply_neuron_masks(current, candidates, keep)
    if finetune is not None:
      current = apply_neuron_masks(
          finetune(current, {k: v.copy() for k, v in keep.items()}),
          candidates, keep)
  return SearchResult(
      keep=keep,
      counts={n: int(np.sum(~k)) for n, k in keep.items()},
      kept=units.count_kept(keep),
      variables=current,
      log=log,
      baseline=baseline)

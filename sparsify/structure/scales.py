"""Per-element scale factors of a model's units: gates, else BatchNorm scales.

SSS removes the elements whose gate is zero; Network Slimming those whose
BatchNorm scale is small. Both read the scale of each element of a
`units.Unit` from its producer slots:

* a **gate**: a producer whose path has a component ``gate``, lies in the
  ``gates`` collection (`sparsify.models` gates, `sparsify.insert_gates`) or
  under ``params/gates`` (`sparsify.models.get_model` with ``gates=``);
* else a **BatchNorm scale**: a producer parameter named ``scale`` whose
  module also holds running statistics (``mean``) among the unit's slots.
  LayerNorm and GroupNorm scales have no running statistics and are never
  picked: their features are not removable one by one, and L1 on them
  shrinks every feature of a Transformer at once.

An element owns one index per slot (a neuron, a channel) or several (a
group of a grouped convolution); its scale is the largest magnitude among
them, so an element goes only when every scale it owns is small.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sparsify.structure import surgery
from sparsify.structure import trace
from sparsify.structure import units

_COLLECTIONS = ("params", "batch_stats", "gates")


def _parts(path: str) -> list[str]:
  parts = path.split("/")
  return parts[1:] if parts[0] in _COLLECTIONS else parts


def is_gate(path: str) -> bool:
  """Whether a variable path is a gate.

  Args:
    path: a slot's path, collection first (``'params/fc1_gate/gate'``).

  Returns:
    True for a path in the ``gates`` collection (`sparsify.insert_gates`),
    under a top-level ``gates`` entry of ``params`` (a model built with
    ``get_model(..., gates=...)``), or with a ``gate`` component.

  Example:
    >>> from sparsify.structure import scales
    >>> scales.is_gate('params/fc1_gate/gate'), scales.is_gate(
    ...     'gates/Conv_0'), scales.is_gate('params/gates/Conv_0')
    (True, True, True)
    >>> scales.is_gate('params/bn/scale'), scales.is_gate(
    ...     'params/block/gates/kernel')
    (False, False)
  """
  parts = path.split("/")
  return (parts[0] == "gates" or parts[:2] == ["params", "gates"]
          or "gate" in parts[1:])


def _batchnorm_scales(unit: units.Unit) -> list[units.Slot]:
  """The unit's producer ``scale`` parameters whose module keeps a mean."""
  means = {tuple(_parts(s.path)[:-1]) for s in unit.slots
           if _parts(s.path)[-1:] == ["mean"]}
  return [s for s in unit.producers()
          if not s.path.startswith("batch_stats/")
          and _parts(s.path)[-1:] == ["scale"]
          and tuple(_parts(s.path)[:-1]) in means]


def scale_slots(unit: units.Unit) -> tuple[str, list[units.Slot]]:
  """Which slots hold a unit's scale factors, and of which kind.

  Args:
    unit: a unit of `sparsify.structure_of`.

  Returns:
    ``('gate', slots)``, ``('batchnorm', slots)`` or ``('none', [])``.
  """
  gates = [s for s in unit.producers() if is_gate(s.path)]
  if gates:
    return "gate", gates
  bn = _batchnorm_scales(unit)
  return ("batchnorm", bn) if bn else ("none", [])


def unit_scales(variables: Any, structure: Sequence[units.Unit],
                kind: str | None = None) -> dict[str, np.ndarray]:
  """The magnitude of each element's scale factor, per unit that has one.

  Args:
    variables: the model's variables, as given to `sparsify.structure_of`.
    structure: its units.
    kind: ``'gate'`` or ``'batchnorm'`` for only that kind; None for gates
      where the model has any, else BatchNorm scales.

  Returns:
    ``{unit name: float array (size,)}``, each element's largest
    :math:`|s|` over the indices it owns; units without a scale of that
    kind are left out.

  Raises:
    ValueError: for an unknown ``kind``.

  Example:
    >>> import flax.linen as nn
    >>> import jax, jax.numpy as jnp
    >>> import sparsify
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     x = nn.Conv(3, (3, 3))(x)
    ...     x = nn.relu(nn.BatchNorm(use_running_average=True)(x))
    ...     x = nn.LayerNorm()(nn.Dense(4)(x.mean((1, 2))))
    ...     return nn.Dense(2)(nn.relu(x))
    >>> x = jnp.ones((1, 8, 8, 1))
    >>> variables = Net().init(jax.random.key(0), x)
    >>> variables['params']['BatchNorm_0']['scale'] = jnp.array(
    ...     [0.5, -2.0, 0.0])
    >>> structure = sparsify.structure_of(Net().apply, variables, x)
    >>> sparsify.unit_scales(variables, structure)  # no LayerNorm scale
    {'Conv_0': array([0.5, 2. , 0. ], dtype=float32)}
  """
  if kind not in (None, "gate", "batchnorm"):
    raise ValueError(f"kind: got {kind!r}; allowed: None, 'gate', "
                     "'batchnorm'")
  found = {u.name: scale_slots(u) for u in structure}
  if kind is None:
    kind = "gate" if any(k == "gate" for k, _ in found.values()) else (
        "batchnorm")
  flat = dict(trace.leaves(variables))
  out = {}
  for unit in structure:
    k, slots = found[unit.name]
    if k != kind:
      continue
    per = [np.abs(np.moveaxis(np.asarray(flat[s.path]), s.axis, 0).reshape(
        np.shape(flat[s.path])[s.axis], -1).max(axis=1))[s.index].max(
            axis=1) for s in slots]
    out[unit.name] = np.max(per, axis=0)
  return out


def keep_nonzero(variables: Any, structure: Sequence[units.Unit],
                 threshold: float = 0.0) -> dict[str, np.ndarray]:
  """Keeps the elements whose scale factor exceeds ``threshold``.

  Gates if the model has any, else BatchNorm scales (`unit_scales`). A unit
  keeps at least its largest element, so that no layer vanishes.

  Args:
    variables: the trained model's variables.
    structure: its units (`sparsify.structure_of`).
    threshold: scales with magnitude at or below it are removed.

  Returns:
    ``{unit name: boolean array}``, True for the elements kept, for every
    unit that has a scale; give it to `sparsify.slim_model`.

  Raises:
    ValueError: when no unit has a gate or a BatchNorm scale (nothing could
      be selected).

  Example:
    >>> import flax.linen as nn
    >>> import jax, jax.numpy as jnp
    >>> import sparsify
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     x = nn.relu(nn.Dense(3)(x))
    ...     x = x * self.param('gate', nn.initializers.ones, (3,))
    ...     return nn.Dense(1)(x)
    >>> x = jnp.ones((1, 2))
    >>> variables = Net().init(jax.random.key(0), x)
    >>> variables['params']['gate'] = jnp.array([0.0, 2.0, 0.5])
    >>> structure = sparsify.structure_of(Net().apply, variables, x)
    >>> sparsify.keep_nonzero(variables, structure)
    {'Dense_0': array([False,  True,  True])}
    >>> sparsify.keep_nonzero(variables, structure, threshold=1.0)
    {'Dense_0': array([False,  True, False])}
  """
  found = unit_scales(variables, structure)
  if not found:
    raise ValueError(
        "keep_nonzero: no unit has a gate or a BatchNorm scale; units: "
        f"{[u.name for u in structure]}. Add gates with "
        "sparsify.insert_gates, or select elements by another score")
  keep = {}
  for name, g in found.items():
    k = g > threshold
    k[np.argmax(g)] = True
    keep[name] = k
  return keep


def threshold_of_fraction(scores: Mapping[str, np.ndarray],
                          fraction: float) -> float:
  """The global threshold below which ``fraction`` of the scores fall.

  The ``k``-th smallest of all scores pooled, ``k = floor(fraction * n)``
  counted from 0: without ties exactly ``k`` lie strictly below it.

  Args:
    scores: ``{unit name: scores}``, e.g. from `unit_scales`.
    fraction: in [0, 1).

  Returns:
    The threshold, a Python float.

  Raises:
    ValueError: for a fraction outside [0, 1) or no scores.

  Example:
    >>> import numpy as np
    >>> from sparsify.structure import scales
    >>> scales.threshold_of_fraction(
    ...     {'a': np.array([0.125, 0.75, 0.25]), 'b': np.array([0.0625, 0.5])},
    ...     0.4)
    0.25
  """
  if not 0 <= fraction < 1:
    raise ValueError(f"fraction: got {fraction!r}; allowed: [0, 1)")
  pooled = np.concatenate([np.ravel(s) for s in scores.values()]) if (
      scores) else np.zeros(0)
  if not pooled.size:
    raise ValueError("threshold_of_fraction: no scores")
  return float(np.sort(pooled)[int(fraction * pooled.size)])


def zero_scales(variables: Any, structure: Sequence[units.Unit],
                keep: Mapping[str, np.ndarray]) -> Any:
  """Sets the scale factor of every removed element to exactly zero.

  A selection by threshold removes elements whose scale is small, not
  always zero (APG with a decaying learning rate leaves gates at tiny
  values). Zeroing them first makes the removal exact: a zero gate outputs
  zero, a zero BatchNorm scale a constant that `sparsify.slim_model` folds
  into the next layer.

  Args:
    variables: the model's variables.
    structure: its units.
    keep: ``{unit name: boolean array}``, True for the elements kept.

  Returns:
    ``variables`` (numpy arrays) with the scale slots (`scale_slots`) of the
    removed elements zero.

  Example:
    >>> import numpy as np
    >>> from sparsify.structure import scales, units
    >>> unit = units.Unit('fc', 3, 'neuron', (units.Slot(
    ...     'params/fc_gate/gate', 0, np.arange(3)[:, None]),))
    >>> v = {'params': {'fc_gate': {'gate': np.array([1e-5, 2.0, 3.0])}}}
    >>> scales.zero_scales(v, [unit], {'fc': np.array([False, True, True])})
    {'params': {'fc_gate': {'gate': array([0., 2., 3.])}}}
  """
  by_name = {u.name: u for u in structure}
  return surgery.zero_slots(variables, [
      (slot, k) for name, k in keep.items()
      for slot in scale_slots(by_name[name])[1]])

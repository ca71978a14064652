"""Slimming from a declared specification: the built-in models' `SpecUnit` lists.

A network is slimmed from a declared *structure specification*: a list of
`units.SpecUnit` groups, each naming the parameters whose slices along one axis
belong to the same neurons or channels. For a hidden layer of an MLP with gates::

  units.SpecUnit(name="fc1", gate="fc1_gate/gate",
       producers=(("fc1/kernel", 1), ("fc1/bias", 0)),
       consumers=(("fc2/kernel", 0),))

Removing unit ``j`` drops slice ``j`` of every producer (the layer that
computes it: kernel columns, bias, BatchNorm scale, shift and running
statistics) and of every consumer (the next layer's input rows or input
channels). A surviving gate value :math:`\\lambda_j` is folded into the
units' own producers where the unit declares it (``fold``; the BatchNorm
scale and shift of VGG and ResNet channels, times :math:`\\lambda_j`, valid
for a non-negative gate after a relu: the next conv keeps the input scale
its BatchNorm statistics were measured at, which matters for fine-tuning),
otherwise into the consumers, :math:`W'_{j\\cdot} = \\lambda_j
W_{j\\cdot}`; the gate is
removed, so the slim network computes the same function as the gated one.

Folding into the next layer is exact when everything between the gate and
the consumer is linear and commutes with a scale: average pooling, flatten,
zero padding always; max pooling only for :math:`\\lambda \\ge 0` (SSS keeps
gates non-negative). Each model of `sparsify.models` declares its own
specification (`sparsify.models.structure`, also `spec_for` here: MLP
neurons, LeNet-5 filters, VGG channels, ResNet channels inside residual
branches) and the arguments of its slim version
(`sparsify.models.slimmed_kwargs`); a user's own model is slimmed by writing
its specification. Whole residual blocks whose gate is zero are removed
before, by `sparsify.models.remove_blocks`. What it cannot handle: units
whose consumers are not linear in them (a gate before a non-linearity), and
coupled axes that are not declared (e.g. residual additions across blocks,
which ResNet channel gates avoid by gating only inside the residual branch).
"""

from typing import Any

import numpy as np

from sparsify import models
from sparsify.core import paths
from sparsify.core import types
from sparsify.structure import units


def _flat(tree: Any) -> dict[str, np.ndarray]:
  return {name: np.asarray(leaf) for name, leaf in paths.named_leaves(tree)}


def _unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for name, value in flat.items():
    node = out
    *parents, leaf = name.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


def _take(x: np.ndarray, keep: np.ndarray, axis: int) -> np.ndarray:
  return np.take(x, np.flatnonzero(keep), axis=axis)


def slim_spec(variables: dict[str, Any], spec: list[units.SpecUnit],
         keep: dict[str, np.ndarray]) -> dict[str, Any]:
  """Removes units and folds surviving gates into their consumers.

  For each unit group, the slices of the removed units are dropped from
  every producer and consumer, and a surviving gate :math:`\\lambda_j` is
  folded into the weights that read unit :math:`j` (rows of the next
  kernel)::

    W'[j, :] = lambda_j * W[j, :]

  or, for units that declare ``fold`` and a non-negative gate, into their
  own producers (BatchNorm scale and shift times :math:`\\lambda_j`). The
  slim network computes the same function as the gated one when the gates
  of the removed units are zero.

  Args:
    variables: ``{'params': ..., 'batch_stats': ...}`` of the gated model
      (collections other than ``params`` are sliced by the same paths, e.g.
      BatchNorm running ``mean`` and ``var``).
    spec: the structure specification.
    keep: ``{unit name: boolean array}`` of the units to keep.

  Returns:
    The variables of the slim, ungated model (numpy arrays).

  Example:
    A gated hidden layer of three neurons, one gate at zero: the slim layer
    has two neurons and the head absorbs the surviving gates:

    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> params = {'fc1': {'kernel': jnp.arange(6.0).reshape(2, 3),
    ...                   'bias': jnp.zeros(3)},
    ...           'fc1_gate': {'gate': jnp.array([0.0, 2.0, 0.5])},
    ...           'head': {'kernel': jnp.ones((3, 1))}}
    >>> spec = sparsify.spec_for('mlp', hidden=(3,))
    >>> keep = sparsify.keep_nonzero(params, spec)
    >>> slim = sparsify.slim({'params': params}, spec, keep)['params']
    >>> sorted(slim), slim['fc1']['kernel'].shape
    (['fc1', 'head'], (2, 2))
    >>> slim['head']['kernel']
    array([[2. ],
           [0.5]], dtype=float32)

  References:
    Huang & Wang, "Data-driven sparse structure selection for deep neural
    networks", ECCV 2018 (removing the structures whose scale is zero).
    Liu et al., "Learning efficient convolutional networks through network
    slimming", ICCV 2017.
  """
  flat = {c: _flat(t) for c, t in variables.items()}
  params = flat["params"]
  for unit in spec:
    if unit.name not in keep:  # e.g. inside a residual block removed before
      continue
    mask = np.asarray(keep[unit.name], bool)
    # A model built without gates has none to fold.
    gate = (params.pop(unit.gate) if unit.gate in params else
            np.ones(mask.shape))
    into_producers = bool(unit.fold) and bool(np.all(gate[mask] >= 0))
    for path, axis in unit.producers:
      for coll in flat.values():  # BatchNorm statistics are in batch_stats
        if path in coll:
          x = coll[path]
          if into_producers and path in unit.fold:
            shape = [1] * x.ndim
            shape[axis] = -1
            x = x * gate.reshape(shape).astype(x.dtype)
          coll[path] = _take(x, mask, axis)
    if into_producers:
      gate = np.ones(mask.shape)
    for path, axis in unit.consumers:
      w = params[path]
      n = mask.size
      if w.shape[axis] != n:  # flattened (..., units) inputs: units innermost
        view = w.shape[:axis] + (w.shape[axis] // n, n) + w.shape[axis + 1:]
        shape = [1] * len(view)
        shape[axis + 1] = -1
        sliced = _take(w.reshape(view) * gate.reshape(shape), mask, axis + 1)
        params[path] = sliced.reshape(
            w.shape[:axis] + (-1,) + w.shape[axis + 1:])
        continue
      shape = [1] * w.ndim
      shape[axis] = -1
      params[path] = _take(w * gate.reshape(shape), mask, axis)
  return {c: _unflatten(f) for c, f in flat.items() if f}


def keep_nonzero(params: types.Params, spec: list[units.SpecUnit],
                 threshold: float = 0.0) -> dict[str, np.ndarray]:
  """Keeps the units whose gate magnitude exceeds ``threshold``.

  A layer keeps at least its largest gate, so that no layer vanishes; when
  that gate is zero its folded consumer weights are zero and the function
  is unchanged.

  Args:
    params: the gated model's parameters.
    spec: the structure specification; units without a gate in ``params``
      are left out.
    threshold: gates with magnitude at or below it are removed.

  Returns:
    ``{unit name: boolean array}``, `True` for the units kept.

  Example:
    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> params = {'fc1': {'kernel': jnp.arange(6.0).reshape(2, 3),
    ...                   'bias': jnp.zeros(3)},
    ...           'fc1_gate': {'gate': jnp.array([0.0, 2.0, 0.5])},
    ...           'head': {'kernel': jnp.ones((3, 1))}}
    >>> spec = sparsify.spec_for('mlp', hidden=(3,))
    >>> sparsify.keep_nonzero(params, spec)
    {'fc1': array([False,  True,  True])}
    >>> sparsify.keep_nonzero(params, spec, threshold=1.0)
    {'fc1': array([False,  True, False])}
  """
  flat = _flat(params)
  keep = {}
  for u in spec:
    if u.gate in flat:
      g = np.abs(flat[u.gate])
      k = g > threshold
      k[np.argmax(g)] = True
      keep[u.name] = k
  return keep


def spec_for(model: str, **kwargs: Any) -> list[units.SpecUnit]:
  """The structure specification of a `sparsify.models` network.

  The model's own module declares it; this is `sparsify.models.structure`
  under the name the flat API gives it.

  Args:
    model: ``'mlp'`` / ``'lenet_300_100'`` (hidden neurons), ``'lenet5'``
      (filters of both convolutions and ``fc1`` neurons; no gates), ``'vgg'``
      (conv channels; built with ``gates=True``) or ``'resnet'`` (channels
      inside residual branches; built with ``channel_gates=True``).
    **kwargs: the model's configuration (``hidden``, ``stages``, or
      ``depth`` and ``block``).

  Returns:
    The list of `units.SpecUnit`.

  Raises:
    ValueError: for a model name not listed above, or an argument the model
      does not take.

  Example:
    >>> import sparsify
    >>> spec = sparsify.spec_for('mlp', hidden=(300, 100))
    >>> [(u.name, u.gate) for u in spec]
    [('fc1', 'fc1_gate/gate'), ('fc2', 'fc2_gate/gate')]
    >>> spec[0].producers, spec[0].consumers
    ((('fc1/kernel', 1), ('fc1/bias', 0)), (('fc2/kernel', 0),))
  """
  return models.structure(model, **kwargs)

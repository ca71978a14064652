"""Surgery: physically remove neurons and channels, folding gates into weights.

A network is slimmed from a declared *structure specification*: a list of
`units.Unit` groups, each naming the parameters whose slices along one axis belong
to the same neurons or channels. For a hidden layer of an MLP with gates::

  units.Unit(name="fc1", gate="fc1_gate/gate",
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
gates non-negative). `spec_for` builds the specification of the models in
`sparsify.models` (MLP neurons, VGG channels, ResNet channels inside residual
branches); a user's own model is slimmed by writing its specification.
Whole residual blocks whose gate is zero are removed by `remove_blocks`.
What it cannot handle: units whose consumers are not linear
in them (a gate before a non-linearity), and coupled axes that are not
declared (e.g. residual additions across blocks, which ResNet channel gates
avoid by gating only inside the residual branch).
"""

from typing import Any

import numpy as np

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


def slim(variables: dict[str, Any], spec: list[units.Unit],
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


def keep_nonzero(params: types.Params, spec: list[units.Unit],
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


def spec_for(model: str, **kwargs: Any) -> list[units.Unit]:
  """The structure specification of a gated `sparsify.models` network.

  Args:
    model: ``'mlp'`` / ``'lenet_300_100'`` (hidden neurons), ``'lenet5'``
      (filters of both convolutions and ``fc1`` neurons; no gates), ``'vgg'``
      (conv channels; built with ``gates=True``) or ``'resnet'`` (channels
      inside residual branches; built with ``channel_gates=True``).
    **kwargs: the model's configuration (``hidden``, ``stages``, or
      ``depth`` and ``block``).

  Returns:
    The list of `units.Unit`.

  Raises:
    ValueError: for a model name not listed above.

  Example:
    >>> import sparsify
    >>> spec = sparsify.spec_for('mlp', hidden=(300, 100))
    >>> [(u.name, u.gate) for u in spec]
    [('fc1', 'fc1_gate/gate'), ('fc2', 'fc2_gate/gate')]
    >>> spec[0].producers, spec[0].consumers
    ((('fc1/kernel', 1), ('fc1/bias', 0)), (('fc2/kernel', 0),))
  """
  if model == "lenet5":  # ungated: for neuron and filter pruning
    chain = [("conv1", 3, 2), ("conv2", 3, 2), ("fc1", 1, 0), ("head", None, 0)]
    return [units.Unit(name=name, gate=None,
                 producers=((f"{name}/kernel", out), (f"{name}/bias", 0)),
                 consumers=((f"{nxt}/kernel", into),))
            for (name, out, _), (nxt, _, into) in zip(chain, chain[1:])]
  if model in ("mlp", "lenet_300_100"):
    hidden = kwargs.get("hidden", (300, 100))
    names = [f"fc{i + 1}" for i in range(len(hidden))] + ["head"]
    return [units.Unit(name=names[i], gate=f"{names[i]}_gate/gate",
                 producers=((f"{names[i]}/kernel", 1), (f"{names[i]}/bias", 0)),
                 consumers=((f"{names[i + 1]}/kernel", 0),))
            for i in range(len(hidden))]
  if model == "vgg":
    stages = kwargs["stages"]
    blocks = [f"block{s + 1}_{i}" for s, stage in enumerate(stages)
              for i in range(len(stage))]
    spec = []
    for b, nxt in zip(blocks, blocks[1:] + ["head"]):
      consumer = (f"{nxt}/kernel", 0) if nxt == "head" else (
          f"{nxt}/conv/kernel", 2)
      spec.append(units.Unit(
          name=b, gate=f"{b}/gate/gate",
          producers=((f"{b}/conv/kernel", 3), (f"{b}/bn/scale", 0),
                     (f"{b}/bn/bias", 0), (f"{b}/bn/mean", 0),
                     (f"{b}/bn/var", 0)),
          consumers=(consumer,), fold=(f"{b}/bn/scale", f"{b}/bn/bias")))
    return spec
  if model == "resnet":
    per_block = {"basic": 2, "bottleneck": 3}[kwargs.get("block", "basic")]
    n = (kwargs.get("depth", 20) - 2) // (3 * per_block)
    spec = []
    for b in (f"block{s + 1}_{i}" for s in range(3) for i in range(n)):
      for k in range(1, per_block):  # inner layers k -> k + 1
        spec.append(units.Unit(
            name=f"{b}/gate{k}", gate=f"{b}/gate{k}/gate",
            producers=((f"{b}/conv{k}/kernel", 3),) + tuple(
                (f"{b}/bn{k}/{v}", 0) for v in ("scale", "bias", "mean",
                                                 "var")),
            consumers=((f"{b}/conv{k + 1}/kernel", 2),),
            fold=(f"{b}/bn{k}/scale", f"{b}/bn{k}/bias")))
    return spec
  raise ValueError(f"model: got {model!r}; allowed: lenet5, lenet_300_100, "
                   "mlp, resnet, vgg (write a spec of `units.Unit`s for other models)")





def slim_kwargs(model: str, kwargs: dict[str, Any],
                keep: dict[str, np.ndarray]) -> dict[str, Any]:
  """The model arguments of the slim network (no gates, kept widths).

  Args:
    model: as in `spec_for`.
    kwargs: the gated model's arguments.
    keep: the kept units, by unit name.

  Returns:
    Arguments for `sparsify.models.get_model` building the slim model.
  """
  counts = units.count_kept(keep)
  out = {k: v for k, v in kwargs.items() if k != "gates"}
  if model in ("mlp", "lenet_300_100"):
    hidden = kwargs.get("hidden", (300, 100))
    out["hidden"] = tuple(counts[f"fc{i + 1}"] for i in range(len(hidden)))
    return out
  if model == "lenet5":
    out["features"] = (counts["conv1"], counts["conv2"], counts["fc1"])
    return out
  if model == "resnet":
    out.pop("channel_gates", None)
    per_block = {"basic": 1, "bottleneck": 2}[kwargs.get("block", "basic")]
    n = (kwargs.get("depth", 20) - 2) // (3 * (per_block + 1))
    full = [kwargs.get("width", 16) * 2**s for s in range(3) for _ in range(n)]
    names = [f"block{s + 1}_{i}" for s in range(3) for i in range(n)]
    out["inner_widths"] = tuple(
        tuple(counts.get(f"{b}/gate{k}", w) for k in range(1, per_block + 1))
        for b, w in zip(names, full))
    return out
  stages = kwargs["stages"]
  out["stages"] = tuple(
      tuple(counts[f"block{s + 1}_{i}"] for i in range(len(stage)))
      for s, stage in enumerate(stages))
  out["width"] = 1.0
  return out


def remove_blocks(variables: dict[str, Any], kwargs: dict[str, Any],
                  threshold: float = 0.0) -> tuple[dict[str, Any],
                                                   dict[str, Any]]:
  r"""Removes ResNet residual branches whose block gate is zero.

  A branch with :math:`|\lambda| \le` ``threshold`` is removed: a block with
  an identity shortcut disappears (its input is the output of a relu, so
  ``relu(x) = x``), a block with a projection shortcut keeps only it. A
  surviving :math:`\lambda` is folded into the branch's last BatchNorm
  (scale and shift times :math:`\lambda`) and the gate removed.

  Args:
    variables: variables of a `ResNet` built with ``block_gates=True``.
    kwargs: that model's arguments.
    threshold: gates at or below it (in magnitude) remove their branch.

  Returns:
    ``(variables, kwargs)`` of the model without block gates; channel gates
    (if any) are left for `slim`.
  """
  flat = {c: _flat(t) for c, t in variables.items()}
  params = flat["params"]
  last_bn = "bn2" if kwargs.get("block", "basic") == "basic" else "bn3"
  n = len([1 for name in params if name.endswith("/block_gate/gate")]) // 3
  plan = []
  for b in (f"block{s + 1}_{i}" for s in range(3) for i in range(n)):
    gate = params.pop(f"{b}/block_gate/gate")
    if abs(float(gate)) > threshold:
      params[f"{b}/{last_bn}/scale"] = params[f"{b}/{last_bn}/scale"] * gate
      params[f"{b}/{last_bn}/bias"] = params[f"{b}/{last_bn}/bias"] * gate
      plan.append("full")
      continue
    projection = f"{b}/shortcut_conv/kernel" in params
    plan.append("shortcut" if projection else "none")
    for coll in flat.values():
      for name in [k for k in coll if k.startswith(b + "/")]:
        if not (projection and name.startswith(f"{b}/shortcut_")):
          del coll[name]
  out = {**kwargs, "block_gates": False, "block_plan": tuple(plan)}
  return {c: _unflatten(f) for c, f in flat.items() if f}, out

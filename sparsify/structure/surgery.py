"""Surgery: remove units from a model's variables and run the smaller model.

The units come from `sparsify.structure_of`. Removing element ``j`` of a
unit drops index ``unit.slots[k].index[j]`` along every slot's axis: the
producers (kernel columns, biases, normalization scales, shifts and running
statistics, gates) and the consumers (the next layers' kernel rows).
*Masking* instead zeroes the producer slices and keeps every shape: for an
exact unit, the slim model computes what the masked model computes.

A user's model cannot be built at the new widths without editing it (a
Linen module checks the shapes of the variables it is given), so
`slim_model` returns the smaller model as a function: the traced
computation evaluated at the new shapes (`rebuild.evaluate`), jit-able,
differentiable and exportable with `jax.export` (`export_slim`).
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparsify.core import paths
from sparsify.structure import folding
from sparsify.structure import rebuild
from sparsify.structure import trace as trace_lib
from sparsify.structure import units


def check_keep(structure: Sequence[units.Unit],
               keep: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Validates ``keep`` against ``structure``: names, sizes, something kept.

  Args:
    structure: from `sparsify.structure_of` (or some of its units).
    keep: ``{unit name: boolean array of the unit's size}``; units not named
      keep every element.

  Returns:
    ``keep`` as numpy boolean arrays.

  Raises:
    ValueError: for an unknown unit, an array of the wrong size, or a unit
      left with no element.
  """
  by_name = {u.name: u for u in structure}
  unknown = sorted(set(keep) - set(by_name))
  if unknown:
    raise ValueError(f"keep: unknown unit(s) {unknown}; allowed: "
                     f"{list(by_name)}")
  out = {}
  for name, k in keep.items():
    k = np.asarray(k)
    size = by_name[name].size
    if k.shape != (size,) or k.dtype != bool:
      raise ValueError(f"keep[{name!r}]: got {k.dtype} {k.shape}; allowed: "
                       f"a boolean array of shape ({size},)")
    if not k.any():
      raise ValueError(f"keep[{name!r}]: removes all {size} elements; "
                       "allowed: keep at least one")
    out[name] = k
  return out


def _axis_masks(structure, keep, shapes: Mapping[str, tuple[int, ...]],
                consumers: bool) -> dict[str, list[np.ndarray]]:
  """Per variable path, the kept entries along each axis."""
  masks = {name: [np.ones(d, bool) for d in shape]
           for name, shape in shapes.items()}
  by_name = {u.name: u for u in structure}
  for name, k in keep.items():
    for slot in by_name[name].slots:
      if slot.consumer and not consumers:
        continue
      if slot.path not in masks:
        raise ValueError(f"unit {name!r}: variable {slot.path!r} is not in "
                         "the variables given")
      removed = slot.index[~k].ravel()
      masks[slot.path][slot.axis][removed] = False
  return masks


def _map(fn, variables):
  """Maps ``fn(name, leaf)`` over the array leaves; RNG keys pass through."""
  def each(path, x):
    if jax.dtypes.issubdtype(getattr(x, "dtype", np.float32),
                             jax.dtypes.prng_key):
      return x
    return fn(paths.path_name(path), x)
  return jax.tree_util.tree_map_with_path(each, variables)


def mask(variables: Any, structure: Sequence[units.Unit],
         keep: Mapping[str, Any], *, consumers: bool = False) -> Any:
  """The masked model: the removed elements' producer slices set to zero.

  Args:
    variables: the model's variables, as given to `sparsify.structure_of`.
    structure: its `Structure` (or some of its units).
    keep: ``{unit name: boolean array}``, True for the elements kept.
    consumers: also zero the consumer slices (the next layers' kernel rows).

  Returns:
    ``variables`` with the same shapes (numpy arrays; traced arrays under
    `jax.jit`), the producer slices
    (kernel columns, biases, normalization parameters, gates) of every
    removed element zeroed; running statistics are kept, and consumers
    unless ``consumers``.

  Example:
    >>> import flax.linen as nn
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> import sparsify
    >>> net = nn.Sequential([nn.Dense(3), nn.relu, nn.Dense(2)])
    >>> x = jnp.ones((1, 2))
    >>> variables = net.init(jax.random.key(0), x)
    >>> structure = sparsify.structure_of(net.apply, variables, x)
    >>> masked = sparsify.mask(variables, structure,
    ...                        {'layers_0': np.array([True, False, True])})
    >>> masked['params']['layers_0']['kernel'][:, 1]
    array([0., 0.], dtype=float32)
  """
  keep = check_keep(structure, keep)
  by_name = {u.name: u for u in structure}
  return zero_slots(variables, [
      (slot, k) for name, k in keep.items() for slot in by_name[name].slots
      if (consumers or not slot.consumer)
      and not slot.path.startswith("batch_stats/")])


def zero_slots(variables: Any,
               slots: Sequence[tuple[units.Slot, np.ndarray]]) -> Any:
  """Zeroes, for each ``(slot, keep)``, the slot's slices of removed elements.

  Args:
    variables: the model's variables.
    slots: ``(slot, keep)`` pairs, ``keep`` the unit's boolean array.

  Returns:
    ``variables`` as numpy arrays (traced arrays under `jax.jit`), the
    slices ``slot.index[~keep]`` along ``slot.axis`` zero.
  """
  zeroed: dict[str, list[tuple[int, np.ndarray]]] = {}
  for slot, k in slots:
    zeroed.setdefault(slot.path, []).append(
        (slot.axis, slot.index[~np.asarray(k)].ravel()))

  def zero(name, x):
    traced = isinstance(x, jax.core.Tracer)  # under jax.jit
    x = x if traced else np.array(x)
    for axis, idx in zeroed.get(name, ()):
      index = [slice(None)] * x.ndim
      index[axis] = idx
      if traced:
        x = x.at[tuple(index)].set(0)
      else:
        x[tuple(index)] = 0
    return x

  return _map(zero, variables)


def slim(variables: Any, structure: trace_lib.Structure,
         keep: Mapping[str, Any]) -> Any:
  r"""Removes units: every slot of a removed element is sliced away.

  For a slot ``(path, axis, index)`` and the kept elements :math:`K`,

  .. math::
    W' = W[\dots, \textstyle\bigcup_{j \in K} \mathrm{index}_j, \dots]
    \quad\text{(along ``axis``, indices in order)},

  so a removed neuron loses its kernel column and bias and the next layer
  its kernel row.

  Args:
    variables: the model's variables, as given to `sparsify.structure_of`
      (a pytree: Linen collections, boxed parameters, an NNX state).
    structure: its `Structure` (or some of its units).
    keep: ``{unit name: boolean array}``, True for the elements kept;
      units not named are kept whole.

  Returns:
    ``variables`` with smaller arrays (numpy), same tree structure. Run
    them with `slim_model`'s function. `jax.ShapeDtypeStruct` leaves give
    the smaller shapes.

  Example:
    >>> import flax.linen as nn
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> import sparsify
    >>> net = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(2)])
    >>> x = jnp.ones((1, 3))
    >>> variables = net.init(jax.random.key(0), x)
    >>> structure = sparsify.structure_of(net.apply, variables, x)
    >>> keep = {'layers_0': np.array([True, False, True, True])}
    >>> small = sparsify.slim(variables, structure, keep)
    >>> jax.tree.map(np.shape, small)['params']['layers_2']
    {'bias': (2,), 'kernel': (3, 2)}

  References:
    Li et al., "Pruning filters for efficient ConvNets", ICLR 2017
    (removing filters and the next layer's input channels). Fang et al.,
    "DepGraph: towards any structural pruning", CVPR 2023 (grouping
    coupled parameters by their dependencies, here read from the jaxpr).
  """
  keep = check_keep(structure, keep)
  shapes = {name: np.shape(x) for name, x in trace_lib.leaves(variables)}
  masks = _axis_masks(structure, keep, shapes, consumers=True)
  def cut(name, x):
    if isinstance(x, jax.ShapeDtypeStruct):  # shapes only (jax.eval_shape)
      return jax.ShapeDtypeStruct(tuple(int(m.sum()) for m in masks[name]),
                                  x.dtype)
    return rebuild.take(np.asarray(x), masks[name])

  return _map(cut, variables)


def slim_model(apply_fn: Callable[..., Any], variables: Any,
               keep: Mapping[str, Any], *example_args: Any,
               **example_kwargs: Any) -> tuple[Callable[..., Any], Any]:
  """The smaller model, runnable without editing the model's code.

  Traces ``apply_fn`` as `sparsify.structure_of` does, removes the units
  (`slim`) and returns a function that evaluates the traced computation at
  the new shapes. The function retraces for new input shapes (a different
  batch size); under `jax.jit` that happens once per shape.

  A removed element that is a nonzero constant where the next layer reads
  it (a channel whose BatchNorm scale is zero outputs ``relu(beta)``) has
  its contribution added back to that layer (`folding`), so the slim model
  computes what ``apply_fn`` computes on ``variables``; for every other
  removed element it computes the masked model (`mask`). The folds found
  are the function's ``folds`` attribute.

  Args:
    apply_fn: ``apply_fn(variables, *args, **kwargs)``.
    variables: the model's variables.
    keep: ``{unit name: boolean array}``, True for the elements kept.
    *example_args: example inputs, as for `sparsify.structure_of`.
    **example_kwargs: example keyword arguments.

  Returns:
    ``(slim_apply, slim_variables)``: ``slim_apply(slim_variables, *args,
    **kwargs)`` computes the smaller network.

  Example:
    >>> import flax.linen as nn
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> import sparsify
    >>> net = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(2)])
    >>> x = jnp.ones((5, 3))
    >>> variables = net.init(jax.random.key(0), x)
    >>> keep = {'layers_0': np.array([True, False, True, True])}
    >>> slim_apply, small = sparsify.slim_model(net.apply, variables, keep, x)
    >>> structure = sparsify.structure_of(net.apply, variables, x)
    >>> masked = sparsify.mask(variables, structure, keep)
    >>> bool(jnp.allclose(slim_apply(small, x), net.apply(masked, x)))
    True
  """
  structure = trace_lib.structure_of(apply_fn, variables, *example_args,
                                     approximate=True, **example_kwargs)
  keep = check_keep(structure, keep)
  _, args, kwargs = trace_lib.static_apart(apply_fn, example_args,
                                           example_kwargs)
  folds = folding.find_folds(structure.graph, node_keep(structure.graph, keep),
                             variables, args, kwargs)
  return (_slim_apply(apply_fn, _shapes(variables), keep, _sizes(structure),
                      folds),
          slim(variables, structure, keep))


def slimmed_apply(apply_fn: Callable[..., Any], variables: Any,
                  keep: Mapping[str, Any], *example_args: Any,
                  folds: Sequence[folding.Fold] = (),
                  **example_kwargs: Any) -> Callable[..., Any]:
  """`slim_model`'s function alone, from the full model's shapes.

  For rebuilding a slim model whose variables were saved: only the shapes
  of the full model's variables are needed, not their values.

  Args:
    apply_fn: ``apply_fn(variables, *args, **kwargs)`` of the full model.
    variables: the full model's variables, arrays or
      `jax.ShapeDtypeStruct` (from `jax.eval_shape`).
    keep: ``{unit name: boolean array}``, True for the elements kept.
    *example_args: example inputs, as for `sparsify.structure_of`.
    folds: the ``folds`` of the function `slim_model` returned (they need
      the values), to compute the same function.
    **example_kwargs: example keyword arguments.

  Returns:
    ``slim_apply(slim_variables, *args, **kwargs)``, as `slim_model`
    returns it.

  Example:
    >>> import flax.linen as nn
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> import sparsify
    >>> net = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(2)])
    >>> x = jnp.ones((5, 3))
    >>> variables = net.init(jax.random.key(0), x)
    >>> keep = {'layers_0': np.array([True, False, True, True])}
    >>> slim_apply, small = sparsify.slim_model(net.apply, variables, keep, x)
    >>> shapes = jax.eval_shape(lambda: variables)
    >>> again = sparsify.slimmed_apply(net.apply, shapes, keep, x)
    >>> bool(jnp.array_equal(again(small, x), slim_apply(small, x)))
    True
  """
  shapes = _shapes(variables)
  structure = trace_lib.structure_of(apply_fn, shapes, *example_args,
                                     approximate=True, **example_kwargs)
  keep = check_keep(structure, keep)
  return _slim_apply(apply_fn, shapes, keep, _sizes(structure), folds)


def _shapes(tree):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), tree)


def _sizes(structure):
  return [(u.name, u.size) for u in structure]


def _slim_apply(apply_fn, full, keep, sizes, folds=()):
  """The traced computation of ``apply_fn`` at ``full`` shapes, slimmed."""
  cache: dict[Any, Any] = {}

  def slim_apply(slim_variables, *args, **kwargs):
    static = repr(([(i, a) for i, a in enumerate(args)
                    if trace_lib.is_static(a)],
                   [(k, v) for k, v in sorted(kwargs.items())
                    if trace_lib.is_static(v)]))
    fn, args, kwargs = trace_lib.static_apart(apply_fn, args, kwargs)
    specs = _shapes((args, kwargs))
    key = static, jax.tree.structure(specs), tuple(
        (s.shape, str(s.dtype)) for s in jax.tree.leaves(specs))
    if key not in cache:
      t = trace_lib.trace(fn, full, *specs[0], **specs[1])
      again = trace_lib.find_units(t, approximate=True)
      if _sizes(again) != sizes:
        raise trace_lib.StructureError(
            "slim_model: the model has different units for inputs of "
            f"shapes {[s.shape for s in jax.tree.leaves(specs)]} than for "
            "the example inputs")
      kept = node_keep(t, keep)
      hooks = folding.hooks_for(t, kept, folds)
      # One compiled computation per input signature, also when called
      # outside jit (an op-by-op walk of a large model is slow).
      cache[key] = (t, jax.jit(
          lambda flat, t=t, kept=kept, hooks=hooks: rebuild.evaluate(
              t.frame, kept, t.closed.consts, flat, hooks)))
    t, run = cache[key]
    outs = run(jax.tree.leaves((slim_variables, args, kwargs)))
    return jax.tree.unflatten(t.out_tree, outs)

  slim_apply.folds = tuple(folds)
  return slim_apply


def node_keep(t: trace_lib.Traced, keep: Mapping[str, np.ndarray]
              ) -> np.ndarray:
  """Which nodes of a traced graph are kept.

  Args:
    t: a traced computation whose units were found (`trace.find_units`).
    keep: ``{unit name: boolean array}``.

  Returns:
    A boolean array over the graph's nodes.
  """
  removed = [c for name, k in keep.items()
             for j in np.flatnonzero(~np.asarray(k))
             for c in t.element_comps[name][j]]
  return ~np.isin(t.labels, removed)


def export_slim(slim_apply: Callable[..., Any], slim_variables: Any,
                *example_args: Any) -> bytes:
  """Serializes the slim forward pass with `jax.export`.

  The artifact needs only JAX to run: ``jax.export.deserialize(data)
  .call(slim_variables, *args)``. Its batch size is the examples'.
  Variables whose tree holds node types that `jax.export` cannot serialize
  (an NNX state's ``Param``) are taken as a flat ``{path: array}`` dict
  instead, the paths as `flat_variables` names them.

  Args:
    slim_apply: from `slim_model`.
    slim_variables: from `slim_model`.
    *example_args: inputs of the shapes the artifact will take.

  Returns:
    The serialized `jax.export.Exported`.

  Example:
    >>> import flax.linen as nn
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> import sparsify
    >>> net = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(2)])
    >>> x = jnp.ones((5, 3))
    >>> variables = net.init(jax.random.key(0), x)
    >>> keep = {'layers_0': np.array([True, False, True, True])}
    >>> slim_apply, small = sparsify.slim_model(net.apply, variables, keep, x)
    >>> data = sparsify.export_slim(slim_apply, small, x)
    >>> loaded = jax.export.deserialize(data)
    >>> bool(jnp.allclose(loaded.call(small, x), slim_apply(small, x)))
    True
  """
  specs = _shapes((slim_variables, example_args))
  exported = jax.export.export(jax.jit(slim_apply))(specs[0], *specs[1])
  try:
    return bytes(exported.serialize())
  except ValueError:  # a node type export cannot name: take a flat dict
    treedef = jax.tree.structure(slim_variables)

    def flat_apply(flat, *args):
      leaves = [flat[name] for name in names]
      return slim_apply(jax.tree.unflatten(treedef, leaves), *args)

    names = list(flat_variables(slim_variables))
    flat_specs = _shapes(flat_variables(slim_variables))
    exported = jax.export.export(jax.jit(flat_apply))(flat_specs, *specs[1])
    return bytes(exported.serialize())


def flat_variables(variables: Any) -> dict[str, Any]:
  """``{path: array}`` of any variables tree, the paths joined by ``/``.

  Args:
    variables: Linen variables, an NNX state, any pytree of arrays.

  Returns:
    The leaves by path, in the tree's order (as `sparsify.structure_of`
    names them in its slots).

  Example:
    >>> import numpy as np
    >>> from sparsify.structure import surgery
    >>> surgery.flat_variables({'params': {'fc': {'kernel': np.ones(2)}}})
    {'params/fc/kernel': array([1., 1.])}
  """
  return dict(trace_lib.leaves(variables))




def slim_nnx(module: Any, keep: Mapping[str, Any], *example_args: Any,
             **example_kwargs: Any) -> Any:
  """An NNX module at the kept widths: the module's own code, smaller state.

  `slim_model` of the module's ``(apply_fn, state)`` (`sparsify.nnx_apply`),
  then ``nnx.merge`` of the module's graph with the smaller state: NNX
  layers read their shapes from their variables, so the same code runs at
  the new widths. The result is checked against the slim function on the
  example inputs.

  Args:
    module: an `nnx.Module` (not changed).
    keep: ``{unit name: boolean array}``, True for the elements kept.
    *example_args: example inputs.
    **example_kwargs: example keyword arguments.

  Returns:
    A new `nnx.Module`.

  Raises:
    trace.StructureError: the module's code does not compute the slim
      model at the new widths (a layer that checks a width it stores), or
      removed constants had to be folded (`slim_model`'s ``folds``), which a
      module's variables cannot hold; use `slim_model`'s function then.

  Example:
    >>> from flax import nnx
    >>> import jax.numpy as jnp, numpy as np
    >>> import sparsify
    >>> class Net(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.fc1 = nnx.Linear(3, 4, rngs=rngs)
    ...     self.fc2 = nnx.Linear(4, 2, rngs=rngs)
    ...   def __call__(self, x):
    ...     return self.fc2(nnx.relu(self.fc1(x)))
    >>> net, x = Net(nnx.Rngs(0)), jnp.ones((5, 3))
    >>> small = sparsify.slim_nnx(net, {'fc1': np.array([1, 0, 1, 1], bool)},
    ...                           x)
    >>> small.fc1.kernel.value.shape, small(x).shape
    ((3, 3), (5, 2))
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  graphdef, state = nnx.split(module)

  def apply_fn(state, *args, **kwargs):
    return nnx.merge(graphdef, state)(*args, **kwargs)

  slim_apply, small = slim_model(apply_fn, state, keep, *example_args,
                                 **example_kwargs)
  if slim_apply.folds:
    raise trace_lib.StructureError(
        "slim_nnx: removed elements output nonzero constants that the next "
        "layers absorb; a module cannot hold them: use sparsify.slim_model")
  small = jax.tree.map(jnp.asarray, small)
  expected = slim_apply(small, *example_args, **example_kwargs)
  got = nnx.merge(graphdef, small)(*example_args, **example_kwargs)
  if not all(np.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(
      jax.tree.leaves(got), jax.tree.leaves(expected))):
    raise trace_lib.StructureError(
        "slim_nnx: the module's code does not compute the slim model at the "
        "new widths; use sparsify.slim_model's function")
  return nnx.merge(graphdef, small)

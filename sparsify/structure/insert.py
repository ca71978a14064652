r"""Gates inserted into any Flax model, for SSS, without editing the model.

`insert_gates` traces a model (`sparsify.structure_of`), picks some of its
units and returns a function that computes the model with every read of a
picked unit by the next layer multiplied by a learnable gate,

.. math::
  y = W^\top (\lambda \odot h) \quad\text{instead of}\quad y = W^\top h,

where :math:`h` is the unit's activation as the next layer reads it (after
the nonlinearity and any pooling, flattening or head merging: the operand of
the ``dot_general`` or ``conv_general_dilated`` that contracts the unit's
axis) and :math:`\lambda` has one entry per element (neuron, channel, head,
group). The gate is placed there, and not after the BatchNorm before the
relu, because

* a zero gate is then exactly the removed element: a unit is exact when its
  consumers read zeros in the masked model (`sparsify.mask`), and a zero
  gate makes them read zeros, whatever the activation function and its
  value at zero;
* the gate is linear in what the next layer computes, so it folds into the
  next layer's kernel rows for any sign (`fold_gates`), and the model
  trained with gates slims to a model without them.

The model is not edited: the traced jaxpr is interpreted (as
`rebuild.evaluate` does at smaller shapes) with the multiplications added;
the placement is read from the jaxpr, so it is the same for Linen and NNX
modules. When the next layer reads a re-layout of the activation (a flatten,
heads merged back into features), the gate multiplies the activation before
the re-layout, where each element has its own slice.

References:
  Huang & Wang, "Data-driven sparse structure selection for deep neural
  networks", ECCV 2018. https://arxiv.org/abs/1707.01213
"""

from collections.abc import Callable, Mapping
import re
from typing import Any

import jax
from jax import lax
from jax.extend import core as jcore
import jax.numpy as jnp
import numpy as np

from sparsify.core import paths
from sparsify.structure import trace as trace_lib

# The collection the gates live in: ``variables['gates'][unit name]``.
COLLECTION = "gates"
# The kinds of unit gated by default (residual streams are not).
DEFAULT_KINDS = ("neuron", "channel", "head", "group")
# Operations that only move elements: the gate is moved before them.
_LAYOUT = frozenset((
    "reshape", "transpose", "squeeze", "expand_dims", "broadcast_in_dim",
    "concatenate", "slice", "pad", "rev", "convert_element_type", "copy",
    "copy_p", "reduce_precision"))


class _Sites:
  """Where, in a traced computation, each read of the gated units is."""

  def __init__(self, t: trace_lib.Traced, names):
    self.t = t
    self.lookup: dict[int, list[tuple[str, int]]] = {}
    for name in names:
      for j, comps in enumerate(t.element_comps[name]):
        for c in comps:
          self.lookup.setdefault(int(c), []).append((name, j))
    self.plans: dict[int, dict[int, dict[int, Any]]] = {}
    self.foldable: dict[str, list[bool]] = {}
    self.active: set[int] = set()
    self._walk(t.frame)

  def axis_units(self, value, k) -> dict[str, np.ndarray]:
    """``{unit: element of each position, -1 where none}`` along axis k."""
    labels = self.t.labels[value.nodes[k]]
    out: dict[str, np.ndarray] = {}
    for pos, c in enumerate(labels):
      for name, j in self.lookup.get(int(c), ()):
        out.setdefault(name, np.full(len(labels), -1))[pos] = j
    return out

  def _walk(self, frame) -> bool:
    eqns = frame.jaxpr.eqns
    producer = {v: i for i, e in enumerate(eqns) for v in e.outvars}
    plans: dict[int, dict[int, Any]] = {}
    inner = False
    for i, eqn in enumerate(eqns):
      for sub in frame.calls.get(i, ()):
        inner = self._walk(sub) or inner
      sides = _contracted(eqn)
      gated: set[str] = set()
      for s, axes, o, other_axes in sides:
        var = eqn.invars[s]
        if isinstance(var, jcore.Literal) or var not in frame.values:
          continue
        x = frame.values[var]
        if any(x.origin[k] for k in axes):  # a parameter: the consumer
          continue
        units = set()
        for k in axes:
          units.update(self.axis_units(x, k))
        units -= gated
        if not units:
          continue
        plan = self._plan(frame, producer, var, frozenset(units), {})
        if plan is None:
          continue
        plans.setdefault(i, {})[s] = plan
        other = eqn.invars[o]
        y = None if isinstance(other, jcore.Literal) else frame.values.get(
            other)
        foldable = y is not None and all(y.origin[k] for k in other_axes)
        for u in units:
          self.foldable.setdefault(u, []).append(foldable)
        gated |= units
    if plans:
      self.plans[id(frame)] = plans
    if plans or inner:
      self.active.add(id(frame))
    return bool(plans) or inner

  def _plan(self, frame, producer, var, units, memo):
    """How to compute the gated value of ``var``: gate it or a re-layout."""
    if var in memo:
      return memo[var]
    x = frame.values[var]
    gates = [(u, k, idx) for k in range(len(x.nodes))
             for u, idx in self.axis_units(x, k).items() if u in units]
    plan = None
    if gates:
      plan = ("gate", var, gates)
      i = producer.get(var)
      if not all(_injective(idx) for _, _, idx in gates) and (
          i is not None and frame.jaxpr.eqns[i].primitive.name in _LAYOUT):
        eqn = frame.jaxpr.eqns[i]
        subs = [None if isinstance(v, jcore.Literal) or v not in frame.values
                else self._plan(frame, producer, v, units, memo)
                for v in eqn.invars]
        if any(subs):
          plan = ("layout", i, subs)
    memo[var] = plan
    return plan


def _contracted(eqn):
  """``[(operand, its contracted axes, other operand, its axes)]``."""
  name, p = eqn.primitive.name, eqn.params
  if name == "dot_general":
    (lc, rc), _ = p["dimension_numbers"]
    return [(0, list(lc), 1, list(rc)), (1, list(rc), 0, list(lc))]
  if name == "conv_general_dilated" and p["feature_group_count"] == 1:
    dn = p["dimension_numbers"]
    return [(0, [dn.lhs_spec[1]], 1, [dn.rhs_spec[1]])]
  return []


def _injective(idx: np.ndarray) -> bool:
  chosen = idx[idx >= 0]
  return len(np.unique(chosen)) == len(chosen)


def _expand(g, idx: np.ndarray):
  """The gate per position: ``g[idx]``, 1 where ``idx`` is -1."""
  n = len(g)
  if np.array_equal(idx, np.arange(n)):
    return g
  if _injective(idx):  # contiguous runs: slices of g and ones
    pieces, start = [], 0
    for pos in range(1, len(idx) + 1):
      if pos < len(idx) and (
          (idx[pos] < 0 and idx[pos - 1] < 0) or
          (idx[pos] >= 0 and idx[pos - 1] >= 0 and
           idx[pos] == idx[pos - 1] + 1)):
        continue
      a = idx[start]
      pieces.append(jnp.ones(pos - start, g.dtype) if a < 0 else
                    g[a:a + pos - start])
      start = pos
    return jnp.concatenate(pieces)
  return jnp.take(jnp.concatenate([g, jnp.ones(1, g.dtype)]),
                  np.where(idx < 0, n, idx))


def _bind(eqn, ins):
  with eqn.ctx.manager:
    out = eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(
        eqn.params))
  return list(out) if eqn.primitive.multiple_results else [out]


def _evaluate(sites: _Sites, frame, consts, args, gates):
  """Evaluates ``frame``'s jaxpr with the gates multiplied in."""
  jaxpr = frame.jaxpr
  env: dict[Any, Any] = {}
  plans = sites.plans.get(id(frame), {})

  def read(v):
    return v.val if isinstance(v, jcore.Literal) else env[v]

  def gated(plan, memo):
    if id(plan) in memo:
      return memo[id(plan)]
    if plan[0] == "gate":
      _, var, each = plan
      x = env[var]
      for u, k, idx in each:
        g = _expand(jnp.asarray(gates[u]), idx).astype(x.dtype)
        x = x * lax.broadcast_in_dim(g, x.shape, (k,))
    else:
      _, i, subs = plan
      eqn = jaxpr.eqns[i]
      x = _bind(eqn, [read(v) if s is None else gated(s, memo)
                      for v, s in zip(eqn.invars, subs)])[0]
    memo[id(plan)] = x
    return x

  for v, c in zip(jaxpr.constvars, consts):
    env[v] = c
  for v, a in zip(jaxpr.invars, args):
    env[v] = a
  memo: dict[int, Any] = {}
  for i, eqn in enumerate(jaxpr.eqns):
    ins = [read(v) for v in eqn.invars]
    for s, plan in plans.get(i, {}).items():
      ins[s] = gated(plan, memo)
    subs = frame.calls.get(i, ())
    if any(id(s) in sites.active for s in subs):
      outs = _call(sites, eqn, subs, ins, gates)
    else:
      outs = _bind(eqn, ins)
    for v, o in zip(eqn.outvars, outs):
      if not isinstance(v, jcore.DropVar):
        env[v] = o
  return [read(v) for v in jaxpr.outvars]


def _call(sites, eqn, subs, ins, gates):
  """A call, loop or branch with gates inside, run by `_evaluate`."""
  name, p = eqn.primitive.name, eqn.params
  run = lambda sub, closed, xs: _evaluate(
      sites, sub, trace_lib.consts_of(closed), list(xs), gates)
  if name in trace_lib.IDENTITY_CALLS:
    closed = p.get("jaxpr") or p.get("call_jaxpr") or p.get("fun_jaxpr")
    return run(subs[0], closed, ins)
  if name == "scan":
    nc, ncarry = p["num_consts"], p["num_carry"]
    consts, carry, xs = ins[:nc], ins[nc:nc + ncarry], ins[nc + ncarry:]

    def body(c, x):
      out = run(subs[0], p["jaxpr"], list(consts) + list(c) + list(x))
      return out[:ncarry], out[ncarry:]

    carry, ys = lax.scan(body, list(carry), list(xs), length=p["length"],
                         reverse=p["reverse"], unroll=p["unroll"])
    return list(carry) + list(ys)
  if name == "while":
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    cconsts, bconsts, carry = ins[:cn], ins[cn:cn + bn], ins[cn + bn:]
    return list(lax.while_loop(
        lambda c: run(subs[0], p["cond_jaxpr"], list(cconsts) + list(c))[0],
        lambda c: run(subs[-1], p["body_jaxpr"], list(bconsts) + list(c)),
        list(carry)))
  if name == "cond":
    fns = [lambda *ops, s=s, b=b: run(s, b, ops)
           for s, b in zip(subs, p["branches"])]
    return lax.switch(ins[0], fns, *ins[1:])
  raise trace_lib.StructureError(f"insert_gates: cannot run {name!r} with "
                                 "gates inside")


def _compiled(t, sites):
  """``(t, run)``: ``run(flat, gates)`` evaluates the gated trace, jitted.

  One compiled computation per input signature, also when called outside
  `jax.jit` (an op-by-op walk of a large model is slow).
  """
  return t, jax.jit(lambda flat, gates: _evaluate(
      sites, t.frame, t.closed.consts, flat, gates))


def _select(structure, where) -> list:
  if where is None:
    return [u for u in structure if u.kind in DEFAULT_KINDS]
  pattern = re.compile(where)
  chosen = [u for u in structure if pattern.search(u.name)]
  if not chosen:
    raise ValueError(f"where: {where!r} matches no exact unit; allowed: "
                     f"{structure.names()}")
  return chosen


def _spec(tree):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), tree)


def _call_key(apply_fn, args, kwargs):
  static = repr(([(i, a) for i, a in enumerate(args)
                  if trace_lib.is_static(a)],
                 [(k, v) for k, v in sorted(kwargs.items())
                  if trace_lib.is_static(v)]))
  fn, args, kwargs = trace_lib.static_apart(apply_fn, args, kwargs)
  specs = _spec((args, kwargs))
  key = static, jax.tree.structure(specs), tuple(
      (s.shape, str(s.dtype)) for s in jax.tree.leaves(specs))
  return key, fn, args, kwargs, specs


def insert_gates(apply_fn: Callable[..., Any], variables: Any,
                 *example_args: Any, where: str | None = None,
                 **example_kwargs: Any) -> tuple[Callable[..., Any], dict]:
  r"""Adds a gate to each chosen unit of any model, without editing it.

  The model is traced (`sparsify.structure_of`) and, for each chosen unit,
  every read of its activation by the next layer is multiplied by a gate
  :math:`\lambda \in \mathbb{R}^{\mathrm{size}}` broadcast along the unit's
  axis: :math:`W^\top h \to W^\top (\lambda \odot h)` (see the module
  docstring for why there). A zero :math:`\lambda_j` computes what
  `sparsify.mask` computes with element ``j`` removed; all ones compute the
  model itself.

  Args:
    apply_fn: ``apply_fn(variables, *args, **kwargs)``, as for
      `sparsify.structure_of` (a Linen ``apply``; for NNX, `nnx_apply`).
    variables: the model's variables (Linen collections, an NNX state).
    *example_args: example inputs.
    where: a regex searched in the unit names (`Structure.names`) of the
      exact units; ``None``: every exact unit of kind ``'neuron'``,
      ``'channel'``, ``'head'`` or ``'group'`` that a layer reads (not the
      residual streams). Inexact units are never gated: a zero gate would
      not equal their removal.
    **example_kwargs: example keyword arguments (``train=False``).

  Returns:
    ``(gated_apply, gate_variables)``. ``gate_variables`` is ``{'gates':
    {unit name: ones(unit.size)}}``; ``gated_apply(all_variables, *args,
    **kwargs)`` computes the gated model from ``all_variables =
    {**variables, **gate_variables}``, a mapping whose ``'gates'`` entry
    holds the gates and whose other entries are the model's variables,
    matched to the traced ones by path (an NNX state merges the same way:
    ``{**state, **gate_variables}`` is a dict of its sub-states). It is a
    pure function of its inputs: `jax.jit`, `jax.grad` (with respect to the
    gates too) and ``mutable=['batch_stats']`` work; it retraces for new
    input shapes or static arguments. ``gated_apply.structure`` is the
    model's `Structure`, ``gated_apply.units`` the gated unit names.

  Raises:
    ValueError: if ``where`` matches no unit, or a unit it matches is read
      by no layer (nothing to gate), or ``variables`` has a ``'gates'``
      entry already.

  Example:
    >>> import flax.linen as nn
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> import sparsify
    >>> from sparsify.structure import insert
    >>> net = nn.Sequential([nn.Dense(3), nn.relu, nn.Dense(2)])
    >>> x = jnp.ones((1, 2))
    >>> variables = net.init(jax.random.key(0), x)
    >>> gated_apply, gates = insert.insert_gates(net.apply, variables, x)
    >>> gates
    {'gates': {'layers_0': Array([1., 1., 1.], dtype=float32)}}
    >>> gates = {'gates': {'layers_0': jnp.array([1.0, 0.0, 1.0])}}
    >>> structure = sparsify.structure_of(net.apply, variables, x)
    >>> masked = sparsify.mask(variables, structure,
    ...                        {'layers_0': np.array([True, False, True])})
    >>> bool(jnp.allclose(gated_apply({**variables, **gates}, x),
    ...                   net.apply(masked, x)))
    True

  References:
    Huang & Wang, "Data-driven sparse structure selection for deep neural
    networks", ECCV 2018. https://arxiv.org/abs/1707.01213
  """
  if isinstance(variables, Mapping) and COLLECTION in variables:
    raise ValueError(f"variables: has a {COLLECTION!r} entry already; "
                     "allowed: the model's own variables")
  key, fn, args, kwargs, specs = _call_key(apply_fn, example_args,
                                           example_kwargs)
  t = trace_lib.trace(fn, variables, *args, **kwargs)
  structure = trace_lib.Structure(trace_lib.find_units(t), t)
  chosen = _select(structure, where)
  sites = _Sites(t, [u.name for u in chosen])
  unread = [u.name for u in chosen if u.name not in sites.foldable]
  if unread and where is not None:
    raise ValueError(f"where: unit(s) {unread} are read by no layer; "
                     "allowed: units with consumers")
  chosen = [u for u in chosen if u.name in sites.foldable]
  names = [u.name for u in chosen]
  sizes = {u.name: u.size for u in chosen}
  full = _spec(variables)
  leaf_names = [n for n, _ in trace_lib.leaves(variables)]
  cache = {key: _compiled(t, sites)}

  def gated_apply(all_variables, *args, **kwargs):
    if not isinstance(all_variables, Mapping) or (
        COLLECTION not in all_variables):
      raise ValueError(f"variables: got no {COLLECTION!r} entry; allowed: "
                       "{**variables, **gate_variables}")
    gates = all_variables[COLLECTION]
    missing = sorted(set(names) - set(gates))
    if missing:
      raise ValueError(f"variables[{COLLECTION!r}]: no gate for {missing}")
    for name in names:
      if np.shape(gates[name]) != (sizes[name],):
        raise ValueError(f"variables[{COLLECTION!r}][{name!r}]: got shape "
                         f"{np.shape(gates[name])}; allowed: "
                         f"({sizes[name]},)")
    by_name = dict(trace_lib.leaves(
        {k: v for k, v in all_variables.items() if k != COLLECTION}))
    absent = [n for n in leaf_names if n not in by_name]
    if absent:
      raise ValueError(f"variables: no leaf {absent[0]!r} of the model "
                       "given to insert_gates")
    key, fn, args, kwargs, specs = _call_key(apply_fn, args, kwargs)
    if key not in cache:
      t = trace_lib.trace(fn, full, *specs[0], **specs[1])
      again = {u.name: u.size for u in trace_lib.find_units(t)}
      if any(again.get(n) != sizes[n] for n in names):
        raise trace_lib.StructureError(
            "insert_gates: the model has different units for inputs of "
            f"shapes {[s.shape for s in jax.tree.leaves(specs)]} than for "
            "the example inputs")
      cache[key] = _compiled(t, _Sites(t, names))
    t, run = cache[key]
    flat = [by_name[n] for n in leaf_names] + jax.tree.leaves((args, kwargs))
    outs = run(flat, {n: gates[n] for n in names})
    return jax.tree.unflatten(t.out_tree, outs)

  gated_apply.structure = structure
  gated_apply.units = tuple(names)
  gate_variables = {COLLECTION: {u.name: jnp.ones((u.size,), jnp.float32)
                                 for u in chosen}}
  return gated_apply, gate_variables


def fold_gates(variables: Any, gate_variables: Mapping[str, Any],
               structure: trace_lib.Structure) -> Any:
  r"""Folds trained gates into the layers that read them.

  A gate multiplies what the next layer reads, so it moves into that
  layer's kernel: for each consumer slot ``(path, axis, index)`` of a gated
  unit,

  .. math::
    W'[\dots, \mathrm{index}_j, \dots] = \lambda_j\,
    W[\dots, \mathrm{index}_j, \dots],

  exact for any :math:`\lambda`. The original model on the folded variables
  computes the gated model; `sparsify.slim_model` of the original model
  with ``keep = {name: gate != 0}`` then removes the zero-gate elements.

  Args:
    variables: the model's variables, without the gates.
    gate_variables: ``{'gates': {unit name: gate}}`` (or the inner dict).
    structure: the model's `Structure`, ``gated_apply.structure`` or
      `sparsify.structure_of` at the example inputs.

  Returns:
    ``variables`` (numpy arrays, same tree) with the gates folded in.

  Raises:
    ValueError: for an unknown unit, or a unit that some layer reads
      through no kernel (an attention score reading queries and keys: slim
      the gated model itself with `sparsify.slim_model` instead).

  Example:
    >>> import flax.linen as nn
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> import sparsify
    >>> from sparsify.structure import insert
    >>> net = nn.Sequential([nn.Dense(3), nn.relu, nn.Dense(2)])
    >>> x = jnp.ones((4, 2))
    >>> variables = net.init(jax.random.key(0), x)
    >>> gated_apply, _ = insert.insert_gates(net.apply, variables, x)
    >>> gates = {'gates': {'layers_0': jnp.array([0.5, 0.0, 2.0])}}
    >>> folded = insert.fold_gates(variables, gates, gated_apply.structure)
    >>> keep = {'layers_0': np.array([True, False, True])}
    >>> slim_apply, small = sparsify.slim_model(net.apply, folded, keep, x)
    >>> bool(jnp.allclose(slim_apply(small, x),
    ...                   gated_apply({**variables, **gates}, x), atol=1e-6))
    True
  """
  gates = gate_variables.get(COLLECTION, gate_variables)
  unknown = sorted(set(gates) - set(structure.names()))
  if unknown:
    raise ValueError(f"gate_variables: unknown unit(s) {unknown}; allowed: "
                     f"{structure.names()}")
  sites = _Sites(structure.graph, list(gates))
  factors: dict[str, list[tuple[int, np.ndarray]]] = {}
  for name, g in gates.items():
    if not all(sites.foldable.get(name, [False])):
      raise ValueError(f"gate_variables[{name!r}]: a layer reads the unit "
                       "through no kernel, so the gate cannot be folded; "
                       "allowed: units read by Dense or Conv kernels (or "
                       "slim the gated model with slim_model)")
    g = np.asarray(g, np.float64)
    for slot in structure[name].consumers():
      factors.setdefault(slot.path, []).append(
          (slot.axis, slot.index, g))

  def fold(path, x):
    name = paths.path_name(path)
    if name not in factors or jax.dtypes.issubdtype(
        getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
      return x
    x = np.array(x)
    for axis, index, g in factors[name]:
      f = np.ones(x.shape[axis])
      np.multiply.at(f, index.ravel(), np.repeat(g, index.shape[1]))
      shape = [1] * x.ndim
      shape[axis] = -1
      x = (x * f.reshape(shape)).astype(x.dtype)
    return x

  return jax.tree_util.tree_map_with_path(fold, variables)

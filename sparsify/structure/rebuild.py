"""Runs a traced computation at the shapes left after removing units.

`evaluate` walks the jaxpr that `trace.trace` recorded and binds each
primitive to the smaller arrays: every axis keeps the elements whose nodes
are kept, and the parameters that spell a shape (``reshape``'s
``new_sizes``, ``broadcast_in_dim``'s ``shape``, a grouped convolution's
``feature_group_count``, a split's ``sizes``, a gather's ``slice_sizes``)
are recomputed from them. Calls (``jit``, ``custom_jvp_call``, remat) are
inlined; ``scan``, ``while`` and ``cond`` run their bodies the same way. A
reshape whose kept elements are not a product of kept factors raises
`trace.StructureError` rather than mixing elements.
"""

from typing import Any

import jax
from jax import lax
from jax.extend import core as jcore
import jax.numpy as jnp
import numpy as np

from sparsify.structure import trace as trace_lib

_SHAPE_PARAMS = ("shape", "new_sizes")


def _kept(value, keep: np.ndarray) -> list[np.ndarray]:
  return [keep[n] for n in value.nodes]


def _shape(value, keep) -> tuple[int, ...]:
  return tuple(int(k.sum()) for k in _kept(value, keep))


def take(x, masks: list[np.ndarray]):
  """Keeps, along each axis, the entries where its mask is True.

  Args:
    x: an array.
    masks: one boolean array per axis of ``x``.

  Returns:
    ``x`` sliced (a numpy array for a numpy input).
  """
  for axis, m in enumerate(masks):
    if not m.all():
      x = jnp.take(x, np.flatnonzero(m), axis=axis) if isinstance(
          x, jax.Array) else np.take(x, np.flatnonzero(m), axis=axis)
  return x


def evaluate(frame: trace_lib.Frame, keep: np.ndarray, consts, args,
             hooks=None, path: tuple[int, ...] = ()):
  """Evaluates ``frame``'s jaxpr on the smaller arrays ``args``.

  Args:
    frame: the `trace.Frame` that tracing recorded.
    keep: for every node of the graph, whether it is kept.
    consts: the jaxpr's constants at full size.
    args: its inputs, already at the smaller shapes.
    hooks: ``{site: fn(ins, outs) -> outs}`` called after the equations at
      those sites (`site` paths); None for none.
    path: the site of ``frame`` (equation indices of the calls it is in).

  Returns:
    The outputs, as a list.
  """
  jaxpr = frame.jaxpr
  env: dict[Any, Any] = {}

  def read(v):
    return v.val if isinstance(v, jcore.Literal) else env[v]

  for v, c in zip(jaxpr.constvars, consts):
    env[v] = take(c, _kept(frame.values[v], keep))
  for v, a in zip(jaxpr.invars, args):
    env[v] = a
  for i, eqn in enumerate(jaxpr.eqns):
    ins = [read(v) for v in eqn.invars]
    outs = _eqn(eqn, i, ins, frame, keep, hooks, path)
    if hooks and (*path, i) in hooks:
      outs = hooks[(*path, i)](ins, outs)
    for v, o in zip(eqn.outvars, outs):
      if not isinstance(v, jcore.DropVar):
        env[v] = o
  return [read(v) for v in jaxpr.outvars]


def _eqn(eqn, i, ins, frame, keep, hooks=None, path=()) -> list[Any]:
  name = eqn.primitive.name
  p = dict(eqn.params)
  values = frame.values
  outs = [v for v in eqn.outvars]
  if name in trace_lib.IDENTITY_CALLS:
    closed = p.get("jaxpr") or p.get("call_jaxpr") or p.get("fun_jaxpr")
    return evaluate(frame.calls[i][0], keep, trace_lib.consts_of(closed), ins,
                    hooks, (*path, i))
  if name == "scan":
    return _scan(eqn, i, ins, frame, keep)
  if name == "while":
    return _while(eqn, i, ins, frame, keep)
  if name == "cond":
    subs = frame.calls[i]
    fns = [lambda *ops, s=s, b=b: evaluate(s, keep, trace_lib.consts_of(b),
                                           ops)
           for s, b in zip(subs, p["branches"])]
    return lax.switch(ins[0], fns, *ins[1:])
  if name in ("reshape", "expand_dims"):
    _check_reshape(values[eqn.invars[0]], values[outs[0]], keep)
  if name == "slice":
    return [_slice(eqn, ins[0], frame, keep)]
  new_out = [_shape(values[v], keep) if v in values else None for v in outs]
  for key in _SHAPE_PARAMS:
    if key in p:
      p[key] = new_out[0]
  if name == "split":
    axis = p["axis"]
    p["sizes"] = tuple(s[axis] for s in new_out)
  if name == "conv_general_dilated" and p["feature_group_count"] > 1:
    dn = p["dimension_numbers"]
    lhs, rhs = ins
    p["feature_group_count"] = (lhs.shape[dn.lhs_spec[1]] //
                                rhs.shape[dn.rhs_spec[1]])
  if name in ("gather", "dynamic_slice"):
    full = tuple(int(d) for d in eqn.invars[0].aval.shape)
    new = ins[0].shape
    p["slice_sizes"] = tuple(n if s == f else s for s, f, n in
                             zip(p["slice_sizes"], full, new))
  out = eqn.primitive.bind(*ins, **p)
  return list(out) if eqn.primitive.multiple_results else [out]


def _check_reshape(src, dst, keep) -> None:
  for a, b in trace_lib.reshape_groups(src.shape, dst.shape):
    ka = [keep[src.nodes[k]] for k in a]
    kb = [keep[dst.nodes[k]] for k in b]
    if all(k.all() for k in ka + kb):
      continue
    flat_a = _outer(ka)
    flat_b = _outer(kb)
    if not np.array_equal(flat_a, flat_b):
      raise trace_lib.StructureError(
          f"slim: reshape {src.shape} -> {dst.shape} cannot remove the "
          "chosen elements: they are not whole rows of its factor axes")


def _outer(masks: list[np.ndarray]) -> np.ndarray:
  if not masks:
    return np.ones(1, bool)
  grids = np.meshgrid(*masks, indexing="ij")
  return np.logical_and.reduce(grids).ravel()


def _slice(eqn, x, frame, keep):
  p = eqn.params
  src = frame.values[eqn.invars[0]]
  strides = p["strides"] or (1,) * len(src.nodes)
  for axis, (s, e, st) in enumerate(zip(p["start_indices"],
                                        p["limit_indices"], strides)):
    kept = keep[src.nodes[axis]]
    chosen = np.zeros(len(kept), bool)
    chosen[s:e:st] = True
    new_index = np.cumsum(kept) - 1
    idx = new_index[chosen & kept]
    if len(idx) != x.shape[axis] or not np.array_equal(
        idx, np.arange(x.shape[axis])):
      x = jnp.take(x, idx, axis=axis)
  return x


def _scan(eqn, i, ins, frame, keep):
  p = eqn.params
  nc, ncarry = p["num_consts"], p["num_carry"]
  consts, carry, xs = ins[:nc], ins[nc:nc + ncarry], ins[nc + ncarry:]
  sub = frame.calls[i][0]
  inner_consts = trace_lib.consts_of(p["jaxpr"])

  def body(c, x):
    out = evaluate(sub, keep, inner_consts, list(consts) + list(c) + list(x))
    return out[:ncarry], out[ncarry:]

  carry, ys = lax.scan(body, list(carry), list(xs), length=p["length"],
                       reverse=p["reverse"], unroll=p["unroll"])
  return list(carry) + list(ys)


def _while(eqn, i, ins, frame, keep):
  p = eqn.params
  cn, bn = p["cond_nconsts"], p["body_nconsts"]
  cconsts, bconsts, carry = ins[:cn], ins[cn:cn + bn], ins[cn + bn:]
  cond_frame, body_frame = frame.calls[i][0], frame.calls[i][-1]

  def cond(c):
    return evaluate(cond_frame, keep, trace_lib.consts_of(p["cond_jaxpr"]),
                    list(cconsts) + list(c))[0]

  def body(c):
    return evaluate(body_frame, keep, trace_lib.consts_of(p["body_jaxpr"]),
                    list(bconsts) + list(c))

  return list(lax.while_loop(cond, body, list(carry)))


def sites(frame: trace_lib.Frame, path: tuple[int, ...] = ()):
  """Every equation of ``frame`` and of the calls inlined in it.

  Args:
    frame: a `trace.Frame`.
    path: its own site.

  Yields:
    ``(site, eqn, frame)``: the equation's path (indices of the calls it
    is in, then its own index), the equation, and the frame it is in.
  """
  for i, eqn in enumerate(frame.jaxpr.eqns):
    if eqn.primitive.name in trace_lib.IDENTITY_CALLS:
      yield from sites(frame.calls[i][0], (*path, i))
    else:
      yield (*path, i), eqn, frame

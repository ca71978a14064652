"""The removable structures of any Flax model, read from its computation.

`structure_of` traces ``apply_fn(variables, *args)`` to a jaxpr and follows
every array axis through it. Each element of each axis (channel 3 of a conv
output, feature 17 of a Dense input, head 2 of an attention score) is a node;
operations tie nodes together:

* elementwise operations tie the elements of their operands' equal axes
  (a bias to the features it is added to, a residual add's two branches, a
  squeeze-excitation scale to the channels it multiplies);
* ``dot_general`` ties each contracted element of one operand to the element
  it multiplies in the other, and batch elements to batch elements;
* a convolution ties input channels to the kernel's input channels and the
  kernel's output channels to the output; with ``feature_group_count`` it
  ties whole groups of input channels to the group's output channels;
* slicing, concatenation, transposes and broadcasts move elements around;
* a reshape that merges axes (flatten) or splits one (features into heads)
  records that each element of the merged axis is a tuple of elements of the
  factor axes.

The connected components of this graph are the elements that must be
removed together. A component is removable when it holds a parameter slice,
touches no input or output of the model, no window of a convolution or
pooling, and is not itself a merged axis (one element of a flattened feature
map is a pixel of a channel: the channel is the structure). Components of the
same parameter slots are gathered into one `units.Unit`: the channels of a
conv layer, the heads of an attention layer, the groups of a grouped
convolution, the features of a residual stream.

A unit is *exact* when removing it computes what the masked model computes,
the model with the unit's producer slices (kernel columns, biases,
normalization scales and shifts) set to zero. It is not exact when its
elements are reduced over (LayerNorm and RMSNorm statistics count every
feature, so removing features changes them), or when the masked model's
value at a removed element is not zero where a layer reads it. Inexact units
are left out unless asked for.

Anything that cannot be followed raises `StructureError`, naming the
primitive and a parameter it reads.
"""

from collections.abc import Callable, Iterator, Sequence
import dataclasses
from typing import Any

import jax
from jax.extend import core as jcore
import numpy as np
from scipy.sparse import csgraph
import scipy.sparse

from sparsify.core import paths
from sparsify.structure import units as units_lib


class StructureError(ValueError):
  """A model whose computation cannot be followed to removable structures."""


# Elementwise primitives, by what they do to an operand that is zero.
_PRESERVE_ZERO = frozenset((
    "neg", "abs", "sign", "tanh", "sin", "tan", "asin", "atan", "sinh",
    "asinh", "atanh", "sqrt", "cbrt", "erf", "erf_inv", "expm1", "log1p",
    "floor", "ceil", "round", "convert_element_type", "copy", "copy_p",
    "reduce_precision", "stop_gradient", "square", "real", "imag", "conj",
    "optimization_barrier", "sharding_constraint", "mesh_cast",
    "not", "population_count",
))
_LOSE_ZERO = frozenset((
    "exp", "exp2", "log", "logistic", "cos", "cosh", "acos", "rsqrt",
    "is_finite", "eq", "ne", "lt", "le", "gt", "ge", "pow", "lgamma",
    "digamma", "bessel_i0e", "bessel_i1e", "igamma", "igammac",
    "random_gamma_grad", "nextafter", "atan2", "rem", "shift_left",
    "shift_right_logical", "shift_right_arithmetic", "xor",
    "bitcast_convert_type",
))
_PRODUCT = frozenset(("mul", "and"))       # zero if any operand is zero
_SUM = frozenset(("add", "sub", "max", "min", "or", "add_any", "select_n",
                  "clamp"))               # zero if every operand is zero
_FIRST = frozenset(("div",))               # zero if the first one is
IDENTITY_CALLS = ("jit", "pjit", "closed_call", "core_call", "remat2",
                   "checkpoint", "custom_jvp_call", "custom_vjp_call",
                   "custom_vjp_call_jaxpr", "custom_lin")
_CALLS = frozenset(IDENTITY_CALLS + ("scan", "while", "cond"))
_REDUCE = frozenset(("reduce_sum", "reduce_max", "reduce_min", "reduce_prod",
                     "reduce_and", "reduce_or", "reduce_xor", "argmax",
                     "argmin"))
_CUMULATIVE = frozenset(("cumsum", "cumprod", "cummax", "cummin",
                         "cumlogsumexp"))


@dataclasses.dataclass(eq=False)
class _Value:
  """What the analysis knows of one array: node ids per axis, zeros, origin.

  ``zero[k][i]`` is True when slice ``i`` along axis ``k`` is zero in the
  masked model, the model with that element's unit removed; ``all_zero``
  when the whole array is zero; ``origin[k]`` the parameter axes axis ``k``
  is a re-layout of (empty for activations); ``source`` the contractions
  it is computed from since the last one.
  """
  nodes: list[np.ndarray]
  zero: list[np.ndarray]
  all_zero: bool = False
  origin: tuple[frozenset, ...] = ()
  # The contractions (dot_general, convolution) the array is computed from
  # by other operations since: two arrays with disjoint sources added are
  # two paths of a residual stream; x + x**3 in a GELU is one path.
  source: frozenset = frozenset()
  value: Any = None  # a literal's or a small constant's value, if known

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(len(n) for n in self.nodes)

  def from_params(self) -> bool:
    return any(self.origin)


@dataclasses.dataclass
class _Relation:
  """Elements of ``merged`` are row-major tuples of ``factors``' elements."""
  merged: np.ndarray
  factors: list[np.ndarray]
  where: str

  def members(self, j: int, e: int) -> np.ndarray:
    """Merged nodes whose coordinate on factor ``j`` is ``e``."""
    grid = self.merged.reshape([len(f) for f in self.factors])
    return np.take(grid, e, axis=j).ravel()


@dataclasses.dataclass
class Frame:
  """One evaluation of a jaxpr: its values, and frames of the calls in it."""
  jaxpr: Any
  values: dict[Any, _Value]
  calls: dict[int, list["Frame"]]


class _Graph:
  """Nodes, the edges that tie them, and what is known about them."""

  def __init__(self, leaf_names: Sequence[str]):
    self.size = 0
    self.edges: list[tuple[np.ndarray, np.ndarray]] = []
    self.fixed: list[np.ndarray] = []
    self.reduced: list[tuple[np.ndarray, str]] = []
    self.nonzero: list[tuple[np.ndarray, str]] = []
    self.relations: list[_Relation] = []
    self.groups: list[np.ndarray] = []      # grouped-conv group nodes
    self.heads: list[np.ndarray] = []       # batch axes of activation matmuls
    self.streams: list[np.ndarray] = []     # axes of residual adds
    self.leaf_names = list(leaf_names)
    self.leaf_nodes: dict[str, list[np.ndarray]] = {}
    self.consumers: set[tuple[str, int]] = set()
    self.conv_kernels: set[str] = set()
    self.first_use: dict[str, int] = {}
    self.counter = 0

  def new(self, n: int) -> np.ndarray:
    out = np.arange(self.size, self.size + n)
    self.size += n
    return out

  def tie(self, a: np.ndarray, b: np.ndarray) -> None:
    if len(a) != len(b):
      raise AssertionError(f"tie {len(a)} with {len(b)} nodes")
    if len(a) > 1 or (len(a) == 1 and a[0] != b[0]):
      self.edges.append((a, b))

  def fresh(self, shape, all_zero=False, fixed=False) -> _Value:
    nodes = [self.new(d) for d in shape]
    if fixed:
      self.fixed.extend(nodes)
    return _Value(nodes, [np.full(d, all_zero) for d in shape], all_zero,
                  tuple(frozenset() for _ in shape))


def _name_of(value: _Value) -> str:
  names = sorted({p for o in value.origin for p, _ in o})
  return names[0] if names else "an activation"


class _Tracer:
  """Walks a jaxpr, building the node graph (`_Graph`)."""

  def __init__(self, graph: _Graph):
    self.g = graph

  # -- values ---------------------------------------------------------------

  def literal(self, lit) -> _Value:
    val = np.asarray(lit.val)
    out = self.g.fresh(val.shape, all_zero=bool(np.all(val == 0)))
    out.value = val
    return out

  def read(self, env, v) -> _Value:
    if isinstance(v, jcore.Literal):
      return self.literal(v)
    return env[v]

  # -- walking --------------------------------------------------------------

  def run(self, jaxpr, consts, invals: list[_Value]) -> tuple[
      list[_Value], Frame]:
    env: dict[Any, _Value] = {}
    frame = Frame(jaxpr, env, {})
    for v, c in zip(jaxpr.constvars, consts):
      c = np.asarray(c)
      env[v] = self.g.fresh(c.shape, all_zero=bool(np.all(c == 0)))
      if c.size <= 1:
        env[v].value = c
    for v, val in zip(jaxpr.invars, invals):
      env[v] = val
    for i, eqn in enumerate(jaxpr.eqns):
      self.g.counter += 1
      ins = [self.read(env, v) for v in eqn.invars]
      if eqn.primitive.name not in _CALLS:  # first reads, in program order
        for x in ins:
          for axis in x.origin:
            for name, _ in axis:
              self.g.first_use.setdefault(name, self.g.counter)
      outs = self.eqn(eqn, ins, frame, i)
      for v, val in zip(eqn.outvars, outs):
        if not isinstance(v, jcore.DropVar):
          env[v] = val
    return [self.read(env, v) for v in jaxpr.outvars], frame

  def call(self, closed, ins, frame, i) -> list[_Value]:
    jaxpr, consts = _open(closed)
    outs, sub = self.run(jaxpr, consts, ins)
    frame.calls.setdefault(i, []).append(sub)
    return outs

  def eqn(self, eqn, ins: list[_Value], frame: Frame, i: int) -> list[_Value]:
    name = eqn.primitive.name
    p = eqn.params
    shapes = [tuple(v.aval.shape) for v in eqn.outvars]
    if name in IDENTITY_CALLS:
      closed = p.get("jaxpr") or p.get("call_jaxpr") or p.get("fun_jaxpr")
      return self.call(closed, ins, frame, i)
    if name == "scan":
      return self.scan(eqn, ins, frame, i)
    if name == "while":
      return self.while_loop(eqn, ins, frame, i)
    if name == "cond":
      return self.cond(eqn, ins, frame, i)
    if name in _PRODUCT or name in _SUM or name in _FIRST or (
        name in _PRESERVE_ZERO or name in _LOSE_ZERO or
        name == "integer_pow"):
      return [self.elementwise(name, p, ins, shapes[0])]
    rule = getattr(self, "rule_" + name, None)
    if rule is None:
      raise StructureError(
          f"structure_of: cannot follow primitive {name!r} (reading "
          f"{', '.join(sorted({_name_of(x) for x in ins}))}); it is not one "
          "of the operations sparsify reads")
    out = rule(p, ins, shapes)
    out = out if isinstance(out, list) else [out]
    if name in ("dot_general", "conv_general_dilated"):
      source = frozenset({self.g.counter})
    else:
      source = frozenset().union(*(x.source for x in ins))
    for o in out:
      o.source = source
    return out

  # -- elementwise ----------------------------------------------------------

  def elementwise(self, name, params, ins: list[_Value], shape) -> _Value:
    rank = len(shape)
    nodes, zero, origin = [], [], []
    for k in range(rank):
      carry = [x for x in ins if len(x.nodes) == rank and
               len(x.nodes[k]) == shape[k]]
      if not carry:  # every operand broadcast along k
        nodes.append(self.g.new(shape[k]))
        zero.append(np.full(shape[k], False))
        origin.append(frozenset())
        continue
      first = carry[0].nodes[k]
      for x in carry[1:]:
        self.g.tie(first, x.nodes[k])
      nodes.append(first)
      others = [x for x in ins if x not in carry]
      if name in _PRODUCT:
        z = np.logical_or.reduce([x.zero[k] for x in carry]) | any(
            x.all_zero for x in others)
      elif name in ("max", "min"):
        # max(0, c) = 0 when c <= 0, min(0, c) = 0 when c >= 0 (relu6).
        def neutral(x):
          if x.all_zero:
            return True
          if x.value is None:
            return False
          return bool(np.all(x.value <= 0) if name == "max" else
                      np.all(x.value >= 0))
        z = np.logical_and.reduce(
            [x.zero[k] | neutral(x) for x in carry]) & all(
                neutral(x) for x in others)
      elif name in _SUM:
        operands = ins[1:] if name == "select_n" else ins
        if name == "clamp":
          operands = ins[1:2]
        c = [x for x in carry if x in operands]
        z = (np.logical_and.reduce([x.zero[k] for x in c]) if c else
             np.full(shape[k], True)) & all(
                 x.all_zero for x in others if x in operands)
      elif name in _FIRST:
        z = (ins[0].zero[k] if ins[0] in carry else
             np.full(shape[k], ins[0].all_zero))
      elif name in _PRESERVE_ZERO or (name == "integer_pow" and
                                      params["y"] > 0):
        z = carry[0].zero[k]
      else:
        z = np.full(shape[k], False)
      zero.append(z)
      # A re-layout of parameters (a kernel times its mask) stays one; an
      # activation times a parameter (a gate) is an activation.
      params_only = all(x.origin[k] for x in carry)
      origin.append(frozenset().union(*(x.origin[k] for x in carry)) if
                    params_only and (name in _PRESERVE_ZERO or
                                     name in _PRODUCT or name in _FIRST)
                    else frozenset())
    if name in ("add", "add_any", "sub") and len(ins) == 2 and all(
        len(x.nodes) == rank and not x.from_params() and x.source
        for x in ins) and not ins[0].source & ins[1].source:
      for k in range(rank):
        if all(len(x.nodes[k]) == shape[k] > 1 for x in ins):
          self.g.streams.append(nodes[k])
    if name in _PRODUCT:
      all_zero = any(x.all_zero for x in ins)
    elif name in _SUM:
      all_zero = all(x.all_zero for x in ins)
    elif name in _FIRST:
      all_zero = ins[0].all_zero
    elif name in _PRESERVE_ZERO or name == "integer_pow":
      all_zero = ins[0].all_zero
    else:
      all_zero = False
    return _Value(nodes, zero, all_zero, tuple(origin),
                  frozenset().union(*(x.source for x in ins)))

  # -- layout ---------------------------------------------------------------

  def rule_broadcast_in_dim(self, p, ins, shapes):
    x, shape = ins[0], shapes[0]
    out = self.g.fresh(shape, all_zero=x.all_zero)
    origin = list(out.origin)
    for j, d in enumerate(p["broadcast_dimensions"]):
      if x.shape[j] == shape[d]:
        out.nodes[d] = x.nodes[j]
        out.zero[d] = x.zero[j]
        origin[d] = x.origin[j]
    out.origin = tuple(origin)
    return out

  def rule_transpose(self, p, ins, shapes):
    x = ins[0]
    perm = p["permutation"]
    return _Value([x.nodes[j] for j in perm], [x.zero[j] for j in perm],
                  x.all_zero, tuple(x.origin[j] for j in perm))

  def rule_squeeze(self, p, ins, shapes):
    x = ins[0]
    gone = {d % len(x.nodes) for d in p["dimensions"]}
    self.g.fixed.extend(x.nodes[k] for k in gone)  # must stay size 1
    keep = [k for k in range(len(x.nodes)) if k not in gone]
    return _Value([x.nodes[k] for k in keep], [x.zero[k] for k in keep],
                  x.all_zero, tuple(x.origin[k] for k in keep))

  def rule_expand_dims(self, p, ins, shapes):
    return self.rule_reshape({"dimensions": None}, ins, shapes)

  def rule_rev(self, p, ins, shapes):
    x = ins[0]
    nodes = [n[::-1] if k in p["dimensions"] else n
             for k, n in enumerate(x.nodes)]
    zero = [z[::-1] if k in p["dimensions"] else z
            for k, z in enumerate(x.zero)]
    return _Value(nodes, zero, x.all_zero, x.origin)

  def rule_reshape(self, p, ins, shapes):
    x, shape = ins[0], shapes[0]
    if p.get("dimensions") is not None:
      raise StructureError("structure_of: reshape with 'dimensions' (reading "
                           f"{_name_of(x)}) is not supported")
    out = self.g.fresh(shape, all_zero=x.all_zero)
    origin = list(out.origin)
    for ins_axes, out_axes in reshape_groups(x.shape, shape):
      if ins_axes and out_axes and all(x.shape[k] == 1 for k in ins_axes):
        # Only one element: it is the element of every output axis (a
        # bias of one feature reshaped to (1, 1) to broadcast).
        for b in out_axes:
          self.g.tie(x.nodes[ins_axes[0]], out.nodes[b])
          out.zero[b], origin[b] = x.zero[ins_axes[0]], x.origin[ins_axes[0]]
        continue
      ins_axes = [k for k in ins_axes if x.shape[k] > 1]
      out_axes = [k for k in out_axes if shape[k] > 1]
      if not ins_axes:
        continue
      if len(ins_axes) == 1 and len(out_axes) == 1:
        (a,), (b,) = ins_axes, out_axes
        out.nodes[b], out.zero[b], origin[b] = (x.nodes[a], x.zero[a],
                                                x.origin[a])
        continue
      where = f"reshape {x.shape} -> {shape} (reading {_name_of(x)})"
      in_factors = [x.nodes[k] for k in ins_axes]
      out_factors = [out.nodes[k] for k in out_axes]
      merged_origin = frozenset().union(*(x.origin[k] for k in ins_axes))
      if len(out_axes) == 1:  # merge: the output axis is the tuple
        (b,) = out_axes
        self.g.relations.append(_Relation(out.nodes[b], in_factors, where))
        out.zero[b] = _merged_zero([x.zero[k] for k in ins_axes])
        origin[b] = merged_origin
      elif len(ins_axes) == 1:  # split: the input axis is the tuple
        (a,) = ins_axes
        self.g.relations.append(_Relation(x.nodes[a], out_factors, where))
        for b, z in zip(out_axes, _factor_zero(
            x.zero[a], [shape[k] for k in out_axes])):
          out.zero[b] = z
          origin[b] = merged_origin
      else:  # both: through a merged axis of their product
        merged = self.g.new(int(np.prod([x.shape[k] for k in ins_axes])))
        self.g.relations.append(_Relation(merged, in_factors, where))
        self.g.relations.append(_Relation(merged, out_factors, where))
        for b, z in zip(out_axes, _factor_zero(
            _merged_zero([x.zero[k] for k in ins_axes]),
            [shape[k] for k in out_axes])):
          out.zero[b] = z
          origin[b] = merged_origin
    out.origin = tuple(origin)
    return out

  def rule_slice(self, p, ins, shapes):
    x = ins[0]
    strides = p["strides"] or (1,) * len(x.nodes)
    idx = [slice(s, e, st) for s, e, st in zip(p["start_indices"],
                                                p["limit_indices"], strides)]
    return _Value([n[i] for n, i in zip(x.nodes, idx)],
                  [z[i] for z, i in zip(x.zero, idx)], x.all_zero, x.origin)

  def rule_split(self, p, ins, shapes):
    x, axis = ins[0], p["axis"]
    outs, start = [], 0
    for size in p["sizes"]:
      nodes, zero = list(x.nodes), list(x.zero)
      nodes[axis] = x.nodes[axis][start:start + size]
      zero[axis] = x.zero[axis][start:start + size]
      outs.append(_Value(nodes, zero, x.all_zero, x.origin))
      start += size
    return outs

  def rule_concatenate(self, p, ins, shapes):
    axis, shape = p["dimension"], shapes[0]
    nodes, zero, origin = [], [], []
    for k in range(len(shape)):
      if k == axis:
        nodes.append(np.concatenate([x.nodes[k] for x in ins]))
        zero.append(np.concatenate([x.zero[k] | x.all_zero for x in ins]))
        origin.append(frozenset())
        continue
      for x in ins[1:]:
        self.g.tie(ins[0].nodes[k], x.nodes[k])
      nodes.append(ins[0].nodes[k])
      zero.append(np.logical_and.reduce([x.zero[k] | x.all_zero
                                         for x in ins]))
      origin.append(frozenset())
    return _Value(nodes, zero, all(x.all_zero for x in ins), tuple(origin))

  def rule_pad(self, p, ins, shapes):
    x, value = ins
    out = self.g.fresh(shapes[0], all_zero=x.all_zero and value.all_zero)
    for k, (lo, hi, interior) in enumerate(p["padding_config"]):
      if (lo, hi, interior) == (0, 0, 0):
        out.nodes[k], out.zero[k] = x.nodes[k], x.zero[k]
      elif interior == 0 and lo >= 0 and hi >= 0:
        out.nodes[k][lo:lo + x.shape[k]] = x.nodes[k]
        out.zero[k] = np.full(shapes[0][k], value.all_zero)
        out.zero[k][lo:lo + x.shape[k]] = x.zero[k] & value.all_zero
      else:
        self.g.fixed.extend([x.nodes[k], out.nodes[k]])
    return out

  def rule_tile(self, p, ins, shapes):
    x = ins[0]
    out = self.g.fresh(shapes[0], all_zero=x.all_zero)
    for k, reps in enumerate(p["reps"]):
      if reps == 1:
        out.nodes[k], out.zero[k] = x.nodes[k], x.zero[k]
      else:
        self.g.fixed.extend([x.nodes[k], out.nodes[k]])
    return out

  def rule_iota(self, p, ins, shapes):
    return self.g.fresh(shapes[0], fixed=True)

  def rule_select_and_gather_add(self, p, ins, shapes):
    raise StructureError("structure_of: cannot follow "
                         "select_and_gather_add")

  # -- contractions ---------------------------------------------------------

  def _consume(self, a: _Value, ka: int, b: _Value, kb: int, where: str):
    """Ties contracted axes; marks elements whose product is not zero."""
    self.g.tie(a.nodes[ka], b.nodes[kb])
    for x, k in ((a, ka), (b, kb)):
      for path_axis in x.origin[k]:
        self.g.consumers.add(path_axis)
    za = a.zero[ka] | a.all_zero if not a.origin[ka] else np.full(
        len(a.nodes[ka]), a.all_zero)
    zb = b.zero[kb] | b.all_zero if not b.origin[kb] else np.full(
        len(b.nodes[kb]), b.all_zero)
    bad = ~(za | zb)
    if bad.any():
      self.g.nonzero.append((a.nodes[ka][bad], where))

  def rule_dot_general(self, p, ins, shapes):
    lhs, rhs = ins
    (lc, rc), (lb, rb) = p["dimension_numbers"]
    where = f"dot_general of {_name_of(lhs)} and {_name_of(rhs)}"
    for a, b in zip(lc, rc):
      self._consume(lhs, a, rhs, b, where)
    nodes, zero, origin = [], [], []
    for a, b in zip(lb, rb):
      self.g.tie(lhs.nodes[a], rhs.nodes[b])
      nodes.append(lhs.nodes[a])
      zero.append(lhs.zero[a] | rhs.zero[b])
      origin.append(frozenset())
      if not lhs.from_params() and not rhs.from_params():
        self.g.heads.append(lhs.nodes[a])
    for x, skip in ((lhs, set(lc) | set(lb)), (rhs, set(rc) | set(rb))):
      for k in range(len(x.nodes)):
        if k not in skip:
          nodes.append(x.nodes[k])
          zero.append(x.zero[k])
          origin.append(x.origin[k])
    return _Value(nodes, zero, lhs.all_zero or rhs.all_zero, tuple(origin))

  def rule_conv_general_dilated(self, p, ins, shapes):
    lhs, rhs = ins
    dn = p["dimension_numbers"]
    (lb, lf, *ls), (ro, ri, *rs), (ob, of, *os_) = (dn.lhs_spec, dn.rhs_spec,
                                                    dn.out_spec)
    where = f"conv_general_dilated of {_name_of(lhs)} and {_name_of(rhs)}"
    if p["batch_group_count"] != 1:
      raise StructureError(f"structure_of: {where} has batch_group_count "
                           f"{p['batch_group_count']}; only 1 is supported")
    self.g.conv_kernels.update(p for o in rhs.origin for p, _ in o)
    out = self.g.fresh(shapes[0], all_zero=lhs.all_zero or rhs.all_zero)
    for k in os_:
      self.g.fixed.append(out.nodes[k])
    for k in ls:
      self.g.fixed.append(lhs.nodes[k])
    for k in rs:
      self.g.fixed.append(rhs.nodes[k])
    out.nodes[ob], out.zero[ob] = lhs.nodes[lb], lhs.zero[lb]
    out.nodes[of], out.zero[of] = rhs.nodes[ro], rhs.zero[ro]
    origin = list(out.origin)
    origin[of] = rhs.origin[ro]
    out.origin = tuple(origin)
    groups = p["feature_group_count"]
    if groups == 1:
      self._consume(lhs, lf, rhs, ri, where)
      return out
    cin, cout = rhs.shape[ri], rhs.shape[ro] // groups
    group, in_pos, out_pos = (self.g.new(groups), self.g.new(cin),
                              self.g.new(cout))
    self.g.relations.append(_Relation(lhs.nodes[lf], [group, in_pos], where))
    self.g.relations.append(_Relation(rhs.nodes[ro], [group, out_pos],
                                      where))
    self.g.fixed.extend([in_pos, out_pos])
    self.g.groups.append(group)
    for path_axis in rhs.origin[ri]:
      self.g.consumers.add(path_axis)
    self.g.tie(in_pos, rhs.nodes[ri])
    bad = ~(lhs.zero[lf] | lhs.all_zero)
    if bad.any():
      self.g.nonzero.append((lhs.nodes[lf][bad], where))
    group_zero = lhs.zero[lf].reshape(groups, cin).all(axis=1)
    out.zero[of] = out.zero[of] | np.repeat(group_zero, cout)
    return out

  # -- reductions and windows -----------------------------------------------

  def _reduce(self, x: _Value, axes, where: str, zero_ok=True) -> _Value:
    axes = {a % max(len(x.nodes), 1) for a in axes}
    for a in axes:
      if len(x.nodes[a]) > 1:
        self.g.reduced.append((x.nodes[a], where))
    keep = [k for k in range(len(x.nodes)) if k not in axes]
    return _Value([x.nodes[k] for k in keep],
                  [x.zero[k] if zero_ok else np.full(len(x.nodes[k]), False)
                   for k in keep], x.all_zero and zero_ok,
                  tuple(frozenset() for _ in keep))

  def _rule_reduce(self, p, ins, shapes, name):
    where = f"{name} over axes {tuple(p['axes'])} of {_name_of(ins[0])}"
    return self._reduce(ins[0], p["axes"], where,
                        zero_ok=name not in ("argmax", "argmin"))

  def _rule_cumulative(self, p, ins, shapes, name):
    x = ins[0]
    self.g.reduced.append((x.nodes[p["axis"]],
                           f"{name} along axis {p['axis']} of {_name_of(x)}"))
    return _Value(list(x.nodes), list(x.zero), x.all_zero,
                  tuple(frozenset() for _ in x.nodes))

  def _rule_window(self, p, ins, shapes):
    x = ins[0]
    out = self.g.fresh(shapes[0], all_zero=x.all_zero)
    pads = p.get("padding") or [(0, 0)] * len(x.nodes)
    dil = p.get("base_dilation") or (1,) * len(x.nodes)
    wdil = p.get("window_dilation") or (1,) * len(x.nodes)
    for k, (w, s, pad, d, wd) in enumerate(zip(
        p["window_dimensions"], p["window_strides"], pads, dil, wdil)):
      if (w, s, tuple(pad), d, wd) == (1, 1, (0, 0), 1, 1):
        out.nodes[k], out.zero[k] = x.nodes[k], x.zero[k]
      else:
        self.g.fixed.extend([x.nodes[k], out.nodes[k]])
    return out

  # -- indexing -------------------------------------------------------------

  def rule_gather(self, p, ins, shapes):
    operand, indices = ins
    dn = p["dimension_numbers"]
    out = self.g.fresh(shapes[0], all_zero=operand.all_zero)
    if dn.operand_batching_dims:
      raise StructureError("structure_of: gather with batching dimensions "
                           f"(reading {_name_of(operand)}) is not supported")
    offset_operand = [k for k in range(len(operand.nodes))
                      if k not in dn.collapsed_slice_dims]
    for k, d in zip(offset_operand, dn.offset_dims):
      if p["slice_sizes"][k] == operand.shape[k] and (
          k not in dn.start_index_map):
        out.nodes[d], out.zero[d] = operand.nodes[k], operand.zero[k]
      else:
        self.g.fixed.extend([operand.nodes[k], out.nodes[d]])
    for k in dn.start_index_map:
      self.g.fixed.append(operand.nodes[k])
    batch = [d for d in range(len(shapes[0])) if d not in dn.offset_dims]
    index_axes = list(range(len(indices.nodes) - 1))
    for d, k in zip(batch, index_axes):
      self.g.tie(out.nodes[d], indices.nodes[k])
    self.g.fixed.extend(out.nodes[d] for d in batch)
    return out

  def rule_dynamic_slice(self, p, ins, shapes):
    x = ins[0]
    out = self.g.fresh(shapes[0], all_zero=x.all_zero)
    for k, size in enumerate(p["slice_sizes"]):
      if size == x.shape[k]:
        out.nodes[k], out.zero[k] = x.nodes[k], x.zero[k]
      else:
        self.g.fixed.extend([x.nodes[k], out.nodes[k]])
    return out

  def rule_dynamic_update_slice(self, p, ins, shapes):
    x, update = ins[0], ins[1]
    for k in range(len(x.nodes)):
      if update.shape[k] == x.shape[k]:
        self.g.tie(x.nodes[k], update.nodes[k])
      else:
        self.g.fixed.extend([x.nodes[k], update.nodes[k]])
    zero = [x.zero[k] & update.zero[k] if update.shape[k] == x.shape[k]
            else np.full(x.shape[k], False) for k in range(len(x.nodes))]
    return _Value(list(x.nodes), zero, x.all_zero and update.all_zero,
                  tuple(frozenset() for _ in x.nodes))

  def rule_random_bits(self, p, ins, shapes):
    """Fresh random bits (dropout): each element free, the key fixed.

    The slim model draws them at its own shape: the same distribution,
    other values.
    """
    for x in ins:
      self.g.fixed.extend(x.nodes)
    return [self.g.fresh(s) for s in shapes]

  def _rule_opaque(self, p, ins, shapes):
    """Randomness and sorting: outputs fixed where their inputs are."""
    for x in ins:
      self.g.fixed.extend(x.nodes)
    return [self.g.fresh(s, fixed=True) for s in shapes]

  # -- control flow ---------------------------------------------------------

  def scan(self, eqn, ins, frame, i):
    p = eqn.params
    nc, ncarry = p["num_consts"], p["num_carry"]
    consts, carry, xs = ins[:nc], ins[nc:nc + ncarry], ins[nc + ncarry:]
    for x in xs:
      self.g.fixed.append(x.nodes[0])
    inner_xs = [_Value(x.nodes[1:], x.zero[1:], x.all_zero, x.origin[1:])
                for x in xs]
    outs = self._loop(p["jaxpr"], consts, carry, inner_xs, frame, i)
    ys = []
    for y in outs[ncarry:]:
      length = self.g.new(p["length"])
      self.g.fixed.append(length)
      ys.append(_Value([length] + y.nodes, [np.full(p["length"], y.all_zero)]
                       + y.zero, y.all_zero, (frozenset(),) + y.origin))
    return outs[:ncarry] + ys

  def _loop(self, closed, consts, carry, xs, frame, i) -> list[_Value]:
    """Runs a loop body until the zeros of its carry are stable."""
    zeros = [list(c.zero) for c in carry]
    for _ in range(4):
      ins = consts + [_Value(c.nodes, z, c.all_zero, c.origin)
                      for c, z in zip(carry, zeros)] + xs
      jaxpr, cvals = _open(closed)
      outs, sub = self.run(jaxpr, cvals, ins)
      new = [[z & o for z, o in zip(zs, out.zero)]
             for zs, out in zip(zeros, outs)]
      if all(all(np.array_equal(a, b) for a, b in zip(x, y))
             for x, y in zip(new, zeros)):
        break
      zeros = new
    frame.calls.setdefault(i, []).append(sub)
    for c, out in zip(carry, outs):
      for a, b in zip(c.nodes, out.nodes):
        self.g.tie(a, b)
    return [_Value(c.nodes, z, c.all_zero, c.origin)
            for c, z in zip(carry, zeros)] + outs[len(carry):]

  def while_loop(self, eqn, ins, frame, i):
    p = eqn.params
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    cconsts, bconsts, carry = ins[:cn], ins[cn:cn + bn], ins[cn + bn:]
    jaxpr, cvals = _open(p["cond_jaxpr"])
    _, sub = self.run(jaxpr, cvals, cconsts + carry)
    frame.calls.setdefault(i, []).append(sub)
    return self._loop(p["body_jaxpr"], bconsts, carry, [], frame, i)

  def cond(self, eqn, ins, frame, i):
    index, operands = ins[0], ins[1:]
    self.g.fixed.extend(index.nodes)
    branches = [self.call(b, operands, frame, i)
                for b in eqn.params["branches"]]
    outs = branches[0]
    for other in branches[1:]:
      for a, b in zip(outs, other):
        for x, y in zip(a.nodes, b.nodes):
          self.g.tie(x, y)
    return [_Value(o.nodes, [np.logical_and.reduce(zs) for zs in zip(
        *(b[j].zero for b in branches))], all(b[j].all_zero for b in
                                              branches), o.origin)
            for j, o in enumerate(outs)]


for _name in _REDUCE:
  setattr(_Tracer, "rule_" + _name,
          lambda self, p, ins, shapes, _n=_name: self._rule_reduce(
              p, ins, shapes, _n))
for _name in _CUMULATIVE:
  setattr(_Tracer, "rule_" + _name,
          lambda self, p, ins, shapes, _n=_name: self._rule_cumulative(
              p, ins, shapes, _n))
for _name in ("reduce_window_sum", "reduce_window_max", "reduce_window_min",
              "reduce_window"):
  setattr(_Tracer, "rule_" + _name, _Tracer._rule_window)
for _name in ("random_seed", "random_wrap", "random_unwrap",
              "random_split", "random_fold_in", "threefry2x32", "sort",
              "top_k", "argsort", "rng_bit_generator", "rng_uniform"):
  setattr(_Tracer, "rule_" + _name, _Tracer._rule_opaque)


def _open(closed) -> tuple[Any, list[Any]]:
  if isinstance(closed, jcore.ClosedJaxpr):
    return closed.jaxpr, list(closed.consts)
  return closed, []


def consts_of(closed) -> list[Any]:
  """The constants of a jaxpr.

  Args:
    closed: a `ClosedJaxpr`, or an open `Jaxpr`.

  Returns:
    Its constants (none for an open one).
  """
  return _open(closed)[1]


def _merged_zero(factor_zeros: list[np.ndarray]) -> np.ndarray:
  grids = np.meshgrid(*factor_zeros, indexing="ij")
  return np.logical_or.reduce(grids).ravel()


def _factor_zero(merged: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
  grid = merged.reshape(sizes)
  return [grid.all(axis=tuple(j for j in range(len(sizes)) if j != k))
          for k in range(len(sizes))]


def reshape_groups(src, dst) -> list[tuple[list[int], list[int]]]:
  """Splits two shapes into runs of axes with equal products.

  Args:
    src: the shape before a reshape.
    dst: the shape after it.

  Returns:
    ``[(src axes, dst axes)]``: each run of ``src`` axes holds the same
    elements as its run of ``dst`` axes.
  """
  groups, i, j = [], 0, 0
  while i < len(src) or j < len(dst):
    a, b = [], []
    pa = pb = 1
    while True:
      if pa == pb and (a or b) and not (
          (i < len(src) and src[i] == 1) or (j < len(dst) and dst[j] == 1)):
        break
      if pa <= pb and i < len(src):
        pa *= src[i]
        a.append(i)
        i += 1
      elif j < len(dst):
        pb *= dst[j]
        b.append(j)
        j += 1
      elif i < len(src):
        pa *= src[i]
        a.append(i)
        i += 1
      else:
        break
    groups.append((a, b))
  return groups


# ---------------------------------------------------------------------------
# From the graph to units.


def leaves(variables) -> list[tuple[str, Any]]:
  """The leaves of a variables pytree with their names.

  Args:
    variables: Linen variables or an NNX state.

  Returns:
    ``[(path, leaf)]`` in flattening order, paths collection first.
  """
  flat, _ = jax.tree_util.tree_flatten_with_path(variables)
  return [(paths.path_name(path), leaf) for path, leaf in flat]


@dataclasses.dataclass(frozen=True)
class Structure(Sequence):
  """The removable units of a model, and the graph they were found in.

  A sequence of `units.Unit`; ``structure['name']`` looks one up by name.
  """
  units: tuple[units_lib.Unit, ...]
  graph: Any = dataclasses.field(repr=False, compare=False)

  def __len__(self) -> int:
    return len(self.units)

  def __iter__(self) -> Iterator[units_lib.Unit]:
    return iter(self.units)

  def __getitem__(self, key):
    if isinstance(key, str):
      for u in self.units:
        if u.name == key:
          return u
      raise KeyError(f"unit {key!r}; allowed: {[u.name for u in self.units]}")
    return self.units[key]

  def names(self) -> list[str]:
    """The unit names.

    Returns:
      The names, in order.
    """
    return [u.name for u in self.units]


@dataclasses.dataclass
class Traced:
  """A traced computation: its node graph and components."""
  closed: Any
  frame: Frame
  graph: _Graph
  labels: np.ndarray
  in_tree: Any
  out_tree: Any
  element_comps: dict[str, list[list[int]]]  # unit -> components per element


def trace(apply_fn: Callable[..., Any], variables: Any, *args: Any,
          **kwargs: Any) -> Traced:
  """Traces ``apply_fn(variables, *args, **kwargs)`` and builds its graph.

  Args:
    apply_fn: ``apply_fn(variables, *args, **kwargs)``.
    variables: the variables (arrays or `jax.ShapeDtypeStruct`).
    *args: example inputs.
    **kwargs: example keyword arguments.

  Returns:
    The `Traced` computation, its components not yet gathered into units
    (`find_units`).
  """
  apply_fn, args, kwargs = static_apart(apply_fn, args, kwargs)
  closed, out_shape = jax.make_jaxpr(apply_fn, return_shape=True)(
      variables, *args, **kwargs)
  leaves_ = leaves(variables)
  names = [n for n, _ in leaves_]
  graph = _Graph(names)
  tracer = _Tracer(graph)
  invals = []
  nleaves = len(leaves_)
  for j, v in enumerate(closed.jaxpr.invars):
    shape = tuple(v.aval.shape)
    if j < nleaves:
      val = graph.fresh(shape)
      val.zero = [np.full(d, True) for d in shape]  # producers are zeroed
      val.origin = tuple(frozenset({(names[j], k)}) for k in range(len(shape)))
      graph.leaf_nodes[names[j]] = val.nodes
    else:
      val = graph.fresh(shape, fixed=True)
    invals.append(val)
  outs, frame = tracer.run(closed.jaxpr, closed.consts, invals)
  for o, is_state in zip(outs, _state_outputs(out_shape, names)):
    if not is_state:  # updated variables follow their units
      graph.fixed.extend(o.nodes)
  n = graph.size
  if graph.edges:
    a = np.concatenate([e[0] for e in graph.edges])
    b = np.concatenate([e[1] for e in graph.edges])
  else:
    a = b = np.zeros(0, int)
  adj = scipy.sparse.coo_matrix((np.ones(len(a), np.int8), (a, b)),
                                shape=(n, n))
  _, labels = csgraph.connected_components(adj, directed=False)
  in_tree = jax.tree.structure((variables, args, kwargs))
  out_tree = jax.tree.structure(out_shape)
  return Traced(closed, frame, graph, labels, in_tree, out_tree, {})


def _state_outputs(out_shape, names: list[str]) -> list[bool]:
  """Which output leaves are updated variables (Linen's ``mutable``)."""
  leaves = jax.tree.leaves(out_shape)
  if not (isinstance(out_shape, tuple) and len(out_shape) == 2):
    return [False] * len(leaves)
  updated = [paths.path_name(p) for p, _ in
             jax.tree_util.tree_flatten_with_path(out_shape[1])[0]]
  if not updated or not set(updated) <= set(names):
    return [False] * len(leaves)
  first = len(jax.tree.leaves(out_shape[0]))
  return [False] * first + [True] * len(updated)


def is_static(x) -> bool:
  """Whether an argument is bound rather than traced.

  Args:
    x: an argument of ``apply_fn``.

  Returns:
    True for None, a bool, a string or a list of strings (``train=False``,
    ``mutable=['batch_stats']``).
  """
  return x is None or isinstance(x, (bool, str)) or (
      isinstance(x, (list, tuple)) and all(isinstance(e, str) for e in x))


def static_apart(apply_fn, args, kwargs):
  """Binds the arguments that are not arrays (``train=False``, ``mutable``).

  Args:
    apply_fn: ``apply_fn(variables, *args, **kwargs)``.
    args: its positional arguments after the variables.
    kwargs: its keyword arguments.

  Returns:
    ``(fn, array_args, array_kwargs)`` with ``fn(variables, *array_args,
    **array_kwargs)`` calling ``apply_fn`` with every argument.
  """
  static = {k: v for k, v in kwargs.items() if is_static(v)}
  positions = [i for i, a in enumerate(args) if is_static(a)]
  if not static and not positions:
    return apply_fn, tuple(args), dict(kwargs)
  fixed = {i: args[i] for i in positions}
  n = len(args)

  def fn(variables, *array_args, **array_kwargs):
    it = iter(array_args)
    full = [fixed[i] if i in fixed else next(it) for i in range(n)]
    return apply_fn(variables, *full, **array_kwargs, **static)

  return (fn, tuple(a for i, a in enumerate(args) if i not in fixed),
          {k: v for k, v in kwargs.items() if k not in static})


def _component_flags(t: Traced, items) -> dict[int, str]:
  out: dict[int, str] = {}
  for nodes, why in items:
    for c in np.unique(t.labels[nodes]):
      out.setdefault(int(c), why)
  return out


def find_units(t: Traced, approximate: bool = False) -> tuple[
    units_lib.Unit, ...]:
  """Gathers the removable components of a traced graph into units.

  Args:
    t: from `trace`.
    approximate: also keep the units whose removal is not exact.

  Returns:
    The `units.Unit` tuple; ``t.element_comps`` gets each unit's
    components per element.
  """
  g, labels = t.graph, t.labels
  fixed = set(np.unique(labels[np.concatenate(g.fixed)]).tolist()) if (
      g.fixed) else set()
  merged = set()
  closure_edges: dict[int, set[int]] = {}
  for rel in g.relations:
    merged.update(np.unique(labels[rel.merged]).tolist())
    for j, f in enumerate(rel.factors):
      for e, node in enumerate(f):
        c = int(labels[node])
        closure_edges.setdefault(c, set()).update(
            np.unique(labels[rel.members(j, e)]).tolist())
  reduced = _component_flags(t, g.reduced)
  nonzero = _component_flags(t, g.nonzero)
  kind_of = {}
  for kind, arrays in (("stream", g.streams), ("head", g.heads),
                       ("group", g.groups)):
    for nodes in arrays:
      for c in np.unique(labels[nodes]):
        kind_of[int(c)] = kind

  # Which parameter slices each component holds.
  slots_of: dict[int, list[tuple[str, int, int]]] = {}
  for name, nodes in g.leaf_nodes.items():
    for axis, axis_nodes in enumerate(nodes):
      for i, c in enumerate(labels[axis_nodes]):
        slots_of.setdefault(int(c), []).append((name, axis, i))
  candidates = sorted((set(slots_of) | set(closure_edges)) - merged - fixed)
  elements: dict[tuple, list[tuple[int, set[int], dict]]] = {}
  for c in candidates:
    closure, todo = {c}, [c]
    while todo:
      for d in closure_edges.get(todo.pop(), ()):
        if d not in closure:
          closure.add(d)
          todo.append(d)
    if closure & fixed:
      continue
    slots: dict[tuple[str, int], list[int]] = {}
    for d in sorted(closure):
      for name, axis, i in slots_of.get(d, ()):
        slots.setdefault((name, axis), []).append(i)
    producers = [k for k in slots if k not in g.consumers and
                 not k[0].startswith("batch_stats/")]
    if not producers:
      continue
    signature = tuple(sorted((k, len(v)) for k, v in slots.items()))
    elements.setdefault(signature, []).append((c, closure, slots))
  units, comps = [], []
  for signature, members in elements.items():
    keys = [k for k, _ in signature]
    order = sorted(keys, key=lambda k: (g.first_use.get(k[0], 1 << 30),
                                        g.leaf_names.index(k[0]), k[1]))
    members.sort(key=lambda m: m[2][order[0]][0])
    closures = [m[1] for m in members]
    why = None
    for cl in closures:
      for c in cl:
        why = why or reduced.get(c) or nonzero.get(c)
    if why and not approximate:
      continue
    kinds = {kind_of[c] for cl in closures for c in cl if c in kind_of}
    producers_ = [k for k in order if k not in g.consumers]
    first_producer = next(
        (k for k in producers_ if not k[0].startswith("gates/")),
        producers_[0])
    kind = ("group" if "group" in kinds else "head" if "head" in kinds
            else "stream" if "stream" in kinds else
            "channel" if first_producer[0] in g.conv_kernels else "neuron")
    slots = tuple(units_lib.Slot(
        path=k[0], axis=k[1],
        index=np.asarray([sorted(m[2][k]) for m in members], np.int64),
        consumer=k in g.consumers) for k in order)
    if len(members) < 2:  # one element: nothing can be removed
      continue
    if kind == "group" and all(sl.index.shape[1] == 1 for sl in slots
                               if not sl.consumer):
      kind = "channel"  # depthwise: a group of one channel
    units.append(units_lib.Unit(
        name=_module(first_producer[0]), size=len(members), kind=kind,
        slots=slots, exact=why is None,
        note=None if why is None else f"approximate: {why}"))
    comps.append([sorted(cl) for cl in closures])
  # In the order the computation first reads their producers.
  order = sorted(range(len(units)), key=lambda i: min(
      (g.first_use.get(slot.path, 1 << 30), g.leaf_names.index(slot.path))
      for slot in units[i].producers()))
  units = _unique_names([units[i] for i in order])
  comps = [comps[i] for i in order]
  t.element_comps = {u.name: c for u, c in zip(units, comps)}
  return units


_COLLECTIONS = ("params", "batch_stats", "gates")


def _module(path: str) -> str:
  """The module of a variable path: Linen's collection and the leaf dropped."""
  parts = path.split("/")
  if parts[0] in _COLLECTIONS:  # Linen variables; an NNX state has none
    parts = parts[1:]
  return "/".join(parts[:-1]) or parts[-1]


def _unique_names(units) -> tuple[units_lib.Unit, ...]:
  counts: dict[str, int] = {}
  for u in units:
    counts[u.name] = counts.get(u.name, 0) + 1
  out, seen = [], {}
  for u in units:
    name = u.name
    if counts[name] > 1:
      name = f"{u.name}:{u.kind}"
      seen[name] = seen.get(name, 0) + 1
      if seen[name] > 1:
        name = f"{name}{seen[name]}"
    out.append(dataclasses.replace(u, name=name))
  return tuple(out)


def structure_of(apply_fn: Callable[..., Any], variables: Any, *args: Any,
                 approximate: bool = False, **kwargs: Any) -> Structure:
  """The removable neurons, channels, heads and groups of any model.

  Traces ``apply_fn(variables, *args, **kwargs)`` (`jax.make_jaxpr`; nothing
  is computed) and follows each array axis through the computation (see the
  module docstring). The result lists, for each removable structure, the
  parameter slices that belong to each of its elements: the producers
  (kernel columns, biases, normalization scales, shifts and running
  statistics, gates) and the consumers (the next layers' kernel rows). A
  residual add ties the features of its two branches into one unit, a
  concatenation gives each input its own offset range, a flatten makes each
  channel own every pixel of it in the next kernel, a grouped convolution
  makes its groups the elements (the groups stay equal in size).

  Args:
    apply_fn: ``apply_fn(variables, *args, **kwargs)``, e.g. a Linen
      module's ``apply`` (use ``functools.partial`` for keyword arguments
      such as ``train=False``); for an NNX module, `nnx_apply`.
    variables: the model's variables (Linen: ``{'params': ..., ...}``,
      boxed partitioned parameters included; NNX: its state).
    *args: example inputs (a batch of the shape the model is called with).
    approximate: also return units whose removal is not exact (marked
      ``exact=False``, with a ``note`` that says why).
    **kwargs: example keyword arguments for ``apply_fn``.

  Returns:
    A `Structure`: a sequence of `units.Unit`, looked up by name.

  Raises:
    StructureError: for an operation the tracer cannot follow.

  Example:
    >>> import flax.linen as nn
    >>> import jax, jax.numpy as jnp
    >>> import sparsify
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     x = nn.relu(nn.Dense(4)(x))
    ...     return nn.Dense(2)(x)
    >>> x = jnp.ones((1, 3))
    >>> variables = Net().init(jax.random.key(0), x)
    >>> structure = sparsify.structure_of(Net().apply, variables, x)
    >>> [(u.name, u.kind, u.size) for u in structure]
    [('Dense_0', 'neuron', 4)]
    >>> [(s.path, s.axis, s.consumer) for s in structure['Dense_0'].slots]
    [('params/Dense_0/kernel', 1, False), ('params/Dense_0/bias', 0, False), ('params/Dense_1/kernel', 0, True)]
  """
  t = trace(apply_fn, variables, *args, **kwargs)
  return Structure(find_units(t, approximate), t)

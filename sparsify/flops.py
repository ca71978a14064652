"""Forward FLOPs of every parameter, read from the traced computation.

`param_flops` traces ``apply_fn(variables, *args, **kwargs)`` with
`jax.make_jaxpr` (nothing is computed) and counts every ``dot_general`` and
``conv_general_dilated`` in the jaxpr, inside ``jit``, ``custom_jvp_call``,
``custom_vjp_call``, ``remat`` / ``checkpoint`` and ``scan`` (times its
length) too. Each product is 2 FLOPs per multiply-accumulate (MAC), counted
the way XLA's cost analysis counts it::

  dot_general:  macs = prod(batch) * prod(contracted) * prod(lhs free)
                       * prod(rhs free)
  convolution:  macs = (batch / batch_groups) * (in_features / groups)
                       * out_features * prod_d sum_k valid_d(k)

where ``valid_d(k)`` is the number of output positions along spatial axis
``d`` at which kernel tap ``k`` lands on an input element (not on padding,
not between the elements of a dilated input). A 3x3 SAME convolution on a
5x5 image thus has ``(4 + 5 + 4) ** 2 = 169`` valid (position, tap) pairs,
not ``9 * 25``.

The MACs of a product go to its weight: the operand read from a variables
leaf, followed through ``convert_element_type``, ``reshape``, ``transpose``,
``broadcast_in_dim``, ``squeeze``, ``rev``, ``slice``, ``pad``,
``concatenate``, ``copy``, a multiplication or division by a mask,
``select_n`` (`jnp.where`) and the boundaries of the calls above, and not
depending on the example inputs (a normalised activation ``x * scale`` is
no weight). Of two factors read from the variables, the weight is the one
with more entries of a parameter (Linen ``'params'``, `nnx.Param`), then
more distinct entries: ``mask * kernel`` and ``kernel * scale`` are the
kernel's. Each entry of a parameter gets the MACs it takes part in
(`LeafFlops.macs`), so the FLOPs left when some weights are zero follow
exactly (`LeafFlops.effective`): a border tap of a padded convolution is
used at fewer positions than the centre tap. Products with no weight
(attention's ``q @ k^T``) or two (a product of two parameters, such as a
low-rank factorisation ``x @ (a @ b)``: the weight ``a @ b`` is computed,
not read, so both products count here) are counted under the key
``'activations'``, so that the total is every matmul and convolution FLOP
of the computation. Other operations (bias, normalisation, activation
functions, pooling) count 0.

A ``cond`` counts its most expensive branch; a ``while`` loop whose body
multiplies raises a ValueError (its trip count is unknown when tracing).

FLOPs are per example: the counts of the traced batch divided by its size,
the leading axis of the first array argument after ``variables`` (so pass
a batch first; a batch of 1 gives the counts of one call).
"""

from collections.abc import Callable, Mapping
import dataclasses
import math
from typing import Any, NamedTuple

from flax import nnx
import jax
from jax.extend import core as jax_core
import numpy as np

from sparsify.core import paths
from sparsify.core import types

ACTIVATIONS = "activations"  # the key of the products with no weight

# Primitives whose output holds its operand's entries unchanged.
_SAME = frozenset({"convert_element_type", "copy", "neg", "reduce_precision",
                   "optimization_barrier"})
# Calls whose sub-jaxpr takes the call's operands one to one.
_CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr",
          "core_call": "call_jaxpr", "custom_jvp_call": "call_jaxpr",
          "custom_vjp_call": "call_jaxpr", "custom_vjp_call_jaxpr":
          "fun_jaxpr", "remat2": "jaxpr", "checkpoint": "jaxpr"}
_PRODUCTS = ("dot_general", "conv_general_dilated")


@dataclasses.dataclass(frozen=True)
class LeafFlops:
  """The forward FLOPs, per example, of the products reading one leaf.

  Attributes:
    name: the leaf's path (``'Conv_0/kernel'``), or ``'activations'``.
    flops: ``2 * macs.sum()``: an int, or a float when the batch's count is
      not a multiple of the batch size.
    macs: an array of the leaf's shape: the multiply-accumulates per example
      that each entry takes part in (for ``'activations'``, a scalar: their
      total).
  """
  name: str
  flops: int | float
  macs: np.ndarray = dataclasses.field(repr=False, compare=False)

  @property
  def shape(self) -> tuple[int, ...]:
    """The leaf's shape."""
    return self.macs.shape

  def effective(self, weights: Any) -> int | float:
    """Returns the FLOPs of the nonzero entries of ``weights`` only.

    ``effective = 2 * sum(macs[weights != 0])``: exact for any pattern of
    zeros, a padded convolution's border taps included.

    Args:
      weights: the leaf's values with zeros where weights are pruned
        (``param * mask``), or a boolean keep-mask; it broadcasts to
        `shape`.

    Returns:
      The FLOPs per example.

    Example:
      >>> import numpy as np
      >>> from sparsify import flops
      >>> leaf = flops.LeafFlops('k', 10, np.array([1, 2, 2]))
      >>> leaf.effective(np.array([0.5, 0.0, 3.0]))
      6
    """
    keep = np.broadcast_to(np.asarray(weights) != 0, self.macs.shape)
    return (2 * self.macs[keep].sum()).item()


def _is_array(x: Any) -> bool:
  return isinstance(x, (jax.Array, np.ndarray, np.generic,
                        jax.ShapeDtypeStruct))


def _names(variables: Any) -> list[str]:
  """Leaf names; a Linen ``'params'`` collection loses its prefix."""
  strip = (isinstance(variables, Mapping) and "params" in variables and
           not isinstance(variables, nnx.State))
  names = [name for name, _ in paths.named_leaves(variables)]
  return [n[len("params/"):] if strip and n.startswith("params/") else n
          for n in names]


def _param_flags(variables: Any) -> list[bool]:
  """Per leaf: a parameter (Linen ``'params'``, `nnx.Param`), not a mask."""
  if isinstance(variables, nnx.State):
    flags = []
    for v in jax.tree.leaves(variables,
                             is_leaf=lambda x: isinstance(x, nnx.Variable)):
      flags += [isinstance(v, nnx.Param)] * len(jax.tree.leaves(v))
    return flags
  names = [name for name, _ in paths.named_leaves(variables)]
  if isinstance(variables, Mapping) and "params" in variables:
    return [n.startswith("params/") for n in names]
  return [True] * len(names)


def _move(name: str, p: dict[str, Any], ins: list[np.ndarray | None],
          shapes: list[tuple[int, ...]]) -> list[np.ndarray | None]:
  """Where each output entry is read from, for the primitives that move data.

  Args:
    name: the primitive.
    p: its parameters, and ``_in_shapes``, its operands' shapes.
    ins: per operand, an int64 array of its shape holding the flat index of
      the variables entry each of its entries is (-1 for none), or None.
    shapes: the outputs' shapes.

  Returns:
    The outputs' index arrays (None: not read from the variables).
  """
  x, shape = ins[0], shapes[0]
  if name in ("concatenate", "stack"):
    parts = [np.full(s, -1) if i is None else i
             for i, s in zip(ins, p["_in_shapes"])]
    if name == "stack":
      return [np.stack(parts, axis=p["axis"])]
    return [np.concatenate(parts, axis=p["dimension"])]
  if x is None:
    return [None] * len(shapes)
  if name in ("reshape", "squeeze"):
    if p.get("dimensions") is not None and name == "reshape":
      x = np.transpose(x, p["dimensions"])
    return [np.reshape(x, shape)]
  if name == "transpose":
    return [np.transpose(x, p["permutation"])]
  if name == "broadcast_in_dim":
    dims = np.asarray(p["broadcast_dimensions"], int)
    order = np.argsort(dims)
    full = [1] * len(shape)
    for d, n in zip(dims[order], np.asarray(x.shape, int)[order]):
      full[d] = n
    return [np.broadcast_to(np.transpose(x, order).reshape(full), shape)]
  if name == "rev":
    return [np.flip(x, p["dimensions"])]
  if name == "slice":
    strides = p.get("strides") or (1,) * x.ndim
    return [x[tuple(slice(a, b, s) for a, b, s in zip(
        p["start_indices"], p["limit_indices"], strides))]]
  if name == "pad":
    out = np.full(shape, -1)
    where = [lo + np.arange(n) * (interior + 1)
             for n, (lo, _, interior) in zip(x.shape, p["padding_config"])]
    inside = [(w >= 0) & (w < n) for w, n in zip(where, shape)]
    out[np.ix_(*[w[k] for w, k in zip(where, inside)])] = x[np.ix_(*inside)]
    return [out]
  if name == "split":
    return list(np.split(x, np.cumsum(p["sizes"])[:-1], axis=p["axis"]))
  return [None] * len(shapes)


def _tap_counts(p: dict[str, Any], lhs_shape, rhs_shape, out_shape):
  """Per spatial axis: MAC counts of each kernel tap and each input entry."""
  lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
  taps, inputs = [], []
  for d in range(len(lhs_spec) - 2):
    size, k, o = (lhs_shape[lhs_spec[d + 2]], rhs_shape[rhs_spec[d + 2]],
                  out_shape[out_spec[d + 2]])
    base, window = p["lhs_dilation"][d], p["rhs_dilation"][d]
    u = (np.arange(o)[:, None] * p["window_strides"][d] - p["padding"][d][0]
         + np.arange(k)[None, :] * window)  # dilated input index, [o, k]
    valid = (u % base == 0) & (u >= 0) & (u // base < size)
    taps.append(valid.sum(0))
    inputs.append(np.bincount((u // base)[valid], minlength=size))
  return taps, inputs


def _spread(counts: list[np.ndarray], axes, ndim: int) -> np.ndarray:
  """The outer product of per-axis counts, placed at ``axes`` of ``ndim``."""
  out = np.ones((1,) * ndim, np.int64)
  for c, a in zip(counts, axes):
    shape = [1] * ndim
    shape[a] = c.size
    out = out * c.reshape(shape)
  return out


def _macs(name: str, p: dict[str, Any], shapes, out_shape):
  """(total MACs, MACs per lhs entry, MACs per rhs entry), broadcastable."""
  lhs, rhs = shapes
  if name == "dot_general":
    (lc, rc), (lb, rb) = p["dimension_numbers"]
    free = [math.prod(s[i] for i in range(len(s)) if i not in (*c, *b))
            for s, c, b in ((lhs, lc, lb), (rhs, rc, rb))]
    total = math.prod(out_shape) * math.prod(lhs[i] for i in lc)
    return total, np.int64(free[1]), np.int64(free[0])
  lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
  groups, batch_groups = p["feature_group_count"], p["batch_group_count"]
  taps, inputs = _tap_counts(p, lhs, rhs, out_shape)
  batch, features = lhs[lhs_spec[0]], out_shape[out_spec[1]]
  per_rhs = (batch // batch_groups) * _spread(taps, rhs_spec[2:], len(rhs))
  per_lhs = (features // (groups * batch_groups)) * _spread(
      inputs, lhs_spec[2:], len(lhs))
  total = (batch // batch_groups) * (lhs[lhs_spec[1]] // groups) * features * (
      math.prod(int(t.sum()) for t in taps))
  return total, per_lhs, per_rhs


def _has_products(jaxpr) -> bool:
  """Whether a (closed) jaxpr or any jaxpr inside it has a product."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  return any(e.primitive.name in _PRODUCTS or any(
      _has_products(j) for j in _sub_jaxprs(e)) for e in jaxpr.eqns)


def _sub_jaxprs(eqn) -> list[Any]:
  out = []
  for v in eqn.params.values():
    for j in v if isinstance(v, (tuple, list)) else (v,):
      if isinstance(j, (jax_core.Jaxpr, jax_core.ClosedJaxpr)):
        out.append(j)
  return out


class _Value(NamedTuple):
  """What the walk knows of one array of the jaxpr."""
  index: np.ndarray | None  # the variables entry of each entry (-1: none)
  live: bool  # whether it depends on the example inputs


_CONST = _Value(None, False)


class _Counter:
  """Walks a jaxpr, adding each product's MACs to the entries it reads.

  An operand is a weight when it is read from the variables (`_move`, or a
  mask applied to it) and does not depend on the example inputs.
  """

  def __init__(self, is_param: np.ndarray):
    self.is_param = is_param  # per variables entry: a parameter's
    self.macs = np.zeros(is_param.size, np.int64)
    self.other = 0  # MACs of products with no weight operand, or two

  def add(self, index: np.ndarray, per: np.ndarray, scale: int) -> None:
    per = np.broadcast_to(per, index.shape) * scale
    ours = index >= 0
    np.add.at(self.macs, index[ours], per[ours])
    self.other += int(per[~ours].sum())

  def weight_score(self, index: np.ndarray) -> tuple[int, int]:
    """Ranks factors: the weight has more parameter, then distinct, entries.

    So ``mask * kernel`` and ``kernel * scale`` (a broadcast scale has as
    many entries, few distinct) are the kernel.
    """
    ours = index[index >= 0]
    return int(self.is_param[ours].sum()), np.unique(ours).size

  def run(self, jaxpr, ins: list[_Value], scale: int) -> list[_Value]:
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    env = dict.fromkeys(jaxpr.constvars, _CONST)
    env.update(zip(jaxpr.invars, ins))
    read = lambda v: _CONST if isinstance(v, jax_core.Literal) else env[v]
    for eqn in jaxpr.eqns:
      env.update(zip(eqn.outvars, self.eqn(eqn, list(map(read, eqn.invars)),
                                           scale)))
    return [read(v) for v in jaxpr.outvars]

  def eqn(self, eqn, ins: list[_Value], scale: int) -> list[_Value]:
    name, p = eqn.primitive.name, eqn.params
    shapes = [tuple(v.aval.shape) for v in eqn.outvars]
    live = any(v.live for v in ins)
    if name in _PRODUCTS:
      total, *per = _macs(name, p, [tuple(v.aval.shape) for v in eqn.invars],
                          shapes[0])
      weights = [k for k, v in enumerate(ins) if not v.live and
                 v.index is not None and (v.index >= 0).any()]
      if len(weights) == 1:
        self.add(ins[weights[0]].index, per[weights[0]], scale)
      else:
        self.other += total * scale
      return [_Value(None, live)]
    if name in _CALLS:
      return self.run(p[_CALLS[name]], ins, scale)
    if name == "scan":
      return self.scan(eqn, ins, scale)
    if name == "cond":
      return self.cond(eqn, ins, scale)
    if any(_has_products(j) for j in _sub_jaxprs(eqn)):
      why = ("its trip count is not known when tracing; write the loop as "
             "lax.scan or fori_loop with static bounds" if name == "while"
             else "its sub-computation is not followed")
      raise ValueError(f"param_flops: cannot count the products inside "
                       f"primitive {name!r}: {why}.")
    if all(v.index is None for v in ins):
      return [_Value(None, live)] * len(shapes)
    if name in _SAME:
      return [_Value(None if v.index is None else
                     np.broadcast_to(v.index, s), v.live)
              for v, s in zip(ins, shapes)]
    if name in ("mul", "div", "select_n"):  # a weight times a mask
      if live:
        return [_Value(None, True)]
      operands = {"div": ins[:1], "select_n": ins[1:]}.get(name, ins)
      index = [v.index for v in operands if v.index is not None]
      if not index:
        return [_CONST]
      best = max(index, key=self.weight_score) if len(index) > 1 else index[0]
      return [_Value(np.broadcast_to(best, shapes[0]), False)]
    p = dict(p, _in_shapes=[tuple(v.aval.shape) for v in eqn.invars])
    return [_Value(i, live) for i in _move(name, p, [v.index for v in ins],
                                           shapes)]

  def scan(self, eqn, ins: list[_Value], scale: int) -> list[_Value]:
    """The body once, its products counted ``length`` times.

    A stacked operand (``xs``) gets entries of its own for one slice; their
    counts go back to every slice of the stacked leaf.
    """
    p = eqn.params
    length, start = p["length"], p["num_consts"] + p["num_carry"]
    body = list(ins[:p["num_consts"]]) + [_Value(None, True)] * p["num_carry"]
    stacked = []
    for v in ins[start:]:
      if v.index is None:
        body.append(v)
        continue
      offset, inner = self.macs.size, v.index.shape[1:]
      first = v.index[0].ravel()
      self.is_param = np.concatenate(
          [self.is_param, (first >= 0) & self.is_param[np.maximum(first, 0)]])
      self.macs = np.concatenate([self.macs, np.zeros(first.size, np.int64)])
      body.append(_Value(offset + np.arange(first.size).reshape(inner),
                         v.live))
      stacked.append((offset, v.index))
    self.run(p["jaxpr"], body, scale * length)
    for offset, index in reversed(stacked):
      per_slice = self.macs[offset:] // length  # counted with scale * length
      self.macs, self.is_param = self.macs[:offset], self.is_param[:offset]
      self.add(index.reshape(length, -1), per_slice[None], 1)
    return [_Value(None, True)] * len(eqn.outvars)

  def cond(self, eqn, ins: list[_Value], scale: int) -> list[_Value]:
    """The branch with the most MACs (an upper bound for any index)."""
    before, other = self.macs.copy(), self.other
    best = None
    for branch in eqn.params["branches"]:
      self.macs, self.other = before.copy(), other
      self.run(branch, ins[1:], scale)
      cost = int(self.macs.sum()) + self.other
      if best is None or cost > best[0]:
        best = (cost, self.macs, self.other)
    _, self.macs, self.other = best
    live = any(v.live for v in ins)
    return [_Value(None, live)] * len(eqn.outvars)


def _per_example(macs: np.ndarray, batch: int) -> np.ndarray:
  if np.all(macs % batch == 0):
    return macs // batch
  return macs / batch


def param_flops(apply_fn: Callable[..., Any], variables: Any, *args: Any,
                **kwargs: Any) -> dict[str, LeafFlops]:
  """Counts the matmul and convolution FLOPs of each parameter, per example.

  For each leaf ``w``: ``flops(w) = 2 * sum over the products that read w
  of their MACs / batch`` (see the module docstring: the MACs are those
  XLA's cost analysis counts, padding and dilation holes excluded), and
  ``flops['activations']`` holds the products with no weight operand, or
  two (attention's ``q @ k^T``).

  Args:
    apply_fn: called as ``apply_fn(variables, *args, **kwargs)``: a Linen
      module's ``apply``, or for an NNX module the function of `nnx_apply`.
    variables: the model's variables: Linen ``{'params': ..., ...}`` (boxed
      parameters too), or an NNX state; arrays or `jax.ShapeDtypeStruct`.
    *args: example inputs, batch first. Arguments that are not arrays
      (``train=False``) are bound, not traced.
    **kwargs: example keyword arguments of ``apply_fn``
      (``mutable=['batch_stats']``, ``rngs=...``).

  Returns:
    ``{name: LeafFlops}`` for every leaf of ``variables`` in flattening
    order (0 FLOPs for biases and statistics), then ``'activations'``.
    Leaves of a Linen ``'params'`` collection are named without it
    (``'Conv_0/kernel'``), those of other collections with it
    (``'batch_stats/BatchNorm_0/mean'``); NNX leaves by their attributes
    (``'linear1/kernel'``).

  Raises:
    ValueError: a ``while`` loop (or a primitive not followed) contains a
      product, or a leaf is named ``'activations'``.

  Example:
    >>> import flax.linen as nn
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     x = nn.relu(nn.Conv(4, (3, 3))(x))  # SAME padding
    ...     return nn.Dense(2)(x.reshape(x.shape[0], -1))
    >>> x = jnp.ones((8, 5, 5, 1))
    >>> variables = jax.eval_shape(Net().init, jax.random.key(0), x)
    >>> flops = sparsify.param_flops(Net().apply, variables, x)
    >>> flops['Conv_0/kernel'].flops  # 2 * 4 * (4 + 5 + 4) ** 2, not 2*36*25
    1352
    >>> flops['Dense_0/kernel'].flops, flops['Conv_0/bias'].flops
    (400, 0)
    >>> flops['Conv_0/kernel'].macs[:, :, 0, 0]  # each tap's positions
    array([[16, 20, 16],
           [20, 25, 20],
           [16, 20, 16]])
  """
  leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
  traced = [k for k, x in enumerate(leaves) if _is_array(x)]

  def fn(variables, *arrays):
    full = list(leaves)
    for k, a in zip(traced, arrays):
      full[k] = a
    a, kw = jax.tree_util.tree_unflatten(treedef, full)
    return apply_fn(variables, *a, **kw)

  arrays = [leaves[k] for k in traced]
  batch = next((int(x.shape[0]) for x in arrays if len(x.shape)), 1)
  closed = jax.make_jaxpr(fn)(variables, *arrays)
  names = _names(variables)
  if ACTIVATIONS in names:
    raise ValueError(f"variables: a leaf is named {ACTIVATIONS!r}, the key "
                     "of the products with no parameter operand.")
  sizes = [math.prod(v.aval.shape) for v in closed.jaxpr.invars[:len(names)]]
  offsets = np.cumsum([0, *sizes])
  counter = _Counter(np.repeat(_param_flags(variables), sizes))
  ins = [_Value(offsets[k] + np.arange(n).reshape(v.aval.shape), False)
         for k, (n, v) in enumerate(zip(sizes, closed.jaxpr.invars))]
  counter.run(closed, ins + [_Value(None, True)] * len(arrays), 1)
  out = {}
  for k, name in enumerate(names):
    shape = closed.jaxpr.invars[k].aval.shape
    macs = _per_example(counter.macs[offsets[k]:offsets[k + 1]], batch)
    out[name] = LeafFlops(name, (2 * macs.sum()).item(), macs.reshape(shape))
  other = _per_example(np.asarray(counter.other, np.int64), batch)
  out[ACTIVATIONS] = LeafFlops(ACTIVATIONS, (2 * other).item(), other)
  return out


def effective_flops(flops: Mapping[str, LeafFlops], params: types.Params,
                    masks: types.Masks | None = None) -> dict[str, int | float]:
  """The FLOPs of each leaf when its zero (or masked) weights are skipped.

  ``effective(w) = 2 * sum(macs(w)[w * m != 0])`` for a leaf of ``params``
  with mask ``m``; the other entries of ``flops`` (``'activations'``, leaves
  absent from ``params``) keep their FLOPs.

  Args:
    flops: the result of `param_flops`.
    params: the parameter values, named as `param_flops` names them (Linen
      ``variables['params']`` or the whole variables; an NNX state).
    masks: None, or keep-masks shaped like ``params``; a leaf may be None
      or `optax.MaskedNode` for "no mask", and a mask broadcasts to its
      parameter.

  Returns:
    ``{name: FLOPs per example}`` for every entry of ``flops``.

  Example:
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import sparsify
    >>> apply_fn = lambda p, x: x @ p['fc']['kernel']
    >>> params = {'fc': {'kernel': np.eye(4, dtype=np.float32)}}
    >>> flops = sparsify.param_flops(apply_fn, params, jnp.ones((2, 3, 4)))
    >>> flops['fc/kernel'].flops  # 3 tokens * 4 * 4 MACs, twice
    96
    >>> sparsify.effective_flops(flops, params)  # 4 nonzeros
    {'fc/kernel': 24, 'activations': 0}
  """
  values = dict(zip(_names(params), jax.tree.leaves(params)))
  keep = {} if masks is None else dict(zip(_names(masks),
                                           jax.tree.leaves(masks)))
  out = {}
  for name, leaf in flops.items():
    if name in values:
      w = np.asarray(values[name]) != 0
      out[name] = leaf.effective(w & np.asarray(keep.get(name, True), bool))
    else:
      out[name] = leaf.flops
  return out


def nnx_apply(module: nnx.Module) -> tuple[Callable[..., Any], nnx.State]:
  """Splits an NNX module into ``(apply_fn, state)`` for `param_flops`.

  ``apply_fn(state, *args, **kwargs)`` merges the module's graph with
  ``state`` and calls it: a pure function of the state, as a Linen
  ``apply`` is of its variables. The module is not changed.

  Args:
    module: an `nnx.Module` (concrete, or abstract from `nnx.eval_shape`).

  Returns:
    ``(apply_fn, state)``, ``state`` being every variable of the module
    (``nnx.split(module)``): parameters, batch statistics, RNG counts.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import sparsify
    >>> model = nnx.eval_shape(lambda: nnx.Linear(3, 4, rngs=nnx.Rngs(0)))
    >>> flops = sparsify.param_flops(*sparsify.nnx_apply(model),
    ...                              jnp.ones((5, 3)))
    >>> {name: leaf.flops for name, leaf in flops.items()}
    {'bias': 0, 'kernel': 24, 'activations': 0}
  """
  graphdef, state = nnx.split(module)

  def apply_fn(state, *args, **kwargs):
    return nnx.merge(graphdef, state)(*args, **kwargs)

  return apply_fn, state

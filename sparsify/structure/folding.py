"""Constants of removed elements, folded into the layers that read them.

A removed element is not always zero where the next layer reads it: a
channel whose BatchNorm scale is zero still outputs ``relu(beta)``, a
neuron whose kernel column is zero still outputs ``act(bias)``. Such an
element is a constant, and what the next layer computes from it is a
constant too. For a contraction that is linear in the activation ``x`` it
reads (a Dense ``dot_general``, a convolution),

.. math::
  f(x, W) = f(x_K, W_K) + f(c_R, W_R),

with ``K`` the kept and ``R`` the removed elements of the contracted axis and
``c_R`` their constant values broadcast over the other axes; the slim model
adds the second term, evaluated at the shapes of each call (so a padded
convolution's borders are right) with the removed rows ``W_R`` kept aside.

An element counts as constant when its value is the same everywhere along
the other axes for two different inputs (the example, and the example
perturbed). A removed element that is not constant is not folded: the slim
model then computes the masked model, as for an element that reads zero.
"""

import dataclasses
from typing import Any

import jax
from jax.extend import core as jcore
import jax.numpy as jnp
import numpy as np

from sparsify.structure import rebuild
from sparsify.structure import trace as trace_lib

_LINEAR = ("dot_general", "conv_general_dilated")


@dataclasses.dataclass(frozen=True)
class Fold:
  """The constant term one contraction loses with its removed inputs.

  Attributes:
    key: which contraction: its primitive, the parameters its weight
      operand is a re-layout of, and how many contractions of them come
      before it (so that it is found again in a trace of another mode,
      ``train=True``, whose equations are numbered differently).
    primitive: its primitive's name.
    x_side: which operand is the activation (0 or 1).
    axis: the activation's contracted axis.
    w_axis: the other operand's contracted axis.
    constants: ``(n,)`` values of the ``n`` removed elements.
    rows: the other operand's slices of the removed elements, ``n`` along
      ``w_axis``, full size along its other axes.
  """
  key: tuple[Any, ...]
  primitive: str
  x_side: int
  axis: int
  w_axis: int
  constants: np.ndarray
  rows: np.ndarray


def _contracted(eqn, values):
  """``(x_side, axis, w_axis)`` of a linear contraction, or None."""
  name = eqn.primitive.name
  if name not in _LINEAR or any(
      isinstance(v, jcore.Literal) for v in eqn.invars):
    return None
  lhs, rhs = (values[v] for v in eqn.invars)
  if lhs.from_params() == rhs.from_params():
    return None  # two activations (attention scores) or two parameters
  x_side = 1 if lhs.from_params() else 0
  p = eqn.params
  if name == "dot_general":
    (lc, rc), (lb, _) = p["dimension_numbers"]
    if len(lc) != 1 or lb:
      return None
    axes = (lc[0], rc[0])
  else:
    if x_side != 0 or p["feature_group_count"] != 1 or (
        p["batch_group_count"] != 1):
      return None
    dn = p["dimension_numbers"]
    axes = (dn.lhs_spec[1], dn.rhs_spec[1])
  return x_side, axes[x_side], axes[1 - x_side]


def _keys(frame):
  """``{site: key}`` of the linear contractions of a traced frame."""
  counts: dict[tuple, int] = {}
  out = {}
  for site, eqn, f in rebuild.sites(frame):
    found = _contracted(eqn, f.values)
    if found is None:
      continue
    w = f.values[eqn.invars[1 - found[0]]]
    params = (eqn.primitive.name,
              tuple(sorted({name for o in w.origin for name, _ in o})))
    counts[params] = counts.get(params, -1) + 1
    out[site] = (*params, counts[params])
  return out


def _perturbed(leaves, seed=0):
  """The example inputs changed: noise on floats, shifted integers."""
  rng = np.random.default_rng(seed)
  out = []
  for x in leaves:
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.floating):
      scale = max(1.0, float(np.abs(x).max()) if x.size else 1.0)
      out.append((x + scale * rng.standard_normal(x.shape)).astype(x.dtype))
    elif np.issubdtype(x.dtype, np.integer) and x.size and x.max() > 0:
      out.append(((x + 1) % (x.max() + 1)).astype(x.dtype))
    else:
      out.append(x)
  return out


def find_folds(t: trace_lib.Traced, kept: np.ndarray, variables: Any,
               args: Any, kwargs: Any, rtol: float = 1e-6) -> list[Fold]:
  """The folds of the removed elements that are nonzero constants.

  Args:
    t: the traced computation, its units found.
    kept: `surgery.node_keep` of the removal.
    variables: the full model's variables (values, not shapes).
    args: the array arguments the computation was traced with.
    kwargs: the array keyword arguments.
    rtol: how far from constant a removed element may be, relative to its
      largest magnitude.

  Returns:
    One `Fold` per contraction that reads removed nonzero constants.
  """
  candidates = {}
  keys = _keys(t.frame)
  for site, eqn, frame in rebuild.sites(t.frame):
    found = _contracted(eqn, frame.values)
    if found is None:
      continue
    x_side, axis, w_axis = found
    x = frame.values[eqn.invars[x_side]]
    removed = np.flatnonzero(~kept[x.nodes[axis]])
    if removed.size:
      candidates[site] = (eqn, x_side, axis, w_axis, removed)
  if not candidates:
    return []
  inputs = jax.tree.leaves((args, kwargs))
  var_leaves = jax.tree.leaves(variables)

  @jax.jit
  def record(flat):
    """Both operands of every candidate, in one compiled evaluation."""
    store = {}

    def recorder(site):
      def hook(ins, outs):
        store[site] = list(ins)
        return outs
      return hook

    rebuild.evaluate(t.frame, np.ones_like(kept), t.closed.consts, flat,
                     {site: recorder(site) for site in candidates})
    return store

  seen = [jax.tree.map(np.asarray, record([*var_leaves, *xs]))
          for xs in (inputs, _perturbed(inputs))]
  folds = []
  for site, (eqn, x_side, axis, w_axis, removed) in candidates.items():
    values = []
    for store in seen:
      x = np.moveaxis(np.take(store[site][x_side], removed, axis=axis),
                      axis, 0).reshape(len(removed), -1)
      values.append(x)
    c = values[0][:, 0]
    tol = rtol * max(1.0, float(np.abs(values[0]).max()))
    constant = all(np.abs(v - c[:, None]).max() <= tol for v in values)
    if not constant or not np.any(c):
      continue
    w = seen[0][site][1 - x_side]
    folds.append(Fold(keys[site], eqn.primitive.name, x_side, axis, w_axis,
                      c.astype(w.dtype), np.take(w, removed, axis=w_axis)))
  return folds


def hooks_for(t: trace_lib.Traced, kept: np.ndarray, folds: list[Fold]):
  """``rebuild.evaluate`` hooks adding each fold's term, for one trace.

  Args:
    t: a trace of the same model (possibly at other input shapes).
    kept: its `surgery.node_keep`.
    folds: from `find_folds`.

  Returns:
    ``{site: hook}``.

  Raises:
    trace.StructureError: a fold's contraction is not in ``t``.
  """
  if not folds:
    return {}
  keys = _keys(t.frame)
  at = {keys[site]: (site, eqn, frame)
        for site, eqn, frame in rebuild.sites(t.frame) if site in keys}
  hooks = {}
  for f in folds:
    site, eqn, frame = at.get(f.key, (None, None, None))
    if eqn is None:
      raise trace_lib.StructureError(
          f"slim_model: the {f.primitive} of {f.key[1]} that absorbs "
          "removed constants is not in the model traced for these inputs")
    w_value = frame.values[eqn.invars[1 - f.x_side]]
    masks = [kept[n] for n in w_value.nodes]
    masks[f.w_axis] = np.ones(len(f.constants), bool)
    rows = rebuild.take(f.rows, masks)
    hooks[site] = _adder(eqn, f, rows)
  return hooks


def _adder(eqn, fold: Fold, rows):
  def hook(ins, outs):
    x = ins[fold.x_side]
    shape = list(x.shape)
    shape[fold.axis] = len(fold.constants)
    where = [1] * len(shape)
    where[fold.axis] = -1
    c = jnp.broadcast_to(
        jnp.asarray(fold.constants, x.dtype).reshape(where), shape)
    operands = [c, rows] if fold.x_side == 0 else [rows, c]
    term = eqn.primitive.bind(*operands, **eqn.params)
    return [outs[0] + term]
  return hook

"""The mask mechanism that every masking method of sparsify shares.

A masking method is an `optax.GradientTransformation` whose state holds one
boolean mask per prunable parameter. It rewrites the updates so that

    optax.apply_updates(params, updates) == where(mask, params + updates, 0)

exactly, so the training step needs no extra call: it works with flax's
`TrainState.apply_gradients`, `nnx.Optimizer.update` and a hand-written loop,
placed at the end of any optax chain. A kept weight receives the chain's update
unchanged; a pruned weight receives ``-w`` and lands on exactly zero, whatever
momentum or Adam state would have done to it.

The parts compose: a *policy* decides the masks (magnitude, random, adaptive
threshold), `mask_updates` stores them and enforces them, and `optax.masked`
restricts the whole thing to the parameters selected by a `paths.Where` (by
default Dense and Conv kernels). Parameters that are not selected have no
mask: their leaf in the masks is `types.NO_MASK`.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from sparsify.core import checks
from sparsify.core import paths
from sparsify.core import schedules
from sparsify.core import types

InitMasks = Callable[[types.Params], types.Masks]
UpdateMasks = Callable[[jax.Array, types.Params, types.Masks], types.Masks]


class MaskState(NamedTuple):
  """State of `mask_updates`.

  Attributes:
    count: number of updates seen so far (int32).
    masks: one boolean array per selected parameter; `True` keeps a weight.
    dense: with ``keep_pruned=True``, the values the selected weights take
      if pruned ones keep training (kept ones equal the parameters); an empty
      tuple otherwise.
  """
  count: jax.Array
  masks: types.Masks
  dense: types.Params = ()


def all_true(params: types.Params) -> types.Masks:
  """Masks that keep every weight.

  Args:
    params: a pytree of arrays.

  Returns:
    A pytree shaped like ``params`` of all-`True` boolean arrays.

  Example:
    >>> import jax.numpy as jnp
    >>> from sparsify.core import masking
    >>> masking.all_true({'fc': {'kernel': jnp.zeros((2, 3))}})['fc']['kernel']
    Array([[ True,  True,  True],
           [ True,  True,  True]], dtype=bool)
  """
  return jax.tree.map(lambda p: jnp.ones(jnp.shape(p), jnp.bool_), params)


def enforce(
    updates: optax.Updates, params: types.Params, masks: types.Masks
) -> optax.Updates:
  """Rewrites ``updates`` so that ``params + updates`` is zero where masked.

  Kept entries pass through bit for bit; masked ones become ``-params``, so
  the sum is exactly ``0.0``: ``u' = where(m, u, -w)``.

  Args:
    updates: the updates of the optimizer chain.
    params: the current parameters, shaped like ``updates``.
    masks: booleans shaped like ``updates``; `False` marks a pruned weight.

  Returns:
    The rewritten updates, shaped and typed like ``updates``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sparsify.core import masking
    >>> masking.enforce(jnp.array([0.5, 0.5]), jnp.array([1.0, 2.0]),
    ...                 jnp.array([True, False]))
    Array([ 0.5, -2. ], dtype=float32)
  """
  return jax.tree.map(lambda u, p, m: jnp.where(m, u, -p), updates, params,
                      masks)


def mask_updates(
    init_masks: InitMasks = all_true,
    update_masks: UpdateMasks | None = None,
    *,
    update_every: types.ScalarOrSchedule = 1,
    begin_step: types.ScalarOrSchedule = 0,
    end_step: types.ScalarOrSchedule | None = None,
    keep_pruned: bool = False,
    where: paths.Where = None,
) -> optax.GradientTransformation:
  r"""Holds masks in the optimizer state and applies them through the updates.

  At step :math:`t` (the transform's own count), when
  :math:`t_0 \le t \le t_1` and :math:`(t - t_0) \bmod k = 0`, and at
  :math:`t = t_1` so that a schedule always reaches its end, the masks are
  recomputed as ``update_masks(t, weights, masks)`` from the current weights
  :math:`w_t`, and the step's updates are rewritten to
  :math:`u' = m \odot u - (1 - m) \odot w`, so that
  :math:`w + u' = m \odot (w + u)`: the new masks apply in the same step.

  With ``keep_pruned=True`` pruned weights keep training in the state, as in
  Dynamic Network Surgery: :math:`\hat w \leftarrow \hat w + u` where
  pruned, :math:`\hat w = w + u` where kept; the policy sees :math:`\hat w`
  for pruned weights and may revive one, which then re-enters the model with
  its trained value. This keeps one extra copy of the selected weights.

  ``update_every``, ``begin_step`` and ``end_step`` are integers, traced
  arrays or schedules of the step count, so `optax.inject_hyperparams` can
  trace them; ``init_masks``, ``update_masks`` and a predicate ``where`` are
  callables that are not schedules: name them in its ``static_args``.

  Args:
    init_masks: ``params -> masks`` for the selected parameters. The masks
      may also cover more leaves (e.g. the masks of a whole model, or a
      ``{path: mask}`` dict): each selected parameter takes the mask of its
      path, and one without a mask (absent, or `types.NO_MASK`) keeps every
      weight. A callable that is not a schedule: static.
    update_masks: ``(step, weights, masks) -> masks``, jit-compatible; ``None``
      keeps the initial masks for the whole run (static sparsity). Static,
      like ``init_masks``.
    update_every: recompute the masks every this many steps (``k``).
    begin_step: first step at which masks are recomputed (``t0``).
    end_step: last step at which masks are recomputed (``t1``); ``None`` for
      no end.
    keep_pruned: keep training pruned weights in the state (for revival).
    where: which parameters are masked (a `paths.Where`): ``None`` for Dense
      and Conv kernels, a regex searched in the parameter's path
      (``'Dense_[01]/kernel'``), a collection of paths or a predicate
      ``(path, leaf) -> bool``. Other parameters are untouched, and their
      masks in the state are `types.NO_MASK`.

  Returns:
    An `optax.GradientTransformation`; place it last in the chain.

  Example:
    Static masks that drop the negative weights of every kernel; biases are
    not selected and train as usual:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import sparsify
    >>> params = {'fc': {'kernel': jnp.array([[1.0, -2.0], [-3.0, 4.0]]),
    ...                  'bias': jnp.array([-1.0, 1.0])}}
    >>> tx = optax.chain(optax.sgd(0.5), sparsify.mask_updates(
    ...     lambda p: jax.tree.map(lambda w: w >= 0, p)))
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)  # already masked
    >>> params['fc']['kernel']
    Array([[0.5, 0. ],
           [0. , 3.5]], dtype=float32)
    >>> params['fc']['bias']
    Array([-1.5,  0.5], dtype=float32)
  """
  checks.check_integer("update_every", update_every, 1)
  if end_step is None:
    checks.check_integer("begin_step", begin_step, 0)
  else:
    checks.check_window(begin_step, end_step)

  def init_fn(params):
    dense = jax.tree.map(jnp.copy, params) if keep_pruned else ()  # own buffers
    given = dict(paths.named_leaves(init_masks(params)))
    masks = paths.map_with_name(
        lambda name, p: given[name] if name in given else jnp.ones(
            jnp.shape(p), bool), params)
    return MaskState(count=jnp.zeros([], jnp.int32), masks=masks, dense=dense)

  def update_fn(updates, state, params=None):
    checks.require_params(params)
    old = state.masks
    # The policy sees the current weights; with keep_pruned, pruned ones at
    # the values they trained to. Using values already in memory (not
    # params + updates) keeps the updates out of the conditional, so steps
    # that do not recompute masks cost no more than static masks.
    current = (jax.tree.map(jnp.where, old, params, state.dense)
               if keep_pruned else params)
    masks = old
    if update_masks is not None:
      step = state.count
      begin = schedules.value_at(begin_step, step)
      every = schedules.value_at(update_every, step)
      due = (step >= begin) & ((step - begin) % every == 0)
      if end_step is not None:
        end = schedules.value_at(end_step, step)
        due = (due & (step <= end)) | (step == end)
      masks = jax.lax.cond(due, lambda: update_masks(step, current, old),
                           lambda: old)
    if keep_pruned:
      # Pruned weights keep training in `dense`; revived ones (kept now,
      # pruned before) re-enter the model with that trained value.
      dense = jax.tree.map(lambda m, p, d, u: jnp.where(m, p + u, d + u), old,
                           params, state.dense, updates)
      updates = jax.tree.map(
          lambda u, p, m, o, d: jnp.where(m, jnp.where(o, u, d - p), -p),
          updates, params, masks, old, dense)
    else:
      dense = ()
      updates = enforce(updates, params, masks)
    count = optax.safe_increment(state.count)
    return updates, MaskState(count=count, masks=masks, dense=dense)

  inner = optax.GradientTransformation(init_fn, update_fn)
  return optax.masked(inner, lambda params: paths.select(params, where))


def find_masks(opt_state: optax.OptState) -> types.Masks | None:
  """Returns the masks held anywhere in an optimizer state, or ``None``.

  The masks are shaped like the parameters; a parameter without a mask (not
  selected by the method's ``where``) has `types.NO_MASK`, which keeps all
  its weights in `apply_masks`, `fill_masks` and the compression report.

  Args:
    opt_state: the state of an optimizer chain holding at most one masking
      transform (a `MaskState`).

  Returns:
    The masks, or ``None`` when the state holds no `MaskState`.

  Raises:
    ValueError: if the state holds more than one `MaskState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import sparsify
    >>> from sparsify.core import types
    >>> params = {'fc': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)}}
    >>> tx = optax.chain(optax.sgd(0.1), sparsify.magnitude_pruning(0.5))
    >>> masks = sparsify.find_masks(tx.init(params))
    >>> masks['fc']['kernel'].shape, types.is_no_mask(masks['fc']['bias'])
    ((2, 2), True)
    >>> print(sparsify.find_masks(optax.sgd(0.1).init(params)))
    None
  """
  found = [
      s for s in jax.tree.leaves(
          opt_state, is_leaf=lambda x: isinstance(x, MaskState))
      if isinstance(s, MaskState)
  ]
  if not found:
    return None
  if len(found) > 1:
    raise ValueError(f"found {len(found)} mask states in the optimizer "
                     "state; chain at most one masking transform")
  return found[0].masks


def apply_masks(params: types.Params, masks: types.Masks | None) -> types.Params:
  """Returns ``params`` with masked entries set to zero.

  Args:
    params: a pytree of arrays.
    masks: booleans shaped like ``params``, `False` where a weight is pruned;
      a `types.NO_MASK` leaf keeps its parameter whole, and ``None`` keeps
      everything.

  Returns:
    A pytree shaped like ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> import sparsify
    >>> from sparsify.core import types
    >>> params = {'kernel': jnp.array([1.0, -2.0, 3.0]), 'bias': jnp.ones(1)}
    >>> masks = {'kernel': jnp.array([True, False, True]),
    ...          'bias': types.NO_MASK}
    >>> sparsify.apply_masks(params, masks)
    {'bias': Array([1.], dtype=float32),
     'kernel': Array([1., 0., 3.], dtype=float32)}
  """
  if masks is None:
    return params
  return jax.tree.map(
      lambda m, p: p if types.is_no_mask(m) else jnp.where(m, p, 0),
      masks, params, is_leaf=types.is_no_mask)


def fill_masks(masks: types.Masks | None, params: types.Params) -> types.Masks:
  """A boolean mask for every parameter: `types.NO_MASK` keeps everything.

  Args:
    masks: masks shaped like ``params`` with `types.NO_MASK` leaves, or
      ``None`` for no masks at all.
    params: the parameters the masks belong to.

  Returns:
    A pytree shaped like ``params`` with a boolean array at every leaf:
    all-`True` where ``masks`` has `types.NO_MASK` (or is ``None``).

  Example:
    >>> import jax.numpy as jnp
    >>> from sparsify.core import masking
    >>> from sparsify.core import types
    >>> params = {'kernel': jnp.ones(3), 'bias': jnp.ones(2)}
    >>> masking.fill_masks({'kernel': jnp.array([True, False, True]),
    ...                     'bias': types.NO_MASK}, params)
    {'bias': Array([ True,  True], dtype=bool),
     'kernel': Array([ True, False,  True], dtype=bool)}
  """
  if masks is None:
    return all_true(params)
  return jax.tree.map(
      lambda m, p: jnp.ones(jnp.shape(p), jnp.bool_) if types.is_no_mask(m)
      else jnp.asarray(m, jnp.bool_), masks, params, is_leaf=types.is_no_mask)

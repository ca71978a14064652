r"""Masks decided from the raw gradients, by a transform around the optimizer.

A masking transform placed after the optimizer (`masking.mask_updates`) sees
the optimizer's updates, never the gradients. That is enough for magnitude
pruning, not for the methods that score weights by their gradients: SNIP and
gradual saliency pruning rank weights by :math:`|g \odot w|`, RigL regrows
the pruned weights of largest :math:`|g|`. `masked_optimizer` takes the
optimizer as an argument, so the user still writes one transform: it
receives the raw gradients, lets a policy read them, runs the optimizer on
the gradients of the kept weights and masks the optimizer's updates through
`masking.mask_updates`, so that `optax.apply_updates` (flax's
`TrainState.apply_gradients`, `nnx.Optimizer.update`) needs no extra call.

`topk.top_k_exact` is the selection these methods share: exactly ``k`` entries,
ties broken by position, sort-free like `topk.top_k_mask`.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from sparsify.core import checks
from sparsify.core import masking
from sparsify.core import paths
from sparsify.core import schedules
from sparsify.core import types


# ``(step, weights, masks, grads, scores) -> masks`` over the selected
# parameters: the current weights, masks, raw gradients and running scores.
GradientPolicy = Callable[..., types.Masks]
# ``(step, grads, weights, scores) -> scores``, called at every step.
UpdateScores = Callable[..., types.Params]

# The smallest normal float32: a floor that ranks an eligible entry whose
# score is zero above every ineligible one (score exactly 0).
TINY = float(jnp.finfo(jnp.float32).tiny)


class MaskedOptimizerState(NamedTuple):
  """State of `masked_optimizer`.

  Attributes:
    count: number of updates seen so far (int32).
    inner: the state of the wrapped optimizer.
    scores: the policy's running scores of the selected parameters
      (float32, shaped like them, `types.NO_MASK` elsewhere), or ``()``.
    masking: the state of `masking.mask_updates`, which holds the masks in
      a `masking.MaskState` (`masking.find_masks` finds them).
  """
  count: jax.Array
  inner: optax.OptState
  scores: types.Params
  masking: optax.OptState


def _selected(params, tree, where):
  """``tree`` with the leaves ``where`` does not select as `NO_MASK`, as
  `optax.masked` passes them to the transform it wraps."""
  chosen = paths.select(params, where)
  return jax.tree.map(lambda c, x: x if c else optax.MaskedNode(), chosen,
                      tree)


def _like_params(params):
  """A predicate: is a node of an optimizer state shaped like ``params``?"""
  treedef = jax.tree.structure(params)
  shapes = [jnp.shape(p) for p in jax.tree.leaves(params)]

  def like(node):
    if jax.tree.structure(node) != treedef:
      return False
    return [jnp.shape(x) for x in jax.tree.leaves(node)] == shapes

  return like


def reset_slots(state: optax.OptState, params: types.Params,
                where: types.Masks) -> optax.OptState:
  """Zeroes an optimizer's per-parameter slots where ``where`` is `True`.

  A slot is any subtree of the state with the parameters' structure and
  shapes (momentum, Adam's two moments, a copy of the parameters); other
  leaves (counts, scalars) and slots of a different structure (those of an
  `optax.masked` inside the optimizer) are left as they are.

  Args:
    state: an optimizer's state.
    params: the parameters it was initialised with (or their shapes).
    where: booleans shaped like ``params``; a `types.NO_MASK` leaf resets
      nothing of its parameter.

  Returns:
    ``state`` with the selected entries of every slot set to zero.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from sparsify.core import gradients
    >>> params = {'w': jnp.ones(3)}
    >>> opt = optax.sgd(0.1, momentum=0.9)
    >>> _, state = opt.update({'w': jnp.ones(3)}, opt.init(params))
    >>> state = gradients.reset_slots(state, params,
    ...                               {'w': jnp.array([True, False, False])})
    >>> state[0].trace['w']
    Array([0., 1., 1.], dtype=float32)
  """
  like = _like_params(params)

  def reset(slot):
    return jax.tree.map(
        lambda w, s: s if types.is_no_mask(w) else jnp.where(
            w, jnp.zeros_like(s), s), where, slot, is_leaf=types.is_no_mask)

  return jax.tree.map(lambda node: reset(node) if like(node) else node,
                      state, is_leaf=like)


def masked_optimizer(
    optimizer: optax.GradientTransformation,
    update_masks: GradientPolicy | None = None,
    *,
    init_masks: masking.InitMasks = masking.all_true,
    init_scores: Callable[[types.Params], types.Params] | None = None,
    update_scores: UpdateScores | None = None,
    update_every: types.ScalarOrSchedule = 1,
    begin_step: types.ScalarOrSchedule = 0,
    end_step: types.ScalarOrSchedule | None = None,
    hold_steps: types.ScalarOrSchedule | None = None,
    where: paths.Where = None,
) -> optax.GradientTransformation:
  r"""Wraps ``optimizer`` in masks that a policy decides from raw gradients.

  At step :math:`t`, with raw gradients :math:`g_t`, weights :math:`w_t`
  and masks :math:`m_t`:

  1. the running scores are updated, ``s = update_scores(t, g, w, s)``;
  2. the optimizer runs on the gradients of the kept weights,
     :math:`u = \mathrm{opt}(m_t \odot g_t)`, so its moments never see a
     pruned weight's gradient;
  3. at the steps of the window (``begin_step``, ``update_every``,
     ``end_step``, as in `masking.mask_updates`) the policy sets
     ``m_{t+1} = update_masks(t, w, m_t, g, s)``; otherwise
     :math:`m_{t+1} = m_t`;
  4. the updates become :math:`u' = u` where :math:`m_t \wedge m_{t+1}`
     and :math:`-w` elsewhere: a pruned weight lands on exactly zero, and
     so does a weight that enters the mask (:math:`m_{t+1} \wedge \neg
     m_t`), whose optimizer slots (every part of the optimizer's state
     shaped like the parameters: momentum, Adam's moments) are set to zero
     as well (`reset_slots`): it starts the next step as a new parameter,
     with nothing of its past leaking in.

  While :math:`t` < ``hold_steps`` the optimizer does not run (its state
  does not change) and the updates are zero, so the weights stay at their
  initial values while the scores are gathered (SNIP's saliency at
  initialisation).

  Args:
    optimizer: the optimizer of every parameter, selected or not.
    update_masks: the policy, ``(step, weights, masks, grads, scores) ->
      masks`` over the selected parameters (`NO_MASK` elsewhere),
      jit-compatible; ``None`` keeps the initial masks. A callable that is
      not a schedule: static.
    init_masks: ``params -> masks`` (see `masking.mask_updates`); static.
    init_scores: ``params -> scores`` for the selected parameters, or
      ``None`` for no running scores (the state's ``scores`` is ``()``);
      static.
    update_scores: ``(step, grads, weights, scores) -> scores``, called at
      every step before the policy; static.
    update_every: steps between mask updates.
    begin_step: first step at which the policy runs.
    end_step: last step at which it runs (``None``: no end).
    hold_steps: number of initial steps whose updates are zero (``None``:
      none).
    where: which parameters are masked, a `paths.Where` (``None``: Dense
      and Conv kernels).

  Returns:
    An `optax.GradientTransformation` that is the whole optimizer: give it
    the raw gradients.

  Example:
    Masks that keep the weights of the two largest gradients, decided at
    step 0:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from sparsify.core import gradients
    >>> from sparsify.core import topk
    >>> def largest_two(step, weights, masks, grads, scores):
    ...   return jax.tree.map(
    ...       lambda g: topk.top_k_exact([jnp.abs(g)], 2)[0], grads)
    >>> tx = gradients.masked_optimizer(optax.sgd(1.0), largest_two,
    ...                                 end_step=0)
    >>> params = {'fc': {'kernel': jnp.ones((2, 2))}}
    >>> grads = {'fc': {'kernel': jnp.array([[0.5, 0.1], [0.0, 0.25]])}}
    >>> updates, state = tx.update(grads, tx.init(params), params)
    >>> optax.apply_updates(params, updates)['fc']['kernel']
    Array([[0.5 , 0.  ],
           [0.  , 0.75]], dtype=float32)
  """
  if hold_steps is not None:
    checks.check_integer("hold_steps", hold_steps, 0)

  def masker(policy):
    return masking.mask_updates(
        init_masks, policy, update_every=update_every, begin_step=begin_step,
        end_step=end_step, where=where)

  masker(None)  # checks the window's arguments now

  def init_fn(params):
    scores = (() if init_scores is None else
              init_scores(_selected(params, params, where)))
    return MaskedOptimizerState(
        count=jnp.zeros([], jnp.int32), inner=optimizer.init(params),
        scores=scores, masking=masker(None).init(params))

  def update_fn(grads, state, params=None):
    checks.require_params(params)
    count = state.count
    chosen_grads = _selected(params, grads, where)
    scores = state.scores
    if update_scores is not None:
      scores = update_scores(count, chosen_grads,
                             _selected(params, params, where), scores)
    old = state.masking.inner_state.masks

    def step():
      return optimizer.update(masking.apply_masks(grads, old), state.inner,
                              params)

    if hold_steps is None:
      updates, inner = step()
    else:
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                           jax.eval_shape(step)[0])
      updates, inner = jax.lax.cond(
          count < schedules.value_at(hold_steps, count),
          lambda: (zeros, state.inner), step)

    def policy(t, weights, masks):
      return update_masks(t, weights, masks, chosen_grads, scores)

    updates, mask_state = masker(
        None if update_masks is None else policy).update(
            updates, state.masking, params)
    new = mask_state.inner_state.masks
    # The masker gave u where m_{t+1}, -w elsewhere; entering weights get -w
    # (they are zero already, unless this is the first step) instead of an
    # update that their stale optimizer slots would have made.
    updates = jax.tree.map(
        lambda m, u, w: u if types.is_no_mask(m) else jnp.where(m, u, -w),
        old, updates, params, is_leaf=types.is_no_mask)
    entered = jax.tree.map(
        lambda m, n: m if types.is_no_mask(m) else n & ~m, old, new,
        is_leaf=types.is_no_mask)
    any_entered = sum(jnp.any(e) for e in jax.tree.leaves(entered)) > 0
    inner = jax.lax.cond(any_entered,
                         lambda: reset_slots(inner, params, entered),
                         lambda: inner)
    return updates, MaskedOptimizerState(
        count=optax.safe_increment(count), inner=inner, scores=scores,
        masking=mask_state)

  return optax.GradientTransformation(init_fn, update_fn)
